"""Progress bars are tqdm's: train shows steps, rate and loss on stderr, and nothing when switched off."""
from shortcut import TrainConfig, train


def _run(tmp_path, progress):
    train(TrainConfig(data="moons", steps=3, batch_size=8, log_every=1, out_dir=str(tmp_path / str(progress)),
                      progress=progress, grid_steps=(1,), model_overrides={"hidden": 16, "depth": 1}))


def test_train_progress_bar(tmp_path, capsys):
    _run(tmp_path, True)
    err = capsys.readouterr().err
    assert "3/3" in err and "step" in err and "loss=" in err, err   # tqdm: count, rate (step/s), postfix
    _run(tmp_path, False)
    assert capsys.readouterr().err == ""
