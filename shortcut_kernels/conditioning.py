"""Conditioning: sinusoidal features of the noise level t and of the step level k, and the adaLN
projections of all blocks as one GEMM.

The reference is DiT's / the official code's timestep features: [cos(t·f), sin(t·f)] with
f_i = max_period^(-i / half), half = dim / 2.

    timestep_features(t, k, dim, t_scale, k_scale)  -> (2, B, dim) fp32: [features(t·t_scale), features(k·k_scale)]
    adaln_projections(c, weight, bias, sizes)       -> silu(c) @ weightᵀ + bias, split into per-block views

`timestep_features` is one Triton launch for both embedders' sinusoids (the reference takes ~8 small
kernels: arange, exp, mul, cos, sin, cat, per scalar). `adaln_projections` runs every block's adaLN
Linear as one GEMM over the concatenated weight (ShortcutDiT owns it as one Parameter), so conditioning
costs O(1) launches instead of O(depth).
"""
import functools
import math

import torch
import torch.nn.functional as F

from ._triton import interpreting, triton_available


def timestep_embedding_ref(t, dim=256, max_period=10000.0):
    """Sinusoidal features of a batch of scalars. t (B,) float or int -> (B, dim) float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]                             # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)          # (B, 2·half)
    if dim % 2:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], 1)], dim=-1)
    return emb


def timestep_features_ref(t, k, dim=256, t_scale=1.0, k_scale=1.0, max_period=10000.0):
    """Features of t·t_scale and of k·k_scale, stacked: (2, B, dim) float32 (what ShortcutDiT's two
    TimestepEmbedders compute, `timestep_embedding_ref(t.float() * scale)`)."""
    return torch.stack([timestep_embedding_ref(t.float() * t_scale, dim, max_period),
                        timestep_embedding_ref(k.float() * k_scale, dim, max_period)])


def adaln_projections(c, weight, bias, sizes):
    """All adaLN vectors from c in one GEMM: silu(c) @ weightᵀ + bias, split along features.

    c (B, D); weight (sum(sizes), D), the blocks' adaLN Linear weights stacked row-wise; bias (sum(sizes),).
    Returns a list of (B, size) views into one (B, sum(sizes)) tensor. Plain PyTorch (one cuBLAS GEMM):
    the gain is batching depth + 1 GEMMs into one, and autograd/autocast treat it like any Linear.
    """
    if weight.dim() != 2 or weight.shape[1] != c.shape[-1]:
        raise ValueError(f"weight must have shape (N, {c.shape[-1]}) to project c {tuple(c.shape)}, "
                         f"got {tuple(weight.shape)}")
    if sum(sizes) != weight.shape[0]:
        raise ValueError(f"sizes must add up to weight.shape[0] = {weight.shape[0]}, got sum {sum(sizes)}")
    return list(F.linear(F.silu(c), weight, bias).split(list(sizes), dim=1))


# ---------------------------------------------------------------------------------------------------
if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _timestep_features_kernel(T_IN, K_IN, FREQS, OUT, B, t_scale, k_scale, HALF, DIM,
                                  BLOCK: tl.constexpr):
        # Program (b, which): which = 0 embeds t[b], which = 1 embeds k[b]; out (2, B, DIM).
        b = tl.program_id(0)
        which = tl.program_id(1)
        cols = tl.arange(0, BLOCK)
        mask = cols < HALF
        if which == 0:
            v = tl.load(T_IN + b).to(tl.float32) * t_scale
        else:
            v = tl.load(K_IN + b).to(tl.float32) * k_scale
        # The argument is rounded to fp32 exactly as the reference rounds it; cos/sin then run in fp64 so
        # the result is the correctly rounded cos/sin of that argument. fp32 sin/cos on the GPU are
        # approximate for arguments up to 1000 (t_scale = 1000), which would double the reference's error.
        arg = (v * tl.load(FREQS + cols, mask=mask, other=0.0)).to(tl.float64)
        base = OUT + (which * B + b).to(tl.int64) * DIM
        tl.store(base + cols, tl.cos(arg).to(tl.float32), mask=mask)
        tl.store(base + HALF + cols, tl.sin(arg).to(tl.float32), mask=mask)
        tl.store(base + 2 * HALF + cols, tl.zeros([BLOCK], dtype=tl.float32), mask=cols < DIM - 2 * HALF)


@functools.lru_cache(None)
def _frequencies(half, max_period, device):
    """f_i = max_period^(-i / half) in fp32, computed once per device by the reference's formula."""
    return torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=device) / half)


def _timestep_features(t, k, dim, t_scale, k_scale, max_period):
    B, half = t.shape[0], dim // 2
    out = torch.empty((2, B, dim), dtype=torch.float32, device=t.device)
    if B:
        freqs = _frequencies(half, float(max_period), t.device)
        block = triton.next_power_of_2(max(half, 1))
        _timestep_features_kernel[(B, 2)](t, k, freqs, out, B, float(t_scale), float(k_scale), half, dim,
                                          BLOCK=block, num_warps=1 if block <= 128 else 2)
    return out


@torch.library.custom_op("shortcut_kernels::timestep_features", mutates_args=())
def _timestep_features_op(t: torch.Tensor, k: torch.Tensor, dim: int, t_scale: float, k_scale: float,
                          max_period: float) -> torch.Tensor:
    return _timestep_features(t, k, dim, t_scale, k_scale, max_period)


@_timestep_features_op.register_fake
def _(t, k, dim, t_scale, k_scale, max_period):
    return t.new_empty((2, t.shape[0], dim), dtype=torch.float32)


_HAS_TRITON = triton_available()


def timestep_features(t, k, dim=256, t_scale=1.0, k_scale=1.0, max_period=10000.0):
    """Sinusoidal features of t·t_scale and k·k_scale in one launch: (2, B, dim) float32.

    t (B,) float (the noise level), k (B,) integer or float (the step level), same device. Not
    differentiable (t and k are data). CPU tensors outside the Triton interpreter run the reference.
    """
    for name, v in (("t", t), ("k", k)):
        if not isinstance(v, torch.Tensor) or v.dim() != 1:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"{name} must be a 1-D tensor (one scalar per sample), got {got}")
        if v.dtype == torch.bool or v.is_complex():
            raise TypeError(f"{name} must be a real-valued tensor, got {v.dtype}")
    if k.shape != t.shape:
        raise ValueError(f"t and k must have the same shape, got {tuple(t.shape)} and {tuple(k.shape)}")
    if k.device != t.device:
        raise ValueError(f"k is on {k.device} but t is on {t.device}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    dev = t.device.type
    if not (_HAS_TRITON and (dev == "cuda" or (dev == "cpu" and interpreting()))):
        return timestep_features_ref(t, k, dim, t_scale, k_scale, max_period)
    return _timestep_features_op(t.contiguous(), k.contiguous(), dim, float(t_scale), float(k_scale),
                                 float(max_period))
