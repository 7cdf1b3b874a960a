"""save_pretrained / from_pretrained: safetensors + JSON config, EMA or live weights, no training state;
clear errors for mismatched weights and checkpoints of another preset; nothing half-written."""
import json
import os

import pytest
import torch

from shortcut import ModelConfig, ObjectiveConfig, ShortcutDiT, TrainConfig, from_pretrained, save_pretrained, train
from shortcut.cli import main
from shortcut.train import CHECKPOINT, model_from_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "run"
    res = train(TrainConfig(data="digits", preset="tiny", steps=3, batch_size=8, lr=1e-3, out_dir=str(out),
                            progress=False, grid_steps=(1,), objective=ObjectiveConfig(bootstrap_fraction=0.25)))
    return out, res


def _inputs(model, n=3, device="cpu"):
    g = torch.Generator().manual_seed(0)
    c = model.cfg
    return (torch.randn(n, c.in_channels, c.input_size, c.input_size, generator=g).to(device),
            torch.rand(n, generator=g).to(device), torch.tensor([0, 3, 7], device=device),
            torch.tensor([1, 2, c.num_classes], device=device))


def test_checkpoint_round_trip_ema_and_live(run, tmp_path, device):
    out, _ = run
    d = save_pretrained(str(out / CHECKPOINT), str(tmp_path / "pre"))
    assert sorted(os.listdir(d)) == ["config.json", "ema.safetensors", "model.safetensors"]
    config = json.load(open(os.path.join(d, "config.json")))
    assert config["model_type"] == "ShortcutDiT" and config["step"] == 3
    assert config["data_info"]["shape"] == [1, 8, 8] and config["data_info"]["num_classes"] == 10
    for weights, use_ema in (("ema", True), ("live", False)):
        loaded = from_pretrained(d, weights=weights, kernels="torch", device=device)
        ref, _ = model_from_checkpoint(str(out / CHECKPOINT), use_ema=use_ema, kernels="torch")
        ref.to(device)
        assert not loaded.training and next(loaded.parameters()).device.type == device.type
        for (n1, p1), (n2, p2) in zip(loaded.state_dict().items(), ref.state_dict().items()):
            assert n1 == n2 and torch.equal(p1, p2), n1
        with torch.no_grad():
            out_loaded = loaded(*_inputs(loaded, device=device))
            torch.testing.assert_close(out_loaded, ref(*_inputs(ref, device=device)), rtol=0, atol=0)
            assert out_loaded.abs().max() > 0, "a trained model predicts v̂ ≠ 0"
    # EMA and live differ (the choice matters), and no optimizer / RNG state is shipped.
    ema, live = from_pretrained(d), from_pretrained(d, weights="live")
    assert any(not torch.equal(a, b) for a, b in zip(ema.parameters(), live.parameters()))
    assert os.path.getsize(os.path.join(d, "ema.safetensors")) < os.path.getsize(out / CHECKPOINT) / 2


def test_train_result_bare_model_and_mlp(run, tmp_path, device):
    _, res = run
    assert next(res.ema.parameters()).device.type == device.type   # trained with device="auto"
    d = save_pretrained(res, str(tmp_path / "res"), weights="ema")
    assert sorted(os.listdir(d)) == ["config.json", "ema.safetensors"]
    for a, b in zip(from_pretrained(d, device=device).parameters(), res.ema.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="holds weights \\['ema'\\], not 'live'"):
        from_pretrained(d, weights="live")
    torch.manual_seed(1)
    bare = ShortcutDiT(ModelConfig.preset("tiny", input_size=4, in_channels=2, num_classes=0))
    info = {"name": "x", "shape": [2, 4, 4], "num_classes": 0, "classes": [],
            "latent": {"vae": "some/vae", "scale_factor": 0.18215}}
    d2 = save_pretrained(bare, str(tmp_path / "bare"), weights="live", data_info=info)
    m = from_pretrained(d2, weights="live")
    assert m.data_info == info and all(torch.equal(a, b) for a, b in zip(m.parameters(), bare.parameters()))
    mlp = train(TrainConfig(data="moons", steps=2, batch_size=8, out_dir=str(tmp_path / "moons"), progress=False,
                            grid_steps=(1,)))
    d3 = save_pretrained(str(tmp_path / "moons" / CHECKPOINT), str(tmp_path / "mlp"))
    m3 = from_pretrained(d3, device=device)
    x = torch.randn(4, 2, device=device)
    args = (x, torch.zeros(4, device=device), torch.zeros(4, dtype=torch.long, device=device),
            torch.zeros(4, dtype=torch.long, device=device))
    with torch.no_grad():
        torch.testing.assert_close(m3(*args), mlp.ema(*args))


def test_errors_and_no_partial_folders(run, tmp_path, monkeypatch):
    out, res = run
    with pytest.raises(ValueError, match="weights must be a non-empty subset"):
        save_pretrained(res, str(tmp_path / "w"), weights=("best",))
    with pytest.raises(ValueError, match="a bare model has one set of weights"):
        save_pretrained(res.ema, str(tmp_path / "w"), weights=("ema", "live"))
    with pytest.raises(TypeError, match="takes a checkpoint path or dict"):
        save_pretrained(42, str(tmp_path / "w"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        save_pretrained(res, str(tmp_path / "full"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        save_pretrained(str(tmp_path / "nope.pt"), str(tmp_path / "w"))
    with pytest.raises(FileNotFoundError, match="not a pretrained shortcut model"):
        from_pretrained(str(tmp_path))

    import safetensors.torch

    def disk_full(*a, **k):
        raise OSError("No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_pretrained(res, str(tmp_path / "w"))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["full"], "nothing half-written"
    # Weights from another preset than the config says: a clear error naming both.
    d = save_pretrained(str(out / CHECKPOINT), str(tmp_path / "p"))
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["model_config"]["depth"] = 3
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(ValueError, match="do not fit the model described by config.json"):
        from_pretrained(d)


def test_checkpoint_of_another_preset_cannot_be_resumed(tmp_path):
    base = dict(data="digits", steps=2, batch_size=8, out_dir=str(tmp_path), progress=False, grid_steps=(1,))
    train(TrainConfig(preset="tiny", **base))
    with pytest.raises(ValueError, match="checkpoint was trained with preset='tiny', this run has preset='digits'"):
        train(TrainConfig(preset="digits", resume=True, **{**base, "steps": 3}))
    with pytest.raises(ValueError, match="model_overrides"):
        train(TrainConfig(preset="tiny", model_overrides={"depth": 3}, resume=True, **{**base, "steps": 3}))


def test_cli_export(run, tmp_path, capsys):
    out, _ = run
    main(["export", "--ckpt", str(out / CHECKPOINT), "--out", str(tmp_path / "exp"), "--weights", "ema"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "exp")
    assert sorted(os.listdir(tmp_path / "exp")) == ["config.json", "ema.safetensors"]
