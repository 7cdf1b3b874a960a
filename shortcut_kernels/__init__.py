"""Fused Triton kernels for shortcut / DiT models, each with a pure-PyTorch reference beside it."""
from ._triton import is_strict, strict
from .adaln import adaln_modulate, adaln_modulate_ref, gated_adaln, gated_adaln_ref
from .attention import (attention, attention_qkvpacked, attention_ref, flash_attn_available,
                        flash_attn_qkvpacked)
from .conditioning import (adaln_projections, embed_conditioning, embed_conditioning_ref, timestep_embedding_ref,
                           timestep_features, timestep_features_ref)

__all__ = ["adaln_modulate", "adaln_modulate_ref", "gated_adaln", "gated_adaln_ref",
           "attention", "attention_qkvpacked", "attention_ref", "flash_attn_available", "flash_attn_qkvpacked",
           "adaln_projections", "embed_conditioning", "embed_conditioning_ref", "timestep_embedding_ref",
           "timestep_features", "timestep_features_ref", "strict", "is_strict"]
