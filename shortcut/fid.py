"""FID as the paper measures it: Inception-v3 pool features (2048-d), Fréchet distance between the
statistics of N generated images (FID-50k: N = 50,000) and reference statistics.

    shortcut eval --ckpt runs/in256/checkpoint.pt --fid --fid-ref /data/imagenet/train --image-size 256 \
        --fid-ref-out in256_ref.npz --steps 1 4 128
    shortcut eval --ckpt runs/in256/checkpoint.pt --fid --fid-ref in256_ref.npz --steps 1

The Inception network is pytorch-fid's port of the TF FID Inception (optional extra: pip install
'shortcut[fid]'). Its weights are downloaded on first use; without internet pass the weights file
(pt_inception-2015-12-05-6726825d.pth) with --inception-weights. Everything else here works with any
feature network `features(images (B, 3, H, W) in [-1, 1]) -> (B, F)`, which is how it is tested.

Statistics stream: mean and covariance are accumulated in float64 batch by batch, so N is limited by time,
not memory. Reference statistics come from an image folder / latent dataset (once) or an .npz with `mu`
and `sigma` (pytorch-fid's and ADM's reference format).
"""
import os
import tempfile

import numpy as np
import torch
from tqdm.auto import tqdm

from .eval import frechet_from_stats
from .sampler import sample

FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"   # the name torch.hub caches pytorch-fid's weights under


class FeatureStats:
    """Running mean and covariance of feature rows, in float64.

    Sums are taken around the first batch's mean (a shift), so Σ f fᵀ − n μ μᵀ does not cancel
    catastrophically when the features' mean is large next to their spread.
    """

    def __init__(self):
        self.n, self.shift, self.sum, self.outer = 0, None, None, None

    def add(self, feats):
        f = np.asarray(torch.as_tensor(feats).detach().cpu().double())
        if f.ndim != 2:
            raise ValueError(f"features must be (B, F), got shape {f.shape}")
        if self.shift is None:
            self.shift = f.mean(0)
            self.sum, self.outer = np.zeros(f.shape[1]), np.zeros((f.shape[1], f.shape[1]))
        f = f - self.shift
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    @property
    def mu(self):
        return self.shift + self.sum / self.n

    @property
    def sigma(self):
        """Unbiased covariance (np.cov's): (Σ g gᵀ − n ḡ ḡᵀ) / (n − 1) with g = f − shift."""
        if self.n < 2:
            raise ValueError(f"covariance needs at least 2 feature rows, got {self.n}")
        m = self.sum / self.n
        return (self.outer - self.n * np.outer(m, m)) / (self.n - 1)

    def save(self, path):
        """An .npz with mu and sigma (pytorch-fid's format), written atomically."""
        tmp = f"{path}.tmp{os.getpid()}.npz"
        try:
            np.savez(tmp, mu=self.mu, sigma=self.sigma, n=self.n)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def load_stats(path):
    """(mu, sigma) from an .npz holding `mu` and `sigma`."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no reference statistics at {path!r}")
    with np.load(path) as f:
        if "mu" not in f or "sigma" not in f:
            raise ValueError(f"{path} must hold arrays 'mu' and 'sigma' (pytorch-fid / ADM reference format), "
                             f"found {sorted(f.keys())}")
        mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu must be (F,) and sigma (F, F), got {mu.shape} and {sigma.shape}")
    return mu, sigma


# ---------------------------------------------------------------------------------------------------------
# The Inception network

def inception_features(device="cpu", weights=None):
    """pytorch-fid's FID Inception-v3 as `features(images in [-1, 1]) -> (B, 2048)`.

    weights: a local pt_inception-2015-12-05-6726825d.pth; None lets torch.hub fetch it (needs internet
    once; it is cached under $TORCH_HOME/hub/checkpoints).
    """
    try:
        from pytorch_fid.inception import InceptionV3
    except ImportError as e:
        raise RuntimeError("FID needs the Inception network from pytorch-fid: pip install 'shortcut[fid]' "
                           "(or pass a feature network to shortcut.fid functions yourself)") from e
    except Exception as e:   # e.g. a torchvision built for another torch fails at import with RuntimeError
        raise RuntimeError(f"FID needs pytorch-fid, which failed to import ({type(e).__name__}: {e}); it needs "
                           f"a torchvision matching torch {torch.__version__}") from e
    if weights is not None and not os.path.isfile(weights):
        raise FileNotFoundError(f"--inception-weights {weights!r} is not a file")
    hub_dir = torch.hub.get_dir()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if weights is not None:   # serve the user's file from a private hub cache: no download attempted
                os.makedirs(os.path.join(tmp, "checkpoints"))
                os.symlink(os.path.abspath(weights), os.path.join(tmp, "checkpoints", FID_INCEPTION_FILE))
                torch.hub.set_dir(tmp)
            net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    except Exception as e:
        raise RuntimeError(
            f"Inception weights for FID are not available ({type(e).__name__}: {e}). pytorch-fid downloads "
            f"{FID_INCEPTION_FILE} on first use, which needs internet; offline, copy that file here and pass "
            f"--inception-weights FILE (or place it in {os.path.join(hub_dir, 'checkpoints')}).") from e
    finally:
        torch.hub.set_dir(hub_dir)
    net = net.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def features(x):
        x = ((x.float().clamp(-1, 1) + 1) / 2).to(device)     # pytorch-fid wants [0, 1]; it resizes to 299
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return net(x)[0].flatten(1)                           # (B, 2048)
    return features


# ---------------------------------------------------------------------------------------------------------
# Statistics of data and of a model

def _progress(total, enabled, label):
    return tqdm(total=total, desc=label, unit="img", disable=not enabled, dynamic_ncols=True)


@torch.no_grad()
def dataset_stats(features, dataset, n=None, batch_size=100, num_workers=0, decode=None, progress=False):
    """Feature statistics of the first n items (all when None) of an image or latent dataset.

    Latent datasets need `decode` (latents -> images); images with one channel are repeated to three.
    """
    total = len(dataset) if n is None else min(n, len(dataset))
    if total < 2:
        raise ValueError(f"reference statistics need at least 2 images, the dataset has {len(dataset)}")
    if dataset.latent and decode is None:
        raise ValueError("a latent dataset needs decode (its VAE) for reference statistics; better: use the "
                         "original images (the manifest's 'source') or a reference .npz")
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=[[(i, False) for i in range(s, min(s + batch_size, total))]
                                for s in range(0, total, batch_size)], num_workers=num_workers)
    stats, bar = FeatureStats(), _progress(total, progress, "reference")
    for x, _ in loader:
        stats.add(features(decode(x) if decode else x))
        bar.update(x.shape[0])
    bar.close()
    return stats


def balanced_labels(n, num_classes):
    """n labels cycling through the classes (ADM's FID-50k: 50 per ImageNet class); None when unlabelled."""
    return torch.arange(n) % num_classes if num_classes else None


@torch.no_grad()
def model_stats(model, features, n, steps, shape, num_classes=0, batch_size=100, cfg_scale=None, decode=None,
                seed=0, device="cpu", progress=False, force_cfg=False):
    """Feature statistics of n samples drawn in `steps` steps with the model's own sampler (`shortcut.sample`;
    cfg_scale None: its guidance policy); the same noise and labels for every step count (seeded), streamed
    batch by batch. A consistency-training model's re-noising draws from one generator seeded seed + 1 across
    the batches (a fresh default generator per batch would repeat the same draws in every batch)."""
    g = torch.Generator().manual_seed(seed)
    renoise = torch.Generator().manual_seed(seed + 1)
    labels = balanced_labels(n, num_classes)
    stats, bar = FeatureStats(), _progress(n, progress, f"{steps} steps")
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        noise = torch.randn(b, *shape, generator=g).to(device)
        y = labels[i:i + b].to(device) if labels is not None else None
        x = sample(model, noise, steps, y=y, cfg_scale=cfg_scale, force_cfg=force_cfg, generator=renoise)
        stats.add(features(decode(x) if decode else x))
        bar.update(b)
    bar.close()
    return stats


def reference_stats(ref, features, image_size=0, n=None, batch_size=100, num_workers=0, decode=None,
                    progress=False, save=None):
    """(mu, sigma) of `ref`: an .npz path, or a dataset spec (image folder, latents) computed here and
    optionally saved to `save` (.npz) so it is computed once."""
    from .data import make_dataset
    if str(ref).endswith(".npz"):
        return load_stats(ref)
    data = make_dataset(ref, image_size=image_size, random_flip=False)
    if not data.is_image:
        raise ValueError(f"FID reference {ref!r} is not image data")
    stats = dataset_stats(features, data, n, batch_size, num_workers, decode, progress)
    if save:
        stats.save(save)
    return stats.mu, stats.sigma


def evaluate_fid(model, features, ref_stats, steps, n, shape, num_classes=0, batch_size=100, cfg_scale=None,
                 decode=None, seed=0, device="cpu", progress=False, force_cfg=False):
    """[{"steps": s, "fid": …}] for each step count: n samples each against ref_stats = (mu, sigma), drawn with
    the model's own sampler (cfg_scale None: its guidance policy; see `shortcut.sample`)."""
    rows = []
    for s in steps:
        st = model_stats(model, features, n, s, shape, num_classes, batch_size, cfg_scale, decode, seed, device,
                         progress, force_cfg)
        rows.append({"steps": s, "fid": frechet_from_stats(st.mu, st.sigma, *ref_stats)})
    return rows
