"""`--init-from`: a run starts from the weights of a save_pretrained folder or checkpoint (live ← live, EMA ← EMA,
either standing in for a missing one), with a fresh optimizer and the chosen objective's behaviour settings (a flow
model fine-tuned into a shortcut model reads k again). Mismatches name the keys; --resume keeps its own weights.
Runs pinned to the CPU (bitwise comparisons)."""
import json

import pytest
import torch
from conftest import cli_error

from shortcut import ModelConfig, ObjectiveConfig, ShortcutDiT, TrainConfig, save_pretrained, train
from shortcut.cli import main
from shortcut.train import CHECKPOINT, load_checkpoint


def _cfg(out, objective="shortcut", **kw):
    base = dict(data="digits", steps=2, batch_size=16, lr=1e-3, log_every=1, ckpt_every=100, out_dir=str(out),
                progress=False, grid_steps=(1,), device="cpu", objective=ObjectiveConfig(objective=objective))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """A flow-matching run (tiny DiT, ignore_k): its checkpoint, a folder with both weights, one with the EMA's only."""
    out = tmp_path_factory.mktemp("flow")
    train(_cfg(out / "run", "flow", preset="tiny", steps=8))
    ckpt = str(out / "run" / CHECKPOINT)
    save_pretrained(ckpt, str(out / "both"))
    save_pretrained(ckpt, str(out / "ema-only"), weights=["ema"])
    return {"ckpt": ckpt, "both": str(out / "both"), "ema_only": str(out / "ema-only"), "state": load_checkpoint(ckpt)}


def _expect_start(res, live, ema, decay):
    """lr 0: the live weights are the source's; the EMA took one step toward them: ema + (1 − decay)·(live − ema)."""
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, live[k]), k
    for k, v in res.ema.state_dict().items():
        torch.testing.assert_close(v, torch.lerp(ema[k], live[k], 1 - decay), rtol=0, atol=1e-7, msg=k)


@pytest.mark.parametrize("which", ["both", "ckpt"])
def test_flow_model_fine_tuned_into_a_shortcut_model(tmp_path, flow, which):
    src = flow["state"]
    assert src["architecture"]["model_config"]["ignore_k"] is True
    res = train(_cfg(tmp_path, "shortcut", init_from=flow[which], steps=1, lr=0.0, weight_decay=0.0, ema_decay=0.9))
    _expect_start(res, src["model"], src["ema"], 0.9)
    assert res.model.cfg.ignore_k is False and res.model.objective == "shortcut", "issue 13: k is read again"
    ckpt = load_checkpoint(tmp_path / CHECKPOINT)
    assert ckpt["architecture"]["model_config"]["ignore_k"] is False and ckpt["objective"] == "shortcut"
    assert ckpt["source"] == {"init_from": flow[which]}
    assert all(s["step"] == 1 for s in ckpt["optimizer"]["state"].values()), "a fresh optimizer"
    # The rest of the network is the source's (DiT-shaped model from its own config, not the preset).
    assert res.model.cfg.hidden_size == src["architecture"]["model_config"]["hidden_size"] == 32


def test_ema_only_folder_starts_both(tmp_path, flow):
    res = train(_cfg(tmp_path, "shortcut", init_from=flow["ema_only"], steps=1, lr=0.0, weight_decay=0.0,
                     ema_decay=0.9))
    _expect_start(res, flow["state"]["ema"], flow["state"]["ema"], 0.9)


def test_fine_tuning_trains_and_resumes_with_its_own_weights(tmp_path, flow, capsys):
    full = train(_cfg(tmp_path / "full", "shortcut", init_from=flow["both"], steps=4))
    out = str(tmp_path / "part")
    main(["train", "--init-from", flow["both"], "--steps", "2", "--batch-size", "16", "--lr", "0.001",
          "--log-every", "1", "--progress", "false", "--device", "cpu", "--grid-steps", "1", "--out-dir", out])
    # The saved config names --init-from; --resume drops it (a resumed run continues from its own weights).
    main(["train", "--resume", "true", "--steps", "4", "--out-dir", out])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["step"] == 4 and last["loss"] == full.history[-1]["loss"]
    ckpt = load_checkpoint(tmp_path / "part" / CHECKPOINT)
    assert ckpt["source"] == {"init_from": flow["both"]} and ckpt["config"]["init_from"] == ""
    for k, v in full.ema.state_dict().items():
        assert torch.equal(v, ckpt["ema"][k]), k


def test_meanflow_from_a_flow_model_keeps_its_time_scale(tmp_path, flow):
    with pytest.warns(UserWarning, match="keeps its t_scale 1000"):
        res = train(_cfg(tmp_path / "a", "meanflow", init_from=flow["both"], steps=1))
    assert (res.model.cfg.step_input, res.model.cfg.t_scale, res.model.cfg.ignore_k) == ("interval", 1000.0, False)
    res = train(_cfg(tmp_path / "b", "meanflow", init_from=flow["both"], steps=1, model_overrides={"t_scale": 1.0}))
    assert res.model.cfg.t_scale == 1.0 and res.model.k_embedder.scale == 1.0




@pytest.fixture(scope="module")
def misfits(tmp_path_factory):
    out = tmp_path_factory.mktemp("misfits")
    five = ShortcutDiT(ModelConfig.preset("tiny", input_size=8, in_channels=1, num_classes=5))
    save_pretrained(five, str(out / "five"), data_info={"shape": [1, 8, 8], "num_classes": 5})
    train(TrainConfig(data="moons", steps=1, batch_size=8, out_dir=str(out / "moons"), progress=False,
                      grid_steps=(1,), device="cpu", model_overrides={"hidden": 16, "depth": 1}))
    return {"five": str(out / "five"), "moons": str(out / "moons" / CHECKPOINT)}


@pytest.mark.parametrize("extra, said", [
    (["--init-from", "{five}"], ["the weights of --init-from", "do not fit this run's network",
                                 "shapes differ: y_embedder.embedding_table.weight (6, 32) there, (11, 32) here"]),
    (["--init-from", "{moons}"], ["the network to start from is a ShortcutMLP",
                                  "image data of shape (1, 8, 8) trains a ShortcutDiT"]),
    (["--init-from", "{missing}"], ["--init-from: no checkpoint file or save_pretrained folder at"]),
    (["--init-from", "{flow}", "--preset", "tiny"], ["--preset tiny: this run's network is the one it starts from"]),
    (["--init-from", "{flow}", "--resume", "true"], ["exclude each other: a resumed run keeps its own weights"]),
])
def test_init_from_errors(tmp_path, capsys, monkeypatch, flow, misfits, extra, said):
    paths = {**misfits, "missing": str(tmp_path / "nowhere"), "flow": flow["both"]}
    out = tmp_path / "run"
    argv = ["train", "--steps", "1", "--batch-size", "8", "--progress", "false", "--device", "cpu",
            "--out-dir", str(out), *[a.format(**paths) for a in extra]]
    err = cli_error(argv, capsys, monkeypatch)
    assert all(s in err for s in said), err
    assert not out.exists(), "nothing written"
