"""Forward-mode AD through the adaLN ops: a tangent kernel and the ops' JVP rules.

With x̂ = (x − mean)·rstd, the row's normalised input (x, or x2 = x + gate·branch):
    tx2 = tx + tgate·branch + gate·tbranch                              (gated_adaln)
    tx̂  = rstd·(tx − mean(tx) − x̂·mean(x̂·tx))
    th  = tx̂·(1 + scale) + x̂·tscale + tshift
One program per row, reusing the forward's saved mean/rstd: reads x (or x2), tx (and branch, tbranch),
writes th (and tx2): the memory traffic of the forward plus one tensor, in one launch where the composed
formula takes ~10 elementwise kernels and their temporaries. Statistics and sums in fp32; tangents are
stored in their primal's dtype. The tangents are not differentiable (a gradient reaching one raises).

Layout: Triton kernel -> launcher -> custom ops -> autograd.Functions (the JVP rules the public
`adaln_modulate` / `gated_adaln` use while a forward-AD level is open).
"""
from typing import Optional

import torch

from ._forward_ad import check_dual, no_grad_tangent, or_zeros
from ._triton import launch, triton_available
from .adaln import (_adaln_modulate_backward, _adaln_modulate_fwd, _adaln_modulate_setup, _block_and_warps,
                    _gated_adaln_backward, _gated_adaln_fwd, _gated_adaln_setup)

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _adaln_jvp_kernel(XN, TX, BRANCH, TBRANCH, GATE, TGATE, SCALE, TSCALE, TSHIFT, MEAN, RSTD, TX2, TH,
                          T, D, s_gb, s_gd, s_tgb, s_tgd, s_cb, s_cd, s_tcb, s_tcd, s_tsb, s_tsd,
                          HAS_RESIDUAL: tl.constexpr, BLOCK_D: tl.constexpr):
        # One program per row (token), int64 offsets as in the forward.
        row = tl.program_id(0).to(tl.int64)
        b = row // T
        cols = tl.arange(0, BLOCK_D)
        mask = cols < D
        off = row * D + cols
        tx = tl.load(TX + off, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            br = tl.load(BRANCH + off, mask=mask, other=0.0).to(tl.float32)
            tbr = tl.load(TBRANCH + off, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(GATE + b * s_gb + cols * s_gd, mask=mask, other=0.0).to(tl.float32)
            tg = tl.load(TGATE + b * s_tgb + cols * s_tgd, mask=mask, other=0.0).to(tl.float32)
            tx = tx + tg * br + g * tbr
            tl.store(TX2 + off, tx.to(TX2.dtype.element_ty), mask=mask)
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        xn = tl.load(XN + off, mask=mask, other=0.0).to(tl.float32)
        xhat = tl.where(mask, (xn - mean) * rstd, 0.0)
        txc = tl.where(mask, tx - tl.sum(tx, axis=0) / D, 0.0)
        txhat = rstd * (txc - xhat * (tl.sum(xhat * tx, axis=0) / D))
        scale = tl.load(SCALE + b * s_cb + cols * s_cd, mask=mask, other=0.0).to(tl.float32)
        tscale = tl.load(TSCALE + b * s_tcb + cols * s_tcd, mask=mask, other=0.0).to(tl.float32)
        tshift = tl.load(TSHIFT + b * s_tsb + cols * s_tsd, mask=mask, other=0.0).to(tl.float32)
        th = txhat * (1.0 + scale) + xhat * tscale + tshift
        tl.store(TH + off, th.to(TH.dtype.element_ty), mask=mask)


def _adaln_tangent(xn, tx, branch, tbranch, gate, tgate, scale, tscale, tshift, mean, rstd, x2_dtype, h_dtype):
    """(tx2 or None, th). xn is the normalised input (x, or the stored x2); branch is None for adaln_modulate."""
    B, T, D = xn.shape
    residual = branch is not None
    tx = tx.contiguous()
    th = torch.empty(xn.shape, dtype=h_dtype, device=xn.device)
    tx2 = torch.empty(xn.shape, dtype=x2_dtype, device=xn.device) if residual else None
    if B * T:
        block, warps = _block_and_warps(D)                      # the forward's tile: one row per program
        g, tg = (gate, tgate) if residual else (scale, tscale)  # unused stand-ins without the residual
        launch(_adaln_jvp_kernel, (B * T,), xn.device,
               xn, tx, branch if residual else tx, tbranch.contiguous() if residual else tx, g, tg,
               scale, tscale, tshift, mean, rstd, tx2 if residual else th, th,
               T, D, *g.stride(), *tg.stride(), *scale.stride(), *tscale.stride(), *tshift.stride(),
               HAS_RESIDUAL=residual, BLOCK_D=block, num_warps=warps)
    return tx2, th


@torch.library.custom_op("shortcut_kernels::adaln_modulate_tangent", mutates_args=())
def _adaln_modulate_tangent_op(x: torch.Tensor, tx: torch.Tensor, scale: torch.Tensor, tscale: torch.Tensor,
                               tshift: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                               h_dtype: torch.dtype) -> torch.Tensor:
    return _adaln_tangent(x, tx, None, None, None, None, scale, tscale, tshift, mean, rstd, None, h_dtype)[1]


@_adaln_modulate_tangent_op.register_fake
def _(x, tx, scale, tscale, tshift, mean, rstd, h_dtype):
    return x.new_empty(x.shape, dtype=h_dtype)


@torch.library.custom_op("shortcut_kernels::gated_adaln_tangent", mutates_args=())
def _gated_adaln_tangent_op(x2: torch.Tensor, tx: torch.Tensor, branch: torch.Tensor, tbranch: torch.Tensor,
                            gate: torch.Tensor, tgate: torch.Tensor, scale: torch.Tensor, tscale: torch.Tensor,
                            tshift: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                            h_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return _adaln_tangent(x2, tx, branch, tbranch, gate, tgate, scale, tscale, tshift, mean, rstd, x2.dtype, h_dtype)


@_gated_adaln_tangent_op.register_fake
def _(x2, tx, branch, tbranch, gate, tgate, scale, tscale, tshift, mean, rstd, h_dtype):
    return torch.empty_like(x2), x2.new_empty(x2.shape, dtype=h_dtype)


class AdaLNModulateFn(torch.autograd.Function):
    """adaln_modulate with forward-mode AD. Returns (h, mean, rstd); mean and rstd are not differentiable."""

    @staticmethod
    def forward(x, shift, scale, eps, out_dtype):
        return _adaln_modulate_fwd(x, shift, scale, eps, out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        saved = _adaln_modulate_setup(ctx, inputs, output)   # the custom op's, then what the JVP needs
        ctx.set_materialize_grads(False)
        ctx.h_dtype = output[0].dtype
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx, dh, _dmean, _drstd):
        return (None,) * 5 if dh is None else _adaln_modulate_backward(ctx, dh, _dmean, _drstd)

    @staticmethod
    def jvp(ctx, tx, tshift, tscale, _teps, _tout_dtype):
        x, shift, scale, mean, rstd = ctx.saved_tensors
        th = _adaln_modulate_tangent_op(x, or_zeros(tx, x), scale, or_zeros(tscale, scale),
                                        or_zeros(tshift, shift), mean, rstd, ctx.h_dtype)
        return no_grad_tangent(th, "adaln_modulate"), None, None


class GatedAdaLNFn(torch.autograd.Function):
    """gated_adaln with forward-mode AD. Returns (x2, h, mean, rstd); mean and rstd are not differentiable."""

    @staticmethod
    def forward(x, branch, gate, shift, scale, eps, out_dtype):
        return _gated_adaln_fwd(x, branch, gate, shift, scale, eps, out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        saved = _gated_adaln_setup(ctx, inputs, output)   # the custom op's, then what the JVP needs
        ctx.set_materialize_grads(False)
        ctx.h_dtype = output[1].dtype
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx, dx2, dh, _dmean, _drstd):
        if dx2 is None and dh is None:
            return (None,) * 7
        return _gated_adaln_backward(ctx, dx2, dh, _dmean, _drstd)

    @staticmethod
    def jvp(ctx, tx, tbranch, tgate, tshift, tscale, _teps, _tout_dtype):
        x2, branch, gate, shift, scale, mean, rstd = ctx.saved_tensors
        tx2, th = _gated_adaln_tangent_op(
            x2, or_zeros(tx, x2), branch, or_zeros(tbranch, branch), gate, or_zeros(tgate, gate), scale,
            or_zeros(tscale, scale), or_zeros(tshift, shift), mean, rstd, ctx.h_dtype)
        return no_grad_tangent(tx2, "gated_adaln"), no_grad_tangent(th, "gated_adaln"), None, None


def adaln_modulate_dual(x, shift, scale, eps, out_dtype: Optional[torch.dtype]):
    """`adaln_modulate` while a forward-AD level is open (checked arguments, eps a float)."""
    check_dual("adaln_modulate")
    return AdaLNModulateFn.apply(x, shift, scale, eps, out_dtype)[0]


def gated_adaln_dual(x, branch, gate, shift, scale, eps, out_dtype: Optional[torch.dtype]):
    """`gated_adaln` while a forward-AD level is open: (x2, h)."""
    check_dual("gated_adaln")
    x2, h, _, _ = GatedAdaLNFn.apply(x, branch, gate, shift, scale, eps, out_dtype)
    return x2, h
