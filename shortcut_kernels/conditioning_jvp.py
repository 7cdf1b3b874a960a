"""Forward-mode AD through the conditioning ops: their JVP rules, composed PyTorch.

The tangents are small (B ≤ 256 rows of D), so each rule is a few fp32 matmuls with autocast off rather
than a kernel. t and k carry tangents too (MeanFlow differentiates along t; a float k may vary): with
v = t·t_scale and features [cos(v·f), sin(v·f)],
    t_features = [−sin(v·f)·f, cos(v·f)·f]·tv,  read off the features themselves (no second sin/cos).
Then, per embedder (a = features·W1ᵀ + b1, e = SiLU(a)·W2ᵀ + b2; c = e_t + e_k + table[y]):
    ta = t_features·W1ᵀ + features·tW1ᵀ + tb1;   te = (SiLU'(a)·ta)·W2ᵀ + SiLU(a)·tW2ᵀ + tb2
    tc = te_t + te_k + ttable[y];                t(SiLU(c)) = SiLU'(c)·tc
Tangents are stored in their primal's dtype and are not differentiable (a gradient reaching one raises).
"""
import torch
import torch.nn.functional as F

from ._forward_ad import check_dual, no_grad_tangent
from .conditioning import (_embed_hidden_backward, _embed_hidden_op, _embed_hidden_setup, _embed_sum_backward,
                           _embed_sum_op, _embed_sum_setup, _frequencies, _timestep_features_op)


def _feature_tangent(f, tv, max_period):
    """Tangent of the features f (2, B, dim) = [cos(v·freq), sin(v·freq)(, 0)] along tv (2, B)."""
    half = f.shape[-1] // 2
    freq = _frequencies(half, float(max_period), f.device)
    tf = torch.zeros_like(f)
    tf[..., :half] = -f[..., half:2 * half] * freq           # d cos(v·freq) / dv
    tf[..., half:2 * half] = f[..., :half] * freq             # d sin(v·freq) / dv
    return tf * tv[..., None]


def _scalar_tangents(tt, tk, t, t_scale, k_scale):
    """(2, B) fp32 tangents of v = (t·t_scale, k·k_scale); zero where an input carries none."""
    zero = torch.zeros(t.shape, dtype=torch.float32, device=t.device)
    return torch.stack([zero if tt is None else tt.float() * t_scale, zero if tk is None else tk.float() * k_scale])


class TimestepFeaturesFn(torch.autograd.Function):
    """timestep_features with forward-mode AD in t and k."""

    @staticmethod
    def forward(t, k, dim, t_scale, k_scale, max_period):
        return _timestep_features_op(t, k, dim, t_scale, k_scale, max_period)

    @staticmethod
    def setup_context(ctx, inputs, output):
        t, _, _, t_scale, k_scale, max_period = inputs
        ctx.set_materialize_grads(False)
        ctx.save_for_forward(t, output)
        ctx.scales = (t_scale, k_scale, max_period)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("timestep_features: no backward rule (t and k are data); forward-mode AD is supported")

    @staticmethod
    def jvp(ctx, tt, tk, *_):
        t, f = ctx.saved_tensors
        t_scale, k_scale, max_period = ctx.scales
        tf = _feature_tangent(f, _scalar_tangents(tt, tk, t, t_scale, k_scale), max_period)
        return no_grad_tangent(tf, "timestep_features")


class EmbedHiddenFn(torch.autograd.Function):
    """The first Linears of both embedders, a (2, B, D), with forward-mode AD in t, k and the weights."""

    @staticmethod
    def forward(t, k, w1_t, b1_t, w1_k, b1_k, t_scale, k_scale, max_period, dtype):
        return _embed_hidden_op(t, k, w1_t, b1_t, w1_k, b1_k, t_scale, k_scale, max_period, dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        saved = _embed_hidden_setup(ctx, inputs, output)   # the custom op's, then what the JVP needs
        ctx.set_materialize_grads(False)
        ctx.save_for_forward(*saved)
        ctx.dtype = output.dtype

    @staticmethod
    def backward(ctx, da):
        return (None,) * 10 if da is None else _embed_hidden_backward(ctx, da)

    @staticmethod
    def jvp(ctx, tt, tk, tw1_t, tb1_t, tw1_k, tb1_k, *_):
        t, k, w1_t, w1_k = ctx.saved_tensors
        t_scale, k_scale, max_period = ctx.scales
        with torch.autocast(t.device.type, enabled=False):
            f = _timestep_features_op(t, k, w1_t.shape[1], t_scale, k_scale, max_period)    # (2, B, F) fp32
            tf = _feature_tangent(f, _scalar_tangents(tt, tk, t, t_scale, k_scale), max_period)
            fc = f.to(ctx.dtype).float()              # the features as the kernel fed them to tl.dot
            ta = torch.stack([tf[0] @ w1_t.float().T, tf[1] @ w1_k.float().T])             # (2, B, D)
            for i, (tw, tb) in enumerate(((tw1_t, tb1_t), (tw1_k, tb1_k))):
                if tw is not None:
                    ta[i] += fc[i] @ tw.float().T
                if tb is not None:
                    ta[i] += tb.float()
        return no_grad_tangent(ta.to(ctx.dtype), "embed_conditioning")


class EmbedSumFn(torch.autograd.Function):
    """The second Linears, the label rows and the sum: (c, SiLU(c)), with forward-mode AD in every input."""

    @staticmethod
    def forward(a, w2_t, b2_t, w2_k, b2_k, table, y, c_dtype, s_dtype):
        return _embed_sum_op(a, w2_t, b2_t, w2_k, b2_k, table, y, c_dtype, s_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        saved = _embed_sum_setup(ctx, inputs, output)   # the custom op's, then what the JVP needs
        ctx.set_materialize_grads(False)
        ctx.s_dtype = output[1].dtype
        ctx.save_for_forward(*saved)

    @staticmethod
    def backward(ctx, dc, ds):   # _embed_sum_bwd takes None for an unused output
        return (None,) * 9 if dc is None and ds is None else _embed_sum_backward(ctx, dc, ds)

    @staticmethod
    def jvp(ctx, ta, tw2_t, tb2_t, tw2_k, tb2_k, ttable, *_):
        c, a, w2_t, w2_k, table, y = ctx.saved_tensors
        with torch.autocast(a.device.type, enabled=False):
            af = a.float()
            h = F.silu(af).to(a.dtype).float()        # the kernel's SiLU(a), rounded like the reference's
            tc = torch.zeros(c.shape, dtype=torch.float32, device=c.device)
            if ta is not None:
                th = torch.ops.aten.silu_backward(ta.float(), af)                     # (2, B, D)
                tc += th[0] @ w2_t.float().T + th[1] @ w2_k.float().T
            for hi, tw, tb in ((h[0], tw2_t, tb2_t), (h[1], tw2_k, tb2_k)):
                if tw is not None:
                    tc += hi @ tw.float().T
                if tb is not None:
                    tc += tb.float()
            if ttable is not None:
                tc += ttable.float()[y]
            ts = torch.ops.aten.silu_backward(tc, c.float())
        return (no_grad_tangent(tc.to(c.dtype), "embed_conditioning"),
                no_grad_tangent(ts.to(ctx.s_dtype), "embed_conditioning"))


def timestep_features_dual(t, k, dim, t_scale, k_scale, max_period):
    """`timestep_features` while a forward-AD level is open (checked, contiguous arguments)."""
    check_dual("timestep_features")
    return TimestepFeaturesFn.apply(t, k, dim, t_scale, k_scale, max_period)


def embed_conditioning_dual(t, k, y, t_mlp, k_mlp, table, t_scale, k_scale, max_period, dtype, c_dtype, s_dtype):
    """`embed_conditioning`'s two launches while a forward-AD level is open (checked arguments): (c, SiLU(c)).
    Weights and the table are read through their strides; t, k, y and the biases must be contiguous."""
    check_dual("embed_conditioning")
    (w1_t, b1_t, w2_t, b2_t), (w1_k, b1_k, w2_k, b2_k) = t_mlp, k_mlp
    a = EmbedHiddenFn.apply(t.contiguous(), k.contiguous(), w1_t, b1_t.contiguous(), w1_k, b1_k.contiguous(),
                            t_scale, k_scale, max_period, dtype)                                 # (2, B, D)
    return EmbedSumFn.apply(a, w2_t, b2_t.contiguous(), w2_k, b2_k.contiguous(), table, y.contiguous(),
                            c_dtype, s_dtype)
