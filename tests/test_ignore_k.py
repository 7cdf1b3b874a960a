"""ModelConfig.ignore_k (official ignore_dt): the step input is replaced by 0 on every path, flow-matching
runs build their model with it, checkpoints and pretrained folders keep it, and flow models sample in N
equal steps."""
import json
import os

import pytest
import torch
from conftest import random_tiny_dit

from shortcut import (GraphSampler, ModelConfig, ObjectiveConfig, ShortcutDiT, ShortcutMLP, TrainConfig,
                      from_pretrained, sample, save_pretrained, train)
from shortcut.data import make_dataset
from shortcut.graph import ConditioningCache
from shortcut.train import CHECKPOINT, build_model, load_checkpoint, model_from_checkpoint


def _dit(gen, device, kernels="torch", ignore_k=True):
    return random_tiny_dit(gen, device, kernels, ignore_k=ignore_k)


def _inputs(gen, device):
    x = torch.randn(4, 3, 8, 8, generator=gen).to(device)
    t = torch.rand(4, generator=gen).to(device)
    y = torch.tensor([0, 2, 4, 5], device=device)
    return x, t, y


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_output_does_not_depend_on_k(gen, device, strict_kernels, kernels):
    model = _dit(gen, device, kernels)
    x, t, y = _inputs(gen, device)
    with torch.no_grad():
        outs = [model(x, t, torch.full((4,), k, device=device), y) for k in (0, 3, 7)]
        mixed = model(x, t, torch.tensor([7, 1, 0, 5], device=device), y)
    for out in outs[1:] + [mixed]:
        assert torch.equal(out, outs[0])
    # The same weights without ignore_k do depend on k (the check above can fail).
    model.cfg.ignore_k = False
    with torch.no_grad():
        assert not torch.allclose(model(x, t, torch.full((4,), 3, device=device), y), outs[0])
        torch.testing.assert_close(model(x, t, torch.zeros(4, dtype=torch.long, device=device), y), outs[0])


def test_fused_and_reference_agree(gen, device, strict_kernels):
    ref = _dit(gen, device, "torch")
    fused = ShortcutDiT(ref.cfg, kernels="triton").to(device).eval()
    fused.load_state_dict(ref.state_dict())
    x, t, y = _inputs(gen, device)
    k = torch.tensor([7, 1, 0, 5], device=device)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, t, k, y), ref(x, t, torch.zeros_like(k), y), rtol=1e-4, atol=1e-4)


def test_conditioning_cache_ignores_k(gen, device):
    model = _dit(gen, device)
    cache = ConditioningCache(model, 4)
    model.cfg.ignore_k = False
    other = ConditioningCache(model, 4)   # the same t's at level 0 are what the cache must hold
    assert [k for _, _, k in cache.schedule] == [0] * 4 and [k for _, _, k in other.schedule] == [2] * 4
    assert not torch.allclose(cache.table[:-1], other.table[:-1])
    model.cfg.ignore_k = True
    noise, _, y = _inputs(gen, device)
    gs = GraphSampler(model, 4, 4, dtype=torch.float32)
    torch.testing.assert_close(gs(noise, y), sample(model, noise, 4, y=y), rtol=1e-5, atol=1e-5)


def test_flow_model_takes_equal_steps(gen, device):
    model = _dit(gen, device)
    noise, _, y = _inputs(gen, device)
    x = noise
    for i in range(3):
        t = torch.full((4,), i / 3, device=device)
        x = x + model(x, t, torch.zeros(4, dtype=torch.long, device=device), y) / 3
    torch.testing.assert_close(sample(model, noise, 3, y=y), x)


def test_mlp_ignore_k(gen, device):
    torch.manual_seed(0)
    mlp = ShortcutMLP(hidden=16, depth=1, num_classes=2, ignore_k=True).to(device)
    x, t = torch.randn(3, 2, generator=gen).to(device), torch.rand(3, generator=gen).to(device)
    y = torch.tensor([0, 1, 2], device=device)
    with torch.no_grad():
        assert torch.equal(mlp(x, t, torch.full((3,), 7, device=device), y),
                           mlp(x, t, torch.zeros(3, dtype=torch.long, device=device), y))
    with pytest.raises(ValueError, match="ignore_k must be True or False"):
        ShortcutMLP(ignore_k="yes")
    with pytest.raises(ValueError, match="ModelConfig.ignore_k must be True or False"):
        ModelConfig(ignore_k=1)


def test_flow_runs_build_with_ignore_k():
    digits, moons = make_dataset("digits"), make_dataset("moons")
    flow = ObjectiveConfig(objective="flow")
    assert build_model(TrainConfig(objective=flow), digits).cfg.ignore_k
    assert not build_model(TrainConfig(), digits).cfg.ignore_k
    assert build_model(TrainConfig(data="moons", objective=flow), moons).ignore_k
    assert not build_model(TrainConfig(data="moons"), moons).ignore_k
    # An explicit override wins; recipes follow the objective.
    assert not build_model(TrainConfig(objective=flow, model_overrides={"ignore_k": False}), digits).cfg.ignore_k
    recipe = TrainConfig.recipe("imagenet256-dit-b2", data="digits", preset="tiny", objective={"objective": "flow"})
    assert build_model(recipe, digits).cfg.ignore_k


def test_checkpoint_and_pretrained_keep_it(tmp_path):
    out = tmp_path / "flow"
    train(TrainConfig(data="digits", preset="tiny", steps=2, batch_size=8, out_dir=str(out), progress=False,
                      grid_steps=(1,), objective=ObjectiveConfig(objective="flow")))
    ckpt = load_checkpoint(str(out / CHECKPOINT))
    assert ckpt["architecture"]["model_config"]["ignore_k"] is True
    model, _ = model_from_checkpoint(ckpt, kernels="torch")
    assert model.cfg.ignore_k
    d = save_pretrained(str(out / CHECKPOINT), str(tmp_path / "pre"))
    assert json.load(open(os.path.join(d, "config.json")))["model_config"]["ignore_k"] is True
    assert from_pretrained(d).cfg.ignore_k
    # A checkpoint written before the architecture was recorded: k was never ignored then.
    del ckpt["architecture"]
    assert not model_from_checkpoint(ckpt, kernels="torch")[0].cfg.ignore_k
