"""Any step count 1 … 128: the shortcut schedule (powers of two, largest first, each at its own level), equal
steps for models that ignore k, and the samplers and CLI that take them."""
import pytest
import torch
from conftest import cli_error, random_tiny_dit

from shortcut import GraphSampler, ObjectiveConfig, TrainConfig, sample, step_schedule, train
from shortcut.cli import main
from shortcut.graph import sample_cached
from shortcut.sampler import check_steps
from shortcut.train import CHECKPOINT


def _model(gen, device, **overrides):
    return random_tiny_dit(gen, device, **overrides)


@pytest.mark.parametrize("n,expected", [
    (1, [(0.0, 1.0, 0)]),
    (2, [(0.0, 0.5, 1), (0.5, 0.5, 1)]),
    (3, [(0.0, 0.5, 1), (0.5, 0.25, 2), (0.75, 0.25, 2)]),
    (4, [(0.0, 0.25, 2), (0.25, 0.25, 2), (0.5, 0.25, 2), (0.75, 0.25, 2)]),
    (5, [(0.0, 0.25, 2), (0.25, 0.25, 2), (0.5, 0.25, 2), (0.75, 0.125, 3), (0.875, 0.125, 3)]),
    (6, [(0.0, 0.25, 2), (0.25, 0.25, 2), (0.5, 0.125, 3), (0.625, 0.125, 3), (0.75, 0.125, 3), (0.875, 0.125, 3)]),
])
def test_schedule_small_counts(n, expected):
    assert step_schedule(n) == expected


@pytest.mark.parametrize("n", range(1, 129))
def test_schedule_every_count(n):
    sched = step_schedule(n)
    m = n.bit_length() - 1                                   # 2^m <= n < 2^(m+1)
    ks = [k for _, _, k in sched]
    assert ks == [m] * (2 ** (m + 1) - n) + [m + 1] * (2 * (n - 2 ** m))   # largest steps first
    assert all(d == 2.0 ** -k for _, d, k in sched)
    t = 0.0
    for t_i, d, _ in sched:                                  # each step starts where the last ended, exactly
        assert t_i == t
        t += d
    assert t == 1.0 and max(ks) <= 7


def test_powers_of_two_are_the_official_sampler():
    for m in range(8):
        n = 2 ** m
        assert step_schedule(n) == [(i / n, 1 / n, m) for i in range(n)]


def test_uniform_schedule():
    assert step_schedule(3, uniform=True) == [(0.0, 1 / 3, 0), (1 / 3, 1 / 3, 0), (2 / 3, 1 / 3, 0)]
    assert len(step_schedule(100, uniform=True)) == 100


@pytest.mark.parametrize("steps", [0, 129, -3, 2.0, "3", None])
def test_out_of_range_is_a_clear_error(steps):
    with pytest.raises(ValueError, match=r"steps must be an int in 1 … 128"):
        check_steps(steps)
    with pytest.raises(ValueError, match=r"steps must be an int in 1 … 128"):
        step_schedule(steps)


@pytest.mark.parametrize("n", [3, 6])
def test_sample_follows_the_schedule(gen, device, n):
    model = _model(gen, device)
    noise = torch.randn(2, 3, 8, 8, generator=gen).to(device)
    y = torch.tensor([1, 4], device=device)
    x = noise
    for t, d, k in step_schedule(n):
        x = x + d * model(x, torch.full((2,), t, device=device), torch.full((2,), k, device=device), y)
    out, traj = sample(model, noise, n, y=y, return_trajectory=True)
    torch.testing.assert_close(out, x)
    assert len(traj) == n + 1


@pytest.mark.parametrize("n,cfg_scale", [(3, 1.0), (5, 2.0), (7, 1.0)])
def test_graph_sampler_and_cache_take_any_count(gen, device, n, cfg_scale):
    model = _model(gen, device)
    noise = torch.randn(3, 3, 8, 8, generator=gen).to(device)
    y = torch.tensor([0, 2, 5], device=device)
    ref = sample(model, noise, n, y=y, cfg_scale=cfg_scale)
    torch.testing.assert_close(sample_cached(model, noise, n, y=y, cfg_scale=cfg_scale), ref, rtol=1e-5, atol=1e-5)
    for cache in (True, False):
        gs = GraphSampler(model, 3, n, cfg_scale, dtype=torch.float32, cond_cache=cache)
        torch.testing.assert_close(gs(noise, y), ref, rtol=1e-5, atol=1e-5)


def test_cli_sample_and_eval_take_any_count(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    train(TrainConfig(data="digits", preset="tiny", steps=2, batch_size=16, out_dir=str(out), progress=False,
                      grid_steps=(1,), objective=ObjectiveConfig(bootstrap_fraction=0.25)))
    png = tmp_path / "s.png"
    main(["sample", "--ckpt", str(out / CHECKPOINT), "--steps", "3", "6", "--n", "4", "--out", str(png)])
    assert png.exists()
    main(["eval", "--ckpt", str(out / CHECKPOINT), "--steps", "3", "--per-class", "2"])
    assert "\n| 3 | " in capsys.readouterr().out
    err = cli_error(["sample", "--ckpt", str(out / CHECKPOINT), "--steps", "200", "--out", str(tmp_path / "x.png")],
                    capsys, monkeypatch)
    assert "steps must be an int in 1 … 128" in err
