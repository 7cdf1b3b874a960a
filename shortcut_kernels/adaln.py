"""adaLN modulation kernels: LayerNorm (no affine) + per-sample shift/scale, optionally fused with the
gated residual of the previous sub-block.

Each op: a pure-PyTorch reference (`*_ref`), used by tests, benchmarks and `ShortcutDiT(kernels="torch")`.
"""
import torch
import torch.nn.functional as F


def adaln_modulate_ref(x, shift, scale, eps=1e-6, upcast=False):
    """LN(x)·(1 + scale) + shift. x (B, T, D); shift, scale (B, D), broadcast over tokens."""
    dtype = x.dtype
    if upcast:
        x, shift, scale = x.float(), shift.float(), scale.float()
    h = F.layer_norm(x, (x.shape[-1],), eps=eps)                     # (B, T, D)
    return (h * (1 + scale[:, None]) + shift[:, None]).to(dtype if upcast else h.dtype)


def gated_adaln_ref(x, branch, gate, shift, scale, eps=1e-6, upcast=False):
    """x2 = x + gate·branch; h = adaln_modulate(x2, shift, scale). Returns (x2, h)."""
    dtype = x.dtype
    if upcast:
        x, branch, gate = x.float(), branch.float(), gate.float()
    x2 = x + gate[:, None] * branch                                   # (B, T, D)
    h = adaln_modulate_ref(x2, shift, scale, eps=eps, upcast=upcast)
    return (x2.to(dtype), h) if upcast else (x2, h)
