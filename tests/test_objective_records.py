"""The objective a model was trained with travels with it (checkpoints, save_pretrained folders), and the
command line and FID sample every model with its own sampler, without flags: `shortcut eval` over folders
and checkpoints of different objectives, `shortcut sample`, the MeanFlow guidance refusal, fid.model_stats."""
import json
import os

import numpy as np
import pytest
import torch
from conftest import DEVICE, cli_error, redraw_zero_init
from PIL import Image

from shortcut import ModelConfig, ShortcutDiT, ShortcutMLP, TrainConfig, from_pretrained, sample, save_pretrained
from shortcut.cli import main
from shortcut.eval import METRICS_2D, evaluate_2d, format_table, grid_image
from shortcut.fid import model_stats
from shortcut.model import architecture

MOONS = {"name": "moons", "shape": [2], "num_classes": 0, "latent": None, "classes": []}


def _mlp(objective, seed=0, ignore_k=False, num_classes=0):
    torch.manual_seed(seed)
    model = ShortcutMLP(hidden=32, depth=2, num_classes=num_classes, ignore_k=ignore_k).eval()
    model.objective = objective
    return model


def _folder(tmp_path, name, model, info=MOONS):
    return save_pretrained(model, str(tmp_path / name), data_info=info)


def _checkpoint(path, model, objective, config_objective="flow"):
    """A checkpoint as shortcut.train writes it (the keys a loader reads), with a top-level objective or not."""
    state = model.state_dict()
    cfg = TrainConfig(data="moons")
    cfg.objective.objective = config_objective
    ckpt = {"architecture": architecture(model), "model": state, "ema": state, "config": cfg.to_dict(), "step": 3,
            "data_info": MOONS, "guidance": None}
    if objective is not None:
        ckpt["objective"] = objective
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(ckpt, path)
    return ckpt


def test_pretrained_folders_record_the_objective(tmp_path):
    model = _mlp("consistency_training")
    d = _folder(tmp_path, "ct", model)
    assert json.load(open(os.path.join(d, "config.json")))["objective"] == "consistency_training"
    assert from_pretrained(d).objective == "consistency_training"
    assert ShortcutMLP.from_pretrained(d).objective == "consistency_training"
    # A folder written before the objective was recorded: None (sampled as before).
    config = json.load(open(os.path.join(d, "config.json")))
    del config["objective"]
    json.dump(config, open(os.path.join(d, "config.json"), "w"))
    assert from_pretrained(d).objective is None
    # A bare model without an objective writes null.
    bare = _folder(tmp_path, "bare", _mlp(None))
    assert json.load(open(os.path.join(bare, "config.json")))["objective"] is None


def test_save_pretrained_from_a_checkpoint_records_its_objective(tmp_path):
    model = _mlp(None)
    ckpt = _checkpoint(str(tmp_path / "a" / "checkpoint.pt"), model, "meanflow")
    assert from_pretrained(save_pretrained(ckpt, str(tmp_path / "a_out"))).objective == "meanflow"
    # Older checkpoints: the TrainConfig's objective.
    old = _checkpoint(str(tmp_path / "b" / "checkpoint.pt"), model, None, config_objective="flow")
    out = save_pretrained(str(tmp_path / "b" / "checkpoint.pt"), str(tmp_path / "b_out"))
    assert old.get("objective") is None and from_pretrained(out).objective == "flow"


def test_eval_mixes_objectives_each_with_its_sampler(tmp_path, capsys):
    """Folders of a flow, a consistency-training and a MeanFlow model and a consistency-training checkpoint
    in one table; each column is evaluate_2d of that model with its own sampler."""
    models = {"flow": _mlp("flow", 1, ignore_k=True), "ct": _mlp("consistency_training", 2),
              "mf": _mlp("meanflow", 3)}
    paths = [_folder(tmp_path, name, m) for name, m in models.items()]
    _checkpoint(str(tmp_path / "ckpt" / "checkpoint.pt"), models["ct"], "consistency_training")
    paths.append(str(tmp_path / "ckpt" / "checkpoint.pt"))
    main(["eval", "--ckpt", *paths, "--steps", "1", "3", "--device", DEVICE.type])
    out = capsys.readouterr().out.strip()
    models["ckpt"] = models["ct"]
    expected = {name: evaluate_2d(m.to(DEVICE), "moons", [1, 3], device=DEVICE) for name, m in models.items()}
    assert out == format_table(expected, METRICS_2D)
    # The check can fail: without its objective the consistency model samples with the shortcut schedule.
    models["ct"].objective = None
    assert evaluate_2d(models["ct"], "moons", [3], device=DEVICE)[0] != expected["ct"][1]


def test_sample_command_uses_the_recorded_sampler(tmp_path, capsys, gen):
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=1, num_classes=10, ignore_k=True)
    model = redraw_zero_init(ShortcutDiT(cfg, kernels="torch"), gen).eval()
    model.objective = "consistency_training"
    info = {"name": "digits", "shape": [1, 8, 8], "num_classes": 10, "latent": None, "classes": []}
    d = _folder(tmp_path, "ct-dit", model, info)
    png = str(tmp_path / "s.png")
    main(["sample", "--ckpt", d, "--steps", "1", "3", "--n", "4", "--seed", "2", "--out", png, "--device", DEVICE.type])
    assert capsys.readouterr().out.strip() == png
    model = from_pretrained(d, device=DEVICE)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    y = torch.arange(4, device=DEVICE)
    rows = [sample(model, noise, s, y=y, generator=torch.Generator().manual_seed(3)).float().cpu() for s in (1, 3)]
    assert np.array_equal(np.asarray(Image.open(png)), np.asarray(grid_image(rows)))
    model.objective = "flow"   # the check can fail: equal Euler steps give other 3-step images
    flow = sample(model, noise, 3, y=y).float().cpu()
    assert not np.array_equal(np.asarray(grid_image([rows[0], flow])), np.asarray(Image.open(png)))


def test_meanflow_refuses_cfg_scale_on_the_command_line(tmp_path, capsys, monkeypatch):
    d = _folder(tmp_path, "mf", _mlp("meanflow"))
    out = str(tmp_path / "mf.png")
    err = cli_error(["sample", "--ckpt", d, "--steps", "2", "--cfg-scale", "2", "--out", out, "--device", DEVICE.type],
                    capsys, monkeypatch)
    assert "MeanFlow model has its guidance trained into u" in err and not os.path.exists(out)
    main(["sample", "--ckpt", d, "--steps", "2", "--cfg-scale", "2", "--force-cfg", "--out", out,
          "--device", DEVICE.type])
    assert os.path.exists(out)


def test_model_stats_samples_with_the_models_policy(device):
    feats = lambda x: x.double()   # noqa: E731  the 2-D samples are their own features
    # A shortcut model that distilled w = 1.5: the policy guides at 128 steps (its null label's level).
    model = _mlp(None, num_classes=3).to(device)
    model.guidance = {"distilled": True, "scale": 1.5, "null_levels": [7]}
    g = torch.Generator().manual_seed(4)
    noise = torch.cat([torch.randn(b, 2, generator=g) for b in (4, 2)]).to(device)
    y = (torch.arange(6) % 3).to(device)
    st = model_stats(model, feats, 6, 128, (2,), num_classes=3, batch_size=4, seed=4, device=device)
    torch.testing.assert_close(torch.from_numpy(st.mu), sample(model, noise, 128, y=y, cfg_scale=1.5).double().mean(0).cpu())
    assert not np.allclose(st.mu, sample(model, noise, 128, y=y, cfg_scale=1.0).double().mean(0).cpu().numpy())
    # A consistency-training model: one re-noising generator (seed + 1) across the batches.
    model.objective, model.guidance = "consistency_training", None
    st = model_stats(model, feats, 6, 3, (2,), num_classes=3, batch_size=4, seed=4, device=device)
    r = torch.Generator().manual_seed(5)
    x = torch.cat([sample(model, noise[:4], 3, y=y[:4], generator=r), sample(model, noise[4:], 3, y=y[4:], generator=r)])
    torch.testing.assert_close(torch.from_numpy(st.mu), x.double().mean(0).cpu())
    # MeanFlow: an explicit scale only when forced.
    model.objective = "meanflow"
    with pytest.raises(ValueError, match="MeanFlow"):
        model_stats(model, feats, 6, 2, (2,), num_classes=3, cfg_scale=2.0, device=device)
    model_stats(model, feats, 6, 2, (2,), num_classes=3, cfg_scale=2.0, device=device, force_cfg=True)
