"""Datasets behind one small interface: `batch(n, generator) -> (x1, y)` on the CPU.

x1 is scaled to roughly [-1, 1]; y is int64 with values in [0, num_classes) (num_classes = 0: unlabelled,
y is all zeros and the model sees the null label 0). Image folders and latents plug in by implementing
`shape`, `num_classes` and `batch`.
"""
import math

import numpy as np
import torch

TOY_2D = ("checkerboard", "moons", "8gaussians")


class Dataset:
    """Interface: name, shape (one item), num_classes, batch(n, generator)."""
    name = "dataset"
    shape = ()
    num_classes = 0

    def batch(self, n, generator):
        raise NotImplementedError

    @property
    def is_image(self):
        return len(self.shape) == 3


class TensorDataset(Dataset):
    """A dataset held in memory: batches are drawn uniformly with replacement (resumable via the generator)."""

    def __init__(self, x, y, num_classes, name="tensors"):
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise ValueError(f"x and y must hold the same non-zero number of items, got {x.shape[0]} and {y.shape[0]}")
        self.x, self.y, self.num_classes, self.name = x.float(), y.long(), num_classes, name
        self.shape = tuple(x.shape[1:])

    def __len__(self):
        return self.x.shape[0]

    def batch(self, n, generator):
        idx = torch.randint(0, len(self), (n,), generator=generator)
        return self.x[idx], self.y[idx]


def load_digits():
    """scikit-learn's 1,797 8×8 digits as (N, 1, 8, 8) in [-1, 1] with labels 0..9."""
    from sklearn.datasets import load_digits as _load
    d = _load()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0 * 2 - 1)[:, None]   # (N, 1, 8, 8)
    return TensorDataset(x, torch.from_numpy(d.target).long(), 10, name="digits")


class Toy2D(Dataset):
    """Fresh samples of a 2-D distribution each batch (unlabelled)."""

    def __init__(self, name):
        if name not in TOY_2D:
            raise ValueError(f"unknown 2-D dataset {name!r}; expected one of {TOY_2D}")
        self.name, self.shape, self.num_classes = name, (2,), 0

    def batch(self, n, generator):
        return toy_2d(self.name, n, generator), torch.zeros(n, dtype=torch.long)


def toy_2d(name, n, generator):
    """n samples (n, 2) of checkerboard / moons / 8gaussians, scaled to about [-1, 1]."""
    g = generator
    if name == "checkerboard":
        # 4×4 board on [-1, 1]², half the cells filled.
        u = torch.rand(n, 2, generator=g)
        cell = torch.randint(0, 8, (n,), generator=g)
        row = cell // 2
        col = (cell % 2) * 2 + row % 2
        return (torch.stack([col, row], 1).float() + u) / 2 - 1
    if name == "moons":
        th = torch.rand(n, generator=g) * math.pi
        upper = torch.rand(n, generator=g) < 0.5
        x = torch.where(upper, torch.cos(th), 1 - torch.cos(th))
        y = torch.where(upper, torch.sin(th), 0.5 - torch.sin(th))
        pts = torch.stack([x - 0.5, y - 0.25], 1) / 1.5
        return pts + 0.03 * torch.randn(n, 2, generator=g)
    if name == "8gaussians":
        ang = torch.randint(0, 8, (n,), generator=g).float() * (math.pi / 4)
        centres = torch.stack([torch.cos(ang), torch.sin(ang)], 1) * 0.8
        return centres + 0.05 * torch.randn(n, 2, generator=g)
    raise ValueError(f"unknown 2-D dataset {name!r}; expected one of {TOY_2D}")


def make_dataset(name):
    """Dataset by name: 'digits' or one of the 2-D toys."""
    if name == "digits":
        return load_digits()
    if name in TOY_2D:
        return Toy2D(name)
    raise ValueError(f"unknown dataset {name!r}; expected 'digits' or one of {TOY_2D}")
