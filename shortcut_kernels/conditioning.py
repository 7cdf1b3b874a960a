"""Conditioning: c = emb_t(t) + emb_k(k) + emb_y(y) and every block's adaLN vectors from it, in three launches.

    embed_conditioning(t, k, y, t_mlp, k_mlp, table)  -> c, silu(c)        two Triton launches
    adaln_projections(c, weight, bias, sizes, silu_c) -> per-block views  one GEMM (cuBLAS)
    timestep_features(t, k, dim, t_scale, k_scale)    -> (2, B, dim) fp32: the sinusoids alone, one launch

An embedder (DiT's TimestepEmbedder) is sinusoidal features [cos(v·f), sin(v·f)], f_i = max_period^(-i/half),
then Linear(F -> D), SiLU, Linear(D -> D); t_mlp / k_mlp are its (w1, b1, w2, b2). Run as DiT's modules
the conditioning costs ~30 launches (per embedder ~9 small kernels for the sinusoids, 2 Linears and a
SiLU; the label gather, 2 adds, SiLU(c)) plus one Linear per block; here, 3 at any depth:
  launch 1 `_embed_hidden_kernel`: the features of t and k computed in registers, both first Linears
           (tl.dot over weight tiles, fp32 accumulate, bias) -> a = (2, B, D) pre-activations;
  launch 2 `_embed_sum_kernel`: SiLU(a) on load, both second Linears, both biases, the label row gather,
           the sum -> c, and SiLU(c) for the adaLN GEMM (written in the dtype that GEMM computes in);
  launch 3 `adaln_projections`: all blocks' adaLN Linears as one GEMM over the concatenated weight.
B is small (1 to 256) and the weights are read once: programs tile the output features (and B when it
exceeds one tile) and loop over the input features.

Dtypes (the reference's): the Linears compute in the weights' dtype, or in the autocast dtype when autocast
is on for the device (weights are then cast tile by tile in registers; no cast kernel); c has dtype
promote(that, table); SiLU(c) is written in the autocast dtype under autocast, else in c's dtype.
fp32 dots run in IEEE fp32 (no TF32). float64, CPU tensors outside the Triton interpreter, bf16 under the
interpreter (its bf16 arithmetic is wrong) and machines without Triton run `embed_conditioning_ref`.
Backward (training): two custom ops in plain PyTorch computing in fp32: 17 launches with fp32 weights
(the features kernel again, 8 mm for the weight gradients and dSiLU(a), 2 silu_backward, index_add_ for
the label rows, a few sums and copies), ~35 in 16-bit (the casts to and from fp32). t and k are data
and get no gradient.
"""
import functools
import math
from typing import Optional

import torch
import torch.nn.functional as F

from ._forward_ad import forward_ad_active
from ._triton import can_launch, cuda_arch, fallback, interpreting, launch, triton_available

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


def _autocast_dtype(device):
    """The dtype Linears compute in under autocast on `device`, or None when autocast is off there."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def embed_conditioning_ref(t, k, y, t_mlp, k_mlp, table, t_scale=1.0, k_scale=1.0, max_period=10000.0):
    """c = mlp_t(features(t·t_scale)) + mlp_k(features(k·k_scale)) + table[y] and SiLU(c), as DiT's modules.

    t_mlp, k_mlp: (w1 (D, F), b1 (D,), w2 (D, D), b2 (D,)); table (V, D). Returns (c, silu_c); silu_c is
    cast to the autocast dtype under autocast (what the adaLN Linear would cast it to).
    """
    f = timestep_features_ref(t, k, t_mlp[0].shape[1], t_scale, k_scale, max_period)   # (2, B, F) fp32

    def mlp(x, w1, b1, w2, b2):
        return F.linear(F.silu(F.linear(x.to(w1.dtype), w1, b1)), w2, b2)            # (B, D)

    c = mlp(f[0], *t_mlp) + mlp(f[1], *k_mlp) + F.embedding(y, table)               # (B, D)
    silu_c = F.silu(c)
    cast = _autocast_dtype(c.device)
    return c, silu_c if cast is None else silu_c.to(cast)


def adaln_projections(c, weight, bias, sizes, silu_c=None):
    """All adaLN vectors from c in one GEMM: silu(c) @ weightᵀ + bias, split along features.

    c (B, D); weight (sum(sizes), D), the blocks' adaLN Linear weights stacked row-wise; bias (sum(sizes),).
    silu_c: SiLU(c) when already computed (embed_conditioning writes it), saving a launch.
    Returns a list of (B, size) views into one (B, sum(sizes)) tensor. Plain PyTorch (one cuBLAS GEMM):
    the gain is batching depth + 1 GEMMs into one, and autograd/autocast treat it like any Linear.
    """
    if weight.dim() != 2 or weight.shape[1] != c.shape[-1]:
        raise ValueError(f"weight must have shape (N, {c.shape[-1]}) to project c {tuple(c.shape)}, "
                         f"got {tuple(weight.shape)}")
    if sum(sizes) != weight.shape[0]:
        raise ValueError(f"sizes must add up to weight.shape[0] = {weight.shape[0]}, got sum {sum(sizes)}")
    if silu_c is None:
        silu_c = F.silu(c)
    elif silu_c.shape != c.shape:
        raise ValueError(f"silu_c must have the shape of c {tuple(c.shape)}, got {tuple(silu_c.shape)}")
    return list(F.linear(silu_c, weight, bias).split(list(sizes), dim=1))


# ---------------------------------------------------------------------------------------------------
# Triton kernels.
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

    @triton.jit
    def _embed_hidden_kernel(T_IN, K_IN, FREQS, PHASE, W1T, B1T, W1K, B1K, A, B, D, F_DIM, HALF, t_scale, k_scale,
                             stride_t_n, stride_t_k, stride_k_n, stride_k_k,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                             DOT_PRECISION: tl.constexpr):
        # Program (n, m, which): a[which, rows m, cols n] = features(v) @ W1ᵀ + b1, v = t·t_scale (which = 0)
        # or k·k_scale (which = 1). A (2, B, D) contiguous, in the compute dtype.
        pid_n, pid_m, which = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok, col_ok = rows < B, cols < D
        if which == 0:
            v = tl.load(T_IN + rows, mask=row_ok, other=0).to(tl.float32) * t_scale
            w_ptr, b_ptr = W1T, B1T
        else:
            v = tl.load(K_IN + rows, mask=row_ok, other=0).to(tl.float32) * k_scale
            w_ptr, b_ptr = W1K, B1K
        # Strides by arithmetic, not in the branches: a stride of 1 is specialised to a constant, and the
        # branches would then disagree on its type.
        s_n = stride_t_n + which * (stride_k_n - stride_t_n)
        s_k = stride_t_k + which * (stride_k_k - stride_t_k)
        cdt = A.dtype.element_ty
        w_cols = w_ptr + cols[None, :].to(tl.int64) * s_n
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, F_DIM, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < F_DIM
            # Feature j is cos(v·freq_j - phase_j): phase 0 for the cos half, π/2 (fp64) for the sin half,
            # so each element costs one cosine. The fp32 product rounds like the reference's argument; the
            # cosine runs in fp64 (correctly rounded to fp32; fp32 cos on the GPU is approximate at t·1000).
            freq = tl.load(FREQS + ks, mask=k_ok, other=0.0)
            phase = tl.load(PHASE + ks, mask=k_ok, other=0.0)
            arg = (v[:, None] * freq[None, :]).to(tl.float64) - phase[None, :]
            feat = tl.where((ks < 2 * HALF)[None, :], tl.cos(arg).to(tl.float32), 0.0).to(cdt)   # (BM, BK)
            w = tl.load(w_cols + ks[:, None] * s_k, mask=k_ok[:, None] & col_ok[None, :], other=0.0)  # (BK, BN)
            acc += tl.dot(feat, w.to(cdt), input_precision=DOT_PRECISION)
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        out = A + (which * B + rows[:, None]).to(tl.int64) * D + cols[None, :]
        tl.store(out, acc.to(cdt), mask=row_ok[:, None] & col_ok[None, :])

    @triton.jit
    def _silu(x):
        # x·σ(x) with σ from exp(-|x|): never overflows (the interpreter's tl.sigmoid warns at x < -88).
        e = tl.exp(-tl.abs(x))
        return x * tl.where(x >= 0, 1.0, e) / (1.0 + e)

    @triton.jit
    def _silu_dot(acc, a_ptr, w_ptr, a_mask, w_mask, DOT_PRECISION: tl.constexpr):
        """acc + SiLU(a) @ w: a (BM, BK) pre-activations, rounded to their dtype after the SiLU like the
        reference's SiLU module output; w (BK, BN) cast to that dtype in registers."""
        a = tl.load(a_ptr, mask=a_mask, other=0.0)
        h = _silu(a.to(tl.float32)).to(a.dtype)
        w = tl.load(w_ptr, mask=w_mask, other=0.0).to(a.dtype)
        return acc + tl.dot(h, w, input_precision=DOT_PRECISION)

    @triton.jit
    def _embed_sum_kernel(A, W2T, B2T, W2K, B2K, TABLE, Y, C, S, B, D, V,
                          stride_t_n, stride_t_k, stride_k_n, stride_k_k, stride_v, stride_d,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          DOT_PRECISION: tl.constexpr):
        # Program (n, m): c[rows, cols] = SiLU(a_t) @ W2tᵀ + SiLU(a_k) @ W2kᵀ + b2t + b2k + table[y];
        # S = SiLU(c). One fp32 accumulator for both products: the reference rounds emb_t, emb_k and
        # their sum to the compute dtype; summing in fp32 only removes rounding steps.
        pid_n, pid_m = tl.program_id(0), tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok, col_ok = rows < B, cols < D
        a_t = A + rows[:, None].to(tl.int64) * D
        a_k = a_t + B * D
        w_t = W2T + cols[None, :].to(tl.int64) * stride_t_n
        w_k = W2K + cols[None, :].to(tl.int64) * stride_k_n
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < D
            a_mask = row_ok[:, None] & k_ok[None, :]
            w_mask = k_ok[:, None] & col_ok[None, :]
            acc = _silu_dot(acc, a_t + ks[None, :], w_t + ks[:, None] * stride_t_k, a_mask, w_mask, DOT_PRECISION)
            acc = _silu_dot(acc, a_k + ks[None, :], w_k + ks[:, None] * stride_k_k, a_mask, w_mask, DOT_PRECISION)
        acc += (tl.load(B2T + cols, mask=col_ok, other=0.0).to(tl.float32)
                + tl.load(B2K + cols, mask=col_ok, other=0.0).to(tl.float32))[None, :]
        # Label rows. Labels outside [0, V) read nothing (a zero row) instead of faulting; the launcher
        # checks them where that costs no device sync (CPU tensors).
        y = tl.load(Y + rows, mask=row_ok, other=0).to(tl.int64)
        y_ok = row_ok & (y >= 0) & (y < V)
        mask = row_ok[:, None] & col_ok[None, :]
        acc += tl.load(TABLE + y[:, None] * stride_v + cols[None, :].to(tl.int64) * stride_d,
                       mask=y_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        c = acc.to(C.dtype.element_ty)
        offs = rows[:, None].to(tl.int64) * D + cols[None, :]
        tl.store(C + offs, c, mask=mask)
        # SiLU of c as stored, as the reference's F.silu(c).
        tl.store(S + offs, _silu(c.to(tl.float32)).to(S.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------
# Launchers.
@functools.lru_cache(None)
def _frequencies(half, max_period, device):
    """f_i = max_period^(-i / half) in fp32, computed once per device by the reference's formula."""
    return torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=device) / half)


@functools.lru_cache(None)
def _feature_tables(dim, max_period, device):
    """Per feature column j < dim: the frequency (fp32) and the phase (fp64) with feature_j = cos(v·freq - phase):
    cos columns [0, half) have phase 0, sin columns [half, 2·half) phase π/2; an odd dim's last column is
    masked in the kernel."""
    half = dim // 2
    f = _frequencies(half, max_period, device)
    freq = torch.zeros(dim, dtype=torch.float32, device=device)
    phase = torch.zeros(dim, dtype=torch.float64, device=device)
    freq[:half], freq[half:2 * half], phase[half:2 * half] = f, f, math.pi / 2
    return freq, phase


def _timestep_features(t, k, dim, t_scale, k_scale, max_period):
    B, half = t.shape[0], dim // 2
    out = torch.empty((2, B, dim), dtype=torch.float32, device=t.device)
    if B:
        freqs = _frequencies(half, float(max_period), t.device)
        block = triton.next_power_of_2(max(half, 1))
        launch(_timestep_features_kernel, (B, 2), t.device, t, k, freqs, out, B, float(t_scale), float(k_scale),
               half, dim, BLOCK=block, num_warps=1 if block <= 128 else 2)
    return out


def _dot_precision(dtype):
    # fp32 operands would otherwise run their dots in TF32 on the GPU (10-bit mantissa): keep them exact.
    return "ieee" if dtype == torch.float32 else "tf32"


def _config(B, N, K, dtype, arch):
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for a (B, K) @ (K, N) product with a small B, on a GPU
    of compute capability `arch` (10·major + minor).

    tl.dot needs tiles of at least 16. At small B the weight stream is the cost: 16-column output tiles
    give D/16 programs per product (72 at D = 1152) to share the HBM read, with 128-wide K tiles in
    16-bit (256 contiguous bytes per weight row). Register reports (ptxas, triton 3.6 and 3.9; no GPU
    timing yet) chose the rest: no spills in any of these; 64×64×64 tiles need 8 warps (with 4, the
    features kernel, whose fp64 cosines take 222 registers at 16×128 features, spills 1.3 kB), and fp32
    operands (IEEE FMA, no tensor cores) 32-wide K tiles with 2 stages. On sm_80 the 64-wide K tiles of
    the 32/64-row configs spill 4–16 B in the sum kernel; there 16-bit operands take 32-wide K tiles (3
    stages) and fp32 ones 16-wide (2 stages), which spill nothing in either kernel with either compiler.
    No autotune: the sampler's CUDA graph captures these launches, and the interpreter runs one config only.
    """
    bm = min(64, max(16, triton.next_power_of_2(B)))
    if interpreting():   # fewer, larger programs: the interpreter's cost is per program and per op
        return bm, min(64, max(16, triton.next_power_of_2(N))), min(64, max(16, triton.next_power_of_2(K))), 4, 1
    fp32 = dtype == torch.float32
    if bm == 16:
        bn, bk, warps, stages = 16, 64 if fp32 else 128, 4, 3
    elif arch < 90:
        bn, bk, warps, stages = 64, 16 if fp32 else 32, 8, 2 if fp32 else 3
    else:
        bn, bk, warps, stages = 64, 32 if fp32 else 64, 8, 2 if fp32 else 3
    return bm, bn, min(bk, max(16, triton.next_power_of_2(K))), warps, stages


def _embed_hidden(t, k, w1_t, b1_t, w1_k, b1_k, t_scale, k_scale, max_period, dtype):
    """a = (2, B, D) in `dtype`: [features(t·t_scale) @ w1_tᵀ + b1_t, features(k·k_scale) @ w1_kᵀ + b1_k]."""
    B, (D, F_dim) = t.shape[0], w1_t.shape
    a = torch.empty((2, B, D), dtype=dtype, device=t.device)
    if B:
        freq, phase = _feature_tables(F_dim, float(max_period), t.device)
        bm, bn, bk, warps, stages = _config(B, D, F_dim, dtype, cuda_arch(t.device))
        launch(_embed_hidden_kernel, (triton.cdiv(D, bn), triton.cdiv(B, bm), 2), t.device,
               t, k, freq, phase, w1_t, b1_t, w1_k, b1_k, a, B, D, F_dim, F_dim // 2, float(t_scale), float(k_scale),
               w1_t.stride(0), w1_t.stride(1), w1_k.stride(0), w1_k.stride(1),
               BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT_PRECISION=_dot_precision(dtype), num_warps=warps,
               num_stages=stages)
    return a


def _embed_sum(a, w2_t, b2_t, w2_k, b2_k, table, y, c_dtype, s_dtype):
    """c = SiLU(a_t) @ w2_tᵀ + SiLU(a_k) @ w2_kᵀ + b2_t + b2_k + table[y] and SiLU(c)."""
    _, B, D = a.shape
    # A label check needs the values on the host: free on CPU (inside the op, so it also runs under
    # compile), a device sync on the GPU, skipped there: the kernel reads a zero row for a label out of
    # range instead of faulting.
    if y.device.type == "cpu" and B:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= table.shape[0]:
            raise ValueError(f"y must hold labels in [0, {table.shape[0] - 1}] (rows of table), "
                             f"got values in [{lo}, {hi}]")
    c = torch.empty((B, D), dtype=c_dtype, device=a.device)
    s = torch.empty((B, D), dtype=s_dtype, device=a.device)
    if B:
        bm, bn, bk, warps, stages = _config(B, D, D, a.dtype, cuda_arch(a.device))
        launch(_embed_sum_kernel, (triton.cdiv(D, bn), triton.cdiv(B, bm)), a.device,
               a, w2_t, b2_t, w2_k, b2_k, table, y, c, s, B, D, table.shape[0],
               w2_t.stride(0), w2_t.stride(1), w2_k.stride(0), w2_k.stride(1), table.stride(0), table.stride(1),
               BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT_PRECISION=_dot_precision(a.dtype), num_warps=warps,
               num_stages=stages)
    return c, s


# ---------------------------------------------------------------------------------------------------
# Custom ops: opaque to torch.compile (one node each, traced via the fake implementations), gradients
# through backward custom ops in plain PyTorch. Those run in fp32 with autocast off (a backward under an
# active autocast region would otherwise drop the weight gradients to bf16 matmuls).
@torch.library.custom_op("shortcut_kernels::timestep_features", mutates_args=())
def _timestep_features_op(t: torch.Tensor, k: torch.Tensor, dim: int, t_scale: float, k_scale: float,
                          max_period: float) -> torch.Tensor:
    return _timestep_features(t, k, dim, t_scale, k_scale, max_period)


@_timestep_features_op.register_fake
def _(t, k, dim, t_scale, k_scale, max_period):
    return t.new_empty((2, t.shape[0], dim), dtype=torch.float32)


@torch.library.custom_op("shortcut_kernels::embed_hidden", mutates_args=())
def _embed_hidden_op(t: torch.Tensor, k: torch.Tensor, w1_t: torch.Tensor, b1_t: torch.Tensor, w1_k: torch.Tensor,
                     b1_k: torch.Tensor, t_scale: float, k_scale: float, max_period: float,
                     dtype: torch.dtype) -> torch.Tensor:
    return _embed_hidden(t, k, w1_t, b1_t, w1_k, b1_k, t_scale, k_scale, max_period, dtype)


@_embed_hidden_op.register_fake
def _(t, k, w1_t, b1_t, w1_k, b1_k, t_scale, k_scale, max_period, dtype):
    return t.new_empty((2, t.shape[0], w1_t.shape[0]), dtype=dtype)


@torch.library.custom_op("shortcut_kernels::embed_hidden_bwd", mutates_args=())
def _embed_hidden_bwd(da: torch.Tensor, t: torch.Tensor, k: torch.Tensor, w1_t: torch.Tensor, w1_k: torch.Tensor,
                      t_scale: float, k_scale: float, max_period: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.autocast(da.device.type, enabled=False):
        # The forward's features, rounded to the compute dtype as the kernel fed them to tl.dot.
        f = _timestep_features(t, k, w1_t.shape[1], t_scale, k_scale, max_period).to(da.dtype).float()
        da = da.float()
        dw1_t, dw1_k = da[0].T @ f[0], da[1].T @ f[1]                   # (D, F) each
        db1 = da.sum(1)                                                  # (2, D)
    return dw1_t.to(w1_t.dtype), db1[0].to(w1_t.dtype), dw1_k.to(w1_k.dtype), db1[1].to(w1_k.dtype).clone()


@_embed_hidden_bwd.register_fake
def _(da, t, k, w1_t, w1_k, t_scale, k_scale, max_period):
    D = w1_t.shape[0]
    return torch.empty_like(w1_t), w1_t.new_empty(D), torch.empty_like(w1_k), w1_k.new_empty(D)


def _embed_hidden_setup(ctx, inputs, output):
    """Saves (t, k, w1_t, w1_k) for backward; returns them (the JVP rule saves them for forward too)."""
    t, k, w1_t, _, w1_k, _, t_scale, k_scale, max_period, _ = inputs
    saved = (t, k, w1_t, w1_k)
    ctx.save_for_backward(*saved)
    ctx.scales = (t_scale, k_scale, max_period)
    return saved


def _embed_hidden_backward(ctx, da):
    t, k, w1_t, w1_k = ctx.saved_tensors
    dw1_t, db1_t, dw1_k, db1_k = _embed_hidden_bwd(da, t, k, w1_t, w1_k, *ctx.scales)
    return None, None, dw1_t, db1_t, dw1_k, db1_k, None, None, None, None


_embed_hidden_op.register_autograd(_embed_hidden_backward, setup_context=_embed_hidden_setup)


@torch.library.custom_op("shortcut_kernels::embed_sum", mutates_args=())
def _embed_sum_op(a: torch.Tensor, w2_t: torch.Tensor, b2_t: torch.Tensor, w2_k: torch.Tensor, b2_k: torch.Tensor,
                  table: torch.Tensor, y: torch.Tensor, c_dtype: torch.dtype, s_dtype: torch.dtype
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    return _embed_sum(a, w2_t, b2_t, w2_k, b2_k, table, y, c_dtype, s_dtype)


@_embed_sum_op.register_fake
def _(a, w2_t, b2_t, w2_k, b2_k, table, y, c_dtype, s_dtype):
    return a.new_empty(a.shape[1:], dtype=c_dtype), a.new_empty(a.shape[1:], dtype=s_dtype)


@torch.library.custom_op("shortcut_kernels::embed_sum_bwd", mutates_args=())
def _embed_sum_bwd(dc: Optional[torch.Tensor], ds: Optional[torch.Tensor], c: torch.Tensor, a: torch.Tensor,
                   w2_t: torch.Tensor, w2_k: torch.Tensor, table: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    silu_backward = torch.ops.aten.silu_backward   # grad · SiLU'(x) in one kernel
    with torch.autocast(a.device.type, enabled=False):
        g = None if dc is None else dc.float()                           # dL/dc, both outputs folded in
        if ds is not None:
            g_s = silu_backward(ds.float(), c.float())
            g = g_s if g is None else g + g_s
        if g is None:
            g = torch.zeros(c.shape, dtype=torch.float32, device=c.device)
        af = a.float()
        h = F.silu(af).to(a.dtype).float()                               # the kernel's SiLU(a), (2, B, D)
        dw2_t, dw2_k = g.T @ h[0], g.T @ h[1]                            # (D, D) each
        db2 = g.sum(0)                                                   # (D,), the same for both biases
        dtable = torch.zeros(table.shape, dtype=torch.float32, device=table.device).index_add_(0, y, g)
        dh = torch.empty(a.shape, dtype=torch.float32, device=a.device)  # dL/dSiLU(a), (2, B, D)
        torch.mm(g, w2_t.float(), out=dh[0])
        torch.mm(g, w2_k.float(), out=dh[1])
        da = silu_backward(dh, af)
    return (da.to(a.dtype), dw2_t.to(w2_t.dtype), db2.to(w2_t.dtype), dw2_k.to(w2_k.dtype),
            db2.to(w2_k.dtype).clone(), dtable.to(table.dtype))


@_embed_sum_bwd.register_fake
def _(dc, ds, c, a, w2_t, w2_k, table, y):
    D = a.shape[2]
    return (torch.empty_like(a), torch.empty_like(w2_t), w2_t.new_empty(D), torch.empty_like(w2_k),
            w2_k.new_empty(D), torch.empty_like(table))


def _embed_sum_setup(ctx, inputs, output):
    """Saves (c, a, w2_t, w2_k, table, y) for backward; returns them (see _embed_hidden_setup)."""
    a, w2_t, _, w2_k, _, table, y, _, _ = inputs
    saved = (output[0], a, w2_t, w2_k, table, y)
    ctx.save_for_backward(*saved)
    return saved


def _embed_sum_backward(ctx, dc, ds):
    c, a, w2_t, w2_k, table, y = ctx.saved_tensors
    da, dw2_t, db2_t, dw2_k, db2_k, dtable = _embed_sum_bwd(dc, ds, c, a, w2_t, w2_k, table, y)
    return da, dw2_t, db2_t, dw2_k, db2_k, dtable, None, None, None


_embed_sum_op.register_autograd(_embed_sum_backward, setup_context=_embed_sum_setup)


# ---------------------------------------------------------------------------------------------------
# Public functions.
def _check_scalars(t, k):
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


def timestep_features(t, k, dim=256, t_scale=1.0, k_scale=1.0, max_period=10000.0):
    """Sinusoidal features of t·t_scale and k·k_scale in one launch: (2, B, dim) float32.

    t (B,) float (the noise level), k (B,) integer or float (the step level), same device. Forward-mode
    AD in t and k (torch.func.jvp; MeanFlow differentiates along t); no backward (t and k are data). CPU
    tensors outside the Triton interpreter run the reference.
    """
    _check_scalars(t, k)
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if not can_launch(t.device):
        fallback("timestep_features", f"tensors on {t.device}; kernels run on CUDA, or on CPU under TRITON_INTERPRET")
        return timestep_features_ref(t, k, dim, t_scale, k_scale, max_period)
    if forward_ad_active():   # torch.func.jvp / forward_ad: the custom op has no JVP rule; conditioning_jvp.py does
        from .conditioning_jvp import timestep_features_dual
        return timestep_features_dual(t.contiguous(), k.contiguous(), dim, float(t_scale), float(k_scale),
                                      float(max_period))
    return _timestep_features_op(t.contiguous(), k.contiguous(), dim, float(t_scale), float(k_scale),
                                 float(max_period))


def _check_embed(t, k, y, t_mlp, k_mlp, table):
    _check_scalars(t, k)
    if not isinstance(y, torch.Tensor) or y.shape != t.shape:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"y must be a tensor of shape {tuple(t.shape)} (one label per sample), got {got}")
    if y.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"y must be an int64 or int32 tensor of labels, got {y.dtype}")
    if not isinstance(table, torch.Tensor) or table.dim() != 2:
        raise ValueError(f"table must be a 2-D (num_labels, D) tensor, got "
                         f"{tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__}")
    D = table.shape[1]
    for name, mlp in (("t_mlp", t_mlp), ("k_mlp", k_mlp)):
        if not (isinstance(mlp, (tuple, list)) and len(mlp) == 4 and all(isinstance(v, torch.Tensor) for v in mlp)):
            raise ValueError(f"{name} must be a tuple of 4 tensors (w1, b1, w2, b2): the embedder's two Linears")
    F_dim = t_mlp[0].shape[-1]
    for name, mlp in (("t_mlp", t_mlp), ("k_mlp", k_mlp)):
        w1 = mlp[0]
        want = ((D, F_dim), (D,), (D, D), (D,))
        for part, v, shape in zip(("w1", "b1", "w2", "b2"), mlp, want):
            if tuple(v.shape) != shape:
                raise ValueError(f"{name} {part} must have shape {shape} (D = {D} from table, F = {F_dim} from "
                                 f"t_mlp w1), got {tuple(v.shape)}")
            if v.dtype != w1.dtype:
                raise TypeError(f"{name} {part} has dtype {v.dtype} but {name} w1 has {w1.dtype}: "
                                f"the embedder's weights must share a dtype")
            if v.device != t.device:
                raise ValueError(f"{name} {part} is on {v.device} but t is on {t.device}")
    if k_mlp[0].dtype != t_mlp[0].dtype:
        raise TypeError(f"t_mlp and k_mlp must share a dtype, got {t_mlp[0].dtype} and {k_mlp[0].dtype}")
    for name, v in (("y", y), ("table", table)):
        if v.device != t.device:
            raise ValueError(f"{name} is on {v.device} but t is on {t.device}")
    if not table.is_floating_point():
        raise TypeError(f"table must be a floating-point tensor, got {table.dtype}")


def embed_conditioning(t, k, y, t_mlp, k_mlp, table, t_scale=1.0, k_scale=1.0, max_period=10000.0):
    """c = mlp_t(features(t·t_scale)) + mlp_k(features(k·k_scale)) + table[y], and SiLU(c): two launches.

    t (B,) float noise level; k (B,) integer (or float) step level; y (B,) int64/int32 labels in [0, V);
    t_mlp, k_mlp: (w1 (D, F), b1 (D,), w2 (D, D), b2 (D,)), the embedders' Linear(F, D) and Linear(D, D);
    table (V, D). Returns (c (B, D), silu_c (B, D)), dtypes as in the module docstring; differentiable in
    every weight, bias and the table; forward-mode AD (torch.func.jvp) also in t and a float k
    (conditioning_jvp.py). Same results as `embed_conditioning_ref` within the 2× rule.
    """
    _check_embed(t, k, y, t_mlp, k_mlp, table)
    w_dtype = t_mlp[0].dtype
    cast = _autocast_dtype(t.device)
    dtype = cast or w_dtype
    dtypes = (w_dtype, dtype, table.dtype)
    reason = None
    if not can_launch(t.device):
        reason = f"tensors on {t.device}; kernels run on CUDA, or on CPU under TRITON_INTERPRET"
    elif not all(d in KERNEL_DTYPES for d in dtypes):
        reason = f"dtypes {sorted(set(map(str, dtypes)))}; the kernels take float32, float16, bfloat16"
    elif interpreting() and torch.bfloat16 in dtypes:
        reason = "bfloat16 under the Triton interpreter, whose bf16 arithmetic is wrong"
    if reason is not None:
        fallback("embed_conditioning", reason)
        return embed_conditioning_ref(t, k, y, t_mlp, k_mlp, table, t_scale, k_scale, max_period)
    c_dtype = torch.promote_types(dtype, table.dtype)
    # Weights and the table are read through their strides; the 1-D inputs must be contiguous (no-ops for
    # parameters and ordinary batches).
    w1_t, b1_t, w2_t, b2_t = t_mlp
    w1_k, b1_k, w2_k, b2_k = k_mlp
    if forward_ad_active():   # torch.func.jvp / forward_ad: the custom ops have no JVP rule; conditioning_jvp.py does
        from .conditioning_jvp import embed_conditioning_dual
        return embed_conditioning_dual(t, k, y, t_mlp, k_mlp, table, float(t_scale), float(k_scale),
                                       float(max_period), dtype, c_dtype, cast or c_dtype)
    a = _embed_hidden_op(t.contiguous(), k.contiguous(), w1_t, b1_t.contiguous(), w1_k, b1_k.contiguous(),
                         float(t_scale), float(k_scale), float(max_period), dtype)                # (2, B, D)
    return _embed_sum_op(a, w2_t, b2_t.contiguous(), w2_k, b2_k.contiguous(), table, y.contiguous(),
                         c_dtype, cast or c_dtype)                                           # c, SiLU(c)
