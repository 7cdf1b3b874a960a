"""Fused Triton kernels for shortcut / DiT models, each with a pure-PyTorch reference beside it."""
from ._forward_ad import forward_ad_active
from ._triton import is_strict, strict
from .adaln import adaln_modulate, adaln_modulate_ref, gated_adaln, gated_adaln_ref
from .attention import (attention, attention_qkvpacked, attention_ref, flash_attn_available,
                        flash_attn_qkvpacked)
from .attention_jvp import attention_jvp, attention_jvp_ref, attention_qkvpacked_jvp
from .conditioning import (adaln_projections, embed_conditioning, embed_conditioning_ref, timestep_embedding_ref,
                           timestep_features, timestep_features_ref)

__all__ = ["adaln_modulate", "adaln_modulate_ref", "gated_adaln", "gated_adaln_ref",
           "attention", "attention_qkvpacked", "attention_ref", "flash_attn_available", "flash_attn_qkvpacked",
           "attention_jvp", "attention_jvp_ref", "attention_qkvpacked_jvp",
           "adaln_projections", "embed_conditioning", "embed_conditioning_ref", "timestep_embedding_ref",
           "timestep_features", "timestep_features_ref", "strict", "is_strict", "forward_ad_active"]
