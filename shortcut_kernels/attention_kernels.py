"""Triton kernels of shortcut_kernels.attention (flash attention forward and backward) and of its JVP
(attention_jvp.py); the launchers, launch configurations and custom ops are in attention.py / attention_jvp.py.

Every program handles one tile of rows (queries, or keys in dk/dv) of one (batch, head); programs of the same
head are adjacent in the 1-D grid so they share K/V in L2, and a 1-D grid has no 65,535 limit on B·H. The
head dim is two tiles, [0, D0) unmasked and [D0, D0 + D1) masked to HEAD_DIM (D1 = 0: one tile). Scores live
in base 2: qk_scale = scale·log2(e), so exp2 replaces exp. BH, the autotune key's bucket of B·H, is not read.
"""
import triton
import triton.language as tl


@triton.jit
def _load_tile(base, offs_r, stride_r, stride_d, mask_r, D_START: tl.constexpr, D_SIZE: tl.constexpr,
               HEAD_DIM: tl.constexpr):
    """(rows, D_SIZE) tile of columns [D_START, D_START + D_SIZE); out-of-range rows/columns read 0."""
    offs_d = D_START + tl.arange(0, D_SIZE)
    mask = mask_r[:, None]
    if D_START + D_SIZE > HEAD_DIM:
        mask = mask & (offs_d[None, :] < HEAD_DIM)
    return tl.load(base + offs_r[:, None] * stride_r + offs_d[None, :] * stride_d, mask=mask, other=0.0)


@triton.jit
def _store_tile(base, x, offs_r, stride_r, stride_d, mask_r, D_START: tl.constexpr, D_SIZE: tl.constexpr,
                HEAD_DIM: tl.constexpr):
    offs_d = D_START + tl.arange(0, D_SIZE)
    mask = mask_r[:, None]
    if D_START + D_SIZE > HEAD_DIM:
        mask = mask & (offs_d[None, :] < HEAD_DIM)
    tl.store(base + offs_r[:, None] * stride_r + offs_d[None, :] * stride_d,
             x.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _head_offset(ptr, b, h, stride_b, stride_h):
    # int64: a (256, 1024, 3·1152) bf16 qkv already spans 0.9 G elements
    return ptr + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h


@triton.jit(do_not_specialize=["BH"])
def _attn_fwd_kernel(
    Q, K, V, O, LSE,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d, so_b, so_h, so_t, so_d,
    H, T, BH, qk_scale,
    HEAD_DIM: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    num_m = tl.cdiv(T, BLOCK_M)
    bh, pid_m = pid // num_m, pid % num_m
    b, h = bh // H, bh % H
    q_base = _head_offset(Q, b, h, sq_b, sq_h)
    k_base = _head_offset(K, b, h, sk_b, sk_h)
    v_base = _head_offset(V, b, h, sv_b, sv_h)
    o_base = _head_offset(O, b, h, so_b, so_h)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < T
    q0 = _load_tile(q_base, offs_m, sq_t, sq_d, mask_m, 0, D0, HEAD_DIM)            # (BM, D0)
    acc0 = tl.zeros((BLOCK_M, D0), dtype=tl.float32)
    if D1 > 0:
        q1 = _load_tile(q_base, offs_m, sq_t, sq_d, mask_m, D0, D1, HEAD_DIM)       # (BM, D1)
        acc1 = tl.zeros((BLOCK_M, D1), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)                      # running max
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)                                    # running sum

    for start_n in range(0, T, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < T
        k0 = _load_tile(k_base, offs_n, sk_t, sk_d, mask_n, 0, D0, HEAD_DIM)        # (BN, D0)
        s = tl.dot(q0, tl.trans(k0), input_precision=DOT_PRECISION)                 # (BM, BN)
        if D1 > 0:
            k1 = _load_tile(k_base, offs_n, sk_t, sk_d, mask_n, D0, D1, HEAD_DIM)
            s += tl.dot(q1, tl.trans(k1), input_precision=DOT_PRECISION)
        s = tl.where(mask_n[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)                                                # rescales old sums
        l_i = l_i * alpha + tl.sum(p, 1)
        v0 = _load_tile(v_base, offs_n, sv_t, sv_d, mask_n, 0, D0, HEAD_DIM)        # (BN, D0)
        acc0 = acc0 * alpha[:, None] + tl.dot(p.to(v0.dtype), v0, input_precision=DOT_PRECISION)
        if D1 > 0:
            v1 = _load_tile(v_base, offs_n, sv_t, sv_d, mask_n, D0, D1, HEAD_DIM)
            acc1 = acc1 * alpha[:, None] + tl.dot(p.to(v1.dtype), v1, input_precision=DOT_PRECISION)
        m_i = m_new

    inv_l = 1.0 / l_i
    _store_tile(o_base, acc0 * inv_l[:, None], offs_m, so_t, so_d, mask_m, 0, D0, HEAD_DIM)
    if D1 > 0:
        _store_tile(o_base, acc1 * inv_l[:, None], offs_m, so_t, so_d, mask_m, D0, D1, HEAD_DIM)
    # LSE in base 2 (= log2(e)·logsumexp(scale·q·kᵀ)): the backward subtracts it from base-2 scores as
    # they are; a round trip through natural log costs ~1e-5 relative in p once |scores| ~ 200.
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, m_i + tl.log2(l_i), mask=mask_m)


@triton.jit
def _attn_bwd_delta_kernel(
    O, DO, DELTA,
    so_b, so_h, so_t, so_d, sdo_b, sdo_h, sdo_t, sdo_d,
    H, T,
    HEAD_DIM: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta = rowsum(o·do) in fp32: the softmax-backward term shared by dq and dk."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(T, BLOCK_M)
    bh, pid_m = pid // num_m, pid % num_m
    b, h = bh // H, bh % H
    o_base = _head_offset(O, b, h, so_b, so_h)
    do_base = _head_offset(DO, b, h, sdo_b, sdo_h)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < T
    o0 = _load_tile(o_base, offs_m, so_t, so_d, mask_m, 0, D0, HEAD_DIM).to(tl.float32)
    do0 = _load_tile(do_base, offs_m, sdo_t, sdo_d, mask_m, 0, D0, HEAD_DIM).to(tl.float32)
    delta = tl.sum(o0 * do0, 1)
    if D1 > 0:
        o1 = _load_tile(o_base, offs_m, so_t, so_d, mask_m, D0, D1, HEAD_DIM).to(tl.float32)
        do1 = _load_tile(do_base, offs_m, sdo_t, sdo_d, mask_m, D0, D1, HEAD_DIM).to(tl.float32)
        delta += tl.sum(o1 * do1, 1)
    tl.store(DELTA + bh.to(tl.int64) * T + offs_m, delta, mask=mask_m)


@triton.jit(do_not_specialize=["BH"])
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
    sdo_b, sdo_h, sdo_t, sdo_d, sdk_b, sdk_h, sdk_t, sdk_d, sdv_b, sdv_h, sdv_t, sdv_d,
    H, T, BH, scale, qk_scale,
    HEAD_DIM: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One tile of BLOCK_N keys: dv = Pᵀ·dO and dk = scale·dSᵀ·Q, summed over all query tiles.

    Works on transposed scores (keys × queries) so both sums are plain dots with the key tile as rows.
    """
    pid = tl.program_id(0)
    num_n = tl.cdiv(T, BLOCK_N)
    bh, pid_n = pid // num_n, pid % num_n
    b, h = bh // H, bh % H
    q_base = _head_offset(Q, b, h, sq_b, sq_h)
    do_base = _head_offset(DO, b, h, sdo_b, sdo_h)
    k_base = _head_offset(K, b, h, sk_b, sk_h)
    v_base = _head_offset(V, b, h, sv_b, sv_h)
    row_base = bh.to(tl.int64) * T

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < T
    k0 = _load_tile(k_base, offs_n, sk_t, sk_d, mask_n, 0, D0, HEAD_DIM)            # (BN, D0)
    v0 = _load_tile(v_base, offs_n, sv_t, sv_d, mask_n, 0, D0, HEAD_DIM)
    dk0 = tl.zeros((BLOCK_N, D0), dtype=tl.float32)
    dv0 = tl.zeros((BLOCK_N, D0), dtype=tl.float32)
    if D1 > 0:
        k1 = _load_tile(k_base, offs_n, sk_t, sk_d, mask_n, D0, D1, HEAD_DIM)
        v1 = _load_tile(v_base, offs_n, sv_t, sv_d, mask_n, D0, D1, HEAD_DIM)
        dk1 = tl.zeros((BLOCK_N, D1), dtype=tl.float32)
        dv1 = tl.zeros((BLOCK_N, D1), dtype=tl.float32)

    for start_m in range(0, T, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < T
        q0 = _load_tile(q_base, offs_m, sq_t, sq_d, mask_m, 0, D0, HEAD_DIM)        # (BM, D0)
        do0 = _load_tile(do_base, offs_m, sdo_t, sdo_d, mask_m, 0, D0, HEAD_DIM)
        lse2 = tl.load(LSE + row_base + offs_m, mask=mask_m, other=0.0)
        delta = tl.load(DELTA + row_base + offs_m, mask=mask_m, other=0.0)
        st = tl.dot(k0, tl.trans(q0), input_precision=DOT_PRECISION)                # (BN, BM)
        dpt = tl.dot(v0, tl.trans(do0), input_precision=DOT_PRECISION)              # (dO·Vᵀ)ᵀ
        if D1 > 0:
            q1 = _load_tile(q_base, offs_m, sq_t, sq_d, mask_m, D0, D1, HEAD_DIM)
            do1 = _load_tile(do_base, offs_m, sdo_t, sdo_d, mask_m, D0, D1, HEAD_DIM)
            st += tl.dot(k1, tl.trans(q1), input_precision=DOT_PRECISION)
            dpt += tl.dot(v1, tl.trans(do1), input_precision=DOT_PRECISION)
        # Padded query rows need no mask: q = do = lse = delta = 0 there, so pt = 1 meets do = q = 0.
        pt = tl.exp2(st * qk_scale - lse2[None, :])                                 # Pᵀ, recomputed
        dst = pt * (dpt - delta[None, :])                                           # dSᵀ
        dv0 += tl.dot(pt.to(do0.dtype), do0, input_precision=DOT_PRECISION)
        dk0 += tl.dot(dst.to(q0.dtype), q0, input_precision=DOT_PRECISION)
        if D1 > 0:
            dv1 += tl.dot(pt.to(do1.dtype), do1, input_precision=DOT_PRECISION)
            dk1 += tl.dot(dst.to(q1.dtype), q1, input_precision=DOT_PRECISION)

    dk_base = _head_offset(DK, b, h, sdk_b, sdk_h)
    dv_base = _head_offset(DV, b, h, sdv_b, sdv_h)
    _store_tile(dk_base, dk0 * scale, offs_n, sdk_t, sdk_d, mask_n, 0, D0, HEAD_DIM)
    _store_tile(dv_base, dv0, offs_n, sdv_t, sdv_d, mask_n, 0, D0, HEAD_DIM)
    if D1 > 0:
        _store_tile(dk_base, dk1 * scale, offs_n, sdk_t, sdk_d, mask_n, D0, D1, HEAD_DIM)
        _store_tile(dv_base, dv1, offs_n, sdv_t, sdv_d, mask_n, D0, D1, HEAD_DIM)


@triton.jit(do_not_specialize=["BH"])
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
    sdo_b, sdo_h, sdo_t, sdo_d, sdq_b, sdq_h, sdq_t, sdq_d,
    H, T, BH, scale, qk_scale,
    HEAD_DIM: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One tile of BLOCK_M queries: dq = scale·dS·K summed over all key tiles (no atomics)."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(T, BLOCK_M)
    bh, pid_m = pid // num_m, pid % num_m
    b, h = bh // H, bh % H
    q_base = _head_offset(Q, b, h, sq_b, sq_h)
    do_base = _head_offset(DO, b, h, sdo_b, sdo_h)
    k_base = _head_offset(K, b, h, sk_b, sk_h)
    v_base = _head_offset(V, b, h, sv_b, sv_h)
    row_base = bh.to(tl.int64) * T

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < T
    q0 = _load_tile(q_base, offs_m, sq_t, sq_d, mask_m, 0, D0, HEAD_DIM)            # (BM, D0)
    do0 = _load_tile(do_base, offs_m, sdo_t, sdo_d, mask_m, 0, D0, HEAD_DIM)
    dq0 = tl.zeros((BLOCK_M, D0), dtype=tl.float32)
    if D1 > 0:
        q1 = _load_tile(q_base, offs_m, sq_t, sq_d, mask_m, D0, D1, HEAD_DIM)
        do1 = _load_tile(do_base, offs_m, sdo_t, sdo_d, mask_m, D0, D1, HEAD_DIM)
        dq1 = tl.zeros((BLOCK_M, D1), dtype=tl.float32)
    lse2 = tl.load(LSE + row_base + offs_m, mask=mask_m, other=0.0)
    delta = tl.load(DELTA + row_base + offs_m, mask=mask_m, other=0.0)

    for start_n in range(0, T, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < T
        k0 = _load_tile(k_base, offs_n, sk_t, sk_d, mask_n, 0, D0, HEAD_DIM)        # (BN, D0)
        v0 = _load_tile(v_base, offs_n, sv_t, sv_d, mask_n, 0, D0, HEAD_DIM)
        s = tl.dot(q0, tl.trans(k0), input_precision=DOT_PRECISION)                 # (BM, BN)
        dp = tl.dot(do0, tl.trans(v0), input_precision=DOT_PRECISION)
        if D1 > 0:
            k1 = _load_tile(k_base, offs_n, sk_t, sk_d, mask_n, D0, D1, HEAD_DIM)
            v1 = _load_tile(v_base, offs_n, sv_t, sv_d, mask_n, D0, D1, HEAD_DIM)
            s += tl.dot(q1, tl.trans(k1), input_precision=DOT_PRECISION)
            dp += tl.dot(do1, tl.trans(v1), input_precision=DOT_PRECISION)
        p = tl.exp2(s * qk_scale - lse2[:, None])
        # Padded keys read k = v = 0, so p = exp2(-lse2): inf once every real score is below ~-88
        # (inf·0 = NaN in ds·k). Zero them.
        p = tl.where(mask_n[None, :], p, 0.0)
        ds = p * (dp - delta[:, None])
        dq0 += tl.dot(ds.to(k0.dtype), k0, input_precision=DOT_PRECISION)
        if D1 > 0:
            dq1 += tl.dot(ds.to(k1.dtype), k1, input_precision=DOT_PRECISION)

    dq_base = _head_offset(DQ, b, h, sdq_b, sdq_h)
    _store_tile(dq_base, dq0 * scale, offs_m, sdq_t, sdq_d, mask_m, 0, D0, HEAD_DIM)
    if D1 > 0:
        _store_tile(dq_base, dq1 * scale, offs_m, sdq_t, sdq_d, mask_m, D0, D1, HEAD_DIM)


# JVP (forward-mode AD, attention_jvp.py). S = scale·Q·Kᵀ, P = softmax(S), O = P·V, t· a tangent:
#     tS = scale·(tQ·Kᵀ + Q·tKᵀ);   tO = P·tV + (P⊙tS)·V − rowsum(P⊙tS)⊙O
# The grid and head-dim tiles of the forward. PRIMAL_KNOWN = False: the one-pass JVP (online softmax
# carrying Σp·v, Σp·tv + Σ(p·ts)·v and Σp·ts with the same rescaling; writes O, tO, LSE). PRIMAL_KNOWN =
# True: O and LSE come from the forward kernel and P = exp2(S·log2e·scale − LSE) is exact per tile (no
# rescaling, no P·V); writes tO only.
@triton.jit
def _aligned(s_b, s_h, s_t, ALIGN: tl.constexpr):
    """The strides, in a form from which the compiler knows them to be multiples of ALIGN elements (the launcher
    checked that they are): Triton's own specialisation only tells multiples of 16 elements from the rest."""
    if ALIGN > 1:
        s_b, s_h, s_t = (s_b // ALIGN) * ALIGN, (s_h // ALIGN) * ALIGN, (s_t // ALIGN) * ALIGN
    return s_b, s_h, s_t


@triton.jit(do_not_specialize=["BH"])
def _attn_jvp_kernel(
    Q, K, V, TQ, TK, TV, O, TO, LSE,
    sq_b, sq_h, sq_t, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
    stq_b, stq_h, stq_t, stq_d, stk_b, stk_h, stk_t, stk_d, stv_b, stv_h, stv_t, stv_d,
    so_b, so_h, so_t, so_d, sto_b, sto_h, sto_t, sto_d,
    H, T, BH, scale, qk_scale,
    HEAD_DIM: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, PRIMAL_KNOWN: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ALIGN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # ALIGN: every batch, head and token stride is a multiple of ALIGN elements (16 bytes). The model's packed
    # qkv at head_dim 72 has a head stride of 72 elements, which Triton's specialisation (multiples of 16) does
    # not see as 16-byte aligned: without it the tile loads are scalar and the tiles pass through registers
    # only (the one-pass mode spilled 100-900 B at head_dim 72 in every 16-bit config but one, sm_90).
    sq_b, sq_h, sq_t = _aligned(sq_b, sq_h, sq_t, ALIGN)
    sk_b, sk_h, sk_t = _aligned(sk_b, sk_h, sk_t, ALIGN)
    sv_b, sv_h, sv_t = _aligned(sv_b, sv_h, sv_t, ALIGN)
    stq_b, stq_h, stq_t = _aligned(stq_b, stq_h, stq_t, ALIGN)
    stk_b, stk_h, stk_t = _aligned(stk_b, stk_h, stk_t, ALIGN)
    stv_b, stv_h, stv_t = _aligned(stv_b, stv_h, stv_t, ALIGN)
    so_b, so_h, so_t = _aligned(so_b, so_h, so_t, ALIGN)
    sto_b, sto_h, sto_t = _aligned(sto_b, sto_h, sto_t, ALIGN)
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
