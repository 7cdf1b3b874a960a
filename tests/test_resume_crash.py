"""Resume after a crash at any moment: torn metrics, stale temporary files, failing saves, a SIGKILLed process."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from shortcut import ObjectiveConfig, TrainConfig, train
from shortcut.cli import build_parser, train_config
from shortcut.train import CHECKPOINT, METRICS, load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(tmp_path, **kw):
    base = dict(data="moons", steps=4, batch_size=16, lr=1e-3, log_every=1, ckpt_every=2, out_dir=str(tmp_path / "run"),
                progress=False, grid_steps=(1,), model_overrides={"hidden": 32, "depth": 1},
                objective=ObjectiveConfig(bootstrap_fraction=0.25))
    base.update(kw)
    return TrainConfig(**base)


def _steps(path):
    return [json.loads(line)["step"] for line in open(path)]


def test_torn_metrics_line_is_dropped_with_a_warning(tmp_path):
    full = train(_cfg(tmp_path / "a", steps=6))
    train(_cfg(tmp_path))
    path = tmp_path / "run" / METRICS
    with open(path, "a") as f:   # killed mid-write: a logged row past the checkpoint, then half a row
        f.write(json.dumps({"step": 5, "loss": 0.0}) + '\n{"step": 6, "lo')
    with pytest.warns(UserWarning, match=r"dropped a torn last line \('\{\"step\": 6, \"lo'\)"):
        resumed = train(_cfg(tmp_path, steps=6, resume=True))
    assert _steps(path) == [1, 2, 3, 4, 5, 6]
    assert [json.loads(line)["loss"] for line in open(path)] == [r["loss"] for r in full.history]
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history[4:]]


def test_metrics_edited_mid_file_are_an_error(tmp_path):
    train(_cfg(tmp_path))
    path = tmp_path / "run" / METRICS
    lines = open(path).read().splitlines()
    lines[1] = "garbage"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a JSON row \('garbage'\)"):
        train(_cfg(tmp_path, steps=6, resume=True))


def test_stale_temporary_files_are_removed(tmp_path):
    train(_cfg(tmp_path))
    run = tmp_path / "run"
    stale = [run / f"{CHECKPOINT}.tmp4242", run / f"{METRICS}.tmp4242"]
    for p in stale:
        p.write_bytes(b"half a file")
    keep = run / "notes.tmp4242"   # not ours: left alone
    keep.write_text("x")
    with pytest.warns(UserWarning, match="left by an interrupted save"):
        train(_cfg(tmp_path, steps=6, resume=True))
    assert not any(p.exists() for p in stale) and keep.exists()
    assert load_checkpoint(run / CHECKPOINT)["step"] == 6


def test_a_failing_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    train(_cfg(tmp_path))
    run = tmp_path / "run"
    before = (run / CHECKPOINT).read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        train(_cfg(tmp_path, steps=6, resume=True))
    assert (run / CHECKPOINT).read_bytes() == before
    assert sorted(os.listdir(run)) == [CHECKPOINT, METRICS, "samples.png"], "no temporary file left"
    monkeypatch.setattr(torch, "save", real_save)
    train(_cfg(tmp_path, steps=6, resume=True))   # the run goes on from step 4
    assert load_checkpoint(run / CHECKPOINT)["step"] == 6 and _steps(run / METRICS) == [1, 2, 3, 4, 5, 6]


def test_sigkill_then_resume_matches_an_uninterrupted_run_bit_for_bit(tmp_path):
    """`shortcut train` killed (SIGKILL) part-way — after its first checkpoint, if possible in the middle of
    the next save — then `--resume true`: the final weights equal those of one uninterrupted run."""
    out = tmp_path / "killed"
    args = ["train", "--data", "moons", "--steps", "400", "--batch-size", "32", "--model", "hidden=32",
            "--model", "depth=1", "--lr", "0.001", "--ckpt-every", "25", "--log-every", "1", "--threads", "1",
            "--device", "cpu", "--progress", "false", "--grid-steps", "1"]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "shortcut", *args]
    proc = subprocess.Popen([*cmd, "--out-dir", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / CHECKPOINT).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        mid_save = time.monotonic() + 0.2   # then wait briefly for the next save to be under way
        while proc.poll() is None and time.monotonic() < mid_save:
            if any(".tmp" in name for name in os.listdir(out)):
                break
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it was killed: {err.decode()[-2000:]}"
    killed_at = load_checkpoint(out / CHECKPOINT)["step"]
    assert 25 <= killed_at < 400

    resumed = subprocess.run([*cmd[:3], "train", "--out-dir", str(out), "--resume", "true", "--progress", "false"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not [name for name in os.listdir(out) if ".tmp" in name]

    threads = torch.get_num_threads()
    try:   # the uninterrupted reference, in this process, from the same command line
        cfg = train_config(build_parser().parse_args([*args, "--out-dir", str(tmp_path / "whole")]))
        whole = train(cfg)
    finally:
        torch.set_num_threads(threads)
    final = load_checkpoint(out / CHECKPOINT)
    assert final["step"] == 400
    for key, net in (("model", whole.model), ("ema", whole.ema)):
        ref = net.state_dict()
        assert all(torch.equal(final[key][name], ref[name]) for name in ref), f"{key} weights differ"
    rows = [json.loads(line) for line in open(out / METRICS)]
    assert [r["step"] for r in rows] == list(range(1, 401))
    assert [r["loss"] for r in rows] == [r["loss"] for r in whole.history]


def test_resume_takes_this_runs_optimizer_settings(tmp_path):
    """The optimizer state comes from the checkpoint, lr / betas / weight decay from the resuming run's config
    (`--resume true --lr 0`: the weights stay as saved)."""
    train(_cfg(tmp_path, steps=2))
    saved = load_checkpoint(tmp_path / "run" / CHECKPOINT)["model"]
    res = train(_cfg(tmp_path, steps=4, lr=0.0, resume=True))
    assert all(torch.equal(v, saved[k]) for k, v in res.model.state_dict().items())
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["optimizer"]["param_groups"][0]["lr"] == 0.0
