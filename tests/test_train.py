"""Training loop: runs, checkpoints, exact resume, non-finite stop, EMA targets, CLI wiring."""
import importlib
import json
import os

import pytest
import torch
from conftest import cuda

from shortcut import ObjectiveConfig, TrainConfig, train
from shortcut.cli import build_parser, config_from_args, main
from shortcut.train import CHECKPOINT, ema_update, model_from_checkpoint

train_mod = importlib.import_module("shortcut.train")   # the package re-exports train() under the same name
objectives_mod = importlib.import_module("shortcut.objectives")   # the training loop's targets


def _cfg(tmp_path, **kw):
    base = dict(data="digits", preset="tiny", steps=6, batch_size=16, lr=1e-3, log_every=1, ckpt_every=3,
                out_dir=str(tmp_path / "run"), progress=False, grid_steps=(1, 2), objective=ObjectiveConfig(bootstrap_fraction=0.25))
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_metrics_checkpoint_and_grid(tmp_path):
    res = train(_cfg(tmp_path))
    run = tmp_path / "run"
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "loss_flow", "loss_bootstrap", "it_s"} <= set(r) for r in rows)
    ckpt = torch.load(run / CHECKPOINT, weights_only=False)
    assert ckpt["step"] == 6 and ckpt["config"]["preset"] == "tiny"
    assert {"model", "ema", "optimizer", "rng"} <= set(ckpt)
    assert (run / "samples.png").exists()
    assert not [f for f in os.listdir(run) if ".tmp" in f], "no temporary files left behind"
    # EMA moved away from the live weights but not equal to them
    p_live = next(res.model.parameters())
    p_ema = next(res.ema.parameters())
    assert not torch.equal(p_live, p_ema)
    model, cfg = model_from_checkpoint(str(run / CHECKPOINT))                  # loaded on the CPU
    torch.testing.assert_close(next(model.parameters()), p_ema.cpu())


def test_exact_resume(tmp_path):
    """Bitwise, so on the CPU: on CUDA the label table's gradient is accumulated with float atomics
    (index_add_ in shortcut_kernels.conditioning), whose order, and so whose last bits, vary run to run."""
    full = train(_cfg(tmp_path / "a", device="cpu"))
    part_cfg = _cfg(tmp_path / "b", steps=3, device="cpu")
    train(part_cfg)
    resumed = train(_cfg(tmp_path / "b", resume=True, device="cpu"))
    losses_full = [r["loss"] for r in full.history]
    losses_resumed = [r["loss"] for r in resumed.history]
    assert losses_resumed == losses_full[3:], "losses after resuming equal the uninterrupted run's"
    rows = [json.loads(line)["step"] for line in open(tmp_path / "b" / "run" / "metrics.jsonl")]
    assert rows == [1, 2, 3, 4, 5, 6]
    for a, b in zip(full.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(a, b)


@cuda
def test_cuda_resume(tmp_path):
    """The checkpoint's weights are mapped to the GPU, its RNG states stay CPU ByteTensors (set_state takes no
    other)."""
    train(_cfg(tmp_path, steps=2, device="cuda"))
    assert train(_cfg(tmp_path, steps=3, resume=True, device="cuda")).history[-1]["step"] == 3


def test_resume_truncates_metrics_past_checkpoint(tmp_path):
    train(_cfg(tmp_path, steps=4))          # checkpoint at 4 (last step), rows 1..4
    path = tmp_path / "run" / "metrics.jsonl"
    with open(path, "a") as f:              # an interrupted run had logged step 5 without a checkpoint
        f.write(json.dumps({"step": 5, "loss": 0.0}) + "\n")
    train(_cfg(tmp_path, steps=6, resume=True))
    assert [json.loads(line)["step"] for line in open(path)] == [1, 2, 3, 4, 5, 6]


def test_resume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_cfg(tmp_path, resume=True))
    train(_cfg(tmp_path, steps=3))
    with pytest.raises(ValueError, match="preset"):
        train(_cfg(tmp_path, preset="digits", resume=True))


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, steps=3)
    train(cfg)
    ckpt = tmp_path / "run" / CHECKPOINT
    before = ckpt.read_bytes()
    real = train_mod.make_dataset

    def poisoned(name):
        data = real(name)
        data.x = torch.full_like(data.x, float("nan"))
        return data

    monkeypatch.setattr(train_mod, "make_dataset", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite loss .* at step 4"):
        train(_cfg(tmp_path, steps=6, resume=True))
    assert ckpt.read_bytes() == before


def test_targets_come_from_ema(tmp_path, monkeypatch):
    seen = []
    real = objectives_mod.shortcut_targets

    def spy(net, *a, **kw):
        seen.append(net)
        return real(net, *a, **kw)

    monkeypatch.setattr(objectives_mod, "shortcut_targets", spy)
    res = train(_cfg(tmp_path, steps=2))
    assert all(net is res.ema for net in seen)
    seen.clear()
    res = train(_cfg(tmp_path / "live", steps=2, targets="live"))
    assert all(net is res.model for net in seen)


def test_ema_update_maths(device):
    a, b = torch.nn.Linear(2, 2).to(device), torch.nn.Linear(2, 2).to(device)
    expected = 0.9 * a.weight.detach() + 0.1 * b.weight.detach()
    ema_update(a, b, 0.9)
    torch.testing.assert_close(a.weight.detach(), expected)


def test_toy_2d_training(tmp_path):
    res = train(_cfg(tmp_path, data="moons", preset="auto", steps=3))
    assert res.history[-1]["step"] == 3
    assert (tmp_path / "run" / "samples.png").exists()


def test_bad_train_config(tmp_path):
    with pytest.raises(ValueError, match="targets"):
        _cfg(tmp_path, targets="teacher")
    with pytest.raises(ValueError, match="2-D data trains the 'mlp' model"):
        train(_cfg(tmp_path, data="moons", preset="tiny"))
    with pytest.raises(ValueError, match="unknown dataset"):
        train(_cfg(tmp_path, data="cifar"))


def test_cli_builds_config():
    args = build_parser().parse_args(["train", "--data", "moons", "--steps", "7", "--bootstrap-fraction", "0.25",
                                      "--objective", "flow", "--model", "depth=3", "--official", "true",
                                      "--betas", "0.8", "0.9"])
    cfg = config_from_args(args)
    assert (cfg.data, cfg.steps, cfg.official, cfg.betas) == ("moons", 7, True, (0.8, 0.9))
    assert cfg.objective.bootstrap_fraction == 0.25 and cfg.objective.objective == "flow"
    assert cfg.model_overrides == {"depth": 3}
    assert cfg.batch_size == TrainConfig().batch_size


def test_cli_train_eval_sample(tmp_path, capsys, device):
    out = tmp_path / "cli"
    main(["train", "--data", "8gaussians", "--steps", "2", "--batch-size", "8", "--out-dir", str(out),
          "--progress", "false"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 2
    main(["eval", "--ckpt", str(out / CHECKPOINT), "--steps", "1", "2"])
    table = capsys.readouterr().out
    assert "| steps | cli energy | cli swd |" in table and "| 2 |" in table
    png = tmp_path / "s.png"
    main(["sample", "--ckpt", str(out / CHECKPOINT), "--steps", "1", "4", "--n", "20", "--out", str(png),
          "--graph"])
    captured = capsys.readouterr()
    assert png.exists() and ("--graph needs CUDA" in captured.err) == (device.type != "cuda")


def test_cli_resume_keeps_the_runs_settings(tmp_path, capsys):
    out = str(tmp_path / "r")
    main(["train", "--data", "moons", "--steps", "2", "--batch-size", "8", "--lr", "0.005", "--ema-decay", "0.9",
          "--out-dir", out, "--progress", "false", "--grid-steps", "1"])
    main(["train", "--out-dir", out, "--steps", "4", "--resume", "true"])
    cfg = torch.load(os.path.join(out, CHECKPOINT), weights_only=False)["config"]
    assert (cfg["data"], cfg["lr"], cfg["ema_decay"], cfg["batch_size"], cfg["steps"]) == ("moons", 0.005, 0.9, 8, 4)
    with pytest.raises(SystemExit, match="no checkpoint"):
        main(["train", "--out-dir", str(tmp_path / "none"), "--resume", "true"])


def test_cli_help_comes_from_the_config_comments(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "share of each batch used for self-consistency targets (official 1/8) (default 0.125)" in text
    assert "--targets TARGETS bootstrap targets from" in text
