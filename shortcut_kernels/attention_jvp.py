"""Forward-mode AD through attention: a JVP flash-attention kernel and the ops' JVP rules.

    o, t_o = attention_jvp(q, k, v, tq, tk, tv, scale=None)   # (B, H, T, Dh) each, like `attention`
    o, t_o = attention_qkvpacked_jvp(qkv, tqkv, scale=None)    # (B, T, 3, H, Dh) -> (B, T, H, Dh) each

Maths (S = scale·Q·Kᵀ, P = softmax(S), O = P·V; t· is a tangent):
    tS = scale·(tQ·Kᵀ + Q·tKᵀ);   tO = P·tV + (P⊙tS)·V − rowsum(P⊙tS)⊙O
One pass over K/V per tile of queries, no T × T matrix: the online softmax of the forward carries, with the
same rescaling by exp2(m_old − m_new), Σp·v (O), Σp·tv + Σ(p·ts)·v (tO) and Σp·ts (the rowsum); fp32
accumulation; the base-2 log-sum-exp is returned too, so `o` gets its gradient from the forward's backward
kernels. Same support as attention.py: any T (masked tails), head_dim a multiple of 8 in [16, 128] (72 as
64 + 16 tiles), fp16 / bf16 / fp32, any positive scale, any strides (qkv and tqkv read in place).
`t_o` is not differentiable (MeanFlow stops the gradient of du/dt); a gradient reaching it raises.

FLOPs, in tile matmuls of (BLOCK_M × BLOCK_N × head_dim) per key tile (elementwise work aside):
    forward kernel:                 Q·Kᵀ, P·V                                      2
    one-pass JVP (attention_jvp):   Q·Kᵀ, tQ·Kᵀ, Q·tKᵀ, P·V, P·tV, (P⊙tS)·V        6  = 3.0× the forward
    tangent given O and LSE:        the same without P·V (P = exp2(S − LSE))        5  = 2.5× the forward
    (fp32 operands: attention_jvp runs the forward kernel, then the tangent pass: 7; see `_jvp`.)
The JVP rule of `attention` (what torch.func.jvp runs) is the forward kernel then the tangent pass,
2 + 5 = 7 = 3.5× the forward: autograd calls `forward` before `jvp` and cannot hand it the tangents,
so one fused pass would redo Q·Kᵀ and P·V (8). torch.func.jvp through SDPA's math path does the same
6 matmuls as the one-pass kernel, plus T × T scores, probabilities and their tangents in memory.

Layout: reference -> launcher -> custom ops -> autograd.Functions (the JVP rules the public `attention` /
`attention_qkvpacked` use under forward AD) -> public functions. The Triton kernel (`_attn_jvp_kernel`) is in
attention_kernels.py; its launch configurations, per mode and GPU architecture, in attention.CONFIGS.
"""
import torch

from ._forward_ad import check_dual, no_grad_tangent, or_zeros
from ._triton import launch, triton_available
from .attention import (LOG2E, _arch, _attention_fwd_op, _attention_grad,
                        _attention_qkvpacked_bwd_op, _attention_qkvpacked_fwd_op, _attention_qkvpacked_grad,
                        _attention_qkvpacked_setup, _attention_setup, _bh_bucket, _bhtd_like_o, _check_qkv,
                        _check_qkvpacked, _dot_precision, _forward, _head_blocks, _tuned, _unpack, _width,
                        attention_ref)

if triton_available():
    import triton


def attention_jvp_ref(q, k, v, tq, tk, tv, scale=None, upcast=True):
    """(o, t_o): attention_ref and its tangent along (tq, tk, tv), by torch.func.jvp (in fp32 when upcast)."""
    dtype = q.dtype
    if upcast:
        q, k, v, tq, tk, tv = (x.float() for x in (q, k, v, tq, tk, tv))
    o, t_o = torch.func.jvp(lambda q, k, v: attention_ref(q, k, v, scale, upcast=False), (q, k, v), (tq, tk, tv))
    return o.to(dtype), t_o.to(dtype)


# ----------------------------------------------------------------------------------------------------
# Launcher: every operand a (B, H, T, Dh)-indexed view with arbitrary strides; lse contiguous fp32 (B, H, T).
# ----------------------------------------------------------------------------------------------------
def _alignment(operands):
    """16 bytes in elements (8 for 16-bit operands, 4 for fp32) when every batch, head and token stride of every
    operand is a multiple of it, else 1: the kernel's ALIGN. Element strides only; whether the data pointers are
    16-byte aligned Triton checks itself at each launch."""
    align = 16 // operands[0].element_size()
    ok = all(s % align == 0 for x in operands for s in x.stride()[:3])
    return align if ok else 1


def _jvp(q, k, v, tq, tk, tv, o, t_o, lse, scale, primal_known):
    """t_o (and, unless primal_known, o and lse) of attention along (tq, tk, tv)."""
    B, H, T, Dh = q.shape
    if not q.numel():
        return
    if not primal_known and q.dtype == torch.float32:
        # fp32 takes the forward kernel, then the tangent pass (7 tile matmuls instead of 6). Its dots are IEEE
        # FMA loops (no tensor cores), whose registers grow with the head dim: ahead-of-time compiles found no
        # one-pass fp32 config that spills nothing at head_dim 104-128 (sm_80 and sm_90), and on sm_90 the
        # smallest tiles crash LLVM's SLP vectorizer in triton 3.9 (an assertion, at head_dim 72 among others).
        _forward(q, k, v, o, lse, scale)
        primal_known = True
    d0, d1 = _head_blocks(Dh)
    operands = (q, k, v, tq, tk, tv, o, t_o)
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]) * B * H,)   # noqa: E731
    launch(_tuned("tangent" if primal_known else "jvp", _arch(q), _width(q.dtype)), grid, q.device,
           *operands, lse, *(s for x in operands for s in x.stride()), H, T, _bh_bucket(B * H), scale, scale * LOG2E,
           HEAD_DIM=Dh, D0=d0, D1=d1, PRIMAL_KNOWN=primal_known, DOT_PRECISION=_dot_precision(q.dtype),
           ALIGN=_alignment(operands))


# ----------------------------------------------------------------------------------------------------
# Custom ops. The one-pass ops give o a gradient through the forward's backward ops; a gradient reaching
# t_o raises. The tangent-only ops (what the JVP rules call) have no autograd: see no_grad_tangent.
# ----------------------------------------------------------------------------------------------------
@torch.library.custom_op("shortcut_kernels::attention_jvp", mutates_args=())
def _attention_jvp_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tq: torch.Tensor, tk: torch.Tensor,
                      tv: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    o, t_o = _bhtd_like_o(q), _bhtd_like_o(q)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    _jvp(q, k, v, tq, tk, tv, o, t_o, lse, scale, False)
    return o, t_o, lse


@_attention_jvp_op.register_fake
def _(q, k, v, tq, tk, tv, scale):
    return _bhtd_like_o(q), _bhtd_like_o(q), q.new_empty(q.shape[:3], dtype=torch.float32)


def _tangent_grad_error(op):
    raise RuntimeError(f"{op}: t_o is not differentiable (no second-order rule); detach it before it enters a "
                       f"loss, as MeanFlow does with stop_gradient(du/dt)")


def _attention_jvp_setup(ctx, inputs, output):
    q, k, v, _, _, _, scale = inputs
    o, _, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)   # None for an unused output: t_o's cotangent tells use from non-use
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.scale = scale


def _attention_jvp_grad(ctx, do, dt_o, _dlse):
    if dt_o is not None:
        _tangent_grad_error("attention_jvp")
    if do is None:
        return None, None, None, None, None, None, None
    return (*_attention_grad(ctx, do, None)[:3], None, None, None, None)   # the same saved tensors and scale


_attention_jvp_op.register_autograd(_attention_jvp_grad, setup_context=_attention_jvp_setup)


@torch.library.custom_op("shortcut_kernels::attention_qkvpacked_jvp", mutates_args=())
def _attention_qkvpacked_jvp_op(qkv: torch.Tensor, tqkv: torch.Tensor,
                                scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, T, _, H, Dh = qkv.shape
    o, t_o = qkv.new_empty(B, T, H, Dh), qkv.new_empty(B, T, H, Dh)
    lse = qkv.new_empty(B, H, T, dtype=torch.float32)
    _jvp(*_unpack(qkv), *_unpack(tqkv), o.transpose(1, 2), t_o.transpose(1, 2), lse, scale, False)
    return o, t_o, lse


@_attention_qkvpacked_jvp_op.register_fake
def _(qkv, tqkv, scale):
    B, T, _, H, Dh = qkv.shape
    return qkv.new_empty(B, T, H, Dh), qkv.new_empty(B, T, H, Dh), qkv.new_empty(B, H, T, dtype=torch.float32)


def _attention_qkvpacked_jvp_setup(ctx, inputs, output):
    qkv, _, scale = inputs
    o, _, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(qkv, o, lse)
    ctx.scale = scale


def _attention_qkvpacked_jvp_grad(ctx, do, dt_o, _dlse):
    if dt_o is not None:
        _tangent_grad_error("attention_qkvpacked_jvp")
    if do is None:
        return None, None, None
    qkv, o, lse = ctx.saved_tensors
    return _attention_qkvpacked_bwd_op(do, qkv, o, lse, ctx.scale), None, None


_attention_qkvpacked_jvp_op.register_autograd(_attention_qkvpacked_jvp_grad,
                                              setup_context=_attention_qkvpacked_jvp_setup)


@torch.library.custom_op("shortcut_kernels::attention_tangent", mutates_args=())
def _attention_tangent_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                          tq: torch.Tensor, tk: torch.Tensor, tv: torch.Tensor, scale: float) -> torch.Tensor:
    t_o = _bhtd_like_o(q)
    _jvp(q, k, v, tq, tk, tv, o, t_o, lse, scale, True)
    return t_o


@_attention_tangent_op.register_fake
def _(q, k, v, o, lse, tq, tk, tv, scale):
    return _bhtd_like_o(q)


@torch.library.custom_op("shortcut_kernels::attention_qkvpacked_tangent", mutates_args=())
def _attention_qkvpacked_tangent_op(qkv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor, tqkv: torch.Tensor,
                                    scale: float) -> torch.Tensor:
    t_o = torch.empty(o.shape, dtype=o.dtype, device=o.device)   # (B, T, H, Dh)
    _jvp(*_unpack(qkv), *_unpack(tqkv), o.transpose(1, 2), t_o.transpose(1, 2), lse, scale, True)
    return t_o


@_attention_qkvpacked_tangent_op.register_fake
def _(qkv, o, lse, tqkv, scale):
    return torch.empty(o.shape, dtype=o.dtype, device=o.device)


# ----------------------------------------------------------------------------------------------------
# JVP rules: forward and backward are the forward's custom ops, jvp the tangent pass.
# ----------------------------------------------------------------------------------------------------
class AttentionFn(torch.autograd.Function):
    """attention(q, k, v) with forward-mode AD. Returns (o, lse); lse is not differentiable."""

    @staticmethod
    def forward(q, k, v, scale):
        return _attention_fwd_op(q, k, v, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        saved = _attention_setup(ctx, inputs, output)   # the custom op's, then what the JVP needs
        ctx.set_materialize_grads(False)   # a tangent of None: that input carries none (zeros are passed on)
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx, do, _dlse):
        return (None,) * 4 if do is None else _attention_grad(ctx, do, _dlse)

    @staticmethod
    def jvp(ctx, tq, tk, tv, _tscale):
        q, k, v, o, lse = ctx.saved_tensors
        tq, tk, tv = (or_zeros(t, x) for x, t in ((q, tq), (k, tk), (v, tv)))
        t_o = _attention_tangent_op(q, k, v, o, lse, tq, tk, tv, ctx.scale)
        return no_grad_tangent(t_o, "attention"), None


class AttentionQKVPackedFn(torch.autograd.Function):
    """attention_qkvpacked(qkv) with forward-mode AD. Returns (o, lse); lse is not differentiable."""

    @staticmethod
    def forward(qkv, scale):
        return _attention_qkvpacked_fwd_op(qkv, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        saved = _attention_qkvpacked_setup(ctx, inputs, output)   # the custom op's, then what the JVP needs
        ctx.set_materialize_grads(False)
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx, do, _dlse):
        return (None,) * 2 if do is None else _attention_qkvpacked_grad(ctx, do, _dlse)

    @staticmethod
    def jvp(ctx, tqkv, _tscale):
        qkv, o, lse = ctx.saved_tensors
        t_o = _attention_qkvpacked_tangent_op(qkv, o, lse, tqkv, ctx.scale)
        return no_grad_tangent(t_o, "attention_qkvpacked"), None


def attention_dual(q, k, v, scale):
    """`attention` while a forward-AD level is open (checked arguments; scale a float)."""
    check_dual("attention")
    return AttentionFn.apply(q, k, v, scale)[0]


def attention_qkvpacked_dual(qkv, scale):
    """`attention_qkvpacked` while a forward-AD level is open (checked arguments; scale a float)."""
    check_dual("attention_qkvpacked")
    return AttentionQKVPackedFn.apply(qkv, scale)[0]


# ----------------------------------------------------------------------------------------------------
# Public functions.
# ----------------------------------------------------------------------------------------------------
def _check_tangents(op, primals, tangents):
    for (name, x), t in zip(primals, tangents):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: t{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != x.shape or t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"{op}: t{name} must match {name} in shape, dtype and device ({tuple(x.shape)}, "
                             f"{x.dtype}, {x.device}), got ({tuple(t.shape)}, {t.dtype}, {t.device})")


def attention_jvp(q, k, v, tq, tk, tv, scale=None):
    """o = attention(q, k, v) and its tangent t_o along (tq, tk, tv), in one pass over K/V.

    q, k, v and their tangents (B, H, T, head_dim), any strides, one dtype and device, as for `attention`.
    Returns (o, t_o), each a (B, H, T, head_dim) view of (B, T, H, head_dim) memory. o is differentiable in
    q, k, v (the forward's backward kernels); t_o is not (a gradient reaching it raises).
    """
    scale = _check_qkv(q, k, v, scale)
    _check_tangents("attention_jvp", (("q", q), ("k", k), ("v", v)), (tq, tk, tv))
    o, t_o, _ = _attention_jvp_op(q, k, v, tq, tk, tv, scale)
    return o, t_o


def attention_qkvpacked_jvp(qkv, tqkv, scale=None):
    """o = attention_qkvpacked(qkv) and its tangent along tqkv, in one pass: (B, T, 3, H, head_dim) ->
    (o, t_o), each (B, T, H, head_dim) contiguous. q, k, v and their tangents are read in place."""
    scale = _check_qkvpacked(qkv, scale)
    _check_tangents("attention_qkvpacked_jvp", (("qkv", qkv),), (tqkv,))
    o, t_o, _ = _attention_qkvpacked_jvp_op(qkv, tqkv, scale)
    return o, t_o
