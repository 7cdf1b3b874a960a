"""GraphSampler and the conditioning cache follow the model's objective like shortcut.sample: equal steps,
live reflow's levels, MeanFlow's float intervals (through the cache too), and consistency training's
re-noising from in-graph seeded noise streams; the capture key holds the objective."""
import pytest
import torch
from conftest import assert_replay_matches, redraw_zero_init

from shortcut import GraphSampler, ModelConfig, ShortcutDiT, sample
from shortcut.graph import ConditioningCache, _cached_graphs, clear_graphs, sample_cached, seeded_noise

SHAPE = (3, 8, 8)


def _dit(gen, device, objective=None, ignore_k=False):
    """A tiny DiT with random weights; MeanFlow's takes the float interval as its step input (step_input
    "interval"), the others an integer level."""
    extra = {"step_input": "interval"} if objective == "meanflow" else {}
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=3, num_classes=5, ignore_k=ignore_k, **extra)
    model = redraw_zero_init(ShortcutDiT(cfg, kernels="torch"), gen).eval().to(device)
    model.objective = objective
    return model


def _inputs(gen, device, labels=(0, 4, 5)):
    return torch.randn(len(labels), *SHAPE, generator=gen).to(device), torch.tensor(labels, device=device)


def _check(out, ref, cached):
    """Cached: the table's GEMMs run over all labels at once (fp32 rounding only); uncached: the same loop."""
    if cached:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    else:
        assert_replay_matches(out, ref)


@pytest.mark.parametrize("cond_cache", [True, False])
@pytest.mark.parametrize("objective,ignore_k", [("flow", True), ("progressive", True), ("live_reflow", False),
                                                ("meanflow", False)])
def test_graph_sampler_follows_the_objective(objective, ignore_k, cond_cache, gen, device):
    model = _dit(gen, device, objective, ignore_k)
    gs = GraphSampler(model, 3, 3, dtype=torch.float32, cond_cache=cond_cache)
    assert gs.objective == objective and (gs.cond_cache is not None) == cond_cache
    for _ in range(2):   # the second call replays with new noise and labels
        noise, y = _inputs(gen, device)
        ref = sample(model, noise, 3, y=y)
        _check(gs(noise, y), ref, cond_cache)
        torch.testing.assert_close(sample_cached(model, noise, 3, y=y), ref, rtol=1e-5, atol=1e-5)
    # The check can fail: the shortcut schedule (1/2, 1/4, 1/4) samples otherwise; an interval model (MeanFlow),
    # which takes no integer level, in three Euler steps of its instantaneous velocity (h = 0) instead.
    if objective == "meanflow":
        other = noise
        for i in range(3):
            t = torch.full((len(y),), i / 3, device=device)
            other = other + model(other, t, torch.zeros(len(y), device=device), y) / 3
    else:
        model.objective = "shortcut"
        other = sample(model, noise, 3, y=y)
    assert (other - ref).abs().max() > 1e-3


def test_meanflow_cache_rows_embed_the_interval(gen, device):
    model = _dit(gen, device, "meanflow")
    cache = ConditioningCache(model, 4)
    assert [k for _, _, k in cache.schedule] == [0.25] * 4
    y = torch.tensor([5, 0, 3], device=device)
    mods_all = cache.gather(y)
    h = torch.full((3,), 0.25, device=device)
    for i in range(4):
        want = model.modulations(model.embed(torch.full((3,), i / 4, device=device), h, y))
        for got, w in zip(cache.split(mods_all[:, i]), want):
            torch.testing.assert_close(got, w, rtol=1e-5, atol=1e-6)
    level = model.modulations(model.embed(torch.zeros(3, device=device), torch.zeros(3, dtype=torch.long,
                                                                                     device=device), y))
    assert (cache.split(mods_all[:, 0])[0] - level[0]).abs().max() > 1e-5, "k = 0 (a truncated interval) differs"
    model.objective = "flow"
    with pytest.raises(ValueError, match="cache must be a ConditioningCache built for this model's flow sampler"):
        sample_cached(model, torch.zeros(3, *SHAPE, device=device), 4, y=y, cache=cache)


def test_capture_key_holds_the_objective(gen, device):
    model = _dit(gen, device, "live_reflow")   # a level model: live reflow and shortcut plans both apply
    clear_graphs(model)
    noise, y = _inputs(gen, device)
    a = GraphSampler(model, 3, 2, dtype=torch.float32, cond_cache=False)
    model.objective = "shortcut"
    b = GraphSampler(model, 3, 2, dtype=torch.float32, cond_cache=False)
    assert a._entry is not b._entry and [k[10] for k in _cached_graphs(model)] == ["live_reflow", "shortcut"]
    assert_replay_matches(b(noise, y), sample(model, noise, 2, y=y))
    with pytest.raises(ValueError, match="now samples as a shortcut model"):
        a.refresh()
    model.objective = "live_reflow"
    assert_replay_matches(a(noise, y), sample(model, noise, 2, y=y))
    assert GraphSampler(model, 3, 2, dtype=torch.float32, cond_cache=False)._entry is a._entry


def _consistency_ref(model, x, y, steps, seed, device):
    """The official multistep consistency sampler with the re-noising from seeded_noise(seed, stream i + 1)."""
    k = torch.full((x.shape[0],), steps.bit_length() - 1, device=device)
    for i in range(steps):
        t = i / steps
        v = model(x, torch.full((x.shape[0],), t, device=device), k, y)
        x1 = x + (1 - t) * v
        if i == steps - 1:
            return x1
        x = x1 * (t + 1 / steps) + seeded_noise(seed, x.shape, device, stream=i + 1) * (1 - t - 1 / steps)


@pytest.mark.parametrize("cond_cache", [True, False])
def test_consistency_training_in_graph(cond_cache, gen, device):
    model = _dit(gen, device, "consistency_training", ignore_k=True)
    noise, y = _inputs(gen, device)
    one = GraphSampler(model, 3, 1, dtype=torch.float32, cond_cache=cond_cache)   # one step: no re-noising
    _check(one(noise, y), sample(model, noise, 1, y=y), cond_cache)
    with pytest.raises(ValueError, match="seed= needs GraphSampler"):
        one(noise, y, seed=1)
    gs = GraphSampler(model, 3, 3, dtype=torch.float32, cond_cache=cond_cache)
    out = gs(noise, y, seed=4)
    _check(out, _consistency_ref(model, noise, y, 3, 4, device), cond_cache)
    _check(gs(noise, y), _consistency_ref(model, noise, y, 3, 0, device), cond_cache)   # default seed 0
    assert (out - gs(noise, y)).abs().max() > 1e-3, "the seed picks the re-noising"
    seeded = GraphSampler(model, 3, 3, dtype=torch.float32, cond_cache=cond_cache, seeded=True)
    x0 = seeded_noise(4, (3, *SHAPE), device)
    _check(seeded(seed=4, y=y), _consistency_ref(model, x0, y, 3, 4, device), cond_cache)


def test_sample_cached_consistency_uses_the_generator(gen, device):
    model = _dit(gen, device, "consistency_training", ignore_k=True)
    noise, y = _inputs(gen, device)
    ref = sample(model, noise, 4, y=y, generator=torch.Generator().manual_seed(3))
    out = sample_cached(model, noise, 4, y=y, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert (out - sample_cached(model, noise, 4, y=y)).abs().max() > 1e-3


def test_seeded_noise_streams(device):
    shape = (64, 4, 16, 16)
    base = seeded_noise(7, shape, device)
    assert torch.equal(seeded_noise(7, shape, device, stream=0), base)
    s1, s2 = seeded_noise(7, shape, device, stream=1), seeded_noise(7, shape, device, stream=2)
    for z in (s1, s2):
        z = z.double().flatten()
        assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
    for a, b in ((base, s1), (base, s2), (s1, s2)):
        corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1].item()
        assert abs(corr) < 0.02
    assert torch.equal(seeded_noise(7, shape, device, stream=1), s1)
    for bad in (-1, 2 ** 32, 1.0, True):
        with pytest.raises(ValueError, match="stream must be an int"):
            seeded_noise(7, (2,), stream=bad)
