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
Not supported: D > 4096 (rows live in registers; the backward spills registers past 4096, see `_bwd_tile`),
non-contiguous x or branch (an error, not a copy).

File layout: references -> Triton kernels -> launchers (checks, allocation) -> torch custom ops with
autograd (so torch.compile(fullgraph=True) sees one opaque node each) -> public functions.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from ._forward_ad import forward_ad_active
from ._triton import can_launch, cuda_arch, fallback, launch, num_sms, triton_available

MAX_D = 4096   # the backward keeps ROWS rows of D fp32 values per tensor in registers; past 4096 it spills
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

    # The grid's row counts vary with B (B = 1 gives other values than B = 256) and only index: not specialised
    # on, so one compiled kernel serves every batch size.
    @triton.jit(do_not_specialize=["rows_per_prog", "n_chunks"])
    def _adaln_bwd_kernel(DH, DX2, XN, BRANCH, GATE, SCALE, MEAN, RSTD, DX, DBRANCH,
                          DSHIFT_P, DSCALE_P, DGATE_P,
                          T, D, rows_per_prog, n_chunks, stride_gb, stride_gd, stride_cb, stride_cd,
                          HAS_RESIDUAL: tl.constexpr, HAS_DX2: tl.constexpr, BLOCK_D: tl.constexpr,
                          ROWS: tl.constexpr):
        # Program (b, chunk) walks rows_per_prog tokens of sample b (a multiple of ROWS), ROWS at a time as one
        # (ROWS, BLOCK_D) tile: the loads of ROWS rows are in flight together and their 2·ROWS row sums share
        # one pass through shared memory. It keeps the per-sample sums (dshift, dscale, dgate) in fp32 registers
        # and writes one partial row each, summed on the host. Partials instead of atomics: deterministic.
        b = tl.program_id(0).to(tl.int64)
        chunk = tl.program_id(1)
        cols = tl.arange(0, BLOCK_D)
        cmask = cols < D
        scale1 = 1.0 + tl.load(SCALE + b * stride_cb + cols * stride_cd, mask=cmask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            g = tl.load(GATE + b * stride_gb + cols * stride_gd, mask=cmask, other=0.0).to(tl.float32)
        acc_shift = tl.zeros([BLOCK_D], dtype=tl.float32)
        acc_scale = tl.zeros([BLOCK_D], dtype=tl.float32)
        acc_gate = tl.zeros([BLOCK_D], dtype=tl.float32)
        for i in range(0, rows_per_prog, ROWS):
            t = chunk * rows_per_prog + i + tl.arange(0, ROWS)
            rmask = t < T                          # a partial last chunk: rows past T read and write nothing
            row = b * T + t
            mask = rmask[:, None] & cmask[None, :]
            off = row[:, None] * D + cols[None, :]
            mean = tl.load(MEAN + row, mask=rmask, other=0.0)
            rstd = tl.load(RSTD + row, mask=rmask, other=0.0)
            xn = tl.load(XN + off, mask=mask, other=0.0).to(tl.float32)
            dh = tl.load(DH + off, mask=mask, other=0.0).to(tl.float32)
            xhat = tl.where(mask, (xn - mean[:, None]) * rstd[:, None], 0.0)
            dxhat = dh * scale1[None, :]
            c1 = tl.sum(dxhat * xhat, axis=1) / D
            c2 = tl.sum(dxhat, axis=1) / D
            dx = (dxhat - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
            acc_shift += tl.sum(dh, axis=0)
            acc_scale += tl.sum(dh * xhat, axis=0)
            if HAS_RESIDUAL:
                if HAS_DX2:
                    dx += tl.load(DX2 + off, mask=mask, other=0.0).to(tl.float32)
                br = tl.load(BRANCH + off, mask=mask, other=0.0).to(tl.float32)
                tl.store(DBRANCH + off, (g[None, :] * dx).to(DBRANCH.dtype.element_ty), mask=mask)
                acc_gate += tl.sum(dx * br, axis=0)
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
    # 16 at 4096: with 8, fp32 rows spill 4 B (ptxas of triton 3.6, sm_90).
    return block, (16 if block >= 4096 else 8 if block >= 2048 else 4 if block >= 512 else 2)


def _bwd_tile(D, dh_dtype):
    """(BLOCK_D, num_warps, ROWS) of the backward: a (ROWS, BLOCK_D) tile of rows per loop step.

    Why tiles of rows, from ptxas reports (no GPU timing yet; gated_adaln under autocast, the heaviest
    variant, sm_90 and sm_80 alike): the programs an SM holds at once are capped by its 64 K registers, not by
    the grid. At D 1152 (BLOCK_D 2048, 8 warps) one row per step takes 98 registers a thread: 2 programs per SM,
    2 rows in flight, each step a chain load -> 2 block-wide sums -> store; more programs with fewer rows each
    would add partial-sum traffic and no concurrency. Two rows per step take 128 registers: still 2 programs,
    4 rows in flight, their loads issued together and their 4 sums in one pass through shared memory. At D 768
    (BLOCK_D 1024, 4 warps): 96 -> 128 registers, 5 -> 4 programs, 5 -> 8 rows in flight. Four rows per step
    take 245 registers (2 programs at D 768, 1 at D 1152: no more rows in flight), eight spill; so does any
    tile past D 4096 (one row of D 8192 with 16 warps spills 204 B: the row no longer fits the register file), which
    sets MAX_D. With an fp32 dh (fp32 training without autocast) two rows reach ptxas's 128-register mark and
    spill 8 B (triton 3.6, sm_80): one row per step there.
    """
    block = triton.next_power_of_2(D)
    rows = 2 if block <= 2048 and dh_dtype.itemsize <= 2 else 1
    return block, min(16, max(2, block // 256)), rows


def _bwd_grid(B, T, rows, device):
    """(rows_per_prog, chunks): programs (b, chunk) for chunk < chunks each walk rows_per_prog tokens, a multiple
    of `rows` (the tile height). Enough programs to fill the GPU (~8 per SM) while each still walks several
    tiles, so the per-sample partial sums stay small."""
    # On CPU (the interpreter) 2 programs per sample: enough to exercise the partial sums in tests.
    target = 8 * num_sms(device) if cuda_arch(device) is not None else 2 * B
    chunks = max(1, min(triton.cdiv(T, rows), triton.cdiv(target, B)))
    per_prog = triton.cdiv(triton.cdiv(T, chunks), rows) * rows
    return per_prog, triton.cdiv(T, per_prog)


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
        launch(_adaln_fwd_kernel, (B * T,), x.device,
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
    block, warps, tile_rows = _bwd_tile(D, dh.dtype)
    rows, chunks = _bwd_grid(B, T, tile_rows, dev) if B * T else (0, 1)
    parts = torch.empty((3 if residual else 2, B, chunks, D), dtype=torch.float32, device=dev)
    if B * T:
        g = gate if residual else scale
        launch(_adaln_bwd_kernel, (B, chunks), dev,
               dh, dx2 if dx2 is not None else dh, xn, branch if residual else xn, g, scale, mean, rstd,
               dx, dbranch if residual else dx, parts[0], parts[1], parts[-1],
               T, D, rows, chunks, g.stride(0), g.stride(1), scale.stride(0), scale.stride(1),
               HAS_RESIDUAL=residual, HAS_DX2=dx2 is not None, BLOCK_D=block, ROWS=tile_rows, num_warps=warps)
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
    """Saves (x, shift, scale, mean, rstd) for backward; returns them (the JVP rule saves them for forward too)."""
    x, shift, scale, _, _ = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    saved = (x, shift, scale, mean, rstd)
    ctx.save_for_backward(*saved)
    return saved


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
    """Saves (x2, branch, gate, shift, scale, mean, rstd) for backward; returns them (see _adaln_modulate_setup)."""
    x, branch, gate, shift, scale, _, _ = inputs
    x2, _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.x_dtype = x.dtype
    saved = (x2, branch, gate, shift, scale, mean, rstd)
    ctx.save_for_backward(*saved)
    return saved


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
        raise ValueError(f"x has D = {D} features; the kernels keep rows in registers and support D <= {MAX_D} "
                         f"(wider rows spill registers in the backward)")
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
    if forward_ad_active():   # torch.func.jvp / forward_ad: the custom op has no JVP rule; adaln_jvp.py does
        from .adaln_jvp import gated_adaln_dual
        return gated_adaln_dual(x, branch, gate, shift, scale, float(eps), out_dtype)
    x2, h, _, _ = _gated_adaln_fwd(x, branch, gate, shift, scale, float(eps), out_dtype)
    return x2, h
