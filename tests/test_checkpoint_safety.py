"""Loading a checkpoint runs no code: weights-only loading everywhere, crafted pickles refused."""
import builtins
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import cli_error

from shortcut import TrainConfig, train
from shortcut.train import CHECKPOINT, load_checkpoint, model_from_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Payload:
    """Pickles as a call of `fn(*args)`: what a malicious checkpoint does when a full unpickler loads it."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _evil_checkpoint(path, marker, how):
    payload = (_Payload(os.system, f"touch {marker}") if how == "system"
               else _Payload(builtins.open, str(marker), "w"))
    torch.save({"model": {}, "ema": {}, "step": 1, "config": payload}, path)


def _one_line(err):
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("how", ["system", "open"])
def test_malicious_checkpoint_runs_nothing(tmp_path, capsys, monkeypatch, how):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    path = run / CHECKPOINT
    _evil_checkpoint(path, marker, how)

    with pytest.raises(ValueError, match=f"refusing to load '{path}'.*could run code"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="refusing to load"):
        model_from_checkpoint(str(path))
    with pytest.raises(ValueError, match="refusing to load"):
        train(TrainConfig(data="moons", out_dir=str(run), resume=True, progress=False))
    for argv in (["sample", "--ckpt", str(path), "--out", str(tmp_path / "s.png")],
                 ["eval", "--ckpt", str(path)],
                 ["export", "--ckpt", str(path), "--out", str(tmp_path / "exported")],
                 ["train", "--out-dir", str(run), "--resume", "true"]):
        err = cli_error(argv, capsys, monkeypatch)
        assert f"shortcut {argv[0]}: error: refusing to load" in err and str(path) in err
    assert not marker.exists(), "the checkpoint's payload ran"
    assert not (tmp_path / "exported").exists() and not (tmp_path / "s.png").exists()

    # The payload is live: a full unpickler runs it (so the checks above could have failed).
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_cli_refuses_malicious_checkpoint_in_a_process(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    _evil_checkpoint(path, marker, "system")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("SHORTCUT_TRACEBACK", None)
    proc = subprocess.run([sys.executable, "-m", "shortcut", "sample", "--ckpt", str(path), "--device", "cpu",
                           "--out", str(tmp_path / "s.png")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert _one_line(proc.stderr).startswith("shortcut sample: error: refusing to load")
    assert not marker.exists()


def test_checkpoints_hold_only_plain_values(tmp_path):
    """What train writes loads weights-only: configs as plain dicts (numpy numbers turned into Python ones),
    RNG states as uint8 tensors."""
    out = tmp_path / "run"
    train(TrainConfig(data="moons", steps=1, batch_size=8, lr=np.float64(1e-3), out_dir=str(out), progress=False,
                      grid_steps=(1,), model_overrides={"hidden": np.int64(16), "depth": 1}))
    ckpt = load_checkpoint(out / CHECKPOINT)
    assert type(ckpt["config"]["lr"]) is float and type(ckpt["config"]["model_overrides"]["hidden"]) is int
    assert isinstance(ckpt["config"]["objective"], dict)
    rng = ckpt["rng"]
    assert all(s.dtype == torch.uint8 for s in [rng["torch"], rng["generator"], *rng["generators"]])
    model, cfg = model_from_checkpoint(str(out / CHECKPOINT))
    assert cfg.lr == 1e-3 and model.inp.out_features == 16
    # Files written before numbers were made plain still load: numpy scalars are allow-listed (data only).
    old = tmp_path / "old.pt"
    torch.save({"config": {"lr": np.float64(1e-3), "depth": np.int64(2)}, "flag": np.bool_(True)}, old)
    assert load_checkpoint(old) == {"config": {"lr": 1e-3, "depth": 2}, "flag": True}


def test_unreadable_checkpoints(tmp_path, capsys, monkeypatch):
    text, empty = tmp_path / "notes.pt", tmp_path / "empty.pt"
    text.write_text("hello")
    empty.write_bytes(b"")
    for path in (text, empty):
        with pytest.raises(ValueError, match=f"'{path}' is not a readable checkpoint"):
            load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    assert "not a readable checkpoint" in cli_error(["eval", "--ckpt", str(text)], capsys, monkeypatch)
