"""Euler sampler: 1-step = x0 + v, N-step recursion, CFG, errors."""
import pytest
import torch
from conftest import redraw_zero_init

from shortcut import ModelConfig, ShortcutDiT, ShortcutMLP, sample
from shortcut.sampler import check_steps


@pytest.fixture
def dit(gen, device):
    """A tiny DiT whose zero-initialised weights are re-drawn: v̂ ≠ 0, so samples differ from the noise."""
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=3, num_classes=5)
    return redraw_zero_init(ShortcutDiT(cfg, kernels="torch"), gen).eval().to(device)


def _noise(B, gen, device):
    return torch.randn(B, 3, 8, 8, generator=gen).to(device)


def test_one_step_is_x0_plus_v(dit, gen, device):
    noise = _noise(4, gen, device)
    y = torch.tensor([0, 1, 2, 3], device=device)
    v = dit(noise, torch.zeros(4, device=device), torch.zeros(4, dtype=torch.long, device=device), y)
    assert v.abs().mean() > 0.1
    torch.testing.assert_close(sample(dit, noise, 1, y=y), noise + v)


def test_four_steps_recursion(dit, gen, device):
    noise = _noise(2, gen, device)
    y = torch.tensor([1, 4], device=device)
    x = noise
    for i in range(4):
        x = x + 0.25 * dit(x, torch.full((2,), i / 4, device=device), torch.full((2,), 2, device=device), y)
    out, traj = sample(dit, noise, 4, y=y, return_trajectory=True)
    torch.testing.assert_close(out, x)
    assert len(traj) == 5 and traj[0] is noise


def test_cfg_scale_one_is_conditional(dit, gen, device):
    noise = _noise(3, gen, device)
    y = torch.tensor([0, 2, 4], device=device)
    torch.testing.assert_close(sample(dit, noise, 2, y=y, cfg_scale=1.0), sample(dit, noise, 2, y=y))


def test_cfg_combination(dit, gen, device):
    noise = _noise(3, gen, device)
    y = torch.tensor([0, 2, 4], device=device)
    t0, k0 = torch.zeros(3, device=device), torch.zeros(3, dtype=torch.long, device=device)
    v_c = dit(noise, t0, k0, y)
    v_u = dit(noise, t0, k0, torch.full_like(y, 5))
    assert not torch.allclose(v_c, v_u, atol=1e-3), "the label must change the velocity"
    torch.testing.assert_close(sample(dit, noise, 1, y=y, cfg_scale=2.5), noise + v_u + 2.5 * (v_c - v_u),
                               rtol=1e-5, atol=1e-5)


def test_unconditional_uses_null_label(dit, gen, device):
    noise = _noise(2, gen, device)
    torch.testing.assert_close(sample(dit, noise, 1), sample(dit, noise, 1, y=torch.tensor([5, 5], device=device)))
    assert not torch.allclose(sample(dit, noise, 1), sample(dit, noise, 1, y=torch.tensor([0, 0], device=device)))


def test_any_module_works(gen, device):
    model = ShortcutMLP(hidden=16, depth=1).to(device)
    assert sample(model, torch.randn(10, 2, generator=gen).to(device), 8).shape == (10, 2)


@pytest.mark.parametrize("steps", [0, -1, 129, 256, 1.0, True, "4"])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match=r"steps must be an int in 1 … 128"):
        check_steps(steps)


def test_any_step_count_is_valid():
    assert [check_steps(n) for n in (1, 3, 6, 100, 128)] == [1, 3, 6, 100, 128]


def test_bad_labels(dit, gen, device):
    noise = _noise(2, gen, device)
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 5\]"):   # checked on any device, once
        sample(dit, noise, 1, y=torch.tensor([0, 9], device=device))
    with pytest.raises(ValueError, match=r"y must be an int64 tensor of shape \(2,\)"):
        sample(dit, noise, 1, y=torch.tensor([0, 1, 2], device=device))
    with pytest.raises(ValueError, match="y is on meta but noise is on"):
        sample(dit, noise, 1, y=torch.tensor([0, 1], device="meta"))
    with pytest.raises(ValueError, match="noise must be a floating-point"):
        sample(dit, noise.long(), 1)
