"""Forward-mode AD through the fused ops: the JVP flash-attention kernel (attention_jvp.py) and every op's JVP
rule (adaLN, attention, conditioning), against torch.func.jvp of the references; then the whole fused
ShortcutDiT's JVP against the reference model, backward through the primal after a JVP, the forward_ad API,
and the errors (a gradient reaching a tangent; forward AD inside torch.compile).

Accuracy rule (STYLE habit 2) for outputs and tangents: |kernel − ref| ≤ 2·|torch same dtype − ref| + atol,
ref in fp64 (fp32 for fp16/bf16 attention). Kernel tests run under strict_kernels (no quiet fallback).
"""
import copy
import importlib

import pytest
import torch
from conftest import assert_close_rel, cuda, init_from
from torch.autograd import forward_ad as fwAD

from shortcut import ModelConfig, ShortcutDiT
from shortcut_kernels import (adaln_modulate, adaln_modulate_ref, attention, attention_jvp, attention_jvp_ref,
                              attention_qkvpacked, attention_qkvpacked_jvp, attention_ref, embed_conditioning,
                              embed_conditioning_ref, gated_adaln, gated_adaln_ref, timestep_features,
                              timestep_features_ref)
from shortcut_kernels import _triton
from shortcut_kernels.attention import _attention_fwd_op

attention_mod = importlib.import_module("shortcut_kernels.attention")          # the package's `attention` is
attention_jvp_mod = importlib.import_module("shortcut_kernels.attention_jvp")  # the function, so by name

REF_DTYPE = {torch.float32: torch.float64, torch.float16: torch.float32, torch.bfloat16: torch.float32}


def _randn(shape, gen, device, dtype=torch.float32):
    return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)


def _jvp(fn, primals, tangents):
    out, t_out = torch.func.jvp(fn, tuple(primals), tuple(tangents))
    return (out, t_out) if isinstance(out, tuple) else ((out,), (t_out,))


def _check_jvp(kernel_fn, ref_fn, primals, tangents, ref_dtype, names, ref_hi=None):
    """kernel_fn's outputs and tangents vs ref_fn's, both by torch.func.jvp, under the 2× rule; the bar is
    set by ref_fn (or ref_hi) on inputs cast to ref_dtype."""
    out_k, tan_k = _jvp(kernel_fn, primals, tangents)
    out_s, tan_s = _jvp(ref_fn, primals, tangents)
    cast = lambda xs: [x.to(ref_dtype) if x.is_floating_point() else x for x in xs]   # noqa: E731
    out_r, tan_r = _jvp(ref_hi or ref_fn, cast(primals), cast(tangents))
    for name, k, s, r in zip(names, out_k, out_s, out_r):
        assert k.dtype == s.dtype and k.shape == s.shape, name
        assert_close_rel(k, r, s, name)
    for name, k, s, r in zip(names, tan_k, tan_s, tan_r):
        assert k.dtype == s.dtype and k.shape == s.shape, f"tangent of {name}"
        assert_close_rel(k, r, s, f"tangent of {name}")


# ------------------------------------------------------------------------------------------------------
# The JVP flash-attention kernel.
# (T, head_dim, dtype, scale, B, H): tails (T not a multiple of the 32-row interpreter tile), head_dim 72
# (64 + 16 tiles) and 40 (32 + 16, 8 masked columns), both scales, both CPU dtypes.
CASES = [
    (1, 64, torch.float32, "sqrt", 2, 3),
    (33, 72, torch.float32, "head_dim", 1, 2),
    (33, 72, torch.float16, "sqrt", 1, 2),
    (40, 32, torch.float16, "head_dim", 2, 1),
    (7, 128, torch.float32, "sqrt", 1, 1),
    (50, 40, torch.float32, "sqrt", 1, 1),
]


@pytest.mark.parametrize("T, head_dim, dtype, scale_rule, B, H", CASES)
def test_attention_jvp_kernel_matches_reference(T, head_dim, dtype, scale_rule, B, H, gen, device, strict_kernels):
    """The one-pass kernel: o, t_o and the base-2 LSE (as the forward kernel writes it)."""
    q, k, v, tq, tk, tv = (_randn((B, H, T, head_dim), gen, device, dtype) for _ in range(6))
    scale = None if scale_rule == "sqrt" else 1.0 / head_dim
    o, t_o = attention_jvp(q, k, v, tq, tk, tv, scale=scale)
    o_s, t_s = attention_jvp_ref(q, k, v, tq, tk, tv, scale=scale, upcast=False)
    rd = REF_DTYPE[dtype]
    o_r, t_r = attention_jvp_ref(*(x.to(rd) for x in (q, k, v, tq, tk, tv)), scale=scale, upcast=False)
    assert o.shape == t_o.shape == q.shape and o.dtype == t_o.dtype == dtype
    assert_close_rel(o, o_r, o_s, "o")
    assert_close_rel(t_o, t_r, t_s, "t_o")
    _, lse = _attention_fwd_op(q, k, v, scale or head_dim ** -0.5)
    _, _, lse_jvp = torch.ops.shortcut_kernels.attention_jvp(q, k, v, tq, tk, tv, scale or head_dim ** -0.5)
    torch.testing.assert_close(lse_jvp, lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T, head_dim, dtype, scale_rule, B, H", CASES[1:4])
def test_attention_rule_matches_reference(T, head_dim, dtype, scale_rule, B, H, gen, device, strict_kernels):
    """torch.func.jvp(attention): the forward kernel, then the tangent pass from the saved o and LSE."""
    primals = [_randn((B, H, T, head_dim), gen, device, dtype) for _ in range(3)]
    tangents = [_randn((B, H, T, head_dim), gen, device, dtype) for _ in range(3)]
    scale = None if scale_rule == "sqrt" else 1.0 / head_dim
    _check_jvp(lambda q, k, v: attention(q, k, v, scale=scale),
               lambda q, k, v: attention_ref(q, k, v, scale=scale, upcast=False),
               primals, tangents, REF_DTYPE[dtype], ["o"])


def test_attention_rule_tangent_on_some_inputs(gen, device, strict_kernels):
    """Only v carries a tangent (the others reach the rule as None); then only q."""
    q, k, v, t = (_randn((1, 2, 20, 32), gen, device) for _ in range(4))
    for argnum in (2, 0):
        def with_x(op, **kw):
            def fn(x):
                args = [a.to(x.dtype) for a in (q, k, v)]
                args[argnum] = x
                return op(*args, **kw)
            return fn
        fn, ref = with_x(attention), with_x(attention_ref, upcast=False)
        _check_jvp(fn, ref, [(q, k, v)[argnum]], [t], torch.float64, ["o"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_qkvpacked_jvp_and_rule(dtype, gen, device, strict_kernels):
    """(B, T, 3, H, 72) packed q, k, v with a packed tangent: the one-pass op and the rule, read in place."""
    B, T, H, Dh = 2, 37, 2, 72
    qkv, tqkv = _randn((B, T, 3, H, Dh), gen, device, dtype), _randn((B, T, 3, H, Dh), gen, device, dtype)

    def ref(qkv, upcast=False):
        q, k, v = qkv.permute(2, 0, 3, 1, 4)                       # 3 × (B, H, T, Dh)
        return attention_ref(q, k, v, upcast=upcast).transpose(1, 2)   # (B, T, H, Dh)

    o, t_o = attention_qkvpacked_jvp(qkv, tqkv)
    assert o.shape == t_o.shape == (B, T, H, Dh) and o.is_contiguous() and t_o.is_contiguous()
    o_s, t_s = torch.func.jvp(ref, (qkv,), (tqkv,))
    rd = REF_DTYPE[dtype]
    o_r, t_r = torch.func.jvp(ref, (qkv.to(rd),), (tqkv.to(rd),))
    assert_close_rel(o, o_r, o_s, "o")
    assert_close_rel(t_o, t_r, t_s, "t_o")
    _check_jvp(attention_qkvpacked, ref, [qkv], [tqkv], rd, ["o"])


def test_attention_jvp_strided_views(gen, device, strict_kernels):
    """q, k, v and their tangents as strided views of two packed buffers, read in place."""
    B, T, H, Dh = 1, 21, 3, 48
    qkv, tqkv = _randn((B, T, 3, H, Dh), gen, device), _randn((B, T, 3, H, Dh), gen, device)
    views = [x.select(2, i).transpose(1, 2) for x in (qkv, tqkv) for i in range(3)]
    assert not any(x.is_contiguous() for x in views)
    o, t_o = attention_jvp(*views)
    o_s, t_s = attention_jvp_ref(*views, upcast=False)
    o_r, t_r = attention_jvp_ref(*(x.double() for x in views), upcast=False)
    assert_close_rel(o, o_r, o_s, "o")
    assert_close_rel(t_o, t_r, t_s, "t_o")


def test_attention_jvp_strides_not_16_byte_multiples(gen, device, strict_kernels):
    """The kernel treats strides as multiples of 16 bytes (ALIGN) only when every one is: fp16 views of a
    buffer with 76-element rows (token stride 76, not a multiple of 8) take ALIGN = 1, and are read right;
    the model's packed qkv at head_dim 72 (head stride 72) takes 8, fp32 4."""
    B, H, T, Dh = 1, 2, 33, 72
    bufs = [_randn((B, H, T, Dh + 4), gen, device, torch.float16) for _ in range(6)]
    views = [x[..., :Dh] for x in bufs]
    assert attention_jvp_mod._alignment(views) == 1
    packed = attention_mod._unpack(torch.empty(B, T, 3, H, Dh, device=device, dtype=torch.float16))
    o = torch.empty(B, T, H, Dh, device=device, dtype=torch.float16).transpose(1, 2)
    assert attention_jvp_mod._alignment([*packed, *packed, o, o]) == 8
    assert attention_jvp_mod._alignment([x.float() for x in (*packed, o)]) == 4
    o, t_o = attention_jvp(*views)
    o_s, t_s = attention_jvp_ref(*views, upcast=False)
    o_r, t_r = attention_jvp_ref(*(x.float() for x in views), upcast=False)
    assert_close_rel(o, o_r, o_s, "o")
    assert_close_rel(t_o, t_r, t_s, "t_o")
    _check_jvp(attention, lambda q, k, v: attention_ref(q, k, v, upcast=False), views[:3], views[3:],
               torch.float32, ["o"])


def test_attention_jvp_launches_pick_the_list_of_the_device():
    """What the JVP launcher hands to `launch` on an sm_80 and an sm_90 GPU (recorded, not run): the autotuner
    of that architecture and mode, the B·H bucket as BH; fp32 one-pass: the forward kernel, then the tangent
    pass."""
    q = torch.empty(3, 5, 256, 72, device="meta", dtype=torch.bfloat16)
    lse = torch.empty(3, 5, 256, device="meta")
    tuned = attention_mod._tuned
    for arch in (80, 90):
        for primal_known, mode in ((False, "jvp"), (True, "tangent")):
            with _triton.recording(arch) as launches:
                attention_jvp_mod._jvp(q, q, q, q, q, q, q, q, lse, 0.1, primal_known)
            [(kernel, args, kwargs)] = launches
            assert kernel is tuned(mode, arch, torch.float16)
            assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in kernel.configs] \
                == list(attention_mod.CONFIGS[mode, arch, 16])
            assert args[-3] == 16, "BH = 15 rounded up"
            assert kwargs["PRIMAL_KNOWN"] is primal_known and kwargs["ALIGN"] == 8
        q32 = q.float()
        with _triton.recording(arch) as launches:
            attention_jvp_mod._jvp(q32, q32, q32, q32, q32, q32, q32, q32, lse, 0.1, False)
        assert [kernel for kernel, _, _ in launches] == [tuned("fwd", arch, torch.float32),
                                                         tuned("tangent", arch, torch.float32)]
    assert attention_mod.CONFIGS["jvp", 80, 16] != attention_mod.CONFIGS["jvp", 90, 16]


def test_attention_jvp_very_negative_scores(gen, device, strict_kernels):
    """Scores ≈ −100 everywhere (LSE ≈ −98) with a masked key tail: padded columns must not become
    exp2(+140) = inf -> NaN. (Measured: 0.5× / 0.6× PyTorch's fp32 error for the one-pass kernel / the rule.)"""
    u = torch.randn(32, generator=gen)
    u = u / u.norm()
    k = (u.expand(1, 2, 7, 32) + 0.01 * torch.randn(1, 2, 7, 32, generator=gen)).to(device)
    q = (-100.0 * u.expand(1, 2, 7, 32)).contiguous().to(device)
    v, tq, tk, tv = (_randn((1, 2, 7, 32), gen, device) for _ in range(4))
    _, t_s = attention_jvp_ref(q, k, v, tq, tk, tv, scale=1.0, upcast=False)
    _, t_r = attention_jvp_ref(*(x.double() for x in (q, k, v, tq, tk, tv)), scale=1.0, upcast=False)
    rule = torch.func.jvp(lambda q, k, v: attention(q, k, v, scale=1.0), (q, k, v), (tq, tk, tv))
    for name, (o, t_o) in (("one pass", attention_jvp(q, k, v, tq, tk, tv, scale=1.0)), ("rule", rule)):
        assert torch.isfinite(o).all() and torch.isfinite(t_o).all(), name
        assert_close_rel(t_o, t_r, t_s, f"t_o ({name})")


def test_attention_jvp_gradient_of_o(gen, device, strict_kernels):
    """o from the one-pass op backpropagates like attention's o; a gradient reaching t_o raises."""
    q, k, v = (_randn((2, 2, 19, 32), gen, device).requires_grad_() for _ in range(3))
    tq, tk, tv = (_randn((2, 2, 19, 32), gen, device) for _ in range(3))
    g = _randn((2, 2, 19, 32), gen, device)
    o, t_o = attention_jvp(q, k, v, tq, tk, tv)
    grads = torch.autograd.grad((o * g).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((attention(q, k, v) * g).sum(), (q, k, v))
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    o, t_o = attention_jvp(q, k, v, tq, tk, tv)
    with pytest.raises(RuntimeError, match="t_o is not differentiable"):
        (o.sum() + t_o.sum()).backward()


def test_attention_jvp_errors(gen, device):
    q = _randn((1, 2, 8, 16), gen, device)
    with pytest.raises(ValueError, match="tk must match k"):
        attention_jvp(q, q, q, q, q[:, :1], q)
    with pytest.raises(ValueError, match="tq must match q"):
        attention_jvp(q, q, q, q.double(), q, q)
    with pytest.raises(TypeError, match="tv must be a torch.Tensor"):
        attention_jvp(q, q, q, q, q, None)
    with pytest.raises(ValueError, match="tqkv must match qkv"):
        attention_qkvpacked_jvp(_randn((1, 8, 3, 2, 16), gen, device), _randn((1, 8, 3, 2, 8), gen, device))


# ------------------------------------------------------------------------------------------------------
# adaLN rules (the tangent kernel).
def _adaln_inputs(B, T, D, gen, device, dtype):
    x = (_randn((B, T, D), gen, device) * 2 + 0.5).to(dtype)
    mods = (_randn((B, 6 * D), gen, device) * 0.5).to(dtype)
    return x, mods, _randn((B, T, D), gen, device, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(3, 5, 40), (1, 2, 1152), (2, 1, 33)])
def test_adaln_modulate_rule(shape, dtype, gen, device, strict_kernels):
    """Tangents on x and on shift/scale, strided chunks of one (B, 6D) tensor as in the model."""
    x, mods, _ = _adaln_inputs(*shape, gen, device, dtype)
    tx, tmods, _ = _adaln_inputs(*shape, gen, device, dtype)
    _check_jvp(lambda x, m: adaln_modulate(x, *m.chunk(6, dim=1)[:2]),
               lambda x, m: adaln_modulate_ref(x, *m.chunk(6, dim=1)[:2]),
               [x, mods], [tx, tmods], torch.float64, ["h"])


def _gated(op):
    """gated_adaln(x, branch, gate, shift, scale) as a function of (x, mods, branch), mods the (B, 6D) adaLN output."""
    def fn(x, mods, branch):
        _, _, gate, shift, scale, _ = mods.chunk(6, dim=1)
        return op(x, branch, gate, shift, scale)
    return fn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(3, 5, 40), (2, 3, 96)])
def test_gated_adaln_rule(shape, dtype, gen, device, strict_kernels):
    """Tangents on all five tensors: x2 and h."""
    x, mods, branch = _adaln_inputs(*shape, gen, device, dtype)
    tx, tmods, tbranch = _adaln_inputs(*shape, gen, device, dtype)
    _check_jvp(_gated(gated_adaln), _gated(gated_adaln_ref), [x, mods, branch], [tx, tmods, tbranch],
               torch.float64, ["x2", "h"])


def test_adaln_rules_partial_tangents_and_out_dtype(gen, device, strict_kernels):
    """A tangent on one input only (the others reach the rule as None); out_dtype sets h's tangent dtype."""
    x, mods, branch = _adaln_inputs(2, 3, 24, gen, device, torch.float32)
    gate, shift, scale = mods.chunk(6, dim=1)[2:5]
    tg = _randn(gate.shape, gen, device)
    _check_jvp(lambda g: gated_adaln(x, branch, g, shift, scale), lambda g: gated_adaln_ref(x, branch, g, shift, scale),
               [gate], [tg], torch.float64, ["x2", "h"])
    _check_jvp(lambda s: adaln_modulate(x, shift, s), lambda s: adaln_modulate_ref(x, shift, s),
               [scale], [tg], torch.float64, ["h"])
    h, th = torch.func.jvp(lambda x: adaln_modulate(x, shift, scale, out_dtype=torch.float16), (x,), (x,))
    _, th_r = torch.func.jvp(lambda x: adaln_modulate_ref(x, shift, scale), (x,), (x,))
    assert h.dtype == th.dtype == torch.float16
    torch.testing.assert_close(th.float(), th_r, rtol=2e-3, atol=2e-3)


# ------------------------------------------------------------------------------------------------------
# Conditioning rules: tangents on t (MeanFlow), a float k, every weight and the label table. The
# references round t·t_scale to fp32 (timestep_features_ref calls t.float()), so the high-precision bar is
# written out here in fp64 throughout: with t_scale = 1000 that rounding is the dominant error.
def _mlp(D, Fd, gen, device):
    return tuple(_randn(s, gen, device) * (0.2 if len(s) == 2 else 0.1) for s in ((D, Fd), (D,), (D, D), (D,)))


def _features64(v, dim, max_period=10000.0):
    half = dim // 2
    freqs = torch.exp(-torch.log(torch.tensor(max_period, dtype=torch.float64)) *
                      torch.arange(half, dtype=torch.float64, device=v.device) / half)
    args = v.double()[:, None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args), args.new_zeros(len(v), dim - 2 * half)], dim=1)


def _timestep_features64(t, k, dim, t_scale):
    return torch.stack([_features64(t * t_scale, dim), _features64(k, dim)])


def _embed64(t, k, y, t_mlp, k_mlp, table, t_scale):
    f = _timestep_features64(t, k, t_mlp[0].shape[1], t_scale)

    def mlp(x, w1, b1, w2, b2):
        return torch.nn.functional.linear(torch.nn.functional.silu(torch.nn.functional.linear(x, w1, b1)), w2, b2)
    c = mlp(f[0], *t_mlp) + mlp(f[1], *k_mlp) + table[y]
    return c, torch.nn.functional.silu(c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("Fd, t_scale", [(256, 1000.0), (7, 1.0)])
def test_embed_conditioning_rule(Fd, t_scale, dtype, gen, device, strict_kernels):
    B, D, V = 3, 48, 5
    t, k = torch.rand(B, generator=gen).to(device), (torch.rand(B, generator=gen) * 7).to(device)
    y = torch.tensor([0, 4, 0], device=device)
    params = [*_mlp(D, Fd, gen, device), *_mlp(D, Fd, gen, device), _randn((V, D), gen, device) * 0.1]
    params = [p.to(dtype) for p in params]
    tangents = [_randn(t.shape, gen, device), _randn(k.shape, gen, device)]
    tangents += [(_randn(p.shape, gen, device) * 0.1).to(dtype) for p in params]

    def fn(op):
        return lambda t, k, *p: op(t, k, y, p[0:4], p[4:8], p[8], t_scale)
    _check_jvp(fn(embed_conditioning), fn(embed_conditioning_ref), [t, k, *params], tangents, torch.float64,
               ["c", "silu(c)"], ref_hi=fn(_embed64))

    # Along t alone: what MeanFlow's d/dt needs.
    def along_t(op):
        return lambda t: op(t, k, y, params[0:4], params[4:8], params[8], t_scale)
    p64 = [p.double() for p in params]
    _check_jvp(along_t(embed_conditioning), along_t(embed_conditioning_ref), [t], tangents[:1], torch.float64,
               ["c", "silu(c)"], ref_hi=lambda t: _embed64(t, k, y, p64[0:4], p64[4:8], p64[8], t_scale))


@pytest.mark.parametrize("dim, t_scale", [(256, 1000.0), (7, 1.0)])
def test_timestep_features_rule(dim, t_scale, gen, device, strict_kernels):
    t, k = torch.rand(4, generator=gen).to(device), (torch.rand(4, generator=gen) * 7).to(device)
    tt, tk = _randn((4,), gen, device), _randn((4,), gen, device)
    _check_jvp(lambda t, k: timestep_features(t, k, dim, t_scale),
               lambda t, k: timestep_features_ref(t, k, dim, t_scale), [t, k], [tt, tk], torch.float64,
               ["features"], ref_hi=lambda t, k: _timestep_features64(t, k, dim, t_scale))


def test_nested_jvp_is_an_error(gen, device):
    """Second derivatives by jvp-of-jvp would come back zero from the rules' custom ops: an error instead."""
    x, tx = _randn((2, 3, 16), gen, device), _randn((2, 3, 16), gen, device)
    shift, scale = _randn((2, 16), gen, device), _randn((2, 16), gen, device)
    q = _randn((1, 2, 8, 16), gen, device)
    for op, arg, t in ((lambda x: adaln_modulate(x, shift, scale), x, tx), (lambda q: attention(q, q, q), q, q)):
        inner = lambda p: torch.func.jvp(op, (p,), (t,))[1]   # noqa: E731
        with pytest.raises(RuntimeError, match="nested forward-mode AD"):
            torch.func.jvp(inner, (arg,), (t,))


# ------------------------------------------------------------------------------------------------------
# The whole model.
def _models(gen, device, **cfg_kw):
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=4, num_classes=10, **cfg_kw)
    with init_from(gen):   # every weight drawn from `gen`, the initialisation too
        fused = ShortcutDiT(cfg, kernels="triton", attention="triton")
    with torch.no_grad():   # non-zero final layer and adaLN: every path carries signal and tangent
        for p in fused.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    ref = ShortcutDiT(cfg, kernels="torch", attention="torch")
    ref.load_state_dict(fused.state_dict())
    return fused.to(device), ref.to(device), copy.deepcopy(ref).double().to(device)


def _model_inputs(B, gen, device):
    x, tx = _randn((B, 4, 8, 8), gen, device), _randn((B, 4, 8, 8), gen, device)
    t, tt = torch.rand(B, generator=gen).to(device), _randn((B,), gen, device)
    k, y = torch.randint(0, 8, (B,), generator=gen).to(device), torch.randint(0, 11, (B,), generator=gen).to(device)
    return x, tx, t, tt, k, y


@pytest.mark.parametrize("official", [False, True])
def test_model_jvp_fused_matches_reference(official, gen, device, strict_kernels):
    """u, du = torch.func.jvp(model, (x, t), (tx, tt)), fused vs reference; then u.sum().backward() gives
    the reference's parameter gradients (MeanFlow: backward through u, du/dt stop-gradient)."""
    fused, ref, ref64 = _models(gen, device, official=official)
    x, tx, t, tt, k, y = _model_inputs(3, gen, device)

    def run(model, dtype=torch.float32):
        model.zero_grad(set_to_none=True)
        u, du = torch.func.jvp(lambda x, t: model(x, t, k, y), (x.to(dtype), t.to(dtype)), (tx.to(dtype), tt.to(dtype)))
        u.sum().backward()
        return u.detach(), du.detach(), dict(model.named_parameters())

    u_f, du_f, p_f = run(fused)
    u_s, du_s, p_s = run(ref)
    u_r, du_r, p_r = run(ref64, torch.float64)
    assert du_r.abs().max() > 1.0
    assert_close_rel(u_f, u_r, u_s, "u")
    assert_close_rel(du_f, du_r, du_s, "du")
    for name in p_f:
        assert p_f[name].grad is not None, name
        assert_close_rel(p_f[name].grad, p_r[name].grad, p_s[name].grad, name)


@pytest.mark.parametrize("kernels, attention", [("torch", "sdpa"), ("torch", "auto"), ("triton", "sdpa"),
                                                ("torch", "triton")])
def test_model_jvp_every_backend(kernels, attention, gen, device, strict_kernels):
    """torch.func.jvp through ShortcutDiT equals the reference's whatever the kernels / attention backend (SDPA's
    fused CPU and GPU kernels have no forward-AD rule: the model takes its math backend under forward AD)."""
    fused, ref, _ = _models(gen, device)
    model = ShortcutDiT(fused.cfg, kernels=kernels, attention=attention).to(device)
    model.load_state_dict(fused.state_dict())
    x, tx, t, tt, k, y = _model_inputs(2, gen, device)
    u, du = torch.func.jvp(lambda x, t: model(x, t, k, y), (x, t), (tx, tt))
    u_r, du_r = torch.func.jvp(lambda x, t: ref(x, t, k, y), (x, t), (tx, tt))
    assert du_r.abs().max() > 0.1
    torch.testing.assert_close(u, u_r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(du, du_r, rtol=1e-4, atol=1e-4)


def test_model_forward_ad_api(gen, device, strict_kernels):
    """torch.autograd.forward_ad gives the same tangent; a gradient reaching the tangent raises."""
    fused, ref, _ = _models(gen, device)
    x, tx, t, tt, k, y = _model_inputs(2, gen, device)
    with fwAD.dual_level():
        u, du = fwAD.unpack_dual(fused(fwAD.make_dual(x, tx), fwAD.make_dual(t, tt), k, y))
        _, du_r = fwAD.unpack_dual(ref(fwAD.make_dual(x, tx), fwAD.make_dual(t, tt), k, y))
    torch.testing.assert_close(du, du_r, rtol=1e-4, atol=1e-4)
    _, du = torch.func.jvp(lambda t: fused(x, t, k, y), (t,), (tt,))
    with pytest.raises(RuntimeError, match="not differentiable.*detach it"):
        du.sum().backward()


def test_forward_ad_inside_compile_is_an_error(gen, device):
    """Dynamo cannot trace the JVP rules: forward AD inside torch.compile(fullgraph=True) raises (the plain
    custom op would give a zero tangent); compiling without forward AD still works (test_model_fused)."""
    torch._dynamo.reset()
    x, tx = _randn((2, 3, 16), gen, device), _randn((2, 3, 16), gen, device)
    shift, scale = _randn((2, 16), gen, device), _randn((2, 16), gen, device)
    step = torch.compile(lambda x, tx: torch.func.jvp(lambda x: adaln_modulate(x, shift, scale), (x,), (tx,)),
                         fullgraph=True)
    with pytest.raises(Exception, match="cannot run inside torch.compile"):
        step(x, tx)
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------------
@cuda
@pytest.mark.parametrize("H, head_dim", [(12, 64), (16, 72)])
def test_cuda_attention_jvp_bf16(H, head_dim, gen):
    """DiT shapes (T 256), bf16: the one-pass kernel and the rule."""
    q, k, v, tq, tk, tv = (_randn((2, H, 256, head_dim), gen, "cuda", torch.bfloat16) for _ in range(6))
    o_s, t_s = attention_jvp_ref(q, k, v, tq, tk, tv, upcast=False)
    o_r, t_r = attention_jvp_ref(*(x.float() for x in (q, k, v, tq, tk, tv)), upcast=False)
    o, t_o = attention_jvp(q, k, v, tq, tk, tv)
    assert_close_rel(o, o_r, o_s, "o")
    assert_close_rel(t_o, t_r, t_s, "t_o")
    _, t_o = torch.func.jvp(attention, (q, k, v), (tq, tk, tv))
    assert_close_rel(t_o, t_r, t_s, "t_o (rule)")


@cuda
def test_cuda_adaln_rules_bf16(gen):
    x, mods, branch = _adaln_inputs(4, 256, 1152, gen, "cuda", torch.bfloat16)
    tx, tmods, tbranch = _adaln_inputs(4, 256, 1152, gen, "cuda", torch.bfloat16)
    _check_jvp(_gated(gated_adaln), _gated(gated_adaln_ref), [x, mods, branch], [tx, tmods, tbranch],
               torch.float64, ["x2", "h"])


@cuda
def test_cuda_model_jvp_under_autocast(gen):
    """DiT-XL/2 widths (head_dim 72), depth 2, bf16 autocast: fused JVP vs the reference model's."""
    cfg = ModelConfig.preset("DiT-XL/2", input_size=16, in_channels=4, num_classes=10, depth=2)
    with init_from(gen):
        fused = ShortcutDiT(cfg, kernels="triton", attention="triton")
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    fused.cuda()
    ref = ShortcutDiT(cfg, kernels="torch", attention="torch").cuda()
    ref.load_state_dict(fused.state_dict())
    ref64 = copy.deepcopy(ref).double()
    x, tx = _randn((2, 4, 16, 16), gen, "cuda"), _randn((2, 4, 16, 16), gen, "cuda")
    t, tt = torch.rand(2, generator=gen).cuda(), torch.ones(2, device="cuda")
    k, y = torch.tensor([0, 3], device="cuda"), torch.tensor([1, 10], device="cuda")
    with torch.autocast("cuda", torch.bfloat16):
        u_f, du_f = torch.func.jvp(lambda x, t: fused(x, t, k, y), (x, t), (tx, tt))
        u_s, du_s = torch.func.jvp(lambda x, t: ref(x, t, k, y), (x, t), (tx, tt))
    u_r, du_r = torch.func.jvp(lambda x, t: ref64(x, t, k, y), (x.double(), t.double()), (tx.double(), tt.double()))
    assert_close_rel(u_f, u_r, u_s, "u")
    assert_close_rel(du_f, du_r, du_s, "du")
