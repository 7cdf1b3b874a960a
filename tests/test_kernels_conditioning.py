"""Conditioning: the fused embedders (embed_conditioning: two launches for c and SiLU(c)), the fused
sinusoidal features of t and k, the one-GEMM adaLN projections, and the ShortcutDiT plumbing around them
(three launches for embed + modulations; one concatenated Parameter shown in DiT's per-block layout).

Accuracy rule (STYLE habit 2): |fused − ref_fp64| ≤ 2·|ref_same_dtype − ref_fp64| + atol, for c, SiLU(c)
and every gradient, where the references are the model's own TimestepEmbedder / LabelEmbedder modules.
Every test runs under `strict_kernels` unless it tests a fallback.
"""
import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import HAS_CUDA, assert_close_rel, cuda
from torch.utils._python_dispatch import TorchDispatchMode

from shortcut import ModelConfig, ShortcutDiT
from shortcut.model import LabelEmbedder, TimestepEmbedder
import shortcut_kernels
from shortcut_kernels import _triton
from shortcut_kernels import (adaln_projections, conditioning, embed_conditioning, embed_conditioning_ref,
                              timestep_features, timestep_features_ref)

pytestmark = pytest.mark.usefixtures("strict_kernels")

# Ops that only make views or metadata (or compute a dtype on the host): not kernel launches.
VIEW_OPS = {"view", "_unsafe_view", "t", "split", "split_with_sizes", "slice", "select", "unsqueeze", "expand",
            "transpose", "detach", "alias", "permute", "unbind", "chunk", "reshape", "squeeze", "as_strided",
            "_to_copy", "to", "promote_types"}


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
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64, device=t.device) / half)
    out = []
    for v in (t.double() * t_scale, k.double() * k_scale):
        args = v[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args), args.new_zeros(len(v), dim - 2 * half)], 1)
        out.append(emb)
    return torch.stack(out)


def _cfg(depth=2, **kw):
    return ModelConfig.preset("tiny", input_size=8, in_channels=4, num_classes=10, depth=depth, **kw)


@pytest.mark.parametrize("dim", [256, 7, 64, 1])
@pytest.mark.parametrize("t_scale", [1000.0, 1.0])
def test_timestep_features_match_reference(dim, t_scale, gen, device):
    t = torch.rand(5, generator=gen)
    t[0] = 1.0
    t, k = t.to(device), torch.randint(0, 8, (5,), generator=gen).to(device)
    out = timestep_features(t, k, dim, t_scale, 1.0)
    assert out.shape == (2, 5, dim) and out.dtype == torch.float32
    assert_close_rel(out, _features64(t, k, dim, t_scale, 1.0), timestep_features_ref(t, k, dim, t_scale, 1.0))


def test_timestep_features_input_dtypes(gen, device):
    """Half t, int32 k and float k all embed like the reference (which casts both to fp32 first)."""
    t = torch.rand(3, generator=gen).half().to(device)
    for k in (torch.tensor([0, 3, 7], dtype=torch.int32), torch.tensor([0.0, 3.0, 7.0])):
        k = k.to(device)
        out = timestep_features(t, k, 32, 1000.0, 1.0)
        assert_close_rel(out, _features64(t.float(), k, 32, 1000.0, 1.0), timestep_features_ref(t, k, 32, 1000.0, 1.0))


def test_timestep_features_errors(device):
    t, k = torch.rand(3, device=device), torch.arange(3, device=device)
    with pytest.raises(ValueError, match=r"t must be a 1-D tensor"):
        timestep_features(t[:, None], k)
    with pytest.raises(ValueError, match=r"t and k must have the same shape"):
        timestep_features(t, k[:2])
    with pytest.raises(TypeError, match=r"k must be a real-valued tensor"):
        timestep_features(t, k > 0)
    with pytest.raises(ValueError, match=rf"k is on meta but t is on {re.escape(str(t.device))}"):
        timestep_features(t, k.to("meta"))
    with pytest.raises(ValueError, match=r"dim must be a positive int"):
        timestep_features(t, k, 0)


@pytest.mark.skipif(HAS_CUDA, reason="CPU fallback")
def test_timestep_features_fallback(monkeypatch, gen):
    monkeypatch.setattr(_triton, "INTERPRETING", False)   # as if triton were imported without it
    monkeypatch.setattr(conditioning, "_timestep_features", lambda *a: pytest.fail("kernel launched"))
    t, k = torch.rand(4, generator=gen), torch.arange(4)
    with shortcut_kernels.strict(False):
        assert torch.equal(timestep_features(t, k, 16, 1000.0), timestep_features_ref(t, k, 16, 1000.0))
    with pytest.raises(RuntimeError, match=r"timestep_features: the Triton kernel cannot run"):
        timestep_features(t, k, 16, 1000.0)


def test_adaln_projections_equal_per_block_linears(gen, device):
    D, sizes = 8, (48, 48, 16)
    c = torch.randn(3, D, generator=gen).to(device)
    w = torch.randn(sum(sizes), D, generator=gen).to(device)
    b = torch.randn(sum(sizes), generator=gen).to(device)
    mods = adaln_projections(c, w, b, sizes)
    assert [m.shape for m in mods] == [(3, s) for s in sizes]
    assert len({m.untyped_storage().data_ptr() for m in mods}) == 1, "views into one tensor"
    start = 0
    for m, s in zip(mods, sizes):
        torch.testing.assert_close(m, F.linear(F.silu(c), w[start:start + s], b[start:start + s]))
        start += s
    # A given SiLU(c) is used as it is, not recomputed from c.
    given = adaln_projections(c, w, b, sizes, silu_c=F.silu(c) + 1)
    torch.testing.assert_close(torch.cat(given, 1), F.linear(F.silu(c) + 1, w, b))
    with pytest.raises(ValueError, match=r"silu_c must have the shape of c \(3, 8\)"):
        adaln_projections(c, w, b, sizes, silu_c=c[:2])
    with pytest.raises(ValueError, match=r"sizes must add up to weight.shape\[0\] = 112"):
        adaln_projections(c, w, b, (48, 48))
    with pytest.raises(ValueError, match=r"weight must have shape \(N, 8\)"):
        adaln_projections(c, w[:, :4], b, sizes)


# --------------------------------------------------------------------------------------------------
# The model's conditioning.
def _inputs(B, gen, device):
    return (torch.rand(B, generator=gen).to(device), torch.randint(0, 8, (B,), generator=gen).to(device),
            torch.randint(0, 11, (B,), generator=gen).to(device))


class TritonLaunches:
    """Counts the Triton kernel launches of shortcut_kernels.conditioning (wraps each `kernel[grid]`)."""

    def __init__(self, monkeypatch):
        self.names = []
        for name in dir(conditioning):
            if name.startswith("_") and name.endswith("_kernel"):
                monkeypatch.setattr(conditioning, name, self._wrap(name, getattr(conditioning, name)))

    def _wrap(self, name, kernel):
        launches = self

        class Counted:
            def __getitem__(self, grid):
                launches.names.append(name)
                return kernel[grid]
        return Counted()


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "train"])
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_conditioning_costs_constant_launches(kernels, grad, gen, monkeypatch, device):
    """embed + modulations: one GEMM for all adaLN projections and the same op list at any depth; the fused
    path is three launches in all (SPEC §6): embed_hidden and embed_sum, one Triton kernel each, then addmm."""
    logs = []
    for depth in (1, 4):
        model = ShortcutDiT(_cfg(depth), kernels=kernels).to(device)
        t, k, y = _inputs(3, gen, device)
        with torch.set_grad_enabled(grad):
            c, silu_c = model.embed(t, k, y, silu=True)
            with OpLog() as log_mods:
                mods = model.modulations(c, silu_c)
            triton_launches = TritonLaunches(monkeypatch)
            with OpLog() as log:
                model.modulations(*model.embed(t, k, y, silu=True))
        assert len(mods) == depth + 1
        assert [op for op in log_mods.launches if op in ("mm", "addmm", "linear")] == ["addmm"]
        logs.append(log.launches)
        if kernels == "triton":
            assert log.launches == ["embed_hidden", "embed_sum", "addmm"]
            assert triton_launches.names == ["_embed_hidden_kernel", "_embed_sum_kernel"], "one launch per op"
        else:
            assert triton_launches.names == []
            assert len(log.launches) > 12, "the reference really is the many-launch formulation"
        monkeypatch.undo()
    assert logs[0] == logs[1]


def test_forward_uses_the_three_launch_path(gen, monkeypatch, device):
    """ShortcutDiT.forward takes SiLU(c) from the fused embed: no separate silu before the adaLN GEMM."""
    model = ShortcutDiT(_cfg(2), kernels="triton", attention="torch").to(device)
    t, k, y = _inputs(2, gen, device)
    x = torch.randn(2, 4, 8, 8, generator=gen).to(device)
    with torch.no_grad(), OpLog() as log:
        model(x, t, k, y)
    ops = log.launches
    assert ops[ops.index("embed_hidden"):ops.index("embed_hidden") + 3] == ["embed_hidden", "embed_sum", "addmm"]
    assert "silu" not in ops and "embedding" not in ops


def test_modulations_match_dit_per_block_projections(gen, device):
    model = ShortcutDiT(_cfg(3, adaln_init="xavier"), kernels="torch")
    with torch.no_grad():
        model.adaLN.bias.normal_(generator=gen)
    model = model.to(device)
    c = torch.randn(2, model.cfg.hidden_size, generator=gen).to(device)
    mods = model.modulations(c)
    for block, m in zip(model.blocks, mods):
        lin = block.adaLN_modulation[1]
        torch.testing.assert_close(m, F.linear(F.silu(c), lin.weight, lin.bias))
    torch.testing.assert_close(mods[-1], model.final_layer.adaLN_modulation(c))
    assert [m.shape[1] for m in mods] == [6 * 32] * 3 + [2 * 32]


def test_fused_embed_matches_reference(gen, device):
    model = ShortcutDiT(_cfg(), kernels="triton")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3, generator=gen)
    model = model.to(device)
    ref64 = copy.deepcopy(model).double()
    ref64.kernels = "torch"
    ref = copy.deepcopy(model)
    ref.kernels = "torch"
    t, k, y = _inputs(5, gen, device)
    c, silu_c = model.embed(t, k, y, silu=True)
    assert torch.equal(model.embed(t, k, y), c)
    c64, silu64 = ref64.embed(t.double(), k, y, silu=True)
    c32, silu32 = ref.embed(t, k, y, silu=True)
    assert_close_rel(c, c64, c32, "c")
    assert_close_rel(silu_c, silu64, silu32, "silu(c)")
    mods, mods32, mods64 = model.modulations(c, silu_c), ref.modulations(c32), ref64.modulations(c64)
    for m, m32, m64 in zip(mods, mods32, mods64):
        assert_close_rel(m, m64, m32, "modulation")


# --------------------------------------------------------------------------------------------------
# embed_conditioning against the model's embedder modules.
def _embedders(D, freq_dim, dtype, gen, device, num_classes=10):
    """(t, k, y) embedder modules of width D on `device` with fresh weights that keep activations O(1), in
    `dtype`, and their float64 copies."""
    mods = torch.nn.ModuleList([TimestepEmbedder(D, freq_dim, 1000.0), TimestepEmbedder(D, freq_dim, 1.0),
                                LabelEmbedder(num_classes, D)])
    with torch.no_grad():
        for emb in mods[:2]:
            emb.mlp[0].weight.normal_(std=1.5 * freq_dim ** -0.5, generator=gen)
            emb.mlp[2].weight.normal_(std=D ** -0.5, generator=gen)
            emb.mlp[0].bias.normal_(std=0.5, generator=gen)
            emb.mlp[2].bias.normal_(std=0.5, generator=gen)
        mods[2].embedding_table.weight.normal_(generator=gen)
    mods = mods.to(device)
    return mods.to(dtype), copy.deepcopy(mods).double()


def _fused(mods, t, k, y):
    t_emb, k_emb, y_emb = mods
    return embed_conditioning(t, k, y, t_emb.linears(), k_emb.linears(), y_emb.embedding_table.weight,
                              t_emb.scale, k_emb.scale)


def _modules(mods, t, k, y):
    t_emb, k_emb, y_emb = mods
    c = t_emb(t) + k_emb(k) + y_emb(y)
    return c, F.silu(c)


def _params(mods):
    t_emb, k_emb, y_emb = mods
    return [*t_emb.linears(), *k_emb.linears(), y_emb.embedding_table.weight]


PARAM_NAMES = [f"{e}.{p}" for e in ("t", "k") for p in ("w1", "b1", "w2", "b2")] + ["table"]


@pytest.mark.parametrize("D", [32, 144, 1152])
@pytest.mark.parametrize("B", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_embed_conditioning_matches_embedders(dtype, B, D, gen, device):
    mods, mods64 = _embedders(D, 256, dtype, gen, device)
    t, k, y = _inputs(B, gen, device)
    c, silu_c = _fused(mods, t, k, y)
    assert c.shape == silu_c.shape == (B, D) and c.dtype == silu_c.dtype == dtype
    c_s, silu_s = _modules(mods, t, k, y)
    c64, silu64 = _modules(mods64, t.double(), k, y)
    assert_close_rel(c, c64, c_s, "c")
    assert_close_rel(silu_c, silu64, silu_s, "silu(c)")


@pytest.mark.parametrize("uses", ["both", "c", "silu"])
@pytest.mark.parametrize("B, D", [(1, 32), (5, 144)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_embed_conditioning_gradients(dtype, B, D, uses, gen, device):
    """Gradients of every weight, bias and the label table (repeated labels accumulate), whether the
    loss reads c, SiLU(c) or both."""
    mods, mods64 = _embedders(D, 256, dtype, gen, device, num_classes=3)
    t, k, _ = _inputs(B, gen, device)
    y = torch.arange(B, device=device) % 3
    g_c, g_s = torch.randn(B, D, generator=gen).to(device), torch.randn(B, D, generator=gen).to(device)

    def grads(mods, outs):
        c, silu_c = outs
        loss = 0
        if uses != "silu":
            loss = loss + (c * g_c.to(c.dtype)).sum()
        if uses != "c":
            loss = loss + (silu_c * g_s.to(silu_c.dtype)).sum()
        return torch.autograd.grad(loss, _params(mods))

    fused = grads(mods, _fused(mods, t, k, y))
    same = grads(mods, _modules(mods, t, k, y))
    ref = grads(mods64, _modules(mods64, t.double(), k, y))
    for name, g, s, r in zip(PARAM_NAMES, fused, same, ref):
        assert g.dtype == dtype and g.shape == s.shape
        assert_close_rel(g, r, s, name)


def test_embed_conditioning_strided_weights_and_odd_freq_dim(gen, device):
    """Weights are read through their strides (a column slice, a transpose); an odd freq_dim pads a zero."""
    D, Fd = 48, 7
    mods, mods64 = _embedders(D, Fd, torch.float32, gen, device)
    t, k, y = _inputs(4, gen, device)
    w1 = torch.randn(D, Fd + 5, generator=gen).to(device)[:, :Fd]
    w2 = torch.randn(D, D, generator=gen).to(device).T
    t_mlp = (w1, mods[0].mlp[0].bias, w2, mods[0].mlp[2].bias)
    k_mlp = mods[1].linears()
    table = mods[2].embedding_table.weight
    assert not w1.is_contiguous() and not w2.is_contiguous()
    c, silu_c = embed_conditioning(t, k, y, t_mlp, k_mlp, table, 1000.0)
    c_s, silu_s = embed_conditioning_ref(t, k, y, t_mlp, k_mlp, table, 1000.0)
    as64 = lambda mlp: tuple(v.double() for v in mlp)   # noqa: E731
    c64, silu64 = embed_conditioning_ref(t.double(), k, y, as64(t_mlp), as64(k_mlp), table.double(), 1000.0)
    assert_close_rel(c, c64, c_s, "c")
    assert_close_rel(silu_c, silu64, silu_s, "silu(c)")


def test_embed_conditioning_ref_is_the_modules(gen, device):
    mods, _ = _embedders(32, 256, torch.float32, gen, device)
    t, k, y = _inputs(3, gen, device)
    ref = embed_conditioning_ref(t, k, y, mods[0].linears(), mods[1].linears(), mods[2].embedding_table.weight,
                                 1000.0, 1.0)
    for a, b in zip(ref, _modules(mods, t, k, y)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_embed_conditioning_fallbacks(gen, monkeypatch, device):
    """float64, bf16 under the interpreter and CPU tensors outside it run the reference (and raise under
    strict); an empty batch is empty."""
    mods, mods64 = _embedders(16, 32, torch.float32, gen, device)
    t, k, y = _inputs(3, gen, device)
    c, silu_c = _fused(mods, t[:0], k[:0], y[:0])
    assert c.shape == silu_c.shape == (0, 16)
    with pytest.raises(RuntimeError, match=r"embed_conditioning: the Triton kernel cannot run \(dtypes"):
        _fused(mods64, t.double(), k, y)
    with shortcut_kernels.strict(False):
        for a, b in zip(_fused(mods64, t.double(), k, y), _modules(mods64, t.double(), k, y)):
            assert a.dtype == torch.float64 and torch.equal(a, b)
        if HAS_CUDA:
            return
        launches = TritonLaunches(monkeypatch)
        bf16 = copy.deepcopy(mods).bfloat16()
        for a, b in zip(_fused(bf16, t, k, y), _modules(bf16, t, k, y)):
            assert a.dtype == torch.bfloat16 and torch.equal(a, b)
        assert launches.names == []
        monkeypatch.undo()
        monkeypatch.setattr(_triton, "INTERPRETING", False)   # as if triton were imported without it
        monkeypatch.setattr(conditioning, "_embed_hidden", lambda *a: pytest.fail("kernel launched"))
        for a, b in zip(_fused(mods, t, k, y), _modules(mods, t, k, y)):
            assert torch.equal(a, b)


def test_embed_conditioning_errors(gen, device):
    mods, _ = _embedders(16, 32, torch.float32, gen, device)
    t, k, y = _inputs(3, gen, device)
    t_mlp, k_mlp, table = mods[0].linears(), mods[1].linears(), mods[2].embedding_table.weight
    with pytest.raises(ValueError, match=r"y must be a tensor of shape \(3,\)"):
        embed_conditioning(t, k, y[:2], t_mlp, k_mlp, table)
    with pytest.raises(TypeError, match=r"y must be an int64 or int32 tensor"):
        embed_conditioning(t, k, y.float(), t_mlp, k_mlp, table)
    with pytest.raises(ValueError, match=r"t and k must have the same shape"):
        embed_conditioning(t, k[:2], y, t_mlp, k_mlp, table)
    with pytest.raises(ValueError, match=r"k_mlp must be a tuple of 4 tensors"):
        embed_conditioning(t, k, y, t_mlp, k_mlp[:3], table)
    with pytest.raises(ValueError, match=r"k_mlp w2 must have shape \(16, 16\)"):
        embed_conditioning(t, k, y, t_mlp, (k_mlp[0], k_mlp[1], k_mlp[2][:, :8], k_mlp[3]), table)
    with pytest.raises(ValueError, match=r"t_mlp w1 must have shape \(8, 32\) \(D = 8 from table"):
        embed_conditioning(t, k, y, t_mlp, k_mlp, table[:, :8])
    with pytest.raises(TypeError, match=r"t_mlp b2 has dtype torch.float16 but t_mlp w1 has torch.float32"):
        embed_conditioning(t, k, y, (*t_mlp[:3], t_mlp[3].half()), k_mlp, table)
    with pytest.raises(TypeError, match=r"t_mlp and k_mlp must share a dtype"):
        embed_conditioning(t, k, y, t_mlp, tuple(v.half() for v in k_mlp), table)
    with pytest.raises(ValueError, match=rf"table is on meta but t is on {re.escape(str(t.device))}"):
        embed_conditioning(t, k, y, t_mlp, k_mlp, table.to("meta"))
    if device.type == "cpu":   # on a GPU the check would cost a device sync: out-of-range labels read a zero row
        with pytest.raises(ValueError, match=r"y must hold labels in \[0, 10\]"):
            embed_conditioning(t, k, torch.tensor([0, 11, 2]), t_mlp, k_mlp, table)


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


def test_training_sees_live_weights(gen, device):
    """Gradients reach the one Parameter; optimizer steps, EMA updates and .to() are seen at once."""
    model = ShortcutDiT(_cfg(2, adaln_init="xavier"), kernels="triton")
    with torch.no_grad():
        model.adaLN.weight.normal_(generator=gen)   # the final layer's rows start at zero
    model = model.to(device)
    t, k, y = _inputs(3, gen, device)
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
@pytest.mark.parametrize("B", [1, 3, 256])
@pytest.mark.parametrize("D", [768, 1152])
def test_cuda_embed_conditioning_bf16(B, D):
    """bf16 weights (the sampling setup) at real widths; gradients too."""
    gen = torch.Generator().manual_seed(0)
    mods, mods64 = _embedders(D, 256, torch.float32, gen, "cuda", num_classes=1000)
    mods = mods.bfloat16()
    t, k = torch.rand(B, generator=gen).cuda(), torch.randint(0, 8, (B,), generator=gen).cuda()
    y = torch.randint(0, 1001, (B,), generator=gen).cuda()
    fused, same, ref = _fused(mods, t, k, y), _modules(mods, t, k, y), _modules(mods64, t.double(), k, y)
    for name, a, s, r in zip(("c", "silu(c)"), fused, same, ref):
        assert a.dtype == torch.bfloat16
        assert_close_rel(a, r, s, name)
    g = torch.randn(B, D, generator=gen).cuda()
    grads = [torch.autograd.grad((outs[0] * g.to(outs[0].dtype)).sum() + (outs[1] * g.to(outs[1].dtype)).sum(),
                                 _params(m)) for outs, m in ((fused, mods), (same, mods), (ref, mods64))]
    for name, a, s, r in zip(PARAM_NAMES, *grads):
        assert_close_rel(a, r, s, name)


@cuda
def test_cuda_embed_conditioning_under_autocast():
    """fp32 weights under bf16 autocast: the Linears compute in bf16 (cast in registers), c is fp32 like
    the modules' sum (bf16 + bf16 + fp32 table), SiLU(c) is bf16 (what the adaLN Linear would cast it to)."""
    gen = torch.Generator().manual_seed(0)
    mods, mods64 = _embedders(1152, 256, torch.float32, gen, "cuda", num_classes=1000)
    t, k = torch.rand(8, generator=gen).cuda(), torch.randint(0, 8, (8,), generator=gen).cuda()
    y = torch.randint(0, 1001, (8,), generator=gen).cuda()
    with torch.autocast("cuda", torch.bfloat16):
        c, silu_c = _fused(mods, t, k, y)
        c_s, silu_s = _modules(mods, t, k, y)
    c64, silu64 = _modules(mods64, t.double(), k, y)
    assert c.dtype == c_s.dtype == torch.float32 and silu_c.dtype == torch.bfloat16
    assert_close_rel(c, c64, c_s, "c")
    assert_close_rel(silu_c, silu64, silu_s.bfloat16(), "silu(c)")


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
