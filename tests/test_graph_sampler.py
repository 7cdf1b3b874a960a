"""GraphSampler and the conditioning cache: same samples as shortcut.sample, argument errors, the cache of
captured loops, weight updates, seeded noise. Tests without @cuda run on the `device` fixture: on a CPU the
static-buffer loop runs eagerly, on a GPU they capture and replay real CUDA graphs; @cuda tests add bf16/fp16,
the fused kernels at larger sizes and host-sync checks."""
import gc
import math

import pytest
import torch
from conftest import DEVICE, assert_close_rel, assert_replay_matches, cuda, random_tiny_dit
from torch.utils._python_dispatch import TorchDispatchMode

import shortcut.graph as graph_mod
from shortcut import GraphSampler, ModelConfig, ShortcutDiT, ShortcutMLP, sample
from shortcut.graph import (ConditioningCache, _cached_graphs, _hash32, _mul32, clear_graphs, sample_cached,
                            seeded_noise)


def _model(gen, kernels="torch", num_classes=5, device=DEVICE, **overrides):
    """A tiny DiT with every weight random (adaLN-Zero and the zero final layer would make v̂ = 0)."""
    return random_tiny_dit(gen, device, kernels, num_classes, **overrides)


@pytest.fixture
def dit(gen, device):
    return _model(gen, device=device)


def _noise(B, gen, dtype=torch.float32, device=DEVICE):
    return torch.randn(B, 3, 8, 8, generator=gen).to(device, dtype)


# ---------------------------------------------------------------------------------------------------
# Same samples as shortcut.sample.

@pytest.mark.parametrize("steps", [1, 4, 128])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_conditioning_cache_sampling_equals_sample(dit, gen, device, steps, cfg_scale):
    noise, y = _noise(3, gen, device=device), torch.tensor([0, 4, 5], device=device)
    ref = sample(dit, noise, steps, y=y, cfg_scale=cfg_scale)
    assert not torch.allclose(ref, noise, atol=0.1), "the model must move the samples"
    # The table's GEMMs run over all 6 labels at once, the eager ones over the batch: fp32 rounding only.
    torch.testing.assert_close(sample_cached(dit, noise, steps, y=y, cfg_scale=cfg_scale), ref, rtol=1e-5, atol=1e-5)
    gs = GraphSampler(dit, 3, steps, cfg_scale, dtype=torch.float32)
    assert gs.cond_cache is not None and gs.graphed == (device.type == "cuda")
    torch.testing.assert_close(gs(noise, y), ref, rtol=1e-5, atol=1e-5)
    # Replays with new noise and new labels are the eager samples of those.
    for labels in ([5, 1, 2], [3, 3, 0]):
        noise, y = _noise(3, gen, device=device), torch.tensor(labels, device=device)
        torch.testing.assert_close(gs(noise, y), sample(dit, noise, steps, y=y, cfg_scale=cfg_scale),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps,cfg_scale", [(1, 1.0), (4, 3.0)])
def test_uncached_loop_is_bitwise_sample(dit, gen, device, steps, cfg_scale):
    gs = GraphSampler(dit, 2, steps, cfg_scale, dtype=torch.float32, cond_cache=False)
    assert gs.cond_cache is None
    for labels in ([1, 2], [5, 0]):   # the second call replays with new noise and labels
        noise, y = _noise(2, gen, device=device), torch.tensor(labels, device=device)
        assert_replay_matches(gs(noise, y), sample(dit, noise, steps, y=y, cfg_scale=cfg_scale))


def test_unconditional_labels_default_to_null(dit, gen, device):
    noise = _noise(2, gen, device=device)
    gs = GraphSampler(dit, 2, 2, dtype=torch.float32)
    gs(noise, torch.tensor([0, 1], device=device))   # the null fill must overwrite the previous call's labels
    torch.testing.assert_close(gs(noise), sample(dit, noise, 2), rtol=1e-5, atol=1e-5)


def test_table_rows_are_the_models_modulations(dit, device):
    cache = ConditioningCache(dit, 4)
    assert cache.table.shape == (7, 4, 6 * 32 * 2 + 2 * 32) and cache.sizes == [192, 192, 64]
    y = torch.tensor([5, 0, 3], device=device)
    mods_all = cache.gather(y)                                                    # (3, 4, M)
    for i in range(4):
        c = dit.embed(torch.full((3,), i / 4, device=device), torch.full((3,), 2, device=device), y)
        for got, want in zip(cache.split(mods_all[:, i]), dit.modulations(c)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.isnan(cache.table[-1]).all()


def test_cached_loop_never_reads_conditioning_weights(dit, gen, device):
    """The point of the cache: per step, no embedder or adaLN weight is touched (counted per aten op)."""
    cond = [dit.adaLN.weight, *dit.t_embedder.parameters(), *dit.k_embedder.parameters(),
            dit.y_embedder.embedding_table.weight]
    cond_storage = {p.untyped_storage().data_ptr() for p in cond}

    class Reads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = self.cond_ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            flat = [a for a in list(args) + list((kwargs or {}).values()) if isinstance(a, torch.Tensor)]
            self.ops += 1
            self.cond_ops += any(a.untyped_storage().data_ptr() in cond_storage for a in flat)
            return func(*args, **(kwargs or {}))

    noise, y = _noise(2, gen, device=device), torch.tensor([1, 2], device=device)
    cache = ConditioningCache(dit, 4)
    with Reads() as cached:
        sample_cached(dit, noise, 4, y=y, cache=cache)
    with Reads() as eager:
        sample(dit, noise, 4, y=y)
    assert cached.cond_ops == 0
    assert eager.cond_ops >= 4 * 5            # per step at least: 2 embedder MLPs (2 Linear each), the table
    assert cached.ops < eager.ops


def test_unknown_labels_give_nan_rows_only(gen, device):
    model = _model(gen, device=device)
    noise = _noise(3, gen, device=device)
    gs = GraphSampler(model, 3, 1, dtype=torch.float32, labels=[1, 2])
    assert gs.cond_cache.table.shape[0] == 4                   # labels 1, 2, null, NaN row
    y = torch.tensor([2, 1, 5], device=device)
    torch.testing.assert_close(gs(noise, y), sample(model, noise, 1, y=y), rtol=1e-5, atol=1e-5)
    # A label outside the subset, checked on the host when y is on the CPU (whatever the model's device) ...
    with pytest.raises(ValueError, match=r"labels \[3\] are not in this sampler's labels= subset"):
        gs(noise, torch.tensor([3, 1, 2]))
    # ... and mapped to the NaN row inside the loop (what happens to device labels, never read back).
    rows = gs.cond_cache.rows(torch.tensor([3, -1, 99, 1], device=device))
    assert rows.tolist() == [3, 3, 3, 0]
    out = sample_cached(model, noise, 1, y=torch.tensor([3, 1, 2], device=device), cache=gs.cond_cache)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1:]).all()


def test_triton_kernels_with_cached_modulations(gen, device, strict_kernels):
    """The fused kernels (interpreted on a CPU) read shift/scale/gate as strided views of the gathered table rows."""
    pytest.importorskip("triton")
    model = _model(gen, kernels="triton", device=device)
    gs = GraphSampler(model, 2, 2, 1.5, dtype=torch.float32)
    for labels in ([0, 3], [5, 1]):   # the second call replays with new noise and labels
        noise, y = _noise(2, gen, device=device), torch.tensor(labels, device=device)
        torch.testing.assert_close(gs(noise, y), sample(model, noise, 2, y=y, cfg_scale=1.5), rtol=1e-4, atol=1e-4)


def test_fp32_model_samples_under_autocast(dit, gen, device):
    noise, y = _noise(2, gen, torch.bfloat16, device), torch.tensor([0, 3], device=device)
    gs = GraphSampler(dit, 2, 2, dtype=torch.bfloat16, cond_cache=False)
    out = gs(noise, y)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        ref = sample(dit, noise, 2, y=y)
    assert out.dtype == torch.bfloat16
    assert_replay_matches(out, ref)


def test_any_module_without_cache(gen, device):
    model = ShortcutMLP(hidden=16, depth=1, num_classes=3).to(device)
    noise = torch.randn(5, 2, generator=gen).to(device)
    gs = GraphSampler(model, 5, 4, dtype=torch.float32)
    assert gs.cond_cache is None
    assert_replay_matches(gs(noise), sample(model, noise, 4))
    with pytest.raises(ValueError, match="cond_cache=True needs a ShortcutDiT"):
        GraphSampler(model, 5, 4, dtype=torch.float32, cond_cache=True)
    with pytest.raises(ValueError, match="cannot infer one sample's shape"):
        GraphSampler(torch.nn.Linear(2, 2), 5, 4, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------
# Bad input.

@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(batch_size=True), "batch_size must be a positive int"),
    (dict(steps=0), "steps must be an int in 1 … 128"),
    (dict(steps=256), "steps must be an int in 1 … 128"),
    (dict(cfg_scale=float("nan")), "cfg_scale must be a finite number"),
    (dict(cfg_scale=True), "cfg_scale must be a finite number"),
    (dict(cond_cache="yes"), "cond_cache must be"),
    (dict(dtype=torch.int32), "dtype must be None or one of"),
    (dict(labels=[0, 9]), r"labels must lie in \[0, 5\]"),
    (dict(labels=[]), "labels must be a non-empty sequence"),
    (dict(shape=(3, 0)), "shape must be a tuple of positive ints"),
])
def test_constructor_errors(dit, kwargs, match):
    args = dict(batch_size=2, steps=1, dtype=torch.float32) | kwargs
    with pytest.raises(ValueError, match=match):
        GraphSampler(dit, **args)


def test_half_model_needs_its_dtype(gen, device):
    model = _model(gen, device=device).to(torch.float16)
    with pytest.raises(ValueError, match="needs an fp32 model"):
        GraphSampler(model, 1, 1, dtype=torch.bfloat16)
    assert GraphSampler(model, 1, 1).dtype == torch.float16


def test_call_errors(dit, gen, device):
    gs = GraphSampler(dit, 2, 1, dtype=torch.float32)
    noise = _noise(2, gen, device=device)
    with pytest.raises(ValueError, match=r"captured for batch_size=2"):
        gs(_noise(3, gen, device=device))
    with pytest.raises(ValueError, match="noise must be a floating-point tensor"):
        gs(noise.long())
    with pytest.raises(ValueError, match=f"noise must be on {gs.device}"):
        gs(noise.to("meta"))
    with pytest.raises(TypeError, match="noise must be a tensor"):
        gs(None)
    # Labels on the CPU below: GraphSampler checks those on the host whatever the model's device.
    with pytest.raises(ValueError, match=r"y must be an int64 tensor of shape \(2,\)"):
        gs(noise, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"y must be an int64 tensor"):
        gs(noise, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 5\]"):
        gs(noise, torch.tensor([1, 6]))
    with pytest.raises(ValueError, match="seed= needs GraphSampler"):
        gs(noise, seed=1)
    seeded = GraphSampler(dit, 2, 1, dtype=torch.float32, seeded=True)
    with pytest.raises(ValueError, match="draws its own noise"):
        seeded(noise)
    for bad in (None, -1, 2 ** 63, 1.5, True):
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*63\)"):
            seeded(seed=bad)


# ---------------------------------------------------------------------------------------------------
# The cache of captured loops.

def test_same_arguments_share_one_capture(dit):
    a = GraphSampler(dit, 2, 4, 1, dtype=torch.float32)
    b = GraphSampler(dit, 2, 4, 1.0, dtype=torch.float32)                  # cfg 1 == 1.0
    assert a._entry is b._entry
    others = [GraphSampler(dit, 3, 4, 1.0, dtype=torch.float32), GraphSampler(dit, 2, 2, 1.0, dtype=torch.float32),
              GraphSampler(dit, 2, 4, 2.0, dtype=torch.float32), GraphSampler(dit, 2, 4, 1.0, dtype=torch.bfloat16),
              GraphSampler(dit, 2, 4, 1.0, dtype=torch.float32, seeded=True),
              GraphSampler(dit, 2, 4, 1.0, dtype=torch.float32, cond_cache=False)]
    assert len({id(e._entry) for e in [a] + others}) == 7
    assert len(_cached_graphs(dit)) == 7
    assert _cached_graphs(dit)[0][:4] == (2, 4, (1.0,) * 4, torch.float32)   # LRU order: a/b first


def test_lru_eviction_and_lifetime(dit, gen, device, monkeypatch):
    monkeypatch.setattr(graph_mod, "MAX_GRAPHS", 2)
    noise = _noise(1, gen, device=device)
    first = GraphSampler(dit, 1, 1, dtype=torch.float32)
    GraphSampler(dit, 1, 2, dtype=torch.float32)
    GraphSampler(dit, 1, 4, dtype=torch.float32)
    assert [k[1] for k in _cached_graphs(dit)] == [2, 4]               # steps=1 dropped from the cache ...
    torch.testing.assert_close(first(noise), sample(dit, noise, 1), rtol=1e-5, atol=1e-5)   # ... not from its holder
    again = GraphSampler(dit, 1, 1, dtype=torch.float32)
    assert again._entry is not first._entry and [k[1] for k in _cached_graphs(dit)] == [4, 1]
    clear_graphs(dit)
    assert _cached_graphs(dit) == []
    # The per-model cache is weakly keyed: it goes with the model.
    model = _model(gen, device=device)
    GraphSampler(model, 1, 1, dtype=torch.float32)
    n = len(graph_mod._GRAPHS)
    del model
    gc.collect()
    assert len(graph_mod._GRAPHS) == n - 1


# ---------------------------------------------------------------------------------------------------
# Weights changing after capture.

def test_load_state_dict_in_place_is_seen(gen, device):
    model, other = _model(gen, device=device), _model(gen, device=device)
    noise, y = _noise(2, gen, device=device), torch.tensor([0, 1], device=device)
    gs = GraphSampler(model, 2, 2, dtype=torch.float32)
    before = gs(noise, y)
    model.load_state_dict(other.state_dict())
    after = gs(noise, y)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, sample(other, noise, 2, y=y), rtol=1e-5, atol=1e-5)


def test_unchecked_weights_need_refresh(gen, device):
    model, other = _model(gen, device=device), _model(gen, device=device)
    noise, y = _noise(2, gen, device=device), torch.tensor([0, 1], device=device)
    gs = GraphSampler(model, 2, 2, dtype=torch.float32, check_weights=False)
    before = gs(noise, y)
    model.load_state_dict(other.state_dict())
    # Unchecked, the conditioning table keeps the old weights' vectors; refresh() rebuilds it.
    assert not torch.allclose(gs(noise, y), sample(other, noise, 2, y=y), atol=1e-4)
    assert not torch.allclose(gs.refresh()(noise, y), before)
    torch.testing.assert_close(gs(noise, y), sample(other, noise, 2, y=y), rtol=1e-5, atol=1e-5)


def test_replaced_weights_raise_until_refresh(gen, device):
    model = _model(gen, device=device)
    noise = _noise(1, gen, device=device)
    gs = GraphSampler(model, 1, 1, dtype=torch.float32)
    gs(noise)
    for p in model.parameters():
        p.data = p.data.clone()
    with pytest.raises(RuntimeError, match="weights moved in memory"):
        gs(noise)
    torch.testing.assert_close(gs.refresh()(noise), sample(model, noise, 1), rtol=1e-5, atol=1e-5)
    model.load_state_dict(_model(gen, device=device).state_dict(), assign=True)
    with pytest.raises(RuntimeError, match="parameters were replaced"):
        gs(noise)
    torch.testing.assert_close(gs.refresh()(noise), sample(model, noise, 1), rtol=1e-5, atol=1e-5)
    model.to(torch.float16)
    with pytest.raises(ValueError, match="cannot sample in the captured torch.float32"):
        gs.refresh()


# ---------------------------------------------------------------------------------------------------
# Seeded noise.

def test_mul32_and_hash32():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2 ** 32, (1000,), generator=g, dtype=torch.int64)
    for c in (0x7FEB352D, 0x846CA68B, 0xFFFFFFFF, 1):
        assert _mul32(x, c).tolist() == [(v * c) % 2 ** 32 for v in x.tolist()]
    h = _hash32(torch.arange(1 << 16, dtype=torch.int64))
    assert h.unique().numel() == 1 << 16 and int(h.min()) >= 0 and int(h.max()) < 2 ** 32   # a bijection
    assert _hash32(torch.tensor([1])).item() != 1


def test_seeded_noise_is_standard_normal_and_reproducible():
    z = seeded_noise(7, (64, 4, 32, 32)).flatten().double()
    n = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(n) and abs(z.std().item() - 1) < 5 / math.sqrt(2 * n)
    assert abs((z.abs() < 1).double().mean().item() - math.erf(1 / math.sqrt(2))) < 0.005
    assert abs(torch.corrcoef(torch.stack([z[:-1], z[1:]]))[0, 1].item()) < 0.01   # neighbours independent
    assert torch.equal(seeded_noise(7, (64, 4, 32, 32)).flatten(), z.float())
    other = seeded_noise(8, (64, 4, 32, 32)).flatten().double()
    assert abs(torch.corrcoef(torch.stack([z, other]))[0, 1].item()) < 0.01         # seeds independent
    assert torch.equal(seeded_noise(2 ** 40 + 7, (5,)), seeded_noise(2 ** 40 + 7, (5,)))
    assert not torch.equal(seeded_noise(2 ** 40 + 7, (5,)), seeded_noise(7, (5,)))   # high bits count
    assert torch.equal(seeded_noise(7, (3, 4))[:2], seeded_noise(7, (2, 4)))      # batch prefix stable


def test_seeded_sampler_equals_sample_of_seeded_noise(dit, device):
    y = torch.tensor([1, 2], device=device)
    gs = GraphSampler(dit, 2, 2, 1.5, dtype=torch.float32, seeded=True)
    for seed in (0, 12345):
        ref = sample(dit, seeded_noise(seed, (2, 3, 8, 8), device), 2, y=y, cfg_scale=1.5)
        torch.testing.assert_close(gs(seed=seed, y=y), ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# CUDA: real graphs. Reference = the same model in fp32 (torch kernels); bar = eager in the same dtype.

def _gpu_model(gen, dtype, kernels, num_classes=10):
    cfg = ModelConfig.preset("tiny", input_size=16, in_channels=4, num_classes=num_classes, hidden_size=64,
                             num_heads=2, depth=3)
    model = ShortcutDiT(cfg, kernels="torch").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    ref = model.cuda()
    fast = ShortcutDiT(cfg, kernels=kernels).eval().cuda()
    fast.load_state_dict(ref.state_dict())
    return ref, fast.to(dtype)


@cuda
@pytest.mark.parametrize("kernels", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("steps,cfg_scale", [(1, 1.0), (4, 1.0), (4, 2.0), (128, 1.0), (128, 1.5)])
@pytest.mark.parametrize("cond_cache", [True, False])
def test_cuda_replay_matches_eager(gen, kernels, dtype, steps, cfg_scale, cond_cache):
    ref_model, model = _gpu_model(gen, dtype, kernels)
    noise = torch.randn(3, 4, 16, 16, generator=gen).cuda()
    y = torch.tensor([0, 7, 10]).cuda()
    ref = sample(ref_model, noise, steps, y=y, cfg_scale=cfg_scale)
    eager = sample(model, noise.to(dtype), steps, y=y, cfg_scale=cfg_scale)
    gs = GraphSampler(model, 3, steps, cfg_scale, cond_cache=cond_cache)
    assert gs.graphed and gs.dtype == dtype and (gs.cond_cache is not None) == cond_cache
    out = gs(noise.to(dtype), y)
    assert out.dtype == dtype
    assert_close_rel(out, ref, eager, name=f"graph {steps} steps")
    assert torch.equal(gs(noise.to(dtype), y), out)                          # replays are deterministic
    noise, y = torch.randn(3, 4, 16, 16, generator=gen).cuda(), torch.tensor([10, 3, 3]).cuda()   # new inputs
    assert_close_rel(gs(noise.to(dtype), y), sample(ref_model, noise, steps, y=y, cfg_scale=cfg_scale),
                     sample(model, noise.to(dtype), steps, y=y, cfg_scale=cfg_scale), name="replay, new labels")


@cuda
def test_cuda_no_host_sync_and_no_recapture(gen):
    _, model = _gpu_model(gen, torch.bfloat16, "triton")
    noise = torch.randn(2, 4, 16, 16, generator=gen).cuda().bfloat16()
    y = torch.tensor([1, 2]).cuda()
    gs = GraphSampler(model, 2, 4, 1.5)
    gs(noise, y)
    torch.cuda.synchronize()
    reserved = torch.cuda.memory_reserved()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            out = gs(noise, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for _ in range(20):   # same arguments: the cached capture, no new graphs or pools
        assert GraphSampler(model, 2, 4, 1.5)._entry is gs._entry
    torch.cuda.synchronize()
    assert torch.cuda.memory_reserved() == reserved and torch.isfinite(out.float()).all()


@cuda
def test_cuda_weights_update_in_place(gen):
    ref_model, model = _gpu_model(gen, torch.bfloat16, "triton")
    ref_other, other = _gpu_model(gen, torch.bfloat16, "triton")
    noise = torch.randn(2, 4, 16, 16, generator=gen).cuda()
    y = torch.tensor([3, 4]).cuda()
    gs = GraphSampler(model, 2, 1)
    gs(noise.bfloat16(), y)
    model.load_state_dict(other.state_dict())
    assert_close_rel(gs(noise.bfloat16(), y), sample(ref_other, noise, 1, y=y), sample(other, noise.bfloat16(), 1, y=y))
    model.float()
    with pytest.raises(RuntimeError, match="weights moved in memory"):
        gs(noise.bfloat16(), y)


@cuda
def test_cuda_seeded_noise_matches_cpu_and_eager(gen):
    shape = (2, 4, 16, 16)
    torch.testing.assert_close(seeded_noise(3, shape, "cuda").cpu(), seeded_noise(3, shape), rtol=1e-5, atol=1e-5)
    ref_model, model = _gpu_model(gen, torch.bfloat16, "triton")
    y = torch.tensor([5, 6]).cuda()
    gs = GraphSampler(model, 2, 4, seeded=True)
    a, b = gs(seed=3, y=y), gs(seed=4, y=y)
    assert not torch.equal(a, b) and torch.equal(gs(seed=3, y=y), a)
    eager = sample(model, seeded_noise(3, shape, "cuda", torch.bfloat16), 4, y=y)
    assert_close_rel(a, sample(ref_model, seeded_noise(3, shape, "cuda"), 4, y=y), eager)


@cuda
def test_cuda_fp32_model_under_autocast_and_compiled(gen):
    ref_model, _ = _gpu_model(gen, torch.bfloat16, "triton")
    noise = torch.randn(2, 4, 16, 16, generator=gen).cuda()
    y = torch.tensor([0, 9]).cuda()
    ref = sample(ref_model, noise, 4, y=y)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = sample(ref_model, noise.bfloat16(), 4, y=y)
    gs = GraphSampler(ref_model, 2, 4)                                       # fp32 weights, bf16 autocast
    assert_close_rel(gs(noise.bfloat16(), y), ref, eager, name="autocast")
    compiled = torch.compile(ref_model)
    gc_ = GraphSampler(compiled, 2, 4)
    assert gc_.cond_cache is None and gc_.graphed                            # "auto": keep the compiled forward
    assert_close_rel(gc_(noise.bfloat16(), y), ref, eager, name="compiled")
