"""ShortcutDiT(kernels="triton") against kernels="torch": outputs and every parameter gradient, eager and
under torch.compile(fullgraph=True); NVTX ranges.

Rule (STYLE habit 2): |fused_fp32 − ref_fp64| ≤ 2·|ref_fp32 − ref_fp64| + atol. Attention runs the plain
"torch" backend on both sides so these tests isolate the adaLN / conditioning kernels; the production-path
tests (`*production*`) run Triton attention as well, and one training step.
"""
import contextlib
import copy

import pytest
import torch
from conftest import ATOL, DEVICE, assert_close_rel, cuda, redraw_zero_init

import shortcut.profiling as prof
from shortcut import GraphSampler, ModelConfig, ObjectiveConfig, ShortcutDiT, TrainConfig, sample
from shortcut.objective import ShortcutBatch, shortcut_loss, shortcut_targets


def _models(gen, attention="torch", device=DEVICE, **cfg_kw):
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=4, num_classes=10, **cfg_kw)
    fused = ShortcutDiT(cfg, kernels="triton", attention=attention)
    with torch.no_grad():   # leave adaLN-Zero / zero final layer: every path must carry signal and gradient
        for p in fused.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    ref = ShortcutDiT(cfg, kernels="torch", attention=attention)
    ref.load_state_dict(fused.state_dict())
    return fused.to(device), ref.to(device), copy.deepcopy(ref).double()


def _inputs(B, gen, dtype=torch.float32, device=DEVICE):
    return (torch.randn(B, 4, 8, 8, generator=gen, dtype=dtype).to(device),
            torch.rand(B, generator=gen, dtype=dtype).to(device),
            torch.randint(0, 8, (B,), generator=gen).to(device), torch.randint(0, 11, (B,), generator=gen).to(device))


def _forward_backward(model, inputs, g):
    model.zero_grad(set_to_none=True)
    out = model(*inputs)
    (out * g.to(out.dtype)).sum().backward()
    return out.detach(), {n: p.grad for n, p in getattr(model, "_orig_mod", model).named_parameters()}


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("official", [False, True])
def test_fused_model_matches_reference(B, official, gen, device, strict_kernels):
    fused, ref, ref64 = _models(gen, official=official, device=device)
    x, t, k, y = _inputs(B, gen, device=device)
    g = torch.randn(B, 4, 8, 8, generator=gen).to(device)
    out_f, grads_f = _forward_backward(fused, (x, t, k, y), g)
    out_s, grads_s = _forward_backward(ref, (x, t, k, y), g)
    out_r, grads_r = _forward_backward(ref64, (x.double(), t.double(), k, y), g)
    assert_close_rel(out_f, out_r, out_s, "output")
    assert grads_f.keys() == grads_r.keys()
    for name in grads_f:
        assert grads_f[name] is not None, name
        assert_close_rel(grads_f[name], grads_r[name], grads_s[name], name)


def test_fused_model_with_sdpa(gen, device, strict_kernels):
    fused, ref, ref64 = _models(gen, attention="sdpa", device=device)
    x, t, k, y = _inputs(2, gen, device=device)
    assert_close_rel(fused(x, t, k, y), ref64(x.double(), t.double(), k, y), ref(x, t, k, y), "output")


# --------------------------------------------------------------------------------------------------
# The production path: what kernels="auto" runs on a GPU, Triton attention included.

def _production_models(gen, device, dtype=torch.float32, preset="tiny", **cfg_kw):
    """ShortcutDiT(kernels="triton", attention="triton"), its reference (kernels="torch", attention="torch") with
    the same weights, and the reference in fp64. Zero-initialised weights (adaLN-Zero, final layer, biases) are
    re-drawn: v̂ = 0 and identity blocks would make most comparisons vacuous. Input 10×10: T = 25 tokens,
    a masked tail in every attention tile."""
    cfg = ModelConfig.preset(preset, **(dict(input_size=10, in_channels=4, num_classes=10) | cfg_kw))
    ref = redraw_zero_init(ShortcutDiT(cfg, kernels="torch", attention="torch"), gen)
    fused = ShortcutDiT(cfg, kernels="triton", attention="triton")
    fused.load_state_dict(ref.state_dict())
    ref64 = copy.deepcopy(ref).double().to(device)
    return fused.to(device, dtype), ref.to(device, dtype), ref64


def _model_inputs(model, B, gen, device):
    c = model.cfg
    return (torch.randn(B, c.in_channels, c.input_size, c.input_size, generator=gen).to(device),
            torch.rand(B, generator=gen).to(device), torch.randint(0, 8, (B,), generator=gen).to(device),
            torch.randint(0, c.num_classes + 1, (B,), generator=gen).to(device))


def _check_model(fused, ref, ref64, x, t, k, y, g, autocast=None):
    """Output and every parameter gradient of `fused` against fp64, the bar set by `ref` in the same dtype
    (under `autocast` when given)."""
    ctx = torch.autocast(x.device.type, autocast) if autocast else contextlib.nullcontext()
    dtype = next(fused.parameters()).dtype
    with ctx:
        out_f, grads_f = _forward_backward(fused, (x.to(dtype), t, k, y), g)
        out_s, grads_s = _forward_backward(ref, (x.to(dtype), t, k, y), g)
    out_r, grads_r = _forward_backward(ref64, (x.double(), t.double(), k, y), g)
    assert out_f.dtype == out_s.dtype
    assert out_r.abs().mean() > 0.05, "the model under test must have non-zero outputs"
    assert_close_rel(out_f, out_r, out_s, "output")
    assert grads_f.keys() == grads_r.keys()
    for name in grads_f:
        assert grads_f[name] is not None and grads_r[name].abs().max() > 0, name
        assert_close_rel(grads_f[name], grads_r[name], grads_s[name], name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_production_model_matches_reference(dtype, gen, device, strict_kernels):
    """kernels="triton", attention="triton" against the references: output and every parameter gradient.
    On CPU through the interpreter (fp32, fp16; its bf16 is wrong, so bf16 is @cuda below)."""
    fused, ref, ref64 = _production_models(gen, device, dtype)
    x, t, k, y = _model_inputs(fused, 3, gen, device)
    _check_model(fused, ref, ref64, x, t, k, y, torch.randn(x.shape, generator=gen).to(device))


class _Cast64(torch.nn.Module):
    """The fp64 reference behind an fp32 interface: shortcut_targets draws its noise in x1's dtype, so the fp64
    targets come from the same noise as the fp32 ones."""

    def __init__(self, net):
        super().__init__()
        self.net, self.null_label = net, net.null_label

    def forward(self, x, t, k, y):
        return self.net(x.double(), t.double(), k, y).to(x.dtype)


def _check_training_step(fused, ref, ref64, x1, y, autocast=None, min_certain=0.5):
    """One training step as shortcut.train takes it (bootstrap targets from the EMA copy, shortcut_loss,
    backward, AdamW with the training defaults), fused against the references: targets, loss, gradients,
    parameters after the step and the loss they give. Half of x1 gets bootstrap targets."""
    tc = TrainConfig()
    obj = ObjectiveConfig(bootstrap_fraction=0.5)
    ctx = (lambda: torch.autocast(x1.device.type, autocast)) if autocast else contextlib.nullcontext
    nets = {"fused": fused, "ref": ref, "ref64": ref64}
    emas = {n: copy.deepcopy(m).requires_grad_(False).eval() for n, m in nets.items()}
    emas["ref64"] = _Cast64(emas["ref64"])
    opts = {n: torch.optim.AdamW(m.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
            for n, m in nets.items()}
    batches, losses, grads = {}, {}, {}
    for n, m in nets.items():
        with ctx() if n != "ref64" else contextlib.nullcontext():
            b = shortcut_targets(emas[n], x1, y, obj, generator=torch.Generator().manual_seed(1))
            if n == "ref64":
                b = ShortcutBatch(b.x_t.double(), b.t.double(), b.k, b.y, b.v.double(), b.num_bootstrap)
            losses[n], _ = shortcut_loss(m, b)
        losses[n].backward()
        batches[n] = b
        grads[n] = {name: p.grad.clone() for name, p in m.named_parameters()}
        opts[n].step()
    bf, br = batches["fused"], batches["ref"]
    assert bf.num_bootstrap == x1.shape[0] // 2 and (bf.k[:bf.num_bootstrap] < 7).all()
    for field in ("x_t", "t", "k", "y"):   # drawn from the generator alone
        assert torch.equal(getattr(bf, field), getattr(br, field)), field
    assert_close_rel(bf.v, batches["ref64"].v, br.v, "bootstrap targets")
    assert_close_rel(losses["fused"], losses["ref64"], losses["ref"], "loss")
    # AdamW's first step moves each weight by lr·g/(|g| + eps) ≈ ±lr: where |g| lies within the gradient
    # tolerance of 0 its sign may legitimately differ. Parameters are compared where the sign is certain
    # (|g64| > 4× the tolerance, or g = 0 in all three); the first kind must be a good share of the weights.
    params = {n: dict(m.named_parameters()) for n, m in nets.items()}
    certain = total = 0
    for name, g64 in grads["ref64"].items():
        gf, gr = grads["fused"][name], grads["ref"][name]
        assert_close_rel(gf, g64, gr, f"grad {name}")
        tol = 2 * (gr.double() - g64).abs().max() + ATOL[gf.dtype]
        moved = g64.abs() > 4 * tol
        mask = moved | ((g64 == 0) & (gf == 0) & (gr == 0))
        certain, total = certain + int(moved.sum()), total + mask.numel()
        p = {n: params[n][name].detach() for n in nets}
        assert_close_rel(p["fused"][mask], p["ref64"][mask], p["ref"][mask], f"{name} after the step")
    assert certain > min_certain * total, f"only {certain} of {total} weights have a clearly non-zero gradient"
    with torch.no_grad():   # the updated weights are the ones the next forward reads
        with ctx():
            after = {n: shortcut_loss(nets[n], batches[n])[0] for n in ("fused", "ref")}
        after["ref64"] = shortcut_loss(ref64, batches["ref64"])[0]
    assert_close_rel(after["fused"], after["ref64"], after["ref"], "loss after the step")
    assert not torch.allclose(after["fused"], losses["fused"].detach())


def test_production_training_step_matches_reference(gen, device, strict_kernels):
    """CPU cost: the interpreter runs the adaLN kernels one program per token row, so B·T stays small."""
    fused, ref, ref64 = _production_models(gen, device, input_size=8)
    x1 = torch.randn(4, 4, 8, 8, generator=gen).to(device)
    _check_training_step(fused, ref, ref64, x1, torch.randint(0, 10, (4,), generator=gen).to(device))


def test_auto_runs_references_on_cpu(gen):
    """CPU only, by design: "auto" means the references on CPU tensors (the Triton kernels on CUDA ones)."""
    fused, ref, _ = _models(gen, device="cpu")
    auto = copy.deepcopy(fused)
    auto.kernels = "auto"
    x, t, k, y = _inputs(2, gen, device="cpu")
    assert not auto.uses_triton(x)
    assert torch.equal(auto(x, t, k, y), ref(x, t, k, y))


def test_same_state_dict(gen, device):
    fused, ref, _ = _models(gen, device=device)
    a, b = fused.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fused_model_compiles_fullgraph(gen, device, strict_kernels):
    """The whole fused model traces without graph breaks; compiled == eager, outputs and gradients."""
    torch._dynamo.reset()
    fused, _, _ = _models(gen, device=device)
    x, t, k, y = _inputs(2, gen, device=device)
    g = torch.randn(2, 4, 8, 8, generator=gen).to(device)
    out_e, grads_e = _forward_backward(fused, (x, t, k, y), g)
    compiled = torch.compile(fused, fullgraph=True)
    out_c, grads_c = _forward_backward(compiled, (x, t, k, y), g)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-5, msg=name)


def test_nvtx_ranges(gen, device, monkeypatch):
    nvtx = pytest.importorskip("nvtx")   # optional; the GPU machines' image may lack it
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
    fused, ref, _ = _models(gen, device=device)
    x, t, k, y = _inputs(2, gen, device=device)
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
def _cuda_production_models(gen, preset="DiT-B/2", input_size=16, depth=2):
    return _production_models(gen, "cuda", preset=preset, input_size=input_size, num_classes=1000, depth=depth)


@cuda
@pytest.mark.parametrize("preset", ["DiT-B/2", "DiT-XL/2"])
def test_cuda_production_model_under_autocast(preset, gen, strict_kernels):
    """The production path at real widths (head_dim 64; 72), 256 tokens, depth cut to 2, bf16 autocast."""
    fused, ref, ref64 = _cuda_production_models(gen, preset, input_size=32)
    x, t, k, y = _model_inputs(fused, 4, gen, "cuda")
    _check_model(fused, ref, ref64, x, t, k, y, torch.randn(x.shape, generator=gen).cuda(), autocast=torch.bfloat16)


@cuda
def test_cuda_production_model_compiled(gen, strict_kernels):
    """torch.compile(fullgraph=True) of the production model under bf16 autocast, outputs and gradients."""
    torch._dynamo.reset()
    fused, ref, ref64 = _cuda_production_models(gen)
    x, t, k, y = _model_inputs(fused, 4, gen, "cuda")
    _check_model(torch.compile(fused, fullgraph=True), ref, ref64, x, t, k, y,
                 torch.randn(x.shape, generator=gen).cuda(), autocast=torch.bfloat16)


@cuda
def test_cuda_production_model_in_graph_sampler(gen, strict_kernels):
    """The production model replayed in a CUDA graph (fp32 weights under bf16 autocast, CFG, 4 steps), with new
    noise and labels at every replay: against the fp32 reference's eager samples, the bar set by the reference
    sampled eagerly under the same autocast."""
    fused, ref, _ = _cuda_production_models(gen)
    fused.eval()
    ref.eval()
    gs = GraphSampler(fused, 3, steps=4, cfg_scale=1.5)
    assert gs.graphed and gs.dtype == torch.bfloat16
    for replay in range(3):
        noise = torch.randn(3, 4, 16, 16, generator=gen).cuda()
        y = torch.randint(0, 1001, (3,), generator=gen).cuda()
        out = gs(noise.bfloat16(), y)
        with torch.autocast("cuda", torch.bfloat16):
            bar = sample(ref, noise.bfloat16(), 4, y=y, cfg_scale=1.5)
        assert_close_rel(out, sample(ref, noise, 4, y=y, cfg_scale=1.5), bar, f"replay {replay}")


@cuda
def test_cuda_production_training_step(gen, strict_kernels):
    """One training step under bf16 autocast. Its gradient tolerance is wide, so fewer weights have a certain
    AdamW update sign than in fp32 (at least 1 % are required)."""
    fused, ref, ref64 = _cuda_production_models(gen)
    x1 = torch.randn(8, 4, 16, 16, generator=gen).cuda()
    _check_training_step(fused, ref, ref64, x1, torch.randint(0, 1000, (8,), generator=gen).cuda(),
                         autocast=torch.bfloat16, min_certain=0.01)


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
