"""Guidance where the official code applies it: the record of distilled guidance (checkpoints, pretrained
folders), cfg_scale=None sampling (the distilled scale at 128 steps, w = 1 below), and a clear error for an
explicit scale at levels whose null label was never trained unless forced."""
import json
import os

import pytest
import torch
from conftest import cli_error, random_tiny_dit

from shortcut import (GraphSampler, ObjectiveConfig, ShortcutDiT, TrainConfig, from_pretrained, sample,
                      save_pretrained, step_schedule, train)
from shortcut.cli import main
from shortcut.sampler import guidance_scales
from shortcut.train import CHECKPOINT, load_checkpoint, model_from_checkpoint

DISTILLED = {"distilled": True, "scale": 1.5, "null_levels": [7]}


def test_records_from_the_objective():
    assert ObjectiveConfig(bootstrap_cfg=True).guidance(10) == DISTILLED
    assert ObjectiveConfig(bootstrap_cfg=True, bootstrap_cfg_scale=2.0, denoise_timesteps=64).guidance(10) == \
        {"distilled": True, "scale": 2.0, "null_levels": [6]}
    assert ObjectiveConfig().guidance(10) == {"distilled": False, "scale": None, "null_levels": [7]}
    assert ObjectiveConfig(objective="flow", bootstrap_cfg=True).guidance(10) == \
        {"distilled": False, "scale": None, "null_levels": None}
    assert ObjectiveConfig(bootstrap_cfg=True).guidance(0) == {"distilled": False, "scale": None, "null_levels": None}
    assert ObjectiveConfig(class_dropout_prob=0.0).guidance(10)["null_levels"] == []


def _scales(record, steps, cfg_scale=None, force_cfg=False):
    model = torch.nn.Module()
    model.guidance = record
    return guidance_scales(model, step_schedule(steps), cfg_scale, force_cfg)


def test_default_policy():
    # Official helper_eval.py: 1, 4, 32 steps at w = 1; the 'cfg' row at 128 steps with the training scale.
    for steps in (1, 4, 32, 64):
        assert _scales(DISTILLED, steps) == [1.0] * steps
    assert _scales(DISTILLED, 128) == [1.5] * 128
    # 100 steps: 28 steps of 1/64 (level 6, guidance distilled) then 72 of 1/128 (level 7, guided now).
    assert _scales(DISTILLED, 100) == [1.0] * 28 + [1.5] * 72
    for record in (None, {"distilled": False, "scale": None, "null_levels": [7]}):
        assert _scales(record, 128) == [1.0] * 128


def test_explicit_scale_needs_a_trained_null_label():
    with pytest.raises(ValueError, match=r"cfg_scale=1.5 at 4 steps needs the null label at level 2, where this "
                                         r"model never trained it \(it did only at level 7 \(128 steps\); guidance "
                                         r"with w = 1.5 is already distilled"):
        _scales(DISTILLED, 4, 1.5)
    with pytest.raises(ValueError, match="level 6, where"):
        _scales({"distilled": False, "scale": None, "null_levels": [7]}, 100, 2.0)
    with pytest.raises(ValueError, match=r"at no level \(class_dropout_prob 0\)"):
        _scales({"distilled": False, "scale": None, "null_levels": []}, 128, 2.0)
    assert _scales(DISTILLED, 4, 1.5, force_cfg=True) == [1.5] * 4
    assert _scales(DISTILLED, 4, 1.0) == [1.0] * 4           # no guidance: always fine
    assert _scales(DISTILLED, 128, 3.0) == [3.0] * 128
    assert _scales(None, 4, 3.0) == [3.0] * 4                # unknown model: the caller decides
    assert _scales({"distilled": False, "scale": None, "null_levels": None}, 3, 2.0) == [2.0] * 3   # flow
    with pytest.raises(ValueError, match="cfg_scale must be a finite number or None"):
        _scales(DISTILLED, 4, float("inf"))


def _dit(gen, device):
    model = random_tiny_dit(gen, device)
    model.guidance = dict(DISTILLED)
    return model.to(device)


def test_samplers_follow_the_policy(gen, device):
    model = _dit(gen, device)
    noise = torch.randn(2, 3, 8, 8, generator=gen).to(device)
    y = torch.tensor([1, 3], device=device)
    assert torch.equal(sample(model, noise, 4, y=y), sample(model, noise, 4, y=y, cfg_scale=1.0))
    guided = sample(model, noise, 128, y=y)
    assert torch.equal(guided, sample(model, noise, 128, y=y, cfg_scale=1.5))
    assert not torch.allclose(guided, sample(model, noise, 128, y=y, cfg_scale=1.0))
    with pytest.raises(ValueError, match="force_cfg=True"):
        sample(model, noise, 4, y=y, cfg_scale=1.5)
    forced = sample(model, noise, 4, y=y, cfg_scale=1.5, force_cfg=True)
    model.guidance = None
    assert torch.equal(forced, sample(model, noise, 4, y=y, cfg_scale=1.5))
    model.guidance = dict(DISTILLED)
    gs = GraphSampler(model, 2, 128, dtype=torch.float32)
    assert gs.cfg_scale == 1.5 and GraphSampler(model, 2, 4, dtype=torch.float32).cfg_scale == 1.0
    torch.testing.assert_close(gs(noise, y), guided, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="force_cfg=True"):
        GraphSampler(model, 2, 4, 2.0, dtype=torch.float32)
    assert GraphSampler(model, 2, 4, 2.0, dtype=torch.float32, force_cfg=True).cfg_scales == (2.0,) * 4
    mixed = GraphSampler(model, 2, 100, dtype=torch.float32)
    assert mixed.cfg_scale == (1.0,) * 28 + (1.5,) * 72
    torch.testing.assert_close(mixed(noise, y), sample(model, noise, 100, y=y), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def distilled_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("guided") / "run"
    train(TrainConfig(data="digits", preset="tiny", steps=2, batch_size=64, out_dir=str(out), progress=False,
                      grid_steps=(1,), objective=ObjectiveConfig(bootstrap_fraction=0.25, bootstrap_cfg=True)))
    return out


def test_checkpoint_and_pretrained_record_it(distilled_run, tmp_path):
    ckpt = load_checkpoint(str(distilled_run / CHECKPOINT))
    assert ckpt["guidance"] == DISTILLED
    assert model_from_checkpoint(ckpt)[0].guidance == DISTILLED
    d = save_pretrained(ckpt, str(tmp_path / "pre"))
    assert json.load(open(os.path.join(d, "config.json")))["guidance"] == DISTILLED
    model = from_pretrained(d)
    assert model.guidance == DISTILLED
    model.save_pretrained(str(tmp_path / "again"))
    assert ShortcutDiT.from_pretrained(str(tmp_path / "again")).guidance == DISTILLED


def test_cli_refuses_untrained_guidance(distilled_run, tmp_path, capsys, monkeypatch):
    ckpt = str(distilled_run / CHECKPOINT)
    out = str(tmp_path / "s.png")
    err = cli_error(["sample", "--ckpt", ckpt, "--steps", "1", "--cfg-scale", "1.5", "--n", "2", "--out", out],
                    capsys, monkeypatch)
    assert "never trained it" in err
    assert not os.path.exists(out)
    main(["sample", "--ckpt", ckpt, "--steps", "1", "--cfg-scale", "1.5", "--force-cfg", "--n", "2", "--out", out])
    main(["sample", "--ckpt", ckpt, "--steps", "1", "128", "--n", "2", "--out", out])   # default policy
    assert os.path.exists(out)
    assert "never trained it" in cli_error(["eval", "--ckpt", ckpt, "--fid", "--fid-ref", "x.npz", "--steps", "4",
                                            "--cfg-scale", "2"], capsys, monkeypatch)
