"""FID pipeline: streamed statistics and the Fréchet distance against independent computations, end to end
on a tiny random feature network, reference .npz files, and clear errors without Inception weights."""
import os
import sys
import types
import urllib.error

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import redraw_zero_init
from PIL import Image

from shortcut import ModelConfig, ShortcutDiT, TrainConfig, sample, train
from shortcut.cli import main
from shortcut.data import ImageFolder
from shortcut.eval import frechet_distance
from shortcut.fid import (FID_INCEPTION_FILE, FeatureStats, balanced_labels, dataset_stats, evaluate_fid,
                          frechet_from_stats, inception_features, load_stats, reference_stats)
from shortcut.train import CHECKPOINT


def fd_scipy(a, b):
    """The textbook formula with scipy's matrix square root (pytorch-fid's computation)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(sa @ sb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * covmean))


class TinyFeatures(torch.nn.Module):
    """A random conv net standing in for Inception: images in [-1, 1] -> 6 features. Like inception_features
    it moves its input to its own device (reference images come from the CPU, samples from the model's)."""

    def __init__(self, device="cpu"):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, stride=2), torch.nn.Tanh(),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).to(device)

    @torch.no_grad()
    def forward(self, x):
        return self.net(x.float().to(self.net[0].weight.device))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidimgs")
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        os.makedirs(root / c)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)).save(root / c / f"{i}.png")
    return str(root)


def test_streamed_statistics_equal_batch_statistics():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(103, 7)) @ rng.normal(size=(7, 7)) + 1e4   # far from 0: tests the shifted sums
    st = FeatureStats()
    for s, e in [(0, 1), (1, 40), (40, 41), (41, 103)]:
        st.add(torch.from_numpy(f[s:e]))
    assert st.n == 103
    np.testing.assert_allclose(st.mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.sigma, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats().sigma


def test_frechet_from_stats_matches_eval_and_scipy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)) + 0.5
    got = frechet_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert got == pytest.approx(frechet_distance(a, b), rel=1e-10)
    assert got == pytest.approx(fd_scipy(a, b), rel=1e-6)
    assert frechet_from_stats(a.mean(0), np.cov(a, rowvar=False), a.mean(0), np.cov(a, rowvar=False)) == \
        pytest.approx(0, abs=1e-8)
    with pytest.raises(ValueError, match="statistics do not match"):
        frechet_from_stats(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_pipeline_end_to_end_against_an_independent_computation(folder, tmp_path, gen, device):
    feats = TinyFeatures(device)
    # Reference statistics from the folder, saved once and loaded back.
    ref_path = str(tmp_path / "ref.npz")
    mu, sigma = reference_stats(folder, feats, batch_size=5, save=ref_path)
    real = feats(torch.stack([ImageFolder(folder).load(i)[0] for i in range(24)])).double().cpu().numpy()
    np.testing.assert_allclose(mu, real.mean(0), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(real, rowvar=False), rtol=1e-5, atol=1e-9)
    mu2, sigma2 = reference_stats(ref_path, feats)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    # A random tiny model (v̂ ≠ 0: samples are not the noise), 2 step counts, 10 samples streamed in batches of 4.
    torch.manual_seed(0)
    model = ShortcutDiT(ModelConfig.preset("tiny", input_size=8, in_channels=3, num_classes=2), kernels="torch")
    model = redraw_zero_init(model, gen).eval().to(device)
    rows = evaluate_fid(model, feats, (mu, sigma), [1, 2], n=10, shape=(3, 8, 8), num_classes=2, batch_size=4, seed=3,
                        device=device)
    assert [r["steps"] for r in rows] == [1, 2]
    g = torch.Generator().manual_seed(3)
    noise = torch.cat([torch.randn(b, 3, 8, 8, generator=g) for b in (4, 4, 2)]).to(device)
    fids = []
    for r, steps in zip(rows, (1, 2)):
        x = sample(model, noise, steps, y=balanced_labels(10, 2).to(device))
        assert not torch.allclose(x, noise, atol=0.1)
        expected = fd_scipy(feats(x).double().cpu().numpy(), real)
        assert r["fid"] == pytest.approx(expected, rel=1e-5)
        assert r["fid"] > 0
        fids.append(expected)
    assert fids[0] != pytest.approx(fids[1], rel=1e-3), "1 and 2 steps give different samples, different FIDs"
    # The data against itself is at distance ~0; against a shifted copy it is not.
    same = dataset_stats(feats, ImageFolder(folder), batch_size=7)
    assert frechet_from_stats(same.mu, same.sigma, mu, sigma) == pytest.approx(0, abs=1e-6)


def test_reference_stats_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no reference statistics"):
        load_stats(str(tmp_path / "none.npz"))
    np.savez(tmp_path / "bad.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match="must hold arrays 'mu' and 'sigma'"):
        load_stats(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(ValueError, match=r"mu must be \(F,\) and sigma \(F, F\)"):
        load_stats(str(tmp_path / "shape.npz"))


def _fake_pytorch_fid(monkeypatch, constructor):
    pkg, mod = types.ModuleType("pytorch_fid"), types.ModuleType("pytorch_fid.inception")

    class InceptionV3(torch.nn.Module):
        BLOCK_INDEX_BY_DIM = {2048: 3}

        def __init__(self, blocks):
            super().__init__()
            constructor()
            self.pool = torch.nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            return [self.pool(x).expand(-1, -1, 1, 1)]

    mod.InceptionV3 = InceptionV3
    pkg.inception = mod
    monkeypatch.setitem(sys.modules, "pytorch_fid", pkg)
    monkeypatch.setitem(sys.modules, "pytorch_fid.inception", mod)


def test_without_inception_the_errors_say_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pytorch_fid", None)          # not installed
    with pytest.raises(RuntimeError, match=r"pip install 'shortcut\[fid\]'"):
        inception_features()

    # Installed, but its torchvision was built for another torch: importing it raises RuntimeError.
    pkg = tmp_path / "site" / "pytorch_fid"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "inception.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "pytorch_fid")
    with pytest.raises(RuntimeError, match="pytorch-fid, which failed to import .*torchvision::nms.*matching torch"):
        inception_features()

    def offline():   # what torch.hub does without internet and without the cached file
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    _fake_pytorch_fid(monkeypatch, offline)
    with pytest.raises(RuntimeError, match=f"Inception weights for FID are not available .*{FID_INCEPTION_FILE}.*"
                                           f"--inception-weights"):
        inception_features()
    with pytest.raises(FileNotFoundError, match="is not a file"):
        inception_features(weights=str(tmp_path / "missing.pth"))


def test_local_inception_weights_are_served_from_the_hub_cache(monkeypatch, tmp_path):
    weights = tmp_path / FID_INCEPTION_FILE.replace(".pth", "-copy.pth")
    weights.write_bytes(b"weights")
    seen = []

    def cached():    # pytorch-fid's loader looks for the file in torch.hub's checkpoints folder
        path = os.path.join(torch.hub.get_dir(), "checkpoints", FID_INCEPTION_FILE)
        if not os.path.exists(path):
            raise urllib.error.URLError("offline")
        seen.append(open(path, "rb").read())

    _fake_pytorch_fid(monkeypatch, cached)
    hub = torch.hub.get_dir()
    features = inception_features(weights=str(weights))
    assert seen == [b"weights"] and torch.hub.get_dir() == hub
    out = features(torch.rand(2, 1, 8, 8) * 2 - 1)            # one channel is repeated to three
    assert out.shape == (2, 3)


def test_cli_fid(folder, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    train(TrainConfig(data=f"images:{folder}", preset="tiny", steps=2, batch_size=4, out_dir=str(run),
                      progress=False, grid_steps=(1,), num_workers=0))
    args = ["eval", "--ckpt", str(run / CHECKPOINT), "--fid", "--fid-ref", folder, "--fid-n", "6",
            "--batch-size", "4", "--steps", "1", "2", "--progress", "false", "--num-workers", "0"]
    monkeypatch.setitem(sys.modules, "pytorch_fid", None)
    with pytest.raises(SystemExit, match=r"--fid: FID needs the Inception network .*shortcut\[fid\]"):
        main(args)
    monkeypatch.setattr("shortcut.fid.inception_features", lambda device, weights=None: TinyFeatures(device))
    main(args + ["--fid-ref-out", str(tmp_path / "ref.npz")])
    table = capsys.readouterr().out
    assert "| steps | run fid |" in table and "| 2 |" in table
    assert os.path.exists(tmp_path / "ref.npz")
    with pytest.raises(SystemExit, match="--fid needs --fid-ref"):
        main(["eval", "--ckpt", str(run / CHECKPOINT), "--fid"])
