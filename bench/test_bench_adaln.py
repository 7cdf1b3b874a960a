"""adaLN benchmarks: fused adaln_modulate / gated_adaln (fwd, fwd+bwd) and the conditioning path, against
the eager references and torch.compile of them, at DiT-B/2 and DiT-XL/2 shapes.

    pytest bench/test_bench_adaln.py --benchmark-json=adaln.json     # CUDA: real shapes
    pytest bench/ --benchmark-disable                                # CPU: tiny shapes, a smoke run

Dtypes (CUDA): "mixed" is the model under bf16 autocast (residual stream x fp32; branch, gate, shift,
scale bf16; h written in bf16 for the next Linear, which the eager/compiled baselines get by a cast, as
the model's Linear would do), "bf16" is everything bf16. Shift/scale/gate are chunks of one (B, 6D)
tensor, as in ShortcutDiT. GB/s counts the bytes a fused kernel must move (inputs read once, outputs
written once, fp32 statistics), the same count for every provider: it is effective bandwidth.

Conditioning: t, k, y -> c -> every block's adaLN vectors. "triton" is ShortcutDiT's fused path, three
launches (both embedders' first Linears with the sinusoids in registers; both second Linears + label row +
sum + SiLU(c); one GEMM over the concatenated adaLN weight); "eager" is DiT's formulation (two reference
embedders, then one Linear per block); "compile" compiles the eager one. Weights bf16 (the sampling
setup); at B = 1 the time is the weight read, so GB/s is the figure to read there (SPEC §6: >= 80 % of
HBM). `test_embed` times the embedders alone (c and SiLU(c): 2 launches fused, ~12 eager), where the
launch count rather than the bytes sets the time at small B.
On CPU the Triton provider runs only when TRITON_INTERPRET=1 was set before the import (slow).
"""
import pytest
import torch
import torch.nn.functional as F

from common import measure
from shortcut import ModelConfig, ShortcutDiT
from shortcut_kernels import adaln_modulate, adaln_modulate_ref, gated_adaln, gated_adaln_ref
from shortcut_kernels._triton import interpreting, triton_available

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
TRITON_OK = triton_available() and (CUDA or interpreting())

if CUDA:
    # (B, T, D): DiT-B/2 and DiT-XL/2 at 256 px (T = 256); B·T >= 16k rows is the SPEC §6 regime.
    SHAPES = [(B, 256, D) for D in (768, 1152) for B in (8, 64, 256)]
    DTYPES = ["mixed", "bf16"]
    COND = [(preset, B) for preset in ("DiT-B/2", "DiT-XL/2") for B in (1, 256)]
else:
    SHAPES = [(2, 16, 40)]
    DTYPES = ["fp32"]
    COND = [("tiny", 2)]

PROVIDERS = ["triton", "eager", "compile"]
_compiled = {}


def _skip_unavailable(provider):
    if provider == "triton" and not TRITON_OK:
        pytest.skip("Triton kernels need CUDA, or TRITON_INTERPRET=1 set before shortcut_kernels is imported")
    if provider == "compile" and not CUDA:
        pytest.skip("torch.compile baselines are measured on CUDA only (a CPU compile takes ~20 s)")


def _dtypes(name):
    """(x dtype, modulation/branch dtype, h dtype)."""
    return {"mixed": (torch.float32, torch.bfloat16, torch.bfloat16),
            "bf16": (torch.bfloat16,) * 3, "fp32": (torch.float32,) * 3}[name]


def _compile(key, fn):
    """One static-shape compile per key: a compiled function reused across shapes would recompile with
    dynamic shapes (a slower baseline) and, past Dynamo's recompile limit, silently run eagerly."""
    if key not in _compiled:
        _compiled[key] = torch.compile(fn, fullgraph=True, dynamic=False)
    return _compiled[key]


def _modulate_ref(x, mods, out_dtype):
    return adaln_modulate_ref(x, *mods.chunk(6, dim=1)[:2]).to(out_dtype)


def _gated_ref(x, mods, branch, out_dtype):
    _, _, gate, shift, scale, _ = mods.chunk(6, dim=1)
    x2, h = gated_adaln_ref(x, branch, gate, shift, scale)
    return x2, h.to(out_dtype)


def _modulate_fused(x, mods, out_dtype):
    return adaln_modulate(x, *mods.chunk(6, dim=1)[:2], out_dtype=out_dtype)


def _gated_fused(x, mods, branch, out_dtype):
    _, _, gate, shift, scale, _ = mods.chunk(6, dim=1)
    return gated_adaln(x, branch, gate, shift, scale, out_dtype=out_dtype)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["adaln_modulate", "gated_adaln"])
@pytest.mark.parametrize("B, T, D", SHAPES, ids=lambda s: str(s))
def test_adaln(benchmark, B, T, D, op, dtype, provider, mode):
    _skip_unavailable(provider)
    backward = mode == "fwd+bwd"
    x_dt, m_dt, h_dt = _dtypes(dtype)
    gated = op == "gated_adaln"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, D, generator=gen).to(DEVICE, x_dt).requires_grad_(backward)
    mods = (torch.randn(B, 6 * D, generator=gen) * 0.5).to(DEVICE, m_dt).requires_grad_(backward)
    branch = torch.randn(B, T, D, generator=gen).to(DEVICE, m_dt).requires_grad_(backward)
    inputs = (x, mods, branch) if gated else (x, mods)
    fused, ref = (_gated_fused, _gated_ref) if gated else (_modulate_fused, _modulate_ref)
    call = {"triton": fused, "eager": ref}.get(provider) or _compile((op, B, T, D, dtype, mode), ref)
    grads_out = [torch.randn(B, T, D, generator=gen).to(DEVICE, dt) for dt in ((x_dt, h_dt) if gated else (h_dt,))]

    def fn():
        outs = call(*inputs, h_dt)
        if not backward:
            return outs
        outs = outs if isinstance(outs, tuple) else (outs,)
        return torch.autograd.grad(outs, inputs, grads_out)

    # Bytes a fused kernel moves: rows of D read/written once, per-sample vectors once, fp32 mean/rstd.
    sx, sm, sh = (torch.empty((), dtype=d).element_size() for d in (x_dt, m_dt, h_dt))
    N = B * T
    vec = B * D * sm * (3 if gated else 2)
    fwd = N * D * (sx + sh + (sm + sx if gated else 0)) + vec + 8 * N
    # backward reads dh, the normalised input, stats (+ dx2, branch); writes dx (+ dbranch), vector grads.
    bwd = N * D * (sh + sx + sx + (sx + sm + sm if gated else 0)) + vec + 8 * N
    out = measure(benchmark, fn, op=f"{op}_{mode}", provider=provider, shape=[B, T, D], device=DEVICE,
                  bytes_moved=fwd + (bwd if backward else 0), dtype=dtype)
    outs = out if isinstance(out, tuple) else (out,)
    assert all(torch.isfinite(o).all() for o in outs)


def _conditioning_model(preset, provider):
    dims = dict(input_size=32, in_channels=4, num_classes=1000) if CUDA else dict(input_size=8, in_channels=4,
                                                                                  num_classes=10)
    cfg = ModelConfig.preset(preset, **dims)
    wdt = torch.bfloat16 if CUDA else torch.float32
    model = ShortcutDiT(cfg, kernels="triton" if provider == "triton" else "torch").to(DEVICE, wdt).eval()
    with torch.no_grad():   # the embedders start at N(0, 0.02); any fresh values do for timing
        for p in model.parameters():
            p.normal_(std=0.02)
    return cfg, model, wdt


def _conditioning_inputs(cfg, B):
    gen = torch.Generator().manual_seed(0)
    t = torch.rand(B, generator=gen).to(DEVICE)
    k = torch.randint(0, 8, (B,), generator=gen).to(DEVICE)
    y = torch.randint(0, cfg.num_classes + 1, (B,), generator=gen).to(DEVICE)
    return t, k, y


def _embedder_bytes(model, es):
    return sum(p.numel() for e in (model.t_embedder, model.k_embedder) for p in e.parameters()) * es


def _conditioning_eager(model):
    """DiT's formulation: the reference embedders, then one adaLN Linear per block and the final layer."""
    def fn(t, k, y):
        c = model.t_embedder(t) + model.k_embedder(k) + model.y_embedder(y)
        return [m(c) for m in [b.adaLN_modulation for b in model.blocks] + [model.final_layer.adaLN_modulation]]
    return fn


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("preset, B", COND, ids=lambda s: str(s))
def test_conditioning(benchmark, preset, B, provider):
    _skip_unavailable(provider)
    cfg, model, wdt = _conditioning_model(preset, provider)
    t, k, y = _conditioning_inputs(cfg, B)
    if provider == "triton":
        def fn():
            return model.modulations(*model.embed(t, k, y, silu=True))   # the path ShortcutDiT.forward takes
    else:
        eager = _conditioning_eager(model)
        call = eager if provider == "eager" else _compile(("cond", preset, B), eager)

        def fn():
            return call(t, k, y)

    D, es = cfg.hidden_size, torch.empty((), dtype=wdt).element_size()
    weights = (model.adaLN.weight.numel() + model.adaLN.bias.numel()) * es + _embedder_bytes(model, es)
    outputs = B * model.adaLN.weight.shape[0] * es + B * D * es   # the modulations and one label row each
    with torch.no_grad():
        out = measure(benchmark, fn, op="conditioning_fwd", provider=provider, shape=[B, D, cfg.depth],
                      device=DEVICE, bytes_moved=weights + outputs, dtype=str(wdt).removeprefix("torch."))
    assert len(out) == cfg.depth + 1 and all(torch.isfinite(m).all() for m in out)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("preset, B", COND, ids=lambda s: str(s))
def test_embed(benchmark, preset, B, provider):
    """The embedders alone: t, k, y -> (c, SiLU(c)). Bytes: both MLPs' weights, B label rows, c and SiLU(c)."""
    _skip_unavailable(provider)
    cfg, model, wdt = _conditioning_model(preset, provider)
    t, k, y = _conditioning_inputs(cfg, B)
    if provider == "triton":
        def fn():
            return model.embed(t, k, y, silu=True)
    else:
        def eager(t, k, y):
            c = model.t_embedder(t) + model.k_embedder(k) + model.y_embedder(y)
            return c, F.silu(c)
        call = eager if provider == "eager" else _compile(("embed", preset, B), eager)

        def fn():
            return call(t, k, y)

    D, es = cfg.hidden_size, torch.empty((), dtype=wdt).element_size()
    with torch.no_grad():
        out = measure(benchmark, fn, op="embed_fwd", provider=provider, shape=[B, D], device=DEVICE,
                      bytes_moved=_embedder_bytes(model, es) + 3 * B * D * es, dtype=str(wdt).removeprefix("torch."))
    assert all(o.shape == (B, D) and torch.isfinite(o).all() for o in out)
