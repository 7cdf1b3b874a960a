"""Attention: non-causal softmax attention in the (B, H, T, Dh) layout of F.scaled_dot_product_attention.

Flash attention (online softmax, fp32 accumulation, log-sum-exp saved for the backward: base 2, fp32,
(B, H, T), the second output of the forward custom ops) in Triton:

    o = attention(q, k, v, scale=None)        # q, k, v (B, H, T, Dh) -> o (B, H, T, Dh)
    o = attention_qkvpacked(qkv, scale=None)  # qkv (B, T, 3, H, Dh) -> o (B, T, H, Dh)

Supported: any T >= 1 (tails masked), head_dim a multiple of 8 in [16, 128], fp16 / bf16 / fp32 (all
three of q, k, v the same dtype and device), any positive `scale` (default 1/√head_dim; the official
shortcut model uses 1/head_dim), any strides. Not supported: causal or other masks, dropout, different
lengths for q and k, head_dim > 128.

Layout contract (no copies):
- The kernels take every operand through its four strides, so strided views are read in place. In
  `attention_qkvpacked`, q, k, v are the views qkv[:, :, 0/1/2] of the fused projection the model
  computes; its gradient is written straight into one (B, T, 3, H, Dh) buffer, so neither direction
  stacks, transposes or copies. With `attention(q, k, v)` the three views of a fused qkv are equally
  read in place; dq, dk, dv come back as three contiguous (B, H, T, Dh) tensors.
- o is written as (B, T, H, Dh) memory: `attention` returns the (B, H, T, Dh) view of it (the layout
  SDPA's flash backend returns as well), so `o.transpose(1, 2).reshape(B, T, H·Dh)` needs no copy.

head_dim 72 (DiT-XL/2): each head is covered by two power-of-two tiles, D0 = 64 unmasked columns plus
D1 = 16 masked ones (64 + 16 = 80 ≥ 72), each with its own tl.dot; the matmuls do 80/72 = 1.11× the
useful work. Padding to the next power of two (128, what the Triton tutorial would need) would do 1.78×,
and flash-attn's 96-wide kernel 1.33×. Same rule for 40/48 (32 + 16), 80 (64 + 16), 88/96 (64 + 32);
where two tiles would cost as much as the next power of two (56, 104…120) one padded tile is used.
These are matmul-FLOP ratios; bench/test_bench_attention.py times the split against the 128 padding
(provider "triton_pad128") on a GPU.

Each op is a `torch.library.custom_op` (forward and backward separately, gradient via
`register_autograd`), so `torch.compile(fullgraph=True)` sees one opaque node and no graph break. The
Triton kernels are in attention_kernels.py; here: reference, launch configurations, launchers, custom ops.
"""
import functools
import math
import numbers

import torch

from ._forward_ad import forward_ad_active
from ._triton import can_launch, cuda_arch, interpreting, launch, triton_available

# Kernels are compiled for CUDA, or run by Triton's interpreter on CPU; @triton.jit picks the mode when
# this module is imported (TRITON_INTERPRET read at decoration time), so the answer is fixed here too.
_INTERPRETED = interpreting()
_HAS_TRITON = triton_available()
if _HAS_TRITON:
    import triton

LOG2E = math.log2(math.e)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 128


def attention_ref(q, k, v, scale=None, upcast=True):
    """softmax(q·kᵀ·scale)·v, computed in fp32 when upcast. q, k, v (B, H, T, Dh)."""
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    p = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)          # (B, H, T, T)
    return (p @ v).to(dtype)                                             # (B, H, T, Dh)


if _HAS_TRITON:
    from .attention_kernels import (_attn_bwd_delta_kernel, _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel,
                                    _attn_fwd_kernel, _attn_jvp_kernel)


# ----------------------------------------------------------------------------------------------------
# Launchers: checks, head-dim tiling, grids. q, k, v, o, do, dq, dk, dv are (B, H, T, Dh)-indexed views
# with arbitrary strides; lse (base-2 log-sum-exp) and delta are contiguous fp32 (B, H, T).
# ----------------------------------------------------------------------------------------------------
def _head_blocks(head_dim, split=True):
    """(D0, D1): power-of-two tile widths covering head_dim, D0 <= head_dim unmasked, D1 masked (0: none).

    split=False pads to one next-power-of-two tile instead (72 -> 128): kept to measure what the split saves.
    """
    full = 1 << (head_dim - 1).bit_length()
    d0 = 1 << (head_dim.bit_length() - 1)                 # largest power of two <= head_dim
    if not split or d0 == head_dim:
        return full, 0
    d1 = max(16, 1 << (head_dim - d0 - 1).bit_length())   # tl.dot needs every dim >= 16
    return (d0, d1) if d0 + d1 < full else (full, 0)


def _dot_precision(dtype):
    # fp32 inputs would otherwise run their dots in TF32 on the GPU (10-bit mantissa): keep them exact.
    return "ieee" if dtype == torch.float32 else "tf32"


# Autotune candidates, (BLOCK_M, BLOCK_N, num_warps, num_stages), per kernel, per GPU family (sm_90: H100/H200;
# sm_80: A100, and every other card below sm_90) and per operand width. Each compiles (ptxas from triton 3.6
# and 3.9) without a register spill and within the per-block shared memory at head_dim 64 and 72, T 256:
# tests/test_aot_compile.py compiles every entry (shortcut_kernels.aot); the register table and the configs
# pruned for spilling are in bench/README.md ("Ahead-of-time compilation"). fp32 dots run as IEEE fp32 FMAs
# (no tensor cores), which need smaller tiles; one list serves both families there.
_FP32 = {
    "fwd": ((32, 32, 8, 2), (16, 64, 8, 2), (16, 32, 4, 1), (64, 32, 8, 1)),
    "dkdv": ((32, 32, 8, 2), (64, 16, 8, 2), (16, 64, 8, 2), (16, 32, 4, 2), (64, 32, 8, 1)),
    "dq": ((32, 32, 8, 2), (16, 64, 8, 2), (32, 32, 4, 2), (64, 32, 8, 1)),
}
CONFIGS = {
    ("fwd", 90, 16): ((128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4),
                      (32, 32, 2, 3)),
    # sm_80 pruned 128×128 (8 warps) and 64×64 with 4 warps: they spill at head_dim 72.
    ("fwd", 80, 16): ((128, 64, 8, 3), (64, 64, 8, 3), (64, 32, 4, 4), (32, 32, 2, 3)),
    ("dkdv", 90, 16): ((32, 64, 4, 3), (32, 64, 8, 3), (64, 64, 8, 3), (32, 128, 8, 2), (16, 128, 8, 3)),
    # sm_80 pruned 64×64 and 32×128 (8 warps): they spill at head_dim 72.
    ("dkdv", 80, 16): ((32, 64, 4, 3), (32, 64, 8, 3), (16, 128, 8, 3)),
    ("dq", 90, 16): ((64, 64, 4, 3), (64, 64, 8, 3), (64, 32, 4, 3), (128, 32, 8, 2), (128, 64, 8, 3)),
    # sm_80 pruned 64×32 with 4 warps: it spills at head_dim 72.
    ("dq", 80, 16): ((64, 64, 4, 3), (64, 64, 8, 3), (128, 32, 8, 2), (128, 64, 8, 3)),
    **{(kernel, arch, 32): fp32 for kernel, fp32 in _FP32.items() for arch in (90, 80)},
    # The JVP kernel (attention_kernels._attn_jvp_kernel): "jvp" its one pass (o, t_o and lse; two fp32
    # accumulators, and q and tq held across the key loop), "tangent" t_o given the forward's o and lse. Each
    # entry spills nothing at every head_dim 16-128 (T 256, bf16 and fp16, triton 3.6 and 3.9): the one pass
    # needs small tiles, more so on sm_80 (every 64-row tile spilled there at head_dim 88 or 120). fp32 runs
    # the one pass as forward + tangent (attention_jvp._jvp); its tangent pass takes 16×16 tiles with 8 warps
    # (16×32, and 4 warps, spilled at head_dim 104-128). The sweep is in bench/README.md.
    ("jvp", 90, 16): ((128, 32, 8, 2), (64, 32, 8, 2), (64, 32, 4, 3), (32, 16, 4, 2)),
    ("jvp", 80, 16): ((32, 16, 4, 2), (16, 32, 4, 2), (16, 16, 2, 2)),
    ("tangent", 90, 16): ((128, 32, 8, 2), (64, 64, 8, 2), (64, 32, 8, 2), (64, 32, 4, 3), (32, 32, 8, 2)),
    ("tangent", 80, 16): ((64, 32, 8, 2), (64, 32, 8, 3), (32, 32, 8, 2), (32, 32, 4, 2)),
    ("tangent", 90, 32): ((16, 16, 8, 2),),
    ("tangent", 80, 32): ((16, 16, 8, 2), (16, 16, 8, 1)),
}
# The interpreter cannot autotune over several configs (SPEC §3): one, for every kernel.
INTERPRETER_CONFIG = (32, 32, 4, 1)
DELTA_BLOCK_M = 64


def configs(kernel, arch, dtype):
    """Autotune candidates (BLOCK_M, BLOCK_N, num_warps, num_stages) of `kernel` ("fwd", "dkdv", "dq"; "jvp",
    "tangent": the JVP kernel's modes) on a GPU of
    compute capability `arch` (10·major + minor; None: the interpreter) for operands of `dtype`."""
    if arch is None:
        return (INTERPRETER_CONFIG,)
    return CONFIGS[kernel, 90 if arch >= 90 else 80, 32 if dtype == torch.float32 else 16]


@functools.lru_cache(None)
def _tuned(kernel, arch, dtype):
    """The autotuned launcher of `kernel` over configs(kernel, arch, dtype); one tuning per key: T, the head
    tiling, B·H rounded up to a power of two (`_bh_bucket`; the kernels take it as BH and do not read it)
    and the operands' dtype."""
    fn = {"fwd": _attn_fwd_kernel, "dkdv": _attn_bwd_dkdv_kernel, "dq": _attn_bwd_dq_kernel,
          "jvp": _attn_jvp_kernel, "tangent": _attn_jvp_kernel}[kernel]
    candidates = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                  for bm, bn, w, s in configs(kernel, arch, dtype)]
    return triton.autotune(configs=candidates, key=["T", "HEAD_DIM", "D0", "BH"])(fn)


def _bh_bucket(bh):
    """B·H as the autotuner sees it: the next power of two, at most 1024. Small B·H (a DiT-B layer at B = 1 has
    12 heads: too few programs for 132 SMs with 128-row tiles) wants other tiles than large B·H, but each
    distinct value is a new tuning: the guided bootstrap batch has a random size (up to ~33 sizes at B 256) and
    FID's last batch another. Powers of two give at most 11 tunings per shape; from 1024 heads (B ≥ 64 at
    H = 16) even 128-row tiles at T = 256 make 2048 programs, 15 per SM of an H100, and the choice no longer
    depends on B·H."""
    return min(1024, 1 << max(0, bh - 1).bit_length())


def _width(dtype):
    # fp16 and bf16 share candidates (and Autotuner objects; their tunings are apart: the key holds the dtype).
    return torch.float32 if dtype == torch.float32 else torch.float16


def _arch(x):
    """The GPU architecture whose configs a launch on x's device uses; None: the interpreter's one config.
    Meta tensors: the architecture `_triton.recording` stands for (what the AOT compiler asks)."""
    arch = cuda_arch(x.device)
    return arch if not _INTERPRETED or x.device.type == "meta" else None


def _forward(q, k, v, o, lse, scale, split=True):
    B, H, T, Dh = q.shape
    d0, d1 = _head_blocks(Dh, split)
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]) * B * H,)   # noqa: E731
    launch(_tuned("fwd", _arch(q), _width(q.dtype)), grid, q.device,
           q, k, v, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
           H, T, _bh_bucket(B * H), scale * LOG2E,
           HEAD_DIM=Dh, D0=d0, D1=d1, DOT_PRECISION=_dot_precision(q.dtype))


def _backward(do, q, k, v, o, lse, scale, dq, dk, dv, split=True):
    B, H, T, Dh = q.shape
    d0, d1 = _head_blocks(Dh, split)
    arch, dev = _arch(q), q.device
    delta = torch.empty_like(lse)
    launch(_attn_bwd_delta_kernel, (triton.cdiv(T, DELTA_BLOCK_M) * B * H,), dev,
           o, do, delta, *o.stride(), *do.stride(), H, T, HEAD_DIM=Dh, D0=d0, D1=d1, BLOCK_M=DELTA_BLOCK_M)
    common = dict(HEAD_DIM=Dh, D0=d0, D1=d1, DOT_PRECISION=_dot_precision(q.dtype))
    grid_n = lambda meta: (triton.cdiv(T, meta["BLOCK_N"]) * B * H,)   # noqa: E731
    launch(_tuned("dkdv", arch, _width(q.dtype)), grid_n, dev,
           q, k, v, do, lse, delta, dk, dv,
           *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
           H, T, _bh_bucket(B * H), scale, scale * LOG2E, **common)
    grid_m = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]) * B * H,)   # noqa: E731
    launch(_tuned("dq", arch, _width(q.dtype)), grid_m, dev,
           q, k, v, do, lse, delta, dq,
           *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
           H, T, _bh_bucket(B * H), scale, scale * LOG2E, **common)


def _check_launchable(x, name):
    if can_launch(x.device):
        return
    if not _HAS_TRITON:
        raise RuntimeError(f"attention: {name} needs Triton, which is not installed; use attention_ref or SDPA")
    raise RuntimeError(f"attention: {name} is on {x.device}; the Triton kernels run on CUDA tensors, or on CPU "
                       f"through the interpreter (TRITON_INTERPRET=1 set before shortcut_kernels is imported)")


def _check_head_dim(head_dim, name):
    if head_dim % 8 or not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"attention: {name} head_dim must be a multiple of 8 in [{MIN_HEAD_DIM}, "
                         f"{MAX_HEAD_DIM}], got {head_dim}")


def _check_scale(scale, head_dim):
    if scale is None:
        return head_dim ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 0 < float(scale) < math.inf:
        raise ValueError(f"attention: scale must be a positive finite number or None, got {scale!r}")
    return float(scale)


def _check_qkv(q, k, v, scale):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-D (B, H, T, head_dim), got shape {tuple(x.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"attention: q, k, v must have the same shape (B, H, T, head_dim), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in DTYPES:
        raise TypeError(f"attention: q must be float16, bfloat16 or float32, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    _check_launchable(q, "q")
    _check_head_dim(q.shape[-1], "q")
    return _check_scale(scale, q.shape[-1])


def _check_qkvpacked(qkv, scale):
    if not isinstance(qkv, torch.Tensor):
        raise TypeError(f"attention_qkvpacked: qkv must be a torch.Tensor, got {type(qkv).__name__}")
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"attention_qkvpacked: qkv must have shape (B, T, 3, H, head_dim), got {tuple(qkv.shape)}")
    if qkv.dtype not in DTYPES:
        raise TypeError(f"attention_qkvpacked: qkv must be float16, bfloat16 or float32, got {qkv.dtype}")
    _check_launchable(qkv, "qkv")
    _check_head_dim(qkv.shape[-1], "qkv")
    return _check_scale(scale, qkv.shape[-1])


def _unpack(qkv):
    """Strided (B, H, T, Dh) views of q, k, v inside a (B, T, 3, H, Dh) buffer: no copy."""
    return [qkv.select(2, i).transpose(1, 2) for i in range(3)]


# ----------------------------------------------------------------------------------------------------
# Custom ops (what torch.compile sees) and their autograd.
# ----------------------------------------------------------------------------------------------------
def _bhtd_like_o(q):
    """An empty (B, H, T, Dh) view of (B, T, H, Dh) memory: the layout of the forward's o."""
    B, H, T, Dh = q.shape
    return q.new_empty(B, T, H, Dh).transpose(1, 2)


@torch.library.custom_op("shortcut_kernels::attention_fwd", mutates_args=())
def _attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, T, Dh = q.shape
    o = _bhtd_like_o(q)
    lse = q.new_empty(B, H, T, dtype=torch.float32)
    if o.numel():
        _forward(q, k, v, o, lse, scale)
    return o, lse


@_attention_fwd_op.register_fake
def _(q, k, v, scale):
    return _bhtd_like_o(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("shortcut_kernels::attention_bwd", mutates_args=())
def _attention_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                      lse: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    if q.numel():
        _backward(do, q, k, v, o, lse, scale, dq, dk, dv)
    return dq, dk, dv


@_attention_bwd_op.register_fake
def _(do, q, k, v, o, lse, scale):
    return tuple(torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))


def _attention_setup(ctx, inputs, output):
    """Saves (q, k, v, o, lse) for backward; returns them (the JVP rule saves them for forward too)."""
    q, k, v, scale = inputs
    o, lse = output
    ctx.mark_non_differentiable(lse)   # saves autograd a zeros(B, H, T) for its unused gradient
    saved = (q, k, v, o, lse)
    ctx.save_for_backward(*saved)
    ctx.scale = scale
    return saved


def _attention_grad(ctx, do, dlse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = _attention_bwd_op(do, q, k, v, o, lse, ctx.scale)
    return dq, dk, dv, None


_attention_fwd_op.register_autograd(_attention_grad, setup_context=_attention_setup)


@torch.library.custom_op("shortcut_kernels::attention_qkvpacked_fwd", mutates_args=())
def _attention_qkvpacked_fwd_op(qkv: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, _, H, Dh = qkv.shape
    o = qkv.new_empty(B, T, H, Dh)
    lse = qkv.new_empty(B, H, T, dtype=torch.float32)
    if o.numel():
        _forward(*_unpack(qkv), o.transpose(1, 2), lse, scale)
    return o, lse


@_attention_qkvpacked_fwd_op.register_fake
def _(qkv, scale):
    B, T, _, H, Dh = qkv.shape
    return qkv.new_empty(B, T, H, Dh), qkv.new_empty(B, H, T, dtype=torch.float32)


@torch.library.custom_op("shortcut_kernels::attention_qkvpacked_bwd", mutates_args=())
def _attention_qkvpacked_bwd_op(do: torch.Tensor, qkv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                                scale: float) -> torch.Tensor:
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)   # (B, T, 3, H, Dh)
    if dqkv.numel():
        _backward(do.transpose(1, 2), *_unpack(qkv), o.transpose(1, 2), lse, scale, *_unpack(dqkv))
    return dqkv


@_attention_qkvpacked_bwd_op.register_fake
def _(do, qkv, o, lse, scale):
    return torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)


def _attention_qkvpacked_setup(ctx, inputs, output):
    """Saves (qkv, o, lse) for backward; returns them (see _attention_setup)."""
    qkv, scale = inputs
    o, lse = output
    ctx.mark_non_differentiable(lse)
    saved = (qkv, o, lse)
    ctx.save_for_backward(*saved)
    ctx.scale = scale
    return saved


def _attention_qkvpacked_grad(ctx, do, dlse):
    qkv, o, lse = ctx.saved_tensors
    return _attention_qkvpacked_bwd_op(do, qkv, o, lse, ctx.scale), None


_attention_qkvpacked_fwd_op.register_autograd(_attention_qkvpacked_grad, setup_context=_attention_qkvpacked_setup)


# ----------------------------------------------------------------------------------------------------
# Public functions.
# ----------------------------------------------------------------------------------------------------
def attention(q, k, v, scale=None):
    """softmax(q·kᵀ·scale)·v with the Triton flash-attention kernels; differentiable in q, k, v.

    q, k, v (B, H, T, head_dim), any strides, one dtype (fp16 / bf16 / fp32) and device (CUDA, or CPU
    under TRITON_INTERPRET=1); head_dim a multiple of 8 in [16, 128]; scale defaults to 1/√head_dim.
    Returns o (B, H, T, head_dim), a view of (B, T, H, head_dim) memory. Under forward-mode AD
    (torch.func.jvp) the tangent comes from the JVP kernel in attention_jvp.py.
    """
    scale = _check_qkv(q, k, v, scale)
    if forward_ad_active():   # torch.func.jvp / forward_ad: the JVP kernel (attention_jvp.py)
        from .attention_jvp import attention_dual
        return attention_dual(q, k, v, scale)
    return _attention_fwd_op(q, k, v, scale)[0]


def attention_qkvpacked(qkv, scale=None):
    """Self-attention on a fused projection: qkv (B, T, 3, H, head_dim) -> o (B, T, H, head_dim), contiguous.

    Reads q, k, v in place from qkv and writes the gradient as one (B, T, 3, H, head_dim) tensor, so the
    model's qkv Linear -> attention -> proj Linear chain has no transpose or copy in either direction.
    Forward-mode AD (torch.func.jvp) runs the JVP kernel of attention_jvp.py.
    """
    scale = _check_qkvpacked(qkv, scale)
    if forward_ad_active():   # torch.func.jvp / forward_ad: the JVP kernel (attention_jvp.py)
        from .attention_jvp import attention_qkvpacked_dual
        return attention_qkvpacked_dual(qkv, scale)
    return _attention_qkvpacked_fwd_op(qkv, scale)[0]


def flash_attn_available():
    """Whether the flash-attn package (Dao-AILab, CUDA only) imports."""
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def flash_attn_qkvpacked(qkv, scale=None):
    """The flash-attn package on the same layout: qkv (B, T, 3, H, head_dim) -> o (B, T, H, head_dim)."""
    try:
        from flash_attn import flash_attn_qkvpacked_func
    except ImportError as e:
        raise RuntimeError("attention backend 'flash_attn' needs the flash-attn package (pip install flash-attn, "
                           "CUDA only), which is not installed; use 'triton' or 'sdpa'") from e
    if not qkv.is_cuda or qkv.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"attention backend 'flash_attn' needs fp16/bf16 CUDA tensors, got {qkv.dtype} on "
                         f"{qkv.device}; use 'triton' or 'sdpa'")
    return flash_attn_qkvpacked_func(qkv, softmax_scale=scale, causal=False)
