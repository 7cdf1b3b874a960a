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
The JVP rule of `attention` (what torch.func.jvp runs) is the forward kernel then the tangent pass,
2 + 5 = 7 = 3.5× the forward: autograd calls `forward` before `jvp` and cannot hand it the tangents,
so one fused pass would redo Q·Kᵀ and P·V (8). torch.func.jvp through SDPA's math path does the same
6 matmuls as the one-pass kernel, plus T × T scores, probabilities and their tangents in memory.

Layout: references -> Triton kernel -> launcher -> custom ops -> autograd.Functions (the JVP rules the
public `attention` / `attention_qkvpacked` use under forward AD) -> public functions.
"""
import torch

from ._forward_ad import check_dual, no_grad_tangent
from ._triton import interpreting, triton_available
from .attention import (LOG2E, _attention_bwd_op, _attention_fwd_op, _attention_qkvpacked_bwd_op,
                        _attention_qkvpacked_fwd_op, _check_qkv, _check_qkvpacked, _dot_precision, _head_blocks,
                        _unpack, attention_ref)

if triton_available():
    import triton
    import triton.language as tl

    from .attention_kernels import _head_offset, _load_tile, _store_tile


def attention_jvp_ref(q, k, v, tq, tk, tv, scale=None, upcast=True):
    """(o, t_o): attention_ref and its tangent along (tq, tk, tv), by torch.func.jvp (in fp32 when upcast)."""
    dtype = q.dtype
    if upcast:
        q, k, v, tq, tk, tv = (x.float() for x in (q, k, v, tq, tk, tv))
    o, t_o = torch.func.jvp(lambda q, k, v: attention_ref(q, k, v, scale, upcast=False), (q, k, v), (tq, tk, tv))
    return o.to(dtype), t_o.to(dtype)


# ----------------------------------------------------------------------------------------------------
# Triton kernel: one program per (batch, head, tile of BLOCK_M queries), the grid and head-dim tiles of
# attention.py's forward. PRIMAL_KNOWN = False: the one-pass JVP (online softmax; writes O, tO, LSE).
# PRIMAL_KNOWN = True: O and LSE come from the forward kernel and P = exp2(S·log2e·scale − LSE) is exact
# per tile (no rescaling, no P·V); writes tO only.
# ----------------------------------------------------------------------------------------------------
if triton_available():

    def _jvp_configs():
        if interpreting():   # the interpreter cannot autotune over several configs (SPEC §3)
            return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
        # Two (BLOCK_M, Dh) fp32 accumulators (O and tO) and the q, tq tiles live in registers. Compiled for
        # sm_90 in bf16 (ptxas via triton 3.9 on CPU, untimed): at head_dim 64 and 72 none of these spills in
        # the tangent pass; in the one-pass mode (64, 64, 4) and (128, 64, 8) spill 4-8 B at 72. (32, 64, 4)
        # spilled 160 B at 72 and was dropped. At 128 the one-pass mode spills 8-132 B in every config.
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
                for bm, bn, w, s in ((64, 64, 8, 3), (64, 32, 4, 3), (128, 32, 8, 3), (64, 64, 4, 3),
                                     (128, 64, 8, 2))]

    @triton.autotune(configs=_jvp_configs(), key=["T", "HEAD_DIM", "D0", "BH", "PRIMAL_KNOWN"])
    @triton.jit
    def _attn_jvp_kernel(
        Q, K, V, TQ, TK, TV, O, TO, LSE,
        sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
        stq_b, stq_h, stq_t, stq_d, stk_b, stk_h, stk_t, stk_d, stv_b, stv_h, stv_t, stv_d,
        so_b, so_h, so_t, so_d, sto_b, sto_h, sto_t, sto_d,
        H, T, BH, scale, qk_scale,
        HEAD_DIM: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, PRIMAL_KNOWN: tl.constexpr,
        DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid = tl.program_id(0)
        num_m = tl.cdiv(T, BLOCK_M)
        bh, pid_m = pid // num_m, pid % num_m
        b, h = bh // H, bh % H
        q_base = _head_offset(Q, b, h, sq_b, sq_h)
        k_base = _head_offset(K, b, h, sk_b, sk_h)
        v_base = _head_offset(V, b, h, sv_b, sv_h)
        tq_base = _head_offset(TQ, b, h, stq_b, stq_h)
        tk_base = _head_offset(TK, b, h, stk_b, stk_h)
        tv_base = _head_offset(TV, b, h, stv_b, stv_h)
        o_base = _head_offset(O, b, h, so_b, so_h)
        to_base = _head_offset(TO, b, h, sto_b, sto_h)
        lse_ptr = LSE + bh.to(tl.int64) * T

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < T
        q0 = _load_tile(q_base, offs_m, sq_t, sq_d, mask_m, 0, D0, HEAD_DIM)             # (BM, D0)
        tq0 = _load_tile(tq_base, offs_m, stq_t, stq_d, mask_m, 0, D0, HEAD_DIM)
        acc_t0 = tl.zeros((BLOCK_M, D0), dtype=tl.float32)                               # Σ p·tv + (p·ts)·v
        if D1 > 0:
            q1 = _load_tile(q_base, offs_m, sq_t, sq_d, mask_m, D0, D1, HEAD_DIM)        # (BM, D1)
            tq1 = _load_tile(tq_base, offs_m, stq_t, stq_d, mask_m, D0, D1, HEAD_DIM)
            acc_t1 = tl.zeros((BLOCK_M, D1), dtype=tl.float32)
        r_i = tl.zeros((BLOCK_M,), dtype=tl.float32)                                     # Σ p·ts
        if PRIMAL_KNOWN:
            lse2 = tl.load(lse_ptr + offs_m, mask=mask_m, other=0.0)
        else:
            acc_o0 = tl.zeros((BLOCK_M, D0), dtype=tl.float32)                           # Σ p·v
            if D1 > 0:
                acc_o1 = tl.zeros((BLOCK_M, D1), dtype=tl.float32)
            m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
            l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)

        for start_n in range(0, T, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            mask_n = offs_n < T
            k0 = _load_tile(k_base, offs_n, sk_t, sk_d, mask_n, 0, D0, HEAD_DIM)         # (BN, D0)
            tk0 = _load_tile(tk_base, offs_n, stk_t, stk_d, mask_n, 0, D0, HEAD_DIM)
            s = tl.dot(q0, tl.trans(k0), input_precision=DOT_PRECISION)                  # (BM, BN)
            ts = tl.dot(tq0, tl.trans(k0), input_precision=DOT_PRECISION)
            ts += tl.dot(q0, tl.trans(tk0), input_precision=DOT_PRECISION)
            if D1 > 0:
                k1 = _load_tile(k_base, offs_n, sk_t, sk_d, mask_n, D0, D1, HEAD_DIM)
                tk1 = _load_tile(tk_base, offs_n, stk_t, stk_d, mask_n, D0, D1, HEAD_DIM)
                s += tl.dot(q1, tl.trans(k1), input_precision=DOT_PRECISION)
                ts += tl.dot(tq1, tl.trans(k1), input_precision=DOT_PRECISION)
                ts += tl.dot(q1, tl.trans(tk1), input_precision=DOT_PRECISION)
            if PRIMAL_KNOWN:
                # Padded keys read k = 0: exp2(0 − LSE) overflows once every real score is below −128 (base 2).
                p = tl.exp2(tl.where(mask_n[None, :], s * qk_scale - lse2[:, None], float("-inf")))
            else:
                s = tl.where(mask_n[None, :], s * qk_scale, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                p = tl.exp2(s - m_new[:, None])
                alpha = tl.exp2(m_i - m_new)                                             # rescales old sums
                l_i = l_i * alpha + tl.sum(p, 1)
                r_i = r_i * alpha
                acc_t0 = acc_t0 * alpha[:, None]
                acc_o0 = acc_o0 * alpha[:, None]
                if D1 > 0:
                    acc_t1 = acc_t1 * alpha[:, None]
                    acc_o1 = acc_o1 * alpha[:, None]
                m_i = m_new
            pts = p * (ts * scale)                                                        # P⊙tS, (BM, BN)
            r_i += tl.sum(pts, 1)
            v0 = _load_tile(v_base, offs_n, sv_t, sv_d, mask_n, 0, D0, HEAD_DIM)         # (BN, D0)
            tv0 = _load_tile(tv_base, offs_n, stv_t, stv_d, mask_n, 0, D0, HEAD_DIM)
            acc_t0 += tl.dot(p.to(tv0.dtype), tv0, input_precision=DOT_PRECISION)
            acc_t0 += tl.dot(pts.to(v0.dtype), v0, input_precision=DOT_PRECISION)
            if not PRIMAL_KNOWN:
                acc_o0 += tl.dot(p.to(v0.dtype), v0, input_precision=DOT_PRECISION)
            if D1 > 0:
                v1 = _load_tile(v_base, offs_n, sv_t, sv_d, mask_n, D0, D1, HEAD_DIM)
                tv1 = _load_tile(tv_base, offs_n, stv_t, stv_d, mask_n, D0, D1, HEAD_DIM)
                acc_t1 += tl.dot(p.to(tv1.dtype), tv1, input_precision=DOT_PRECISION)
                acc_t1 += tl.dot(pts.to(v1.dtype), v1, input_precision=DOT_PRECISION)
                if not PRIMAL_KNOWN:
                    acc_o1 += tl.dot(p.to(v1.dtype), v1, input_precision=DOT_PRECISION)

        # tO = acc_t − r·O, both sums normalised by l (PRIMAL_KNOWN: already, P was exact).
        if PRIMAL_KNOWN:
            o0 = _load_tile(o_base, offs_m, so_t, so_d, mask_m, 0, D0, HEAD_DIM).to(tl.float32)
            _store_tile(to_base, acc_t0 - r_i[:, None] * o0, offs_m, sto_t, sto_d, mask_m, 0, D0, HEAD_DIM)
            if D1 > 0:
                o1 = _load_tile(o_base, offs_m, so_t, so_d, mask_m, D0, D1, HEAD_DIM).to(tl.float32)
                _store_tile(to_base, acc_t1 - r_i[:, None] * o1, offs_m, sto_t, sto_d, mask_m, D0, D1, HEAD_DIM)
        else:
            inv_l = 1.0 / l_i
            r_i = r_i * inv_l
            o0 = acc_o0 * inv_l[:, None]
            _store_tile(o_base, o0, offs_m, so_t, so_d, mask_m, 0, D0, HEAD_DIM)
            _store_tile(to_base, acc_t0 * inv_l[:, None] - r_i[:, None] * o0, offs_m, sto_t, sto_d, mask_m,
                        0, D0, HEAD_DIM)
            if D1 > 0:
                o1 = acc_o1 * inv_l[:, None]
                _store_tile(o_base, o1, offs_m, so_t, so_d, mask_m, D0, D1, HEAD_DIM)
                _store_tile(to_base, acc_t1 * inv_l[:, None] - r_i[:, None] * o1, offs_m, sto_t, sto_d, mask_m,
                            D0, D1, HEAD_DIM)
            tl.store(lse_ptr + offs_m, m_i + tl.log2(l_i), mask=mask_m)


# ----------------------------------------------------------------------------------------------------
# Launcher: every operand a (B, H, T, Dh)-indexed view with arbitrary strides; lse contiguous fp32 (B, H, T).
# ----------------------------------------------------------------------------------------------------
def _jvp(q, k, v, tq, tk, tv, o, t_o, lse, scale, primal_known):
    B, H, T, Dh = q.shape
    if not q.numel():
        return
    d0, d1 = _head_blocks(Dh)
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]) * B * H,)   # noqa: E731
    _attn_jvp_kernel[grid](
        q, k, v, tq, tk, tv, o, t_o, lse,
        *q.stride(), *k.stride(), *v.stride(), *tq.stride(), *tk.stride(), *tv.stride(), *o.stride(), *t_o.stride(),
        H, T, B * H, scale, scale * LOG2E,
        HEAD_DIM=Dh, D0=d0, D1=d1, PRIMAL_KNOWN=primal_known, DOT_PRECISION=_dot_precision(q.dtype))


def _bhtd_like_o(q):
    """An empty (B, H, T, Dh) view of (B, T, H, Dh) memory: the layout of the forward's o."""
    B, H, T, Dh = q.shape
    return q.new_empty(B, T, H, Dh).transpose(1, 2)


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
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = _attention_bwd_op(do, q, k, v, o, lse, ctx.scale)
    return dq, dk, dv, None, None, None, None


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
        q, k, v, scale = inputs
        o, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.set_materialize_grads(False)   # a tangent of None: that input carries none (zeros are passed on)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.save_for_forward(q, k, v, o, lse)
        ctx.scale = scale

    @staticmethod
    def backward(ctx, do, _dlse):
        if do is None:
            return None, None, None, None
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _attention_bwd_op(do, q, k, v, o, lse, ctx.scale)
        return dq, dk, dv, None

    @staticmethod
    def jvp(ctx, tq, tk, tv, _tscale):
        q, k, v, o, lse = ctx.saved_tensors
        tq, tk, tv = (torch.zeros_like(x) if t is None else t for x, t in ((q, tq), (k, tk), (v, tv)))
        t_o = _attention_tangent_op(q, k, v, o, lse, tq, tk, tv, ctx.scale)
        return no_grad_tangent(t_o, "attention"), None


class AttentionQKVPackedFn(torch.autograd.Function):
    """attention_qkvpacked(qkv) with forward-mode AD. Returns (o, lse); lse is not differentiable."""

    @staticmethod
    def forward(qkv, scale):
        return _attention_qkvpacked_fwd_op(qkv, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        qkv, scale = inputs
        o, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(qkv, o, lse)
        ctx.save_for_forward(qkv, o, lse)
        ctx.scale = scale

    @staticmethod
    def backward(ctx, do, _dlse):
        if do is None:
            return None, None
        qkv, o, lse = ctx.saved_tensors
        return _attention_qkvpacked_bwd_op(do, qkv, o, lse, ctx.scale), None

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
