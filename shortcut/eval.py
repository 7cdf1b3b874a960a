"""Sample-quality evaluation without downloads (SPEC §5).

Digits: a small MLP classifier trained on the real digits (seeded, cached on disk) gives class accuracy of
class-conditional samples and features (its hidden layer) for a Fréchet distance to the real data.
2-D data: energy distance and sliced Wasserstein distance to fresh samples, and structure metrics (share of
samples in the data's support, modes covered, spread within modes) that tell a board from a blur.
"""
import os

import numpy as np
import torch
import torch.nn as nn

from .data import TOY_PARTS, load_digits, toy_2d, toy_2d_parts
from .sampler import sample

EVAL_STEPS = (1, 2, 4, 8, 16, 32, 64, 128)


def cache_dir():
    """$SHORTCUT_CACHE, else ~/.cache/shortcut."""
    return os.environ.get("SHORTCUT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "shortcut"))


class DigitsClassifier(nn.Module):
    """64 -> 256 -> 128 -> 10 MLP on 8×8 digits in [-1, 1]; `features` is the 128-d hidden layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def features(self, x):
        return self.body(x.float().clamp(-1, 1))

    def forward(self, x):
        return self.head(self.features(x))


def digits_classifier(seed=0, steps=600):
    """The evaluation classifier: loaded from the cache, or trained (≈ 2 s on 2 cores) and cached."""
    path = os.path.join(cache_dir(), f"digits_classifier_s{seed}_n{steps}.pt")
    if os.path.exists(path):
        clf = DigitsClassifier()
        clf.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return clf.eval()
    data = load_digits()
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clf = DigitsClassifier()
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3, weight_decay=1e-4)
    with torch.enable_grad():   # callers may be inside no_grad (evaluate_digits)
        _fit(clf, opt, data, steps, g)
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(clf.state_dict(), tmp)
    os.replace(tmp, path)
    return clf.eval()


def _fit(clf, opt, data, steps, g):
    for _ in range(steps):
        # Light augmentation (noise) makes the features less brittle to generated-sample artefacts.
        idx = torch.randint(0, len(data), (256,), generator=g)
        x = data.x[idx] + 0.1 * torch.randn(data.x[idx].shape, generator=g)
        loss = nn.functional.cross_entropy(clf(x), data.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def frechet_distance(a, b):
    """Fréchet distance between two feature sets (N, F): `frechet_from_stats` of their means and covariances."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"feature sets must be (N, F) with the same F and N >= 2, got {a.shape} and {b.shape}")
    return frechet_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def frechet_from_stats(mu_a, sigma_a, mu_b, sigma_b):
    """‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^½) in float64.

    The trace of the matrix square root is computed as Σ √λ of Σa^½ Σb Σa^½, which is symmetric PSD,
    so no complex sqrtm is needed.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    sa, sb = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
    if mu_a.shape != mu_b.shape or sa.shape != sb.shape or sa.shape != (mu_a.shape[0],) * 2:
        raise ValueError(f"statistics do not match: mu {mu_a.shape} vs {mu_b.shape}, sigma {sa.shape} vs {sb.shape}")
    w, v = np.linalg.eigh(sa)
    sa_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(sa_half @ sb @ sa_half), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * tr_sqrt)


def energy_distance(a, b):
    """2·E‖a − b‖ − E‖a − a'‖ − E‖b − b'‖ (Székely), a (N, d), b (M, d)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def sliced_wasserstein(a, b, projections=256, seed=0):
    """Mean over random directions of the 1-D Wasserstein-1 distance of the projections (equal N)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"sliced_wasserstein needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    pa, pb = (a @ dirs).sort(0).values, (b @ dirs).sort(0).values
    return float((pa - pb).abs().mean())


@torch.no_grad()
def evaluate_digits(model, steps=EVAL_STEPS, per_class=100, seed=0, device=None, batch_size=1000):
    """Class accuracy and Fréchet distance (classifier features) of class-conditional samples per step count."""
    device = device or next(model.parameters()).device
    clf = digits_classifier()
    real = clf.features(load_digits().x).numpy()
    y = torch.arange(10).repeat_interleave(per_class)
    noise = torch.randn(len(y), 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    rows = []
    for s in steps:
        xs = torch.cat([sample(model, noise[i:i + batch_size].to(device), s, y=y[i:i + batch_size].to(device))
                        .float().cpu() for i in range(0, len(y), batch_size)])
        acc = float((clf(xs).argmax(1) == y).float().mean())
        rows.append({"steps": s, "accuracy": acc, "fd": frechet_distance(clf.features(xs).numpy(), real)})
    return rows


def structure_2d(name, x, real):
    """Structure of 2-D samples x (N, 2) that distances between distributions miss, with `real` (M, 2), fresh
    data, as the yardstick for spread. The energy distance of a uniform square to the checkerboard is
    0.005, against 0.004 for samples with no board at all (issue 11); these separate them:

    support:  share of samples in the data's support (toy_2d_parts: board cells, 3 std of a mode, 0.1 of a
              moon); data ≈ 0.99-1, uniform square 0.5 on the board.
    coverage: share of the 8 equal-mass parts holding at least half their share of the samples (missing
              modes lower it).
    spread:   RMS distance of samples to their part's mean, over the same for the data (1: right spread,
              → 0: collapsed onto the modes, > 1: blurred across them).
    """
    parts = toy_2d_parts(name, x)
    inside = parts >= 0
    counts = torch.bincount(parts[inside], minlength=TOY_PARTS)
    return {"support": float(inside.double().mean()),
            "coverage": float((counts >= len(x) / (2 * TOY_PARTS)).double().mean()),
            "spread": _spread(x, parts) / _spread(real, toy_2d_parts(name, real))}


def _spread(x, parts):
    """RMS distance of the points inside the support to the mean of their part."""
    x = torch.as_tensor(x, dtype=torch.float64)
    inside = parts >= 0
    if not inside.any():
        return 0.0
    x, parts = x[inside], parts[inside]
    counts = torch.bincount(parts, minlength=TOY_PARTS).double()
    means = torch.zeros(TOY_PARTS, 2, dtype=torch.float64).index_add_(0, parts, x) / counts.clamp(min=1)[:, None]
    return float(((x - means[parts]) ** 2).sum(1).mean().sqrt())


METRICS_2D = ["energy", "swd", "support", "coverage", "spread"]   # the columns of evaluate_2d's rows
METRICS_DIGITS = ["accuracy", "fd"]                               # the columns of evaluate_digits's rows


@torch.no_grad()
def evaluate_2d(model, name, steps=EVAL_STEPS, n=2000, seed=0, device=None):
    """Per step count: energy distance and sliced Wasserstein distance of samples to fresh data, and the
    structure metrics of `structure_2d` (support, coverage, spread)."""
    device = device or next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    real = toy_2d(name, n, g)
    noise = torch.randn(n, 2, generator=g).to(device)
    rows = []
    for s in steps:
        xs = sample(model, noise, s).float().cpu()
        rows.append({"steps": s, "energy": energy_distance(xs, real), "swd": sliced_wasserstein(xs, real),
                     **structure_2d(name, xs, real)})
    return rows


def format_table(results, metrics):
    """Markdown table: one row per step count, one column per (run, metric). results: {run: rows}."""
    runs = list(results)
    head = "| steps | " + " | ".join(f"{r} {m}" for r in runs for m in metrics) + " |"
    sep = "|---:|" + "---:|" * (len(runs) * len(metrics))
    steps = [row["steps"] for row in results[runs[0]]]
    lines = [head, sep]
    for i, s in enumerate(steps):
        cells = [format_value(results[r][i][m]) for r in runs for m in metrics]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_value(v):
    """A metric as the tables print it: 3 decimals, or 1 from 100 on."""
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def grid_image(rows, scale=4):
    """rows: list of (N, C, H, W) tensors in [-1, 1] -> PIL image, one grid row per tensor."""
    from PIL import Image
    imgs = torch.stack([r.clamp(-1, 1) for r in rows])                     # (R, N, C, H, W)
    R, N, C, H, W = imgs.shape
    pad = torch.full((R, N, C, H + 2, W + 2), -1.0)
    pad[..., 1:-1, 1:-1] = imgs
    grid = pad.permute(0, 3, 1, 4, 2).reshape(R * (H + 2), N * (W + 2), C)  # (R·H', N·W', C)
    arr = ((grid + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    img = Image.fromarray(arr[..., 0] if C == 1 else arr[..., :3])
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def scatter_image(panels, size=160, lim=1.5):
    """panels: list of (N, 2) point sets -> PIL image with one square scatter panel per set."""
    from PIL import Image
    arr = np.full((size, size * len(panels)), 255, dtype=np.uint8)
    for i, pts in enumerate(panels):
        p = ((pts.numpy().clip(-lim, lim) + lim) / (2 * lim) * (size - 1)).round().astype(int)
        arr[size - 1 - p[:, 1], i * size + p[:, 0]] = 0
        arr[:, i * size] = 128
    return Image.fromarray(arr)

