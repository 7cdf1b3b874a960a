"""Conditioning: the fused sinusoidal features of t and k, the one-GEMM adaLN projections, and the
ShortcutDiT plumbing around them (one concatenated Parameter shown in DiT's per-block state_dict layout).
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import HAS_CUDA, assert_close_rel, cuda
from torch.utils._python_dispatch import TorchDispatchMode

from shortcut import ModelConfig, ShortcutDiT
from shortcut_kernels import adaln_projections, conditioning, timestep_features, timestep_features_ref

# Ops that only make views or metadata: not kernel launches.
VIEW_OPS = {"view", "_unsafe_view", "t", "split", "split_with_sizes", "slice", "select", "unsqueeze", "expand",
            "transpose", "detach", "alias", "permute", "unbind", "chunk", "reshape", "squeeze", "as_strided",
            "_to_copy", "to"}


class OpLog(TorchDispatchMode):
    """Records the name of every ATen / custom op dispatched inside the context."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))

    @property
    def launches(self):
        return [op for op in self.ops if op not in VIEW_OPS]


def _features64(t, k, dim, t_scale, k_scale, max_period=10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
    out = []
    for v in (t.double() * t_scale, k.double() * k_scale):
        args = v[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args), torch.zeros(len(v), dim - 2 * half, dtype=torch.float64)], 1)
        out.append(emb)
    return torch.stack(out)


def _cfg(depth=2, **kw):
    return ModelConfig.preset("tiny", input_size=8, in_channels=4, num_classes=10, depth=depth, **kw)


@pytest.mark.parametrize("dim", [256, 7, 64, 1])
@pytest.mark.parametrize("t_scale", [1000.0, 1.0])
def test_timestep_features_match_reference(dim, t_scale, gen):
    t = torch.rand(5, generator=gen)
    t[0] = 1.0
    k = torch.randint(0, 8, (5,), generator=gen)
    out = timestep_features(t, k, dim, t_scale, 1.0)
    assert out.shape == (2, 5, dim) and out.dtype == torch.float32
    assert_close_rel(out, _features64(t, k, dim, t_scale, 1.0), timestep_features_ref(t, k, dim, t_scale, 1.0))


def test_timestep_features_input_dtypes(gen):
    """Half t, int32 k and float k all embed like the reference (which casts both to fp32 first)."""
    t = torch.rand(3, generator=gen).half()
    for k in (torch.tensor([0, 3, 7], dtype=torch.int32), torch.tensor([0.0, 3.0, 7.0])):
        out = timestep_features(t, k, 32, 1000.0, 1.0)
        assert_close_rel(out, _features64(t.float(), k, 32, 1000.0, 1.0), timestep_features_ref(t, k, 32, 1000.0, 1.0))


def test_timestep_features_errors():
    t, k = torch.rand(3), torch.arange(3)
    with pytest.raises(ValueError, match=r"t must be a 1-D tensor"):
        timestep_features(t[:, None], k)
    with pytest.raises(ValueError, match=r"t and k must have the same shape"):
        timestep_features(t, k[:2])
    with pytest.raises(TypeError, match=r"k must be a real-valued tensor"):
        timestep_features(t, k > 0)
    with pytest.raises(ValueError, match=r"k is on meta but t is on cpu"):
        timestep_features(t, k.to("meta"))
    with pytest.raises(ValueError, match=r"dim must be a positive int"):
        timestep_features(t, k, 0)


@pytest.mark.skipif(HAS_CUDA, reason="CPU fallback")
def test_timestep_features_fallback(monkeypatch, gen):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(conditioning, "_timestep_features", lambda *a: pytest.fail("kernel launched"))
    t, k = torch.rand(4, generator=gen), torch.arange(4)
    assert torch.equal(timestep_features(t, k, 16, 1000.0), timestep_features_ref(t, k, 16, 1000.0))


def test_adaln_projections_equal_per_block_linears(gen):
    D, sizes = 8, (48, 48, 16)
    c = torch.randn(3, D, generator=gen)
    w = torch.randn(sum(sizes), D, generator=gen)
    b = torch.randn(sum(sizes), generator=gen)
    mods = adaln_projections(c, w, b, sizes)
    assert [m.shape for m in mods] == [(3, s) for s in sizes]
    assert len({m.untyped_storage().data_ptr() for m in mods}) == 1, "views into one tensor"
    start = 0
    for m, s in zip(mods, sizes):
        torch.testing.assert_close(m, F.linear(F.silu(c), w[start:start + s], b[start:start + s]))
        start += s
    with pytest.raises(ValueError, match=r"sizes must add up to weight.shape\[0\] = 112"):
        adaln_projections(c, w, b, (48, 48))
    with pytest.raises(ValueError, match=r"weight must have shape \(N, 8\)"):
        adaln_projections(c, w[:, :4], b, sizes)


# --------------------------------------------------------------------------------------------------
# The model's conditioning.
def _inputs(B, gen):
    return (torch.rand(B, generator=gen), torch.randint(0, 8, (B,), generator=gen),
            torch.randint(0, 11, (B,), generator=gen))


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_conditioning_costs_constant_launches(kernels, gen):
    """embed + modulations: one GEMM for all adaLN projections, and the same op list at any depth."""
    logs = []
    for depth in (1, 4):
        model = ShortcutDiT(_cfg(depth), kernels=kernels)
        t, k, y = _inputs(3, gen)
        with torch.no_grad():
            c = model.embed(t, k, y)
            with OpLog() as log_mods:
                mods = model.modulations(c)
            with OpLog() as log:
                model.modulations(model.embed(t, k, y))
        assert len(mods) == depth + 1
        assert [op for op in log_mods.launches if op in ("mm", "addmm", "linear")] == ["addmm"]
        logs.append(log.launches)
    assert logs[0] == logs[1]
    if kernels == "triton":
        assert "timestep_features" in logs[0] and "cos" not in logs[0], "both sinusoids in one kernel"


def test_modulations_match_dit_per_block_projections(gen):
    model = ShortcutDiT(_cfg(3, adaln_init="xavier"), kernels="torch")
    with torch.no_grad():
        model.adaLN.bias.normal_(generator=gen)
    c = torch.randn(2, model.cfg.hidden_size, generator=gen)
    mods = model.modulations(c)
    for block, m in zip(model.blocks, mods):
        lin = block.adaLN_modulation[1]
        torch.testing.assert_close(m, F.linear(F.silu(c), lin.weight, lin.bias))
    torch.testing.assert_close(mods[-1], model.final_layer.adaLN_modulation(c))
    assert [m.shape[1] for m in mods] == [6 * 32] * 3 + [2 * 32]


def test_fused_embed_matches_reference(gen):
    model = ShortcutDiT(_cfg(), kernels="triton")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3, generator=gen)
    ref64 = copy.deepcopy(model).double()
    ref = copy.deepcopy(model)
    ref.kernels = "torch"
    t, k, y = _inputs(5, gen)
    assert_close_rel(model.embed(t, k, y), ref64.embed(t.double(), k, y), ref.embed(t, k, y), "c")


def test_adaln_init(gen):
    zero = ShortcutDiT(_cfg(2), kernels="torch")
    assert zero.adaLN.weight.abs().sum() == 0 and zero.adaLN.bias.abs().sum() == 0
    xav = ShortcutDiT(_cfg(2, adaln_init="xavier"), kernels="torch")
    D = 32
    bound = math.sqrt(6 / (D + 6 * D))   # each block's own fans, as DiT's per-block Linear
    for block in xav.blocks:
        w = block.adaLN_modulation[1].weight
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound and w.std() > 0.4 * bound
    assert xav.final_layer.adaLN_modulation[1].weight.abs().sum() == 0, "final layer starts at zero"


def test_state_dict_presents_dit_layout(gen):
    model = ShortcutDiT(_cfg(2, adaln_init="xavier"), kernels="triton")
    sd = model.state_dict()
    assert "adaLN.weight" not in sd and "adaLN.bias" not in sd
    assert sd["blocks.1.adaLN_modulation.1.weight"].shape == (192, 32)
    assert sd["final_layer.adaLN_modulation.1.bias"].shape == (64,)
    torch.testing.assert_close(sd["blocks.1.adaLN_modulation.1.weight"], model.adaLN.weight[192:384])
    ref = ShortcutDiT(_cfg(2), kernels="torch")
    assert {k: v.shape for k, v in ref.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    # A DiT-layout dict with independent per-block tensors loads (strict) into the concatenated Parameter.
    dit_sd = {k: v.clone() + 1 for k, v in sd.items()}
    ref.load_state_dict(dit_sd)
    for key, v in ref.state_dict().items():
        torch.testing.assert_close(v, dit_sd[key], msg=key)
    # Under a prefix too (a wrapper module, e.g. torch.compile's _orig_mod or DDP's module).
    wrapped = torch.nn.ModuleDict({"net": ShortcutDiT(_cfg(2), kernels="torch")})
    wrapped.load_state_dict({"net." + k: v for k, v in dit_sd.items()})
    torch.testing.assert_close(wrapped["net"].adaLN.weight, ref.adaLN.weight)


def test_state_dict_errors():
    model = ShortcutDiT(_cfg(2), kernels="torch")
    sd = model.state_dict()
    bad = dict(sd)
    bad["blocks.0.adaLN_modulation.1.weight"] = torch.zeros(5, 32)
    with pytest.raises(RuntimeError, match=r"size mismatch for blocks.0.adaLN_modulation.1.weight"):
        model.load_state_dict(bad)
    missing = {k: v for k, v in sd.items() if k != "final_layer.adaLN_modulation.1.bias"}
    with pytest.raises(RuntimeError, match=r"Missing key"):
        model.load_state_dict(missing)


def test_training_sees_live_weights(gen):
    """Gradients reach the one Parameter; optimizer steps, EMA updates and .to() are seen at once."""
    model = ShortcutDiT(_cfg(2, adaln_init="xavier"), kernels="triton")
    with torch.no_grad():
        model.adaLN.weight.normal_(generator=gen)   # the final layer's rows start at zero
    t, k, y = _inputs(3, gen)
    c = model.embed(t, k, y)
    before = [m.detach().clone() for m in model.modulations(c.detach())]
    loss = sum(m.square().sum() for m in model.modulations(c))
    loss.backward()
    assert model.adaLN.weight.grad is not None and model.adaLN.weight.grad.abs().sum() > 0
    assert model.t_embedder.mlp[0].weight.grad.abs().sum() > 0, "gradient flows through c to the embedders"
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    after = model.modulations(c.detach())
    assert all(not torch.allclose(a, b) for a, b in zip(after, before))
    ema = copy.deepcopy(model).requires_grad_(False)
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() * 0 for p in model.parameters()], 1.0)
    assert all(m.abs().sum() == 0 for m in ema.modulations(c.detach()))
    assert ema.blocks[0].adaLN_modulation[1].weight.abs().sum() == 0, "per-block views follow the Parameter"
    assert model.adaLN.weight.abs().sum() > 0, "deepcopy owns its own storage"
    double = copy.deepcopy(model).double()
    assert double.blocks[1].adaLN_modulation[1].weight.dtype == torch.float64


# --------------------------------------------------------------------------------------------------
@cuda
def test_cuda_timestep_features():
    gen = torch.Generator().manual_seed(0)
    t = torch.rand(256, generator=gen)
    k = torch.randint(0, 8, (256,), generator=gen)
    for t_scale in (1000.0, 1.0):
        out = timestep_features(t.cuda(), k.cuda(), 256, t_scale, 1.0)
        same = timestep_features_ref(t.cuda(), k.cuda(), 256, t_scale, 1.0)
        assert_close_rel(out, _features64(t, k, 256, t_scale, 1.0).cuda(), same)


@cuda
def test_cuda_conditioning_under_autocast():
    gen = torch.Generator().manual_seed(0)
    cfg = ModelConfig.preset("DiT-XL/2", input_size=32, in_channels=4, num_classes=1000, depth=4,
                             adaln_init="xavier")
    model = ShortcutDiT(cfg, kernels="triton").cuda()
    ref = copy.deepcopy(model)
    ref.kernels = "torch"
    t, k = torch.rand(8, generator=gen).cuda(), torch.randint(0, 8, (8,), generator=gen).cuda()
    y = torch.randint(0, 1001, (8,), generator=gen).cuda()
    with torch.autocast("cuda", torch.bfloat16):
        mods = model.modulations(model.embed(t, k, y))
        mods_s = ref.modulations(ref.embed(t, k, y))
    ref64 = copy.deepcopy(ref).double()
    mods_r = ref64.modulations(ref64.embed(t.double(), k, y))
    for m, s, r in zip(mods, mods_s, mods_r):
        assert m.dtype == s.dtype == torch.bfloat16
        assert_close_rel(m, r, s, "modulation")
