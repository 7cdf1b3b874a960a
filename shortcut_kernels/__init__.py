"""Fused Triton kernels for shortcut / DiT models, each with a pure-PyTorch reference beside it."""
from .adaln import adaln_modulate_ref, gated_adaln_ref
from .attention import attention_ref
from .conditioning import timestep_embedding_ref

__all__ = ["adaln_modulate_ref", "gated_adaln_ref", "attention_ref", "timestep_embedding_ref"]
