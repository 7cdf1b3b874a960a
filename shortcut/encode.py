"""`shortcut encode`: pre-extract SD-VAE latents of an image folder, so training pays no VAE cost per step.

    shortcut encode --data /data/imagenet/train --out /data/in256-latents --image-size 256 \
        --vae stabilityai/sd-vae-ft-ema
    shortcut train --recipe imagenet256-dit-b2 --data latents:/data/in256-latents

Images are center-cropped and resized as in training (ADM/DiT pipeline), encoded with diffusers'
`AutoencoderKL` (optional extra: pip install 'shortcut[vae]'), multiplied by the VAE's scaling factor
(0.18215 for SD-VAE) and written as safetensors shards (`latents` (n, C, h, w), `labels` (n,)) with a
manifest.json. With `flip`, each image's horizontal mirror is encoded too and stored as its own entry
(latents cannot be flipped after the fact: the VAE is not flip-equivariant). Output goes to a temporary
folder renamed into place at the end: an error leaves no partial dataset behind.

The VAE source is a diffusers folder (save_pretrained layout) or a Hugging Face hub id; a hub id is
fetched on first use and needs internet — offline, download it once and pass the folder.
"""
import json
import os
import shutil

import torch
from tqdm.auto import tqdm

from .data import LATENT_FORMAT, MANIFEST, ImageFolder

SD_VAE_SCALE = 0.18215   # Stable Diffusion VAE latent scaling (Rombach et al.): unit variance for the DiT


def _diffusers():
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise ImportError("the VAE needs diffusers and safetensors: pip install 'shortcut[vae]'") from e
    return AutoencoderKL


def load_vae(source, device="cpu"):
    """diffusers AutoencoderKL from a local folder or a hub id, in eval mode without grad."""
    AutoencoderKL = _diffusers()
    try:
        vae = AutoencoderKL.from_pretrained(source)
    except Exception as e:
        local = os.path.isdir(str(source))
        hint = ("the folder must hold a diffusers AutoencoderKL (config.json + weights, as save_pretrained writes)"
                if local else "a hub id is downloaded on first use: without internet, download the VAE once "
                "(e.g. AutoencoderKL.from_pretrained(id).save_pretrained(DIR)) and pass DIR")
        raise RuntimeError(f"cannot load the VAE {source!r}: {type(e).__name__}: {e}. {hint}") from e
    return vae.to(device).eval().requires_grad_(False)


def vae_scale(vae, override=None):
    return float(override or getattr(vae.config, "scaling_factor", None) or SD_VAE_SCALE)


@torch.no_grad()
def vae_encode(vae, x, scale_factor, mode="posterior", generator=None):
    """Images (B, 3, H, W) in [-1, 1] -> scaled latents. mode: 'posterior' (a sample) or 'mean'."""
    dist = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
    z = dist.sample(generator=generator) if mode == "posterior" else dist.mean
    return z.float() * scale_factor


@torch.no_grad()
def vae_decode(vae, z, scale_factor):
    """Scaled latents -> images (B, 3, H, W) in [-1, 1]."""
    x = vae.decode((z / scale_factor).to(vae.device, vae.dtype)).sample
    return x.float().clamp(-1, 1)


def _source_name(source):
    return os.path.abspath(source) if os.path.isdir(str(source)) else str(source)


def encode_folder(data, out, vae, image_size=256, batch_size=64, flip=True, mode="posterior", shard_size=4096,
                  dtype="float32", scale_factor=None, seed=0, device="cpu", num_workers=4, progress=True,
                  vae_model=None):
    """Encode the image folder `data` into latent shards + manifest.json under `out`; returns the manifest.

    vae: the VAE source (folder or hub id), recorded in the manifest so that sampling decodes with the same
    VAE; vae_model: that VAE already loaded (else it is loaded here). `out` must not exist or be empty.
    """
    from safetensors.torch import save_file

    if mode not in ("posterior", "mean"):
        raise ValueError(f"mode must be 'posterior' or 'mean', got {mode!r}")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be 'float32', 'float16' or 'bfloat16', got {dtype!r}")
    for name, v in (("batch_size", batch_size), ("shard_size", shard_size)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FileExistsError(f"output {out!r} exists and is not an empty folder: choose a new one")
    images = ImageFolder(data, image_size=image_size, random_flip=False)
    device = torch.device(device)
    if not isinstance(vae, (str, os.PathLike)):
        raise ValueError(f"vae must be a folder or hub id (pass a loaded model as vae_model), got {type(vae).__name__}")
    source, vae = str(vae), vae_model if vae_model is not None else load_vae(vae, device)
    scale = vae_scale(vae, scale_factor)
    store = getattr(torch, dtype)

    tmp = f"{os.path.abspath(out).rstrip(os.sep)}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        loader = torch.utils.data.DataLoader(
            images, batch_sampler=[[(i, False) for i in range(s, min(s + batch_size, len(images)))]
                                   for s in range(0, len(images), batch_size)],
            num_workers=num_workers, pin_memory=device.type == "cuda")
        g = torch.Generator(device).manual_seed(seed)
        shards, buf_z, buf_y, shape = [], [], [], None
        total = len(images) * (2 if flip else 1)
        bar = tqdm(total=total, unit="img", disable=not progress, dynamic_ncols=True)

        def flush():
            z, y = torch.cat(buf_z), torch.cat(buf_y)
            name = f"latents-{len(shards):05d}.safetensors"
            save_file({"latents": z.to(store).contiguous(), "labels": y.contiguous()}, os.path.join(tmp, name))
            shards.append({"file": name, "count": int(z.shape[0])})
            buf_z.clear()
            buf_y.clear()

        for x, y in loader:
            z = vae_encode(vae, x, scale, mode, g).cpu()
            if flip:   # entries in order: image, its mirror
                zf = vae_encode(vae, x.flip(-1), scale, mode, g).cpu()
                z, y = torch.stack([z, zf], 1).flatten(0, 1), y.repeat_interleave(2)
            shape = tuple(z.shape[1:])
            for i in range(0, z.shape[0]):   # split at shard boundaries
                buf_z.append(z[i:i + 1])
                buf_y.append(y[i:i + 1].long())
                if len(buf_z) == shard_size:
                    flush()
            bar.update(z.shape[0])
        if buf_z:
            flush()
        bar.close()
        manifest = {"format": LATENT_FORMAT, "version": 1, "count": total, "shape": list(shape),
                    "num_classes": images.num_classes, "classes": images.classes, "scale_factor": scale,
                    "vae": _source_name(source), "sample": mode, "flip": flip, "image_size": images.shape[-1],
                    "source": os.path.abspath(data), "dtype": dtype, "seed": seed, "shards": shards}
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
        if os.path.isdir(out):
            os.rmdir(out)   # empty (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
