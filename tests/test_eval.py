"""Evaluation metrics against independent computations; data sets; the digits classifier."""
import numpy as np
import pytest
import scipy.linalg
import torch

from shortcut.data import TOY_2D, load_digits, make_dataset, toy_2d
from shortcut.eval import (digits_classifier, energy_distance, evaluate_2d, evaluate_digits, format_table,
                           frechet_distance, grid_image, sliced_wasserstein)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(sa @ sb).real
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * covmean)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_gaussians_closed_form():
    """Two isotropic Gaussians: FD = |Δμ|² + d(σa − σb)²."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(200_000, 3))
    b = 2.0 * rng.normal(size=(200_000, 3)) + 1.0
    assert frechet_distance(a, b) == pytest.approx(3 * 1.0 + 3 * 1.0, rel=0.02)


def test_energy_and_sliced_distances():
    g = torch.Generator().manual_seed(0)
    a, b = toy_2d("moons", 1000, g), toy_2d("moons", 1000, g)
    c = toy_2d("8gaussians", 1000, g)
    assert abs(energy_distance(a, b)) < 0.01 < energy_distance(a, c)
    assert sliced_wasserstein(a, b) < 0.05 < sliced_wasserstein(a, c)
    # 1-D shift by s: W1 of each projection is |s·cos θ|, so SWD ≈ s · E|cos θ| = 2s/π in 2-D.
    shifted = a + torch.tensor([0.3, 0.0])
    assert sliced_wasserstein(a, shifted, projections=4096) == pytest.approx(0.3 * 2 / np.pi, rel=0.05)
    with pytest.raises(ValueError, match="equal shapes"):
        sliced_wasserstein(a, b[:10])


def test_frechet_bad_input():
    with pytest.raises(ValueError, match="same F"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def test_digits_data_and_classifier(tmp_path, monkeypatch):
    monkeypatch.setenv("SHORTCUT_CACHE", str(tmp_path))
    data = load_digits()
    assert data.x.shape == (1797, 1, 8, 8) and data.x.min() == -1 and data.x.max() == 1
    assert data.num_classes == 10 and data.y.unique().numel() == 10
    clf = digits_classifier()
    assert (clf(data.x).argmax(1) == data.y).float().mean() > 0.97
    cached = digits_classifier()          # second call loads the cache: same weights
    for p, q in zip(clf.parameters(), cached.parameters()):
        assert torch.equal(p, q)
    assert len(list(tmp_path.iterdir())) == 1


def test_evaluate_digits_with_oracle(tmp_path, monkeypatch, device):
    """A 'model' whose one step lands on a real digit of the requested class scores ~perfectly."""
    monkeypatch.setenv("SHORTCUT_CACHE", str(tmp_path))
    data = load_digits()
    protos = torch.stack([data.x[data.y == c][0] for c in range(10)]).to(device)

    class Oracle(torch.nn.Module):
        null_label = 10

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, k, y):
            return protos[y.clamp(max=9)] - x        # one step from x reaches the prototype

    rows = evaluate_digits(Oracle().to(device), steps=(1,), per_class=5)   # samples on the model's device
    assert rows[0]["accuracy"] == 1.0 and rows[0]["fd"] > 0   # no diversity: FD > 0


def test_evaluate_2d_and_table(device):
    model = torch.nn.Module()
    model.p = torch.nn.Parameter(torch.zeros((), device=device))
    model.forward = lambda x, t, k, y: -x        # collapses everything to 0 in one step
    model.null_label = 0
    rows = evaluate_2d(model, "moons", steps=(1, 2), n=500)
    assert rows[0]["energy"] > 0.1
    table = format_table({"a": rows, "b": rows}, ["energy", "swd"])
    assert table.splitlines()[0] == "| steps | a energy | a swd | b energy | b swd |"
    assert table.splitlines()[2].startswith("| 1 | ")


@pytest.mark.parametrize("name", TOY_2D)
def test_toy_datasets(name):
    data = make_dataset(name)
    x, y = data.batch(500, torch.Generator().manual_seed(0))
    assert x.shape == (500, 2) and (y == 0).all() and x.abs().max() < 1.5
    x2, _ = data.batch(500, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2), "batches are reproducible from the generator"


def test_grid_image():
    img = grid_image([torch.zeros(3, 1, 8, 8), torch.ones(3, 1, 8, 8)], scale=1)
    assert img.size == (3 * 10, 2 * 10)
    arr = np.asarray(img)
    assert arr[1 + 4, 1 + 4] == 128 and arr[10 + 5, 5] == 255 and arr[0, 0] == 0
