"""Bootstrap levels under DDP / gradient accumulation: dealt from the global bootstrap count, so W shards ×
A micro-batches train the levels (and guided finest-level items) one process would at the same batch."""
import importlib
from collections import Counter

import pytest
import torch

from shortcut import ObjectiveConfig, ShortcutMLP, TrainConfig, shortcut_targets, train
from shortcut.distributed import bootstrap_counts, deal_levels, level_generator
from shortcut.objective import bootstrap_levels

objectives_mod = importlib.import_module("shortcut.objectives")   # the training loop's targets


def _global(batch, fraction, levels=7):
    n = int(batch * fraction)
    return Counter(bootstrap_levels(n, levels, None, "cpu").tolist()) if n >= levels else None


@pytest.mark.parametrize("world,accum,batch,fraction", [
    (8, 1, 256, 0.125),    # the documented 8-GPU run: 4 bootstrap items per shard, 32 globally
    (4, 2, 256, 0.125),
    (2, 4, 64, 0.25),
    (3, 1, 96, 0.125),     # 12 items over 3 shards: levels 6..0 once, leftovers at level 0
    (16, 1, 64, 0.125),    # 8 items on 16 shards: half of the shards hold none
    (1, 1, 128, 0.25),
])
def test_shards_hold_the_global_multiset(world, accum, batch, fraction):
    obj = ObjectiveConfig(bootstrap_fraction=fraction)
    S = world * accum
    for step in (1, 2, 7):
        dealt = deal_levels(batch, obj, S, step, seed=0)
        assert [len(d) for d in dealt] == bootstrap_counts(batch, fraction, S, step)
        assert Counter(torch.cat(dealt).tolist()) == _global(batch, fraction)
        assert all(d.dtype == torch.long for d in dealt)


def test_finest_level_items_spread_over_shards():
    # bootstrap_cfg guides the level-6 items: 4 of the 32 in the 8-GPU run, one on each of 4 shards.
    dealt = deal_levels(256, ObjectiveConfig(bootstrap_fraction=0.125, bootstrap_cfg=True), 8, 1, seed=0)
    assert sorted(int((d == 6).sum()) for d in dealt) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert sum(int((d == 6).sum()) for d in dealt) == 32 // 7


@pytest.mark.parametrize("world,accum,batch", [(2, 2, 32), (4, 1, 16), (8, 1, 48), (1, 4, 40)])
def test_random_branch_draws_distinct_levels_globally(world, accum, batch):
    obj = ObjectiveConfig(bootstrap_fraction=0.125)      # fewer bootstrap items than the 7 levels
    n = int(batch * 0.125)
    seen = Counter()
    for step in range(1, 41):
        levels = torch.cat(deal_levels(batch, obj, world * accum, step, seed=3)).tolist()
        assert len(levels) == n and len(set(levels)) == n and all(0 <= k < 7 for k in levels)
        assert levels == torch.cat(deal_levels(batch, obj, world * accum, step, seed=3)).tolist()  # no comms
        seen.update(levels)
    assert set(seen) == set(range(7))                     # every level trained over the run


def test_level_generator_depends_on_seed_and_step():
    draw = [torch.randperm(7, generator=level_generator(s, t)).tolist() for s, t in ((0, 1), (0, 2), (1, 1))]
    assert len({tuple(d) for d in draw}) == 3
    assert torch.randperm(7, generator=level_generator(0, 1)).tolist() == draw[0]


def test_a_shard_without_flow_items_is_an_error():
    with pytest.raises(ValueError, match="no flow item"):
        deal_levels(2, ObjectiveConfig(bootstrap_fraction=0.75), 2, 1, seed=0)


def test_shortcut_targets_takes_the_dealt_levels(gen, device):
    model = ShortcutMLP(hidden=16, depth=1, num_classes=3).to(device)
    x1, y = torch.randn(6, 2, generator=gen).to(device), torch.tensor([0, 1, 2, 0, 1, 2], device=device)
    levels = torch.tensor([6, 0, 3])
    batch = shortcut_targets(model, x1, y, ObjectiveConfig(bootstrap_fraction=0.125), generator=gen, levels=levels)
    assert batch.num_bootstrap == 3 and batch.k[:3].tolist() == [6, 0, 3] and batch.k[3:].tolist() == [7] * 3
    for t, k in zip(batch.t[:3].tolist(), levels.tolist()):   # t on the level's grid
        assert (t * 2 ** k) == int(t * 2 ** k)
    with pytest.raises(ValueError, match=r"levels must lie in \[0, 6\]"):
        shortcut_targets(model, x1, y, generator=gen, levels=torch.tensor([7]))
    with pytest.raises(ValueError, match="levels must be a 1-D integer tensor"):
        shortcut_targets(model, x1, y, generator=gen, levels=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="objective 'flow' has none"):
        shortcut_targets(model, x1, y, ObjectiveConfig(objective="flow"), generator=gen, levels=torch.tensor([1]))


def test_training_with_micro_batches_uses_the_global_levels(tmp_path, monkeypatch):
    seen = []
    real = objectives_mod.shortcut_targets

    def spy(net, x1, y, cfg, generator=None, levels=None):
        out = real(net, x1, y, cfg, generator=generator, levels=levels)
        seen.append(out.k[:out.num_bootstrap].tolist())
        return out

    monkeypatch.setattr(objectives_mod, "shortcut_targets", spy)
    # 4 micro-batches of 16, 64 · 1/4 = 16 bootstrap items: levels 6..0 twice and 2 at level 0, as one process.
    train(TrainConfig(data="moons", steps=2, batch_size=64, grad_accum=4, out_dir=str(tmp_path), progress=False,
                      grid_steps=(1,), log_every=1, objective=ObjectiveConfig(bootstrap_fraction=0.25)))
    for step in (seen[:4], seen[4:]):
        assert Counter(k for shard in step for k in shard) == _global(64, 0.25)
