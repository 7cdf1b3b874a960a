"""The training loop: shortcut objective, AdamW, EMA, bf16 autocast on CUDA, JSONL metrics, sample grids,
atomic checkpoints and exact resume.

    python -m shortcut train --data digits --steps 2000 --out-dir runs/digits
"""
import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch

from .config import ModelConfig, TrainConfig
from .data import make_dataset
from .model import ShortcutDiT, ShortcutMLP
from .objective import shortcut_loss, shortcut_targets
from .sampler import sample

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainResult:
    model: torch.nn.Module
    ema: torch.nn.Module
    step: int
    history: list = field(default_factory=list)   # one dict per logged step
    out_dir: str = ""


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return dev


def build_model(cfg: TrainConfig, dataset):
    """ShortcutDiT for image data (preset + overrides, shape from the data), ShortcutMLP for 2-D data."""
    preset = cfg.preset
    if preset == "auto":
        preset = "digits" if dataset.is_image else "mlp"
    if not dataset.is_image:
        if preset != "mlp":
            raise ValueError(f"2-D data trains the 'mlp' model, got preset {cfg.preset!r}")
        return ShortcutMLP(dim=dataset.shape[0], num_classes=dataset.num_classes, **cfg.model_overrides)
    if preset == "mlp":
        raise ValueError("preset 'mlp' is for 2-D data; image data needs a DiT preset")
    c, h, _ = dataset.shape
    mcfg = ModelConfig.preset(preset, official=cfg.official, input_size=h, in_channels=c,
                              num_classes=dataset.num_classes, **cfg.model_overrides)
    return ShortcutDiT(mcfg, kernels=cfg.kernels)


def model_from_checkpoint(ckpt, use_ema=True, kernels="auto", map_location="cpu"):
    """Rebuild the (EMA) model of a checkpoint path or loaded dict."""
    if isinstance(ckpt, (str, os.PathLike)):
        ckpt = torch.load(ckpt, map_location=map_location, weights_only=False)
    cfg = TrainConfig.from_dict(ckpt["config"])
    cfg.kernels = kernels
    model = build_model(cfg, make_dataset(cfg.data))
    model.load_state_dict(ckpt["ema" if use_ema else "model"])
    return model.eval(), cfg


@torch.no_grad()
def ema_update(ema, model, decay):
    """ema ← decay·ema + (1 − decay)·model, for parameters; buffers copied."""
    e, m = list(ema.parameters()), list(model.parameters())
    torch._foreach_lerp_(e, m, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def save_atomic(obj, path):
    """torch.save to a temporary file then rename: a crash never leaves a half-written checkpoint."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Progress:
    """A one-line progress bar on stderr: step, loss, it/s."""

    def __init__(self, total, start, enabled):
        self.total, self.enabled, self.t0, self.s0 = total, enabled, time.perf_counter(), start

    def update(self, step, loss):
        if not self.enabled:
            return
        rate = (step - self.s0) / max(time.perf_counter() - self.t0, 1e-9)
        width = 24
        done = int(width * step / self.total)
        sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{self.total} loss {loss:.4f} {rate:.1f} it/s")
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")


def train(cfg: TrainConfig):
    """Train a shortcut (or flow-matching) model as `cfg` says; returns TrainResult."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.out_dir, CHECKPOINT)

    dataset = make_dataset(cfg.data)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, dataset).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)     # data order, noise, t, levels, label dropout
    start = 0

    if cfg.resume:
        if not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        _check_resumable(ckpt["config"], cfg)
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["rng"]["generator"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        start = ckpt["step"]
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    _truncate_metrics(metrics_path, start)

    def checkpoint(step):
        save_atomic({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                     "step": step, "config": cfg.to_dict(),
                     "rng": {"generator": gen.get_state(), "torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}},
                    ckpt_path)

    history = []
    bar = Progress(cfg.steps, start, cfg.progress)
    t_last, s_last = time.perf_counter(), start
    model.train()
    with open(metrics_path, "a") as log:
        for step in range(start + 1, cfg.steps + 1):
            x1, y = dataset.batch(cfg.batch_size, gen)
            x1, y = x1.to(device, non_blocking=True), y.to(device, non_blocking=True)
            target_net = ema if cfg.targets == "ema" else model
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                batch = shortcut_targets(target_net, x1, y, cfg.objective, generator=gen)
                loss, parts = shortcut_loss(model, batch)
            if not torch.isfinite(loss):
                bar.close()
                raise FloatingPointError(
                    f"non-finite loss ({loss.item()}) at step {step}; stopping. The last good checkpoint "
                    f"{ckpt_path if os.path.exists(ckpt_path) else '(none yet)'} is left as it was. "
                    f"Try a lower lr (now {cfg.lr}).")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema_update(ema, model, cfg.ema_decay)

            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                row = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in parts.items()},
                       "it_s": (step - s_last) / max(now - t_last, 1e-9)}
                t_last, s_last = now, step
                history.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.update(step, row["loss"])
            if cfg.sample_every and step % cfg.sample_every == 0 and step != cfg.steps:
                save_grid(ema, dataset, os.path.join(cfg.out_dir, f"samples_{step:07d}.png"), device, cfg.grid_steps)
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                checkpoint(step)
    bar.close()
    save_grid(ema, dataset, os.path.join(cfg.out_dir, "samples.png"), device, cfg.grid_steps)
    return TrainResult(model, ema, cfg.steps, history, cfg.out_dir)


def _check_resumable(saved, cfg):
    """A checkpoint resumes only a run of the same data, model and objective."""
    new = cfg.to_dict()
    for key in ("data", "preset", "official", "model_overrides", "objective"):
        if saved.get(key) != new.get(key):
            raise ValueError(f"--resume: checkpoint was trained with {key}={saved.get(key)!r}, "
                             f"this run has {key}={new.get(key)!r}")


def _truncate_metrics(path, step):
    """Drop metric rows past `step` (written by an interrupted run after its last checkpoint)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(rows)


@torch.no_grad()
def save_grid(model, dataset, path, device, steps=(1, 2, 4, 8, 16, 32, 64, 128), seed=0):
    """A PNG: one row per step count; for labelled images, one column per class (same noise per column)."""
    from .eval import grid_image, scatter_image
    g = torch.Generator().manual_seed(seed)
    if dataset.is_image:
        n = max(dataset.num_classes, 8)
        noise = torch.randn(n, *dataset.shape, generator=g).to(device)
        y = torch.arange(n, device=device) % dataset.num_classes if dataset.num_classes else None
        rows = [sample(model, noise, s, y=y).float().cpu() for s in steps]
        grid_image(rows).save(path)
    else:
        noise = torch.randn(1000, *dataset.shape, generator=g).to(device)
        scatter_image([sample(model, noise, s).float().cpu() for s in steps]).save(path)
