"""2-D toys: structure metrics that tell a board from a blur, the toy defaults, the MLP's x features."""
import math

import pytest
import torch

from shortcut import ShortcutMLP, TrainConfig, from_pretrained, save_pretrained
from shortcut.cli import build_parser, main, train_config
from shortcut.data import TOY_2D, toy_2d, toy_2d_parts
from shortcut.eval import energy_distance, evaluate_2d, structure_2d

N = 4000


def _draws(name, g):
    return {"data": toy_2d(name, N, g), "uniform": torch.rand(N, 2, generator=g) * 2 - 1,
            "gaussian": 0.5 * torch.randn(N, 2, generator=g)}


@pytest.mark.parametrize("name, max_support", [("checkerboard", 0.6), ("moons", 0.4), ("8gaussians", 0.2)])
def test_structure_separates_the_data_from_uniform_and_gaussian(name, max_support):
    g = torch.Generator().manual_seed(0)
    real = toy_2d(name, N, g)
    got = {k: structure_2d(name, x, real) for k, x in _draws(name, g).items()}
    assert got["data"]["support"] > 0.97 and got["data"]["coverage"] == 1.0
    assert got["data"]["spread"] == pytest.approx(1.0, abs=0.05)
    for k in ("uniform", "gaussian"):
        assert got[k]["support"] < max_support, (k, got[k])
        assert got[k]["coverage"] < 1.0 or got[k]["spread"] > 1.1, (k, got[k])


def test_energy_distance_alone_misses_the_board():
    """Why the structure metrics exist: a uniform square is as close to the checkerboard in energy distance as
    a finite sample of the board itself is to another (issue 11: 0.005 vs 0.004)."""
    g = torch.Generator().manual_seed(0)
    real, draws = toy_2d("checkerboard", N, g), _draws("checkerboard", g)
    assert energy_distance(draws["uniform"], real) < 0.01
    assert structure_2d("checkerboard", draws["data"], real)["support"] - \
        structure_2d("checkerboard", draws["uniform"], real)["support"] > 0.45


def test_collapse_and_dropped_modes():
    g = torch.Generator().manual_seed(0)
    real = toy_2d("8gaussians", N, g)
    ang = torch.randint(0, 8, (N,), generator=g) * (math.pi / 4)
    collapsed = torch.stack([ang.cos(), ang.sin()], 1) * 0.8 + 0.002 * torch.randn(N, 2, generator=g)
    got = structure_2d("8gaussians", collapsed, real)
    assert got["support"] == 1.0 and got["coverage"] == 1.0 and got["spread"] < 0.1
    blurred = real + 0.04 * torch.randn(N, 2, generator=g)
    assert structure_2d("8gaussians", blurred, real)["spread"] > 1.1   # std 0.064 vs 0.05, tails cut at 0.15
    for name in TOY_2D:   # keep half of the parts: coverage halves, support stays
        x = toy_2d(name, 2 * N, g)
        x = x[toy_2d_parts(name, x) % 2 == 0][:N]
        got = structure_2d(name, x, toy_2d(name, N, g))
        assert got["coverage"] == 0.5 and got["support"] == 1.0, (name, got)


def test_parts_geometry():
    board = torch.tensor([[-0.75, -0.75], [-0.25, -0.75], [0.25, -0.75], [-0.25, -0.25], [0.75, 0.75], [1.2, 0.0]])
    assert toy_2d_parts("checkerboard", board).tolist() == [0, -1, 1, 2, 7, -1]
    modes = torch.tensor([[0.8, 0.0], [0.0, 0.8 + 0.14], [0.0, 0.8 + 0.16], [0.0, 0.0]])
    assert toy_2d_parts("8gaussians", modes).tolist() == [0, 2, -1, -1]
    # moons: the top of the upper moon (θ = π/2, arc 2 of moon 0), the bottom of the lower one (arc 2 of
    # moon 1), 0.09 and 0.11 away from a curve
    top, bottom = torch.tensor([-0.5, 0.75]) / 1.5, torch.tensor([0.5, -0.75]) / 1.5
    pts = torch.stack([top, bottom, top + torch.tensor([0.0, 0.09]), top + torch.tensor([0.0, 0.11])])
    assert toy_2d_parts("moons", pts).tolist() == [2, 6, 2, -1]
    with pytest.raises(ValueError, match="unknown 2-D dataset 'spiral'"):
        toy_2d_parts("spiral", board)


def test_evaluate_2d_reports_structure(device):
    model = ShortcutMLP(hidden=16, depth=1).to(device)
    rows = evaluate_2d(model, "checkerboard", steps=(1, 2), n=256, device=device)
    assert [r["steps"] for r in rows] == [1, 2]
    assert set(rows[0]) == {"steps", "energy", "swd", "support", "coverage", "spread"}


def test_cli_starts_2d_runs_from_the_toy_defaults(tmp_path, capsys):
    def cfg(*argv):
        return train_config(build_parser().parse_args(["train", *argv]))
    toy = cfg("--data", "checkerboard", "--model", "hidden=64", "--lr", "0.01")
    assert (toy.steps, toy.batch_size, toy.ema_decay, toy.objective.bootstrap_fraction) == (5000, 1024, 0.995, 0.5)
    assert toy.lr == 0.01 and toy.model_overrides == {"hidden": 64, "depth": 4, "x_freqs": 6}
    assert cfg("--data", "digits").lr == TrainConfig().lr
    out = tmp_path / "toy"   # the real CLI path: the checkpoint records the toy settings
    main(["train", "--data", "moons", "--steps", "2", "--batch-size", "16", "--out-dir", str(out),
          "--progress", "false", "--grid-steps", "1"])
    capsys.readouterr()
    model = from_pretrained(save_pretrained(str(out / "checkpoint.pt"), str(tmp_path / "exported"), weights="ema"))
    assert model.x_freqs == 6 and len(model.layers) == 4 and model.inp.out_features == 128


def test_mlp_x_features(tmp_path, gen, device):
    plain = ShortcutMLP(hidden=16, depth=1)
    assert plain.inp.in_features == 2 + 128   # x_freqs=0: the network checkpoints already hold
    model = ShortcutMLP(hidden=16, depth=1, x_freqs=3).to(device)
    assert model.inp.in_features == 2 * 7 + 128 and "x_freq" not in model.state_dict()
    x, t = torch.randn(5, 2, generator=gen).to(device), torch.rand(5, generator=gen).to(device)
    k = y = torch.zeros(5, dtype=torch.long, device=device)
    with torch.no_grad():
        out = model(x, t, k, y)
        path = save_pretrained(model, str(tmp_path / "m"), weights="ema")
        # Without the raw-x columns the network sees x only through the features: periodic with period 4
        # (π/2, π, 2π), so x + 4 gives the same output and x + 1 does not.
        model.inp.weight[:, :2] = 0
        base = model(x, t, k, y)
        torch.testing.assert_close(model(x + 4.0, t, k, y), base, rtol=0, atol=1e-5)
        assert (model(x + 1.0, t, k, y) - base).abs().max() > 1e-3
        torch.testing.assert_close(from_pretrained(path, device=device)(x, t, k, y), out, rtol=0, atol=0)
