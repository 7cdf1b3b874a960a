"""Datasets behind one small interface: `batch(n, generator) -> (x1, y)` on the CPU.

x1 is scaled to roughly [-1, 1] (SD-VAE latents: the VAE's scaled latents); y is int64 with values in
[0, num_classes) (num_classes = 0: unlabelled, y is all zeros and the model sees the null label 0).

Two kinds:
- sampled (digits, 2-D toys, TensorDataset): `batch` draws from the caller's generator; small, in memory.
- indexed (ImageFolder, LatentDataset): `len` + `load(i, flip)`; training reads them through a DataLoader
  (workers, pinned memory) over `StreamSampler`, whose order is a fixed function of (seed, position in the
  global stream), so a run resumes exactly and any world size sees the same data order.

`make_dataset(spec)` takes "digits", a 2-D toy name, "images:DIR" (class = subfolder), "latents:DIR"
(written by `shortcut encode`), or a bare directory (a manifest.json inside means latents).
"""
import bisect
import json
import math
import os

import numpy as np
import torch

TOY_2D = ("checkerboard", "moons", "8gaussians")


class Dataset:
    """Interface: name, shape (one item), num_classes, batch(n, generator)."""
    name = "dataset"
    shape = ()
    num_classes = 0
    indexed = False     # True: len + load(i, flip), read through a DataLoader in training
    random_flip = False  # indexed image data: StreamSampler draws a horizontal flip per item
    latent = None        # {"vae": source, "scale_factor": s} when items are VAE latents

    def batch(self, n, generator):
        raise NotImplementedError

    @property
    def is_image(self):
        return len(self.shape) == 3

    def info(self):
        """What a checkpoint needs to rebuild the model and decode samples without the data itself."""
        return {"name": self.name, "shape": list(self.shape), "num_classes": self.num_classes,
                "latent": self.latent, "classes": list(getattr(self, "classes", []) or [])}


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


# Geometry of the 2-D toys, shared by the sampler below and the structure metrics (toy_2d_parts).
MOON_NOISE = 0.03        # std of the isotropic noise around the moon curves
GAUSS_RADIUS, GAUSS_STD = 0.8, 0.05   # 8gaussians: centres on this circle, each N(centre, std²)


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
        return _moon_curve(th, upper) + MOON_NOISE * torch.randn(n, 2, generator=g)
    if name == "8gaussians":
        ang = torch.randint(0, 8, (n,), generator=g).float() * (math.pi / 4)
        return _gauss_centres(ang) + GAUSS_STD * torch.randn(n, 2, generator=g)
    raise ValueError(f"unknown 2-D dataset {name!r}; expected one of {TOY_2D}")


def _moon_curve(th, upper):
    """Points of the two moons at angles th ∈ [0, π]: the upper moon where `upper`, else the lower one."""
    x = torch.where(upper, torch.cos(th), 1 - torch.cos(th))
    y = torch.where(upper, torch.sin(th), 0.5 - torch.sin(th))
    return torch.stack([x - 0.5, y - 0.25], 1) / 1.5


def _gauss_centres(ang):
    return torch.stack([torch.cos(ang), torch.sin(ang)], 1) * GAUSS_RADIUS


TOY_PARTS = 8   # each toy's support splits into 8 parts of equal mass: board cells, modes, quarter moons


def toy_2d_parts(name, x):
    """For points x (N, 2): the index (0 .. 7) of the part of the toy's support each lies in, -1 outside.

    checkerboard: the 8 filled cells. 8gaussians: within 3 std (0.15) of a centre (98.9 % of the data).
    moons: within 0.1 (3.3 noise std) of a moon curve, each moon cut into 4 arcs of equal angle.
    """
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1, 2)
    if name == "checkerboard":
        col, row = ((x + 1) * 2).floor().long().unbind(1)
        inside = (col >= 0) & (col < 4) & (row >= 0) & (row < 4) & ((col + row) % 2 == 0)
        return torch.where(inside, row * 2 + col.div(2, rounding_mode="floor"), -1)
    if name == "8gaussians":
        centres = _gauss_centres(torch.arange(8, dtype=torch.float64) * (math.pi / 4))
        dist, part = torch.cdist(x, centres).min(1)
        return torch.where(dist <= 3 * GAUSS_STD, part, -1)
    if name == "moons":
        m = 512   # curve points per moon: spacing π/512/1.5 ≈ 0.004, far below the 0.1 tolerance
        th = (torch.arange(m, dtype=torch.float64) + 0.5) * (math.pi / m)
        curve = torch.cat([_moon_curve(th, torch.ones(m, dtype=torch.bool)),
                           _moon_curve(th, torch.zeros(m, dtype=torch.bool))])        # (2m, 2)
        dist, idx = torch.cdist(x, curve).min(1)
        part = (idx // m) * 4 + (idx % m) * 4 // m
        return torch.where(dist <= 0.1, part, -1)
    raise ValueError(f"unknown 2-D dataset {name!r}; expected one of {TOY_2D}")


def make_dataset(name, image_size=0, random_flip=True):
    """Dataset by spec: 'digits', a 2-D toy, 'images:DIR', 'latents:DIR' or a bare directory.

    image_size: for image folders, the side every image is center-cropped and resized to (0: keep the
    images' own size, which must then be square and the same for all). random_flip: horizontal flips in
    training (image folders only; latents store flips as their own entries).
    """
    if name == "digits":
        return load_digits()
    if name in TOY_2D:
        return Toy2D(name)
    kind, sep, path = name.partition(":")
    if not sep or kind not in ("images", "latents"):
        kind, path = None, name
    if kind is None and not os.path.isdir(path):
        raise ValueError(f"unknown dataset {name!r}; expected 'digits', one of {TOY_2D}, 'images:DIR', "
                         f"'latents:DIR' or an existing directory")
    if kind == "latents" or (kind is None and os.path.exists(os.path.join(path, MANIFEST))):
        return LatentDataset(path)
    return ImageFolder(path, image_size=image_size, random_flip=random_flip)


# ---------------------------------------------------------------------------------------------------------
# Image folders

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")


def scan_image_folder(root):
    """(files, labels, classes): class = top-level subfolder (sorted names, searched recursively), or one
    unlabelled set (classes = []) when all images sit directly in `root`."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist or is not a directory")
    entries = sorted(os.listdir(root))
    top = [e for e in entries if e.lower().endswith(IMAGE_EXTS) and os.path.isfile(os.path.join(root, e))]
    classes = [e for e in entries if os.path.isdir(os.path.join(root, e)) and not e.startswith(".")]
    class_files = {}
    for c in classes:
        found = []
        for d, subdirs, names in os.walk(os.path.join(root, c)):
            subdirs.sort()
            found += [os.path.join(d, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTS)]
        if found:
            class_files[c] = found
    if top and class_files:
        raise ValueError(f"image folder {root!r} has images both at the top level ({top[0]}, ...) and in "
                         f"class subfolders ({next(iter(class_files))}/...); use one layout: "
                         f"DIR/CLASS/*.png for labelled data or DIR/*.png for unlabelled data")
    if top:
        return [os.path.join(root, e) for e in top], [0] * len(top), []
    if not class_files:
        raise ValueError(f"no images found under {root!r} (looked for {', '.join(IMAGE_EXTS)} directly inside "
                         f"or in class subfolders)")
    classes = sorted(class_files)
    files, labels = [], []
    for i, c in enumerate(classes):
        files += class_files[c]
        labels += [i] * len(class_files[c])
    return files, labels, classes


def open_rgb(path):
    """PIL image in RGB, or a ValueError naming the file when it cannot be decoded."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as e:   # PIL raises UnidentifiedImageError, OSError, SyntaxError... for bad files
        raise ValueError(f"cannot read image {path!r}: {type(e).__name__}: {e}") from e


def center_crop_resize(img, size):
    """The ADM / DiT preprocessing: halve with a box filter while the short side is ≥ 2·size, resize the
    short side to `size` (bicubic), then crop the centre size×size. Returns uint8 (size, size, 3)."""
    from PIL import Image
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


def to_tensor(arr):
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1).float() / 127.5 - 1   # copy: PIL arrays are read-only


class ImageFolder(Dataset):
    """Images under DIR/CLASS/... (class = subfolder) or DIR/... (unlabelled), as (3, S, S) in [-1, 1].

    image_size > 0: every image is center-cropped and resized to image_size (the official pipeline).
    image_size = 0: images are used as they are; all must be square and of one size (checked up front).
    """
    indexed = True

    def __init__(self, root, image_size=0, random_flip=True):
        if not isinstance(image_size, int) or image_size < 0:
            raise ValueError(f"image_size must be an int >= 0, got {image_size!r}")
        self.root, self.image_size, self.random_flip = root, image_size, random_flip
        self.files, labels, self.classes = scan_image_folder(root)
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.num_classes = len(self.classes)
        self.name = f"images:{root}"
        self.shape = (3, image_size, image_size) if image_size else (3, *self._common_size())

    def _common_size(self):
        from PIL import Image
        sizes = {}
        for f in self.files:
            try:
                with Image.open(f) as img:
                    sizes.setdefault(img.size, f)
            except Exception as e:
                raise ValueError(f"cannot read image {f!r}: {type(e).__name__}: {e}") from e
            if len(sizes) > 1:
                (s0, f0), (s1, f1) = list(sizes.items())[:2]
                raise ValueError(f"images in {self.root!r} have different sizes ({f0}: {s0[0]}x{s0[1]}, "
                                 f"{f1}: {s1[0]}x{s1[1]}); pass image_size (--image-size) to center-crop and "
                                 f"resize them all to one square size")
        (w, h), f = next(iter(sizes.items()))
        if w != h:
            raise ValueError(f"images in {self.root!r} are {w}x{h}, not square ({f}); pass image_size "
                             f"(--image-size) to center-crop and resize them")
        return h, w

    def __len__(self):
        return len(self.files)

    def load(self, i, flip=False):
        img = open_rgb(self.files[i])
        if self.image_size:
            arr = center_crop_resize(img, self.image_size)
        else:
            arr = np.asarray(img)
            if arr.shape[:2] != self.shape[1:]:
                raise ValueError(f"image {self.files[i]!r} is {arr.shape[1]}x{arr.shape[0]}, the folder's images "
                                 f"are {self.shape[2]}x{self.shape[1]}; pass image_size to resize")
        if flip:
            arr = arr[:, ::-1]
        return to_tensor(arr), self.labels[i]

    def __getitem__(self, key):
        i, flip = key
        return self.load(i, flip)

    def batch(self, n, generator):
        idx = torch.randint(0, len(self), (n,), generator=generator).tolist()
        flips = (torch.rand(n, generator=generator) < 0.5).tolist() if self.random_flip else [False] * n
        xs, ys = zip(*(self.load(i, f) for i, f in zip(idx, flips)))
        return torch.stack(xs), torch.stack(ys)


# ---------------------------------------------------------------------------------------------------------
# Latents written by `shortcut encode` (shortcut/encode.py): DIR/manifest.json + DIR/latents-*.safetensors

MANIFEST = "manifest.json"
LATENT_FORMAT = "shortcut-latents"


def read_manifest(root):
    path = os.path.join(root, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {MANIFEST} in {root!r}: latents are written by `shortcut encode`")
    try:
        with open(path) as f:
            man = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if man.get("format") != LATENT_FORMAT:
        raise ValueError(f"{path} is not a shortcut latent manifest (format {man.get('format')!r}, "
                         f"expected {LATENT_FORMAT!r})")
    return man


def check_shard(root, entry, shape):
    """Open one shard's header and check it against its manifest entry; returns the item count."""
    from safetensors import safe_open
    path = os.path.join(root, entry["file"])
    if not os.path.exists(path):
        raise ValueError(f"manifest in {root!r} lists shard {entry['file']!r}, which does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
            if keys != {"latents", "labels"}:
                raise ValueError(f"shard {path!r} holds tensors {sorted(keys)}, expected ['labels', 'latents']")
            lat, lab = f.get_slice("latents").get_shape(), f.get_slice("labels").get_shape()
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"cannot read shard {path!r}: {type(e).__name__}: {e}") from e
    if list(lat[1:]) != list(shape) or lat[0] != entry["count"] or list(lab) != [entry["count"]]:
        raise ValueError(f"shard {path!r} does not match its manifest: it holds latents {list(lat)} and labels "
                         f"{list(lab)}, the manifest says {entry['count']} items of shape {list(shape)}")
    return lat[0]


class LatentDataset(Dataset):
    """Pre-extracted VAE latents (already multiplied by the scale factor) with labels; read lazily per item
    from memory-mapped safetensors shards, so workers share the page cache and nothing is decoded."""
    indexed = True

    def __init__(self, root):
        man = read_manifest(root)
        self.root, self.manifest = root, man
        self.shape = tuple(man["shape"])
        self.num_classes = int(man["num_classes"])
        self.classes = man.get("classes", [])
        self.name = f"latents:{root}"
        self.latent = {"vae": man["vae"], "scale_factor": man["scale_factor"]}
        counts = [check_shard(root, e, self.shape) for e in man["shards"]]
        if not counts or sum(counts) != man["count"]:
            raise ValueError(f"manifest in {root!r} says {man['count']} items, its shards hold {sum(counts)}")
        self.offsets = np.cumsum([0] + counts).tolist()
        self._open = {}

    def __getstate__(self):   # DataLoader workers reopen shards themselves
        return {**self.__dict__, "_open": {}}

    def __len__(self):
        return self.offsets[-1]

    def _shard(self, s):
        f = self._open.get(s)
        if f is None:
            from safetensors import safe_open
            f = self._open[s] = safe_open(os.path.join(self.root, self.manifest["shards"][s]["file"]),
                                          framework="pt")
        return f

    def load(self, i, flip=False):
        s = bisect.bisect_right(self.offsets, i) - 1
        f, j = self._shard(s), i - self.offsets[s]
        return f.get_slice("latents")[j:j + 1][0].float(), f.get_slice("labels")[j:j + 1][0].long()

    def __getitem__(self, key):
        i, _ = key
        return self.load(i)

    def batch(self, n, generator):
        idx = torch.randint(0, len(self), (n,), generator=generator).tolist()
        xs, ys = zip(*(self.load(i) for i in idx))
        return torch.stack(xs), torch.stack(ys)


# ---------------------------------------------------------------------------------------------------------
# Reading indexed data in training

class StreamSampler:
    """Index lists (of (index, flip) pairs) for one rank's micro-batches, steps start+1 .. steps.

    The global stream is epochs of random permutations of the dataset (seeded by (seed, epoch)); step s
    takes positions (s−1)·B … s·B − 1 and shard j the j-th of its equal slices. It depends on nothing but
    (seed, position), so resuming and changing the world size keep the data order.
    """

    def __init__(self, n_items, batch_size, num_shards, shards, start, steps, seed, random_flip):
        self.n, self.B, self.S, self.shards = n_items, batch_size, num_shards, list(shards)
        self.start, self.steps, self.seed, self.random_flip = start, steps, seed, random_flip
        self._epoch, self._perm, self._flip = None, None, None

    def __len__(self):
        return (self.steps - self.start) * len(self.shards)

    def _epoch_order(self, e):
        if e != self._epoch:
            g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, 0x64617461, e])
                                                  .generate_state(1, np.uint64)[0] >> np.uint64(1)))
            # numpy: indexing one item costs ~0.1 µs instead of a tensor op's few µs (256 lookups a step)
            self._perm = torch.randperm(self.n, generator=g).numpy()
            self._flip = (torch.rand(self.n, generator=g) < 0.5).numpy()
            self._epoch = e
        return self._perm, self._flip

    def positions(self, step, shard):
        b = self.B // self.S
        first = (step - 1) * self.B + shard * b
        return range(first, first + b)

    def __iter__(self):
        for step in range(self.start + 1, self.steps + 1):
            for j in self.shards:
                items = []
                for p in self.positions(step, j):
                    perm, flip = self._epoch_order(p // self.n)
                    items.append((int(perm[p % self.n]), bool(flip[p % self.n]) and self.random_flip))
                yield items


def stream_loader(dataset, sampler, num_workers=0, pin_memory=False):
    """A DataLoader yielding (x1, y) micro-batches in the sampler's order."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       pin_memory=pin_memory, prefetch_factor=4 if num_workers else None,
                                       persistent_workers=False)
