"""Multi-process training on CPU (gloo): 2 ranks == 1 rank with 2 micro-batches, one checkpoint, resume on
another world size; the global bootstrap share kept when the batch is split into shards.

CPU only, also on a GPU machine (`_cfg` pins device="cpu"): on CUDA rank r takes cuda:r (one GPU has no
cuda:1), and the comparisons with one process need the same deterministic arithmetic."""
import copy
import importlib
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from shortcut import ObjectiveConfig, TrainConfig, train
from shortcut.distributed import bootstrap_counts, full_tensor, shard_seed
from shortcut.data import make_dataset
from shortcut.objective import shortcut_loss, shortcut_targets
from shortcut.train import CHECKPOINT, build_model, ema_update

objectives_mod = importlib.import_module("shortcut.objectives")   # the training loop's targets


def _cfg(out, **kw):
    base = dict(data="digits", preset="tiny", steps=4, batch_size=16, lr=1e-3, log_every=1, ckpt_every=2,
                out_dir=str(out), progress=False, grid_steps=(1,), threads=1, device="cpu",
                objective=ObjectiveConfig(bootstrap_fraction=0.25))
    base.update(kw)
    return TrainConfig(**base)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, cfg_dict, result_dir):
    """One torchrun-like rank: the environment torchrun would set, then the ordinary train()."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    res = train(TrainConfig.from_dict(cfg_dict))
    params = torch.cat([full_tensor(p.detach()).flatten() for p in res.model.parameters()]).tolist()
    ema = torch.cat([full_tensor(p.detach()).flatten() for p in res.ema.parameters()]).tolist()
    with open(os.path.join(result_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"history": res.history, "params": params, "ema": ema, "world": res.world_size}, f)


def _spawn(cfg, tmp_path, world=2):
    os.makedirs(tmp_path / "results", exist_ok=True)
    mp.spawn(_worker, args=(world, _free_port(), cfg.to_dict(), str(tmp_path / "results")), nprocs=world)
    return [json.load(open(tmp_path / "results" / f"rank{r}.json")) for r in range(world)]


def _without_rate(history):
    return [{k: v for k, v in row.items() if k != "it_s"} for row in history]


def _losses(history, key="loss"):
    return [row[key] for row in history]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, the same global batch of 16 as 2 micro-batches of 8, 6 steps."""
    out = tmp_path_factory.mktemp("one")
    run = train(_cfg(out / "run", grad_accum=2, steps=6))
    first4 = train(_cfg(out / "run4", grad_accum=2))
    return run, torch.cat([p.detach().flatten() for p in first4.model.parameters()])


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_match_one_rank_with_two_micro_batches_and_resume_on_one(tmp_path, one_process, parallel):
    one, one_params = one_process
    ranks = _spawn(_cfg(tmp_path / "run", parallel=parallel), tmp_path)
    assert all(r["world"] == 2 for r in ranks)
    # The ranks stayed in lockstep: identical weights and EMA, identical (reduced) metrics.
    assert ranks[0]["params"] == ranks[1]["params"] and ranks[0]["ema"] == ranks[1]["ema"]
    assert _without_rate(ranks[0]["history"]) == _without_rate(ranks[1]["history"])
    # Same global batch on one process: the same 2 shards as 2 micro-batches -> the same trajectory.
    for key in ("loss", "loss_flow", "loss_bootstrap"):
        torch.testing.assert_close(_losses(ranks[0]["history"], key), _losses(one.history, key)[:4],
                                   rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.tensor(ranks[0]["params"]), one_params, rtol=1e-4, atol=1e-6)
    # One checkpoint, written once, no temporary files; one metrics file with one row per step.
    run = tmp_path / "run"
    assert sorted(f for f in os.listdir(run) if f.endswith(".pt")) == [CHECKPOINT]
    assert not [f for f in os.listdir(run) if ".tmp" in f]
    assert [json.loads(line)["step"] for line in open(run / "metrics.jsonl")] == [1, 2, 3, 4]
    ckpt = torch.load(run / CHECKPOINT, weights_only=False)
    assert ckpt["world"] == {"world_size": 2, "grad_accum": 1, "parallel": parallel}
    assert len(ckpt["rng"]["generators"]) == 2
    # Resume the 2-rank run on 1 process (2 micro-batches): it continues the uninterrupted run exactly.
    resumed = train(_cfg(run, grad_accum=2, steps=6, resume=True))
    torch.testing.assert_close(_losses(resumed.history), _losses(one.history)[4:], rtol=1e-4, atol=1e-6)
    assert [json.loads(line)["step"] for line in open(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_resume_on_another_shard_count_warns_and_trains(tmp_path):
    train(_cfg(tmp_path, grad_accum=2, steps=2))
    with pytest.warns(UserWarning, match="re-seeded"):
        res = train(_cfg(tmp_path, steps=3, resume=True))
    assert res.history[-1]["step"] == 3
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert ckpt["world"]["grad_accum"] == 1 and len(ckpt["rng"]["generators"]) == 1


def test_bootstrap_counts_keep_the_global_share():
    for B, f, S in [(16, 0.25, 2), (64, 0.125, 16), (256, 0.125, 8), (24, 0.3, 4), (8, 0.125, 8)]:
        for step in range(1, 5):
            counts = bootstrap_counts(B, f, S, step)
            assert sum(counts) == int(B * f) and max(counts) - min(counts) <= 1
    # The remainder rotates over the shards (no shard always carries it).
    assert bootstrap_counts(64, 0.125, 16, 1) != bootstrap_counts(64, 0.125, 16, 2)


def test_micro_batches_hold_the_global_bootstrap_share(tmp_path, monkeypatch):
    seen = []
    real = objectives_mod.shortcut_targets

    def spy(net, x1, y, cfg, generator=None, levels=None):
        out = real(net, x1, y, cfg, generator=generator, levels=levels)
        seen.append((x1.shape[0], out.num_bootstrap))
        return out

    monkeypatch.setattr(objectives_mod, "shortcut_targets", spy)
    # 8 shards of 2 items, 16 · 1/8 = 2 bootstrap items per step: one shard alone would round to 0.
    train(_cfg(tmp_path, batch_size=16, grad_accum=8, steps=3, objective=ObjectiveConfig(bootstrap_fraction=0.125)))
    per_step = [seen[i:i + 8] for i in range(0, len(seen), 8)]
    assert len(per_step) == 3
    for step in per_step:
        assert [n for n, _ in step] == [2] * 8
        assert sum(nb for _, nb in step) == 2


def test_one_process_is_unchanged_by_sharding(tmp_path):
    """grad_accum 1 on one process: shard 0 is seeded with `seed` itself and its objective config is the user's."""
    assert shard_seed(7, 0) == 7 and shard_seed(7, 1) != shard_seed(7, 2)
    a = train(_cfg(tmp_path / "a", steps=3))
    g = torch.Generator().manual_seed(0)
    cfg = _cfg(tmp_path / "b", steps=3)
    data = make_dataset("digits")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    losses = []
    for _ in range(3):   # the loop as it was before sharding existed
        x1, y = data.batch(cfg.batch_size, g)
        loss, _ = shortcut_loss(model, shortcut_targets(ema, x1, y, cfg.objective, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema_update(ema, model, cfg.ema_decay)
        losses.append(loss.item())
    assert _losses(a.history) == losses


def test_bad_split_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="divisible by world_size × grad_accum"):
        train(_cfg(tmp_path, batch_size=10, grad_accum=4))
    with pytest.raises(ValueError, match="grad_accum"):
        _cfg(tmp_path, grad_accum=0)
    with pytest.raises(ValueError, match="parallel"):
        _cfg(tmp_path, parallel="zero3")
    # 2 shards of 1 item with a 1/2 bootstrap share: a shard would hold no flow item.
    with pytest.raises(ValueError, match="no flow item"):
        train(_cfg(tmp_path, batch_size=2, grad_accum=2, objective=ObjectiveConfig(bootstrap_fraction=0.75)))


def test_torchrun_environment_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="MASTER_ADDR is not set: launch with torchrun"):
        train(_cfg(tmp_path))


def test_paper_recipes_and_cli_recipe(tmp_path):
    from shortcut.cli import build_parser, config_from_args
    from shortcut.config import TRAIN_PRESETS
    assert set(TRAIN_PRESETS) == {"celebahq256-dit-b2", "imagenet256-dit-b2", "imagenet256-dit-xl2"}
    celeba = TrainConfig.recipe("celebahq256-dit-b2", data="latents:x")
    assert (celeba.preset, celeba.batch_size, celeba.steps, celeba.official) == ("DiT-B/2", 64, 410_000, True)
    assert celeba.objective.class_dropout_prob == 1.0 and not celeba.objective.bootstrap_cfg
    xl = TrainConfig.recipe("imagenet256-dit-xl2", data="latents:x")
    assert (xl.preset, xl.batch_size, xl.steps, xl.ema_decay, xl.lr) == ("DiT-XL/2", 256, 810_000, 0.999, 1e-4)
    assert xl.objective.bootstrap_cfg and xl.objective.bootstrap_cfg_scale == 1.5
    assert xl.objective.bootstrap_fraction == 0.125 and xl.objective.class_dropout_prob == 0.1
    args = build_parser().parse_args(["train", "--recipe", "imagenet256-dit-b2", "--data", "latents:x", "--steps", "5",
                                      "--grid-steps", "1", "4", "--bootstrap-fraction", "0.25"])
    cfg = config_from_args(args, TrainConfig.recipe(args.recipe, data=args.data))
    assert (cfg.steps, cfg.batch_size, cfg.grid_steps, cfg.preset) == (5, 256, (1, 4), "DiT-B/2")
    assert cfg.objective.bootstrap_fraction == 0.25 and cfg.objective.bootstrap_cfg
    with pytest.raises(ValueError, match="unknown recipe"):
        TrainConfig.recipe("cifar10", data="x")
    # A recipe at toy scale trains (official network, guided bootstrap targets).
    res = train(TrainConfig.recipe("imagenet256-dit-b2", data="digits", preset="tiny", steps=2, batch_size=16,
                                   out_dir=str(tmp_path), progress=False, grid_steps=(1,), num_workers=0))
    assert res.model.cfg.attn_scale == "head_dim" and res.history[-1]["step"] == 2


def test_meanflow_two_ranks_match_one_rank_with_two_micro_batches(tmp_path):
    """MeanFlow's loss is computed on the unwrapped module (torch.func.jvp cannot see through DDP), so DDP's reducer
    never arms: the loop averages the gradients itself. Without that the ranks would drift apart."""
    cfg = _cfg(tmp_path / "run", steps=3, objective=ObjectiveConfig(objective="meanflow"))
    one = train(_cfg(tmp_path / "one", steps=3, grad_accum=2, objective=ObjectiveConfig(objective="meanflow")))
    ranks = _spawn(cfg, tmp_path)
    assert ranks[0]["params"] == ranks[1]["params"], "the ranks stayed in lockstep"
    torch.testing.assert_close(torch.tensor(ranks[0]["params"]),
                               torch.cat([p.detach().flatten() for p in one.model.parameters()]), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(_losses(ranks[0]["history"], "mse"), _losses(one.history, "mse"), rtol=1e-4, atol=1e-6)
