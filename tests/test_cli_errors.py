"""Bad command-line input: one line on stderr saying what is wrong and what is accepted, exit status 2."""
import pytest
from conftest import cli_error

from shortcut import TrainConfig, train
from shortcut.cli import main
from shortcut.train import CHECKPOINT


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    train(TrainConfig(data="moons", steps=1, batch_size=8, out_dir=str(out), progress=False, grid_steps=(1,),
                      model_overrides={"hidden": 16, "depth": 1}))
    return str(out / CHECKPOINT)


@pytest.mark.parametrize("flag", [["--cfg-scale", "2"], ["--force-cfg"]])
def test_eval_guidance_flags_need_fid(ckpt, capsys, monkeypatch, flag):
    """The metrics sample with each model's guidance policy: a flag they would ignore is refused, not dropped."""
    err = cli_error(["eval", "--ckpt", ckpt, "--steps", "1", *flag], capsys, monkeypatch)
    assert "--cfg-scale / --force-cfg apply to --fid only" in err


TRAIN = ["train", "--steps", "1", "--batch-size", "8", "--progress", "false"]


@pytest.mark.parametrize("argv, said", [
    (["--data", "moons", "--model", "width=64"],
     ["unknown model setting 'width'", "2-D data (ShortcutMLP) accepts hidden, depth, freq_dim"]),
    (["--data", "digits", "--model", "heads=4"],
     ["unknown model setting 'heads'", "image data (ModelConfig) accepts", "num_heads", "patch_size"]),
    (["--data", "digits", "--model", "depth"], ["--model expects KEY=VALUE", "got 'depth'"]),
    (["--data", "digits", "--model", "depth=six"], ["model setting depth='six': expected an int"]),
    (["--data", "moons", "--model", "hidden=1.5"], ["model setting hidden=1.5: expected an int"]),
    (["--data", "digits", "--preset", "DiT-Q"], ["unknown preset 'DiT-Q'", "DiT-B", "tiny"]),
    (["--data", "moons", "--preset", "tiny"], ["2-D data trains the 'mlp' model, got preset 'tiny'"]),
    (["--data", "cifar"], ["unknown dataset 'cifar'", "'digits'", "checkerboard", "images:DIR"]),
    (["--recipe", "imagenet-huge", "--data", "moons"], ["unknown recipe 'imagenet-huge'", "imagenet256-dit-b2"]),
    (["--recipe", "imagenet256-dit-b2"], ["--recipe needs --data"]),
    (["--data", "moons", "--targets", "teacher"], ["TrainConfig.targets must be 'ema' or 'live'"]),
])
def test_train_bad_input(tmp_path, capsys, monkeypatch, argv, said):
    out = tmp_path / "run"
    err = cli_error([*TRAIN, *argv, "--out-dir", str(out)], capsys, monkeypatch)
    assert all(s in err for s in said), err
    assert not out.exists(), "bad input fails before anything is written"


def test_missing_checkpoint(tmp_path, capsys, monkeypatch):
    missing = str(tmp_path / "nope" / CHECKPOINT)
    for cmd in (["sample", "--ckpt", missing], ["eval", "--ckpt", missing], ["export", "--ckpt", missing,
                "--out", str(tmp_path / "x")], ["train", "--resume", "true", "--out-dir", str(tmp_path / "nope")]):
        err = cli_error(cmd, capsys, monkeypatch)
        assert f"no checkpoint at {missing}" in err.replace("'", "")


@pytest.mark.parametrize("steps", [0, 129, 256])
def test_step_counts_outside_1_to_128(ckpt, tmp_path, capsys, monkeypatch, steps):
    png = tmp_path / "s.png"
    err = cli_error(["sample", "--ckpt", ckpt, "--steps", "1", str(steps), "--out", str(png)], capsys, monkeypatch)
    assert "steps" in err and f"got {steps}" in err and "128" in err
    assert not png.exists()
    err = cli_error(["eval", "--ckpt", ckpt, "--steps", str(steps)], capsys, monkeypatch)
    assert f"got {steps}" in err


def test_argparse_errors_are_one_line_too(ckpt, capsys, monkeypatch):
    err = cli_error(["sample", "--ckpt", ckpt, "--steps", "four"], capsys, monkeypatch)
    assert "argument --steps: invalid int value: 'four'" in err and "--help" in err
    err = cli_error(["train", "--resume", "maybe"], capsys, monkeypatch)
    assert "expected true/false, got 'maybe'" in err


def test_traceback_on_request(tmp_path, monkeypatch):
    monkeypatch.setenv("SHORTCUT_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        main(["sample", "--ckpt", str(tmp_path / "missing.pt")])


def test_good_input_still_works(ckpt, tmp_path, capsys):
    png = tmp_path / "s.png"
    main(["sample", "--ckpt", ckpt, "--steps", "1", "128", "--out", str(png)])
    assert png.exists() and capsys.readouterr().err == ""
