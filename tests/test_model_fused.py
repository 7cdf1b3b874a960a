"""ShortcutDiT(kernels="triton") against kernels="torch": outputs and every parameter gradient, eager and
under torch.compile(fullgraph=True); NVTX ranges.

Rule (STYLE habit 2): |fused_fp32 − ref_fp64| ≤ 2·|ref_fp32 − ref_fp64| + atol. Attention runs the plain
"torch" backend on both sides so these tests isolate the adaLN / conditioning kernels.
"""
import copy

import pytest
import torch
from conftest import assert_close_rel, cuda

import shortcut.profiling as prof
from shortcut import ModelConfig, ShortcutDiT


def _models(gen, attention="torch", **cfg_kw):
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=4, num_classes=10, **cfg_kw)
    fused = ShortcutDiT(cfg, kernels="triton", attention=attention)
    with torch.no_grad():   # leave adaLN-Zero / zero final layer: every path must carry signal and gradient
        for p in fused.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    ref = ShortcutDiT(cfg, kernels="torch", attention=attention)
    ref.load_state_dict(fused.state_dict())
    return fused, ref, copy.deepcopy(ref).double()


def _inputs(B, gen, dtype=torch.float32):
    return (torch.randn(B, 4, 8, 8, generator=gen, dtype=dtype), torch.rand(B, generator=gen, dtype=dtype),
            torch.randint(0, 8, (B,), generator=gen), torch.randint(0, 11, (B,), generator=gen))


def _forward_backward(model, inputs, g):
    model.zero_grad(set_to_none=True)
    out = model(*inputs)
    (out * g.to(out.dtype)).sum().backward()
    return out.detach(), {n: p.grad for n, p in getattr(model, "_orig_mod", model).named_parameters()}


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("official", [False, True])
def test_fused_model_matches_reference(B, official, gen):
    fused, ref, ref64 = _models(gen, official=official)
    x, t, k, y = _inputs(B, gen)
    g = torch.randn(B, 4, 8, 8, generator=gen)
    out_f, grads_f = _forward_backward(fused, (x, t, k, y), g)
    out_s, grads_s = _forward_backward(ref, (x, t, k, y), g)
    out_r, grads_r = _forward_backward(ref64, (x.double(), t.double(), k, y), g)
    assert_close_rel(out_f, out_r, out_s, "output")
    assert grads_f.keys() == grads_r.keys()
    for name in grads_f:
        assert grads_f[name] is not None, name
        assert_close_rel(grads_f[name], grads_r[name], grads_s[name], name)


def test_fused_model_with_sdpa(gen):
    fused, ref, ref64 = _models(gen, attention="sdpa")
    x, t, k, y = _inputs(2, gen)
    assert_close_rel(fused(x, t, k, y), ref64(x.double(), t.double(), k, y), ref(x, t, k, y), "output")


def test_auto_runs_references_on_cpu(gen):
    fused, ref, _ = _models(gen)
    auto = copy.deepcopy(fused)
    auto.kernels = "auto"
    x, t, k, y = _inputs(2, gen)
    assert not auto.uses_triton(x)
    assert torch.equal(auto(x, t, k, y), ref(x, t, k, y))


def test_same_state_dict(gen):
    fused, ref, _ = _models(gen)
    a, b = fused.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fused_model_compiles_fullgraph(gen):
    """The whole fused model traces without graph breaks; compiled == eager, outputs and gradients."""
    torch._dynamo.reset()
    fused, _, _ = _models(gen)
    x, t, k, y = _inputs(2, gen)
    g = torch.randn(2, 4, 8, 8, generator=gen)
    out_e, grads_e = _forward_backward(fused, (x, t, k, y), g)
    compiled = torch.compile(fused, fullgraph=True)
    out_c, grads_c = _forward_backward(compiled, (x, t, k, y), g)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-5, msg=name)


def test_nvtx_ranges(gen, monkeypatch):
    import nvtx
    names = []

    class Recorder:
        def __init__(self, name, domain=None):
            self.name = name
            assert domain == "shortcut"

        def __enter__(self):
            names.append(self.name)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(nvtx, "annotate", Recorder)
    fused, ref, _ = _models(gen)
    x, t, k, y = _inputs(2, gen)
    previous = prof.enable_nvtx(False)
    try:
        assert prof.nvtx_range("a") is prof.nvtx_range("b"), "off: one shared no-op context"
        base = fused(x, t, k, y)
        assert names == []
        prof.enable_nvtx(True)
        assert prof.nvtx_enabled()
        out = fused(x, t, k, y)
        ref(x, t, k, y)
    finally:
        prof.enable_nvtx(previous)
    per_model = ["embed", "patch_embed", "block0.attn", "block0.mlp", "block1.attn", "block1.mlp", "final_layer"]
    assert names == per_model * 2
    assert torch.equal(out, base)


# --------------------------------------------------------------------------------------------------
@cuda
@pytest.mark.parametrize("preset", ["DiT-B/2", "DiT-XL/2"])
def test_cuda_fused_model_under_autocast(preset):
    """Real widths (768; 1152 with head_dim 72), 256 tokens, bf16 autocast, depth cut to 2."""
    gen = torch.Generator().manual_seed(0)
    cfg = ModelConfig.preset(preset, input_size=32, in_channels=4, num_classes=1000, depth=2)
    fused = ShortcutDiT(cfg, kernels="triton", attention="sdpa")
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    fused.cuda()
    ref = copy.deepcopy(fused)
    ref.kernels = "torch"
    ref64 = copy.deepcopy(ref).double()
    B = 4
    x = torch.randn(B, 4, 32, 32, generator=gen).cuda()
    t, k = torch.rand(B, generator=gen).cuda(), torch.randint(0, 8, (B,), generator=gen).cuda()
    y = torch.randint(0, 1001, (B,), generator=gen).cuda()
    g = torch.randn(B, 4, 32, 32, generator=gen).cuda()
    with torch.autocast("cuda", torch.bfloat16):
        out_f, grads_f = _forward_backward(fused, (x, t, k, y), g)
        out_s, grads_s = _forward_backward(ref, (x, t, k, y), g)
    out_r, grads_r = _forward_backward(ref64, (x.double(), t.double(), k, y), g)
    assert out_f.dtype == out_s.dtype
    assert_close_rel(out_f, out_r, out_s, "output")
    for name in grads_f:
        assert_close_rel(grads_f[name], grads_r[name], grads_s[name], name)
