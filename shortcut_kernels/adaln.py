"""adaLN modulation kernels: LayerNorm (no affine) + per-sample shift/scale, optionally fused with the
gated residual of the previous sub-block.

    adaln_modulate(x, shift, scale)            h  = LN(x)·(1 + scale) + shift
    gated_adaln(x, branch, gate, shift, scale) x2 = x + gate·branch;  h = LN(x2)·(1 + scale) + shift

x, branch (B, T, D) contiguous; shift, scale, gate (B, D), broadcast over the T tokens inside the kernel
(row -> sample by row // T). They may be strided views of one tensor, e.g. the chunks of the (B, 6D)
adaLN output, and are read in place (no copy).

Supported: fp32, fp16, bf16, mixed (under CUDA bf16 autocast the residual stream x is fp32 while
branch/gate/shift/scale are bf16). Statistics are fp32. Output dtypes are the reference's: x2 has dtype
promote(x, gate, branch) and h has the dtype of the normalised tensor (x, or x2) unless `out_dtype` asks
for another (ShortcutDiT passes the autocast dtype: h only feeds Linear layers,
which would cast it anyway, so writing bf16 saves a fp32 write and a cast kernel). float64 inputs, CPU
tensors outside the Triton interpreter and machines without Triton run the references.
Not supported: D > 16384 (a row lives in registers), non-contiguous x or branch (an error, not a copy).

File layout: references -> Triton kernels -> launchers (checks, allocation) -> torch custom ops with
autograd (so torch.compile(fullgraph=True) sees one opaque node each) -> public functions.
"""
import functools
from typing import Optional

import torch
import torch.nn.functional as F

from ._triton import can_launch, fallback, triton_available

MAX_D = 16384
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


# ---------------------------------------------------------------------------------------------------
# Triton kernels. One forward and one backward kernel serve both ops; HAS_RESIDUAL adds the gated
# residual (x2 = x + gate·branch) in front of the norm.
if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _adaln_fwd_kernel(X, BRANCH, GATE, SHIFT, SCALE, X2, H, MEAN, RSTD,
                          T, D, stride_gb, stride_gd, stride_sb, stride_sd, stride_cb, stride_cd, eps,
                          HAS_RESIDUAL: tl.constexpr, BLOCK_D: tl.constexpr):
        # One program per row (token). int64 offsets: B·T·D passes 2^31 at DiT-XL widths.
        row = tl.program_id(0).to(tl.int64)
        b = row // T
        cols = tl.arange(0, BLOCK_D)
        mask = cols < D
        x = tl.load(X + row * D + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            br = tl.load(BRANCH + row * D + cols, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(GATE + b * stride_gb + cols * stride_gd, mask=mask, other=0.0).to(tl.float32)
            x2 = (x + g * br).to(X2.dtype.element_ty)
            tl.store(X2 + row * D + cols, x2, mask=mask)
            # Normalise the stored (rounded) x2 so the backward, which reloads it, sees the same input.
            x = x2.to(tl.float32)
        mean = tl.sum(x, axis=0) / D
        xc = tl.where(mask, x - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / D + eps)
        shift = tl.load(SHIFT + b * stride_sb + cols * stride_sd, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(SCALE + b * stride_cb + cols * stride_cd, mask=mask, other=0.0).to(tl.float32)
        h = xc * rstd * (1.0 + scale) + shift
        tl.store(H + row * D + cols, h.to(H.dtype.element_ty), mask=mask)
        tl.store(MEAN + row, mean)
        tl.store(RSTD + row, rstd)

    @triton.jit
    def _adaln_bwd_kernel(DH, DX2, XN, BRANCH, GATE, SCALE, MEAN, RSTD, DX, DBRANCH,
                          DSHIFT_P, DSCALE_P, DGATE_P,
                          T, D, rows_per_prog, n_chunks, stride_gb, stride_gd, stride_cb, stride_cd,
                          HAS_RESIDUAL: tl.constexpr, HAS_DX2: tl.constexpr, BLOCK_D: tl.constexpr):
        # Program (b, chunk) walks rows_per_prog tokens of sample b and keeps the per-sample sums
        # (dshift, dscale, dgate) in fp32 registers; it writes one partial row each, summed on the host.
        # Partials instead of atomics: deterministic, and the (B, chunks, D) buffers are ~2 % of the traffic.
        b = tl.program_id(0).to(tl.int64)
        chunk = tl.program_id(1)
        cols = tl.arange(0, BLOCK_D)
        cmask = cols < D
        scale = tl.load(SCALE + b * stride_cb + cols * stride_cd, mask=cmask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            g = tl.load(GATE + b * stride_gb + cols * stride_gd, mask=cmask, other=0.0).to(tl.float32)
        acc_shift = tl.zeros([BLOCK_D], dtype=tl.float32)
        acc_scale = tl.zeros([BLOCK_D], dtype=tl.float32)
        acc_gate = tl.zeros([BLOCK_D], dtype=tl.float32)
        for i in range(0, rows_per_prog):
            t = chunk * rows_per_prog + i
            mask = cmask & (tl.zeros([BLOCK_D], dtype=tl.int32) + t < T)
            row = b * T + t
            off = row * D + cols
            xn = tl.load(XN + off, mask=mask, other=0.0).to(tl.float32)
            # Past the last token (a partial chunk) the statistics are read from the last row; the
            # masks zero every contribution of such rows.
            last = b * T + tl.minimum(t, T - 1)
            mean = tl.load(MEAN + last)
            rstd = tl.load(RSTD + last)
            xhat = tl.where(mask, (xn - mean) * rstd, 0.0)
            dh = tl.load(DH + off, mask=mask, other=0.0).to(tl.float32)
            dxhat = dh * (1.0 + scale)
            c1 = tl.sum(dxhat * xhat, axis=0) / D
            c2 = tl.sum(dxhat, axis=0) / D
            dx = (dxhat - (xhat * c1 + c2)) * rstd
            acc_shift += dh
            acc_scale += dh * xhat
            if HAS_RESIDUAL:
                if HAS_DX2:
                    dx += tl.load(DX2 + off, mask=mask, other=0.0).to(tl.float32)
                br = tl.load(BRANCH + off, mask=mask, other=0.0).to(tl.float32)
                tl.store(DBRANCH + off, (g * dx).to(DBRANCH.dtype.element_ty), mask=mask)
                acc_gate += dx * br
            tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=mask)
        poff = (b * n_chunks + chunk) * D + cols
        tl.store(DSHIFT_P + poff, acc_shift, mask=cmask)
        tl.store(DSCALE_P + poff, acc_scale, mask=cmask)
        if HAS_RESIDUAL:
            tl.store(DGATE_P + poff, acc_gate, mask=cmask)


# ---------------------------------------------------------------------------------------------------
# Launchers: allocation, grid, launch settings. Inputs are checked by the public functions.
def _block_and_warps(D):
    block = triton.next_power_of_2(D)
    # 8 warps from 2048 columns (DiT-XL's 1152 pads to 2048): fewer leave each thread 16+ fp32 per tensor.
    return block, (8 if block >= 2048 else 4 if block >= 512 else 2)


@functools.lru_cache(None)
def _num_sms(device):
    return torch.cuda.get_device_properties(device).multi_processor_count


def _bwd_chunks(B, T, device):
    """How many programs share one sample's tokens in the backward: enough programs to fill the GPU
    (~8 per SM) while each still walks several rows, so the per-sample partial sums stay small."""
    # On CPU (the interpreter) 2 programs per sample: enough to exercise the partial sums in tests.
    target = 8 * _num_sms(device) if device.type == "cuda" else 2 * B
    return max(1, min(T, triton.cdiv(target, B)))


def _out_dtypes(x, branch, gate, shift, scale, out_dtype):
    x2_dtype = x.dtype if branch is None else torch.promote_types(x.dtype, torch.promote_types(gate.dtype, branch.dtype))
    h_dtype = out_dtype or x2_dtype   # the reference: LN(x2) keeps x2's dtype, the modulation casts back
    return x2_dtype, h_dtype


def _adaln_fwd(x, branch, gate, shift, scale, eps, out_dtype):
    B, T, D = x.shape
    x2_dtype, h_dtype = _out_dtypes(x, branch, gate, shift, scale, out_dtype)
    residual = branch is not None
    x2 = torch.empty(x.shape, dtype=x2_dtype, device=x.device) if residual else None
    h = torch.empty(x.shape, dtype=h_dtype, device=x.device)
    mean = torch.empty(B * T, dtype=torch.float32, device=x.device)
    rstd = torch.empty(B * T, dtype=torch.float32, device=x.device)
    if B * T:
        block, warps = _block_and_warps(D)
        g = gate if residual else shift   # unused stand-in pointer when there is no residual
        _adaln_fwd_kernel[(B * T,)](
            x, branch if residual else x, g, shift, scale, x2 if residual else h, h, mean, rstd,
            T, D, g.stride(0), g.stride(1), shift.stride(0), shift.stride(1), scale.stride(0), scale.stride(1),
            eps, HAS_RESIDUAL=residual, BLOCK_D=block, num_warps=warps)
    return x2, h, mean, rstd


def _adaln_bwd(dh, dx2, xn, branch, gate, scale, mean, rstd, x_dtype, shift_dtype):
    """Gradients of adaln_modulate (branch is None) or gated_adaln. xn is the normalised input (x or x2)."""
    B, T, D = xn.shape
    residual = branch is not None
    dev = xn.device
    dh = dh.contiguous()
    dx2 = dx2.contiguous() if dx2 is not None else None
    dx = torch.empty(xn.shape, dtype=x_dtype, device=dev)
    dbranch = torch.empty_like(branch) if residual else None
    chunks = _bwd_chunks(B, T, dev) if B * T else 1
    rows = triton.cdiv(T, chunks) if T else 0
    chunks = triton.cdiv(T, rows) if rows else 1       # no program without rows
    parts = torch.empty((3 if residual else 2, B, chunks, D), dtype=torch.float32, device=dev)
    if B * T:
        block, warps = _block_and_warps(D)
        g = gate if residual else scale
        _adaln_bwd_kernel[(B, chunks)](
            dh, dx2 if dx2 is not None else dh, xn, branch if residual else xn, g, scale, mean, rstd,
            dx, dbranch if residual else dx, parts[0], parts[1], parts[-1],
            T, D, rows, chunks, g.stride(0), g.stride(1), scale.stride(0), scale.stride(1),
            HAS_RESIDUAL=residual, HAS_DX2=dx2 is not None, BLOCK_D=block, num_warps=warps)
    else:
        parts.zero_()
    # Separate sums: returned gradients must not be views of one buffer (custom-op aliasing rule).
    dshift, dscale = parts[0].sum(1).to(shift_dtype), parts[1].sum(1).to(scale.dtype)
    dgate = parts[2].sum(1).to(gate.dtype) if residual else None
    return dx, dbranch, dgate, dshift, dscale


# ---------------------------------------------------------------------------------------------------
# Custom ops: opaque to torch.compile (one node each, traced via the fake implementations), with the
# backward registered as another custom op.
@torch.library.custom_op("shortcut_kernels::adaln_modulate_fwd", mutates_args=())
def _adaln_modulate_fwd(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                        out_dtype: Optional[torch.dtype]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _, h, mean, rstd = _adaln_fwd(x, None, None, shift, scale, eps, out_dtype)
    return h, mean, rstd


@_adaln_modulate_fwd.register_fake
def _(x, shift, scale, eps, out_dtype):
    _, h_dtype = _out_dtypes(x, None, None, shift, scale, out_dtype)
    rows = x.shape[0] * x.shape[1]
    return (x.new_empty(x.shape, dtype=h_dtype), x.new_empty(rows, dtype=torch.float32),
            x.new_empty(rows, dtype=torch.float32))


@torch.library.custom_op("shortcut_kernels::adaln_modulate_bwd", mutates_args=())
def _adaln_modulate_bwd(dh: torch.Tensor, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                        mean: torch.Tensor, rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, _, _, dshift, dscale = _adaln_bwd(dh, None, x, None, None, scale, mean, rstd, x.dtype, shift.dtype)
    return dx, dshift, dscale


@_adaln_modulate_bwd.register_fake
def _(dh, x, shift, scale, mean, rstd):
    return torch.empty_like(x), shift.new_empty(shift.shape), scale.new_empty(scale.shape)


def _adaln_modulate_setup(ctx, inputs, output):
    x, shift, scale, _, _ = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, shift, scale, mean, rstd)


def _adaln_modulate_backward(ctx, dh, _dmean, _drstd):
    x, shift, scale, mean, rstd = ctx.saved_tensors
    dx, dshift, dscale = _adaln_modulate_bwd(dh, x, shift, scale, mean, rstd)
    return dx, dshift, dscale, None, None


_adaln_modulate_fwd.register_autograd(_adaln_modulate_backward, setup_context=_adaln_modulate_setup)


@torch.library.custom_op("shortcut_kernels::gated_adaln_fwd", mutates_args=())
def _gated_adaln_fwd(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor, shift: torch.Tensor,
                     scale: torch.Tensor, eps: float, out_dtype: Optional[torch.dtype]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _adaln_fwd(x, branch, gate, shift, scale, eps, out_dtype)


@_gated_adaln_fwd.register_fake
def _(x, branch, gate, shift, scale, eps, out_dtype):
    x2_dtype, h_dtype = _out_dtypes(x, branch, gate, shift, scale, out_dtype)
    rows = x.shape[0] * x.shape[1]
    return (x.new_empty(x.shape, dtype=x2_dtype), x.new_empty(x.shape, dtype=h_dtype),
            x.new_empty(rows, dtype=torch.float32), x.new_empty(rows, dtype=torch.float32))


@torch.library.custom_op("shortcut_kernels::gated_adaln_bwd", mutates_args=())
def _gated_adaln_bwd(dx2: Optional[torch.Tensor], dh: torch.Tensor, x2: torch.Tensor, branch: torch.Tensor,
                     gate: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor,
                     rstd: torch.Tensor, x_dtype: torch.dtype
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _adaln_bwd(dh, dx2, x2, branch, gate, scale, mean, rstd, x_dtype, shift.dtype)


@_gated_adaln_bwd.register_fake
def _(dx2, dh, x2, branch, gate, shift, scale, mean, rstd, x_dtype):
    return (x2.new_empty(x2.shape, dtype=x_dtype), torch.empty_like(branch), gate.new_empty(gate.shape),
            shift.new_empty(shift.shape), scale.new_empty(scale.shape))


def _gated_adaln_setup(ctx, inputs, output):
    x, branch, gate, shift, scale, _, _ = inputs
    x2, _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.x_dtype = x.dtype
    ctx.save_for_backward(x2, branch, gate, shift, scale, mean, rstd)


def _gated_adaln_backward(ctx, dx2, dh, _dmean, _drstd):
    x2, branch, gate, shift, scale, mean, rstd = ctx.saved_tensors
    if dh is None:   # only x2 was used: h contributes nothing
        dh = torch.zeros_like(x2)
    grads = _gated_adaln_bwd(dx2, dh, x2, branch, gate, shift, scale, mean, rstd, ctx.x_dtype)
    return (*grads, None, None)


_gated_adaln_fwd.register_autograd(_gated_adaln_backward, setup_context=_gated_adaln_setup)


# ---------------------------------------------------------------------------------------------------
# Public functions.
def _check(x, shift, scale, eps, out_dtype, branch=None, gate=None):
    tensors = [("x", x), ("shift", shift), ("scale", scale)]
    if branch is not None:
        tensors += [("branch", branch), ("gate", gate)]
    for name, v in tensors:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
        if not v.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (float32, float16 or bfloat16), got {v.dtype}")
        if v.device != x.device:
            raise ValueError(f"{name} is on {v.device} but x is on {x.device}; all inputs must share a device")
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B, T, D), got {tuple(x.shape)}")
    B, T, D = x.shape
    if not x.is_contiguous():
        raise ValueError(f"x must be contiguous (the kernel walks rows of D elements); got strides {x.stride()} "
                         f"for shape {tuple(x.shape)}: call .contiguous() first")
    if branch is not None:
        if branch.shape != x.shape:
            raise ValueError(f"branch must have the shape of x {tuple(x.shape)}, got {tuple(branch.shape)}")
        if not branch.is_contiguous():
            raise ValueError(f"branch must be contiguous; got strides {branch.stride()} for shape {tuple(branch.shape)}")
    for name, v in tensors[1:]:
        if name != "branch" and tuple(v.shape) != (B, D):
            raise ValueError(f"{name} must have shape (B, D) = ({B}, {D}) (one vector per sample, broadcast over "
                             f"the {T} tokens), got {tuple(v.shape)}")
    if D > MAX_D:
        raise ValueError(f"x has D = {D} features; the kernel keeps a row in registers and supports D <= {MAX_D}")
    if out_dtype is not None and out_dtype not in KERNEL_DTYPES + (torch.float64,):
        raise TypeError(f"out_dtype must be None or a floating-point dtype, got {out_dtype}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")


def _use_kernel(op, *tensors):
    """Triton can run here and every dtype is one the kernels take (float64, e.g. gradcheck, is left to the
    reference). Under `shortcut_kernels.strict()` a fallback raises instead."""
    if not can_launch(tensors[0].device):
        fallback(op, f"tensors on {tensors[0].device}; kernels run on CUDA, or on CPU under TRITON_INTERPRET")
        return False
    if not all(t.dtype in KERNEL_DTYPES for t in tensors):
        fallback(op, f"dtypes {sorted({str(t.dtype) for t in tensors})}; the kernel takes float32, float16, bfloat16")
        return False
    return True


def adaln_modulate(x, shift, scale, eps=1e-6, *, out_dtype=None):
    """LN(x)·(1 + scale) + shift, fused. x (B, T, D) contiguous; shift, scale (B, D), any strides.

    Returns h (B, T, D) of dtype `out_dtype`, or x's dtype when None. Differentiable in
    x, shift and scale, in reverse and forward mode (torch.func.jvp: adaln_jvp.py). See the module
    docstring for dtypes and fallbacks.
    """
    _check(x, shift, scale, eps, out_dtype)
    if not _use_kernel("adaln_modulate", x, shift, scale):
        h = adaln_modulate_ref(x, shift, scale, eps)
        return h if out_dtype is None else h.to(out_dtype)
    from ._forward_ad import forward_ad_active
    if forward_ad_active():   # torch.func.jvp / forward_ad: the custom op has no JVP rule; adaln_jvp.py does
        from .adaln_jvp import adaln_modulate_dual
        return adaln_modulate_dual(x, shift, scale, float(eps), out_dtype)
    h, _, _ = _adaln_modulate_fwd(x, shift, scale, float(eps), out_dtype)
    return h


def gated_adaln(x, branch, gate, shift, scale, eps=1e-6, *, out_dtype=None):
    """x2 = x + gate·branch; h = LN(x2)·(1 + scale) + shift, in one pass. Returns (x2, h).

    x, branch (B, T, D) contiguous; gate, shift, scale (B, D), any strides. x2 has dtype
    promote(x, gate, branch); h has `out_dtype`, or x2's dtype when None.
    Differentiable in all five tensors, in reverse and forward mode (torch.func.jvp: adaln_jvp.py).
    """
    _check(x, shift, scale, eps, out_dtype, branch, gate)
    if not _use_kernel("gated_adaln", x, branch, gate, shift, scale):
        x2, h = gated_adaln_ref(x, branch, gate, shift, scale, eps)
        return x2, (h if out_dtype is None else h.to(out_dtype))
    from ._forward_ad import forward_ad_active
    if forward_ad_active():   # torch.func.jvp / forward_ad: the custom op has no JVP rule; adaln_jvp.py does
        from .adaln_jvp import gated_adaln_dual
        return gated_adaln_dual(x, branch, gate, shift, scale, float(eps), out_dtype)
    x2, h, _, _ = _gated_adaln_fwd(x, branch, gate, shift, scale, float(eps), out_dtype)
    return x2, h
