"""The training loop: shortcut objective, AdamW, EMA, bf16 autocast on CUDA, JSONL metrics, sample grids,
atomic checkpoints and exact resume — on one process or many (torchrun + DDP, or FSDP2).

    python -m shortcut train --data digits --steps 2000 --out-dir runs/digits
    torchrun --nproc-per-node 8 -m shortcut train --recipe imagenet256-dit-b2 --data latents:/data/in256

How the work is split (see shortcut/distributed.py): the global batch `batch_size` is cut into
world_size × grad_accum equal shards, each with its own generator; the bootstrap items of the global batch
(int(batch_size · bootstrap_fraction), as on one process) and their levels are dealt out over the shards.
Gradients are the mean over all items; metrics are reduced over ranks (item-weighted); rank 0 alone writes metrics,
checkpoints and grids. A checkpoint holds full (unsharded) weights and every shard's generator state, so
it resumes on any world size, exactly when world_size × grad_accum is unchanged.
"""
import contextlib
import copy
import json
import os
import time
import warnings
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from . import distributed as D
from .baselines import OBJECTIVES, copy_teacher, progressive_refresh_due, progressive_refresh_source
from .build import DATA_FIELDS, build_model, check_model_overrides, data_shape
from .checkpoint import (CHECKPOINT, METRICS, _plain, _to_cpu, check_resumable, checkpoint_data_info, checkpoint_model,
                         full_state, load_checkpoint, load_matching, load_training_state, model_from_checkpoint,
                         read_weight_source, remove_stale_temps, resume_generators, save_atomic, truncate_metrics,
                         unsharded)
from .config import TrainConfig
from .data import TOY_2D, StreamSampler, make_dataset, stream_loader
from .model import architecture
from .objectives import Objective, check_parallel, refresh_progressive_teacher
from .profiling import nvtx_range
from .sampler import sample
from .teachers import (check_init_source, check_teacher_flag, make_reflow_pairs, read_teacher, saved_reflow_pairs,
                       teacher_module)

# Checkpoint and model-building helpers live in checkpoint.py / build.py; imported from here too.
__all__ = ["train", "TrainResult", "resolve_device", "ema_update", "save_grid", "CHECKPOINT", "METRICS", "DATA_FIELDS",
           "build_model", "check_model_overrides", "data_shape", "checkpoint_data_info", "checkpoint_model",
           "load_checkpoint", "model_from_checkpoint", "remove_stale_temps", "save_atomic"]


@dataclass
class TrainResult:
    model: torch.nn.Module     # the live weights (the user's module, not the DDP wrapper)
    ema: torch.nn.Module
    step: int
    history: list = field(default_factory=list)   # one dict per logged step (identical on every rank)
    out_dir: str = ""
    rank: int = 0
    world_size: int = 1


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return dev


@torch.no_grad()
def ema_update(ema, model, decay):
    """ema ← decay·ema + (1 − decay)·model, for parameters; buffers copied. FSDP2: on the local shards."""
    for net in (ema, model):
        if hasattr(net, "reshard"):   # FSDP2 keeps the root unsharded after a no-grad forward
            net.reshard()
    e, m = [D.local_shard(p) for p in ema.parameters()], [D.local_shard(p) for p in model.parameters()]
    torch._foreach_lerp_(e, m, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def data_options(cfg):
    """Keyword arguments for make_dataset: built-in datasets take none; folders and latents take the image ones."""
    if cfg.data == "digits" or cfg.data in TOY_2D:
        return {}
    return {"image_size": cfg.image_size, "random_flip": cfg.random_flip}


class _Batches:
    """This rank's micro-batches: sampled datasets draw from the shard's generator (as one process always
    did); indexed datasets (image folders, latents) come from a DataLoader over StreamSampler."""

    def __init__(self, dataset, cfg, env, shards, num_shards, start, device):
        self.dataset, self.b = dataset, cfg.batch_size // num_shards
        self.iter = None
        if dataset.indexed:
            sampler = StreamSampler(len(dataset), cfg.batch_size, num_shards, shards, start, cfg.steps,
                                    cfg.seed, dataset.random_flip)
            self.iter = iter(stream_loader(dataset, sampler, cfg.num_workers, pin_memory=device.type == "cuda"))

    def next(self, generator):
        if self.iter is not None:
            return next(self.iter)
        return self.dataset.batch(self.b, generator)


def train(cfg: TrainConfig):
    """Train a shortcut (or flow-matching) model as `cfg` says; returns TrainResult.

    Under torchrun (WORLD_SIZE > 1) every rank calls this with the same cfg; see the module docstring.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env = D.setup(resolve_device(cfg.device))
    try:
        return _train(cfg, env)
    finally:
        D.teardown(env)


def _train(cfg, env):
    t_begin = time.perf_counter()
    device = env.device
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    A = cfg.grad_accum
    S = env.world_size * A
    if cfg.batch_size % S:
        raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by world_size × grad_accum "
                         f"({env.world_size} × {A} = {S}): it is the global batch, split into equal shards")
    shards = list(range(env.rank * A, (env.rank + 1) * A))
    name = cfg.objective.objective
    fsdp = env.distributed and cfg.parallel == "fsdp"
    check_parallel(cfg, env, S)
    # Bad data, model settings, teachers or starting weights fail before anything is written.
    dataset = make_dataset(cfg.data, **data_options(cfg))
    check_model_overrides(cfg.model_overrides, dataset.is_image)
    check_teacher_flag(cfg)
    ckpt_path = os.path.join(cfg.out_dir, CHECKPOINT)
    ckpt = None
    if cfg.resume:
        if not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = load_checkpoint(ckpt_path, map_location="cpu" if fsdp else device)
        # RNG states must stay CPU ByteTensors (Generator.set_state, torch(.cuda).set_rng_state take no others),
        # whatever device the weights were mapped to.
        ckpt["rng"] = _to_cpu(ckpt["rng"])
        check_resumable(ckpt["config"], cfg)
    pairs, reused_s = saved_reflow_pairs(cfg, dataset, cfg.resume) if name == "reflow" else (None, 0.0)
    raw, ema, teacher, teacher_src, init_src = _networks(cfg, env, dataset, ckpt, pairs is not None)
    os.makedirs(cfg.out_dir, exist_ok=True)
    if name == "reflow" and pairs is None:
        pairs, _ = make_reflow_pairs(cfg, dataset, teacher_module(teacher_src, cfg.kernels, device), env)
    shadow = copy.deepcopy(raw).cpu() if fsdp else None   # unsharded copy for FSDP checkpoints
    model = D.wrap_model(raw, env, cfg.parallel)
    if fsdp:
        D.wrap_model(ema, env, "fsdp")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    # One generator per shard: data order (sampled datasets), noise, t, levels, label dropout.
    gens = D.shard_generators(cfg.seed, shards)
    # Pairs made by an earlier run in out_dir count in this run's clock (pairs made now are in it already).
    start, elapsed = 0, reused_s
    source = {"init_from": init_src.path if init_src is not None else None}

    if ckpt is not None:
        start, elapsed = ckpt["step"], ckpt.get("elapsed", 0.0)
        source = ckpt.get("source", source)
        load_training_state(ckpt, raw, ema, opt, fsdp, shadow)
        for group in opt.param_groups:   # the optimizer's state, this run's settings (`--resume --lr 1e-5`)
            group.update(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        gens = resume_generators(ckpt, cfg, shards, S, env)
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        del ckpt
    metrics_path = os.path.join(cfg.out_dir, METRICS)
    if env.is_main:
        remove_stale_temps(cfg.out_dir)
        truncate_metrics(metrics_path, start)
    data_info = dataset.info()

    def time_s():
        """Wall-clock seconds of the run so far: this process's, setup included, plus the resumed run's."""
        return elapsed + time.perf_counter() - t_begin

    def checkpoint(step):
        states = [s for rank_states in D.gather_objects([g.get_state() for g in gens], env) for s in rank_states]
        weights = full_state(model, raw, ema, opt, fsdp, shadow)
        if env.is_main:
            optim = {**weights["optimizer"], "param_groups": _plain(weights["optimizer"]["param_groups"])}
            extra = {"teacher": teacher.state_dict()} if name == "progressive" else {}
            save_atomic({**weights, "optimizer": optim, "step": step, "config": _plain(cfg.to_dict()),
                         "objective": name, "data_info": _plain(data_info), "architecture": _plain(architecture(raw)),
                         "guidance": _plain(raw.guidance), "source": source, "elapsed": time_s(), **extra,
                         "world": {"world_size": env.world_size, "grad_accum": A, "parallel": cfg.parallel},
                         "rng": {"generator": states[0], "generators": states, "torch": torch.get_rng_state(),
                                 "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}},
                        ckpt_path)
        D.barrier(env)

    batches = _Batches(dataset, cfg, env, shards, S, start, device) if name != "reflow" else None
    decode = _decoder(dataset, device) if env.is_main or fsdp else None
    target_net = ema if cfg.targets == "ema" else raw
    objective = Objective(cfg, raw, target_net, teacher, pairs, cfg.batch_size // S, device)
    refresh_from = None
    if name == "progressive":
        refresh_from = ema if progressive_refresh_source(cfg.steps, cfg.ema_decay,
                                                         cfg.objective.denoise_timesteps) == "ema" else raw
    history = []
    bar = tqdm(total=cfg.steps, initial=start, unit="step", disable=not (cfg.progress and env.is_main),
               dynamic_ncols=True)
    t_last, s_last = time.perf_counter(), start
    model.train()
    log = open(metrics_path, "a") if env.is_main else contextlib.nullcontext()
    with log, bar:
        for step in range(start + 1, cfg.steps + 1):
            s = step - 1   # optimizer steps already taken: the baselines' schedules count from 0 (official)
            if refresh_from is not None and progressive_refresh_due(s, cfg.steps, cfg.objective.denoise_timesteps):
                refresh_progressive_teacher(teacher, refresh_from, fsdp, shadow)
            # Shards: the global batch's bootstrap levels (shortcut) or reflow items (live reflow), dealt out. One
            # process: the targets draw them themselves, exactly as the objective API does in a user's own loop.
            levels = (D.deal_levels(cfg.batch_size, cfg.objective, S, step, cfg.seed)
                      if name == "shortcut" and S > 1 else None)
            reflow_counts = (D.bootstrap_counts(cfg.batch_size, cfg.objective.bootstrap_fraction, S, step)
                             if name == "live_reflow" and S > 1 else None)
            sums = []   # per micro-batch: items, loss·n, then (part·n, n) for each of objective.keys
            opt.zero_grad(set_to_none=True)
            for a, j in enumerate(shards):
                x1 = y = None
                if batches is not None:
                    with nvtx_range("data"):
                        x1, y = batches.next(gens[a])
                        x1, y = x1.to(device, non_blocking=True), y.to(device, non_blocking=True)
                last = a == A - 1
                # MeanFlow calls the unwrapped module (torch.func.jvp cannot see through DDP); its gradients are
                # averaged over the ranks below instead.
                with _grad_sync(model, env, fsdp, last) if name != "meanflow" else contextlib.nullcontext():
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        with nvtx_range("forward"):
                            loss, parts, counts = objective.loss(
                                model, x1, y, gens[a], s, levels=levels[j] if levels is not None else None,
                                num_reflow=reflow_counts[j] if reflow_counts is not None else None)
                    _check_finite(loss, step, ckpt_path, cfg, env)
                    with nvtx_range("backward"):
                        (loss / A if A > 1 else loss).backward()
                sums.append(_loss_sums(loss, parts, counts, objective.keys))
            if name == "meanflow":
                D.average_gradients(raw.parameters(), env)
            with nvtx_range("optimizer"):
                opt.step()
            with nvtx_range("ema"):
                ema_update(ema, raw, cfg.ema_decay)

            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                row = {"step": step, **_reduce_metrics(sums, objective.keys, time_s(), env),
                       **objective.schedule(s), "it_s": (step - s_last) / max(now - t_last, 1e-9)}
                t_last, s_last = now, step
                history.append(row)
                if env.is_main:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
            bar.update(1)
            if cfg.sample_every and step % cfg.sample_every == 0 and step != cfg.steps and decode is not None:
                _grid(ema, dataset, os.path.join(cfg.out_dir, f"samples_{step:07d}.png"), device, cfg, decode, env)
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                checkpoint(step)
    if decode is not None:
        _grid(ema, dataset, os.path.join(cfg.out_dir, "samples.png"), device, cfg, decode, env)
    if fsdp:   # hand back ordinary modules: sharded ones are unusable once the process group is gone
        # (copies of `shadow`, which carries build_model's objective and guidance records)
        raw, ema = unsharded(raw, shadow, device).train(), unsharded(ema, shadow, device).requires_grad_(False)
    D.barrier(env)
    return TrainResult(raw, ema, cfg.steps, history, cfg.out_dir, env.rank, env.world_size)


def _networks(cfg, env, dataset, ckpt, have_pairs):
    """(raw, ema, teacher, teacher_src, init_src): the live network and its EMA with their starting weights, the
    frozen teacher (progressive, consistency distillation) and the WeightSources read, all checked before anything
    is written. The teacher is read when it is used: progressive resumes it from the checkpoint, reflow needs it for
    pairs not yet made, consistency distillation at every step, and a fresh run starts from it (init_from_teacher).
    A resumed run is built from its checkpoint's architecture record."""
    name, device = cfg.objective.objective, env.device
    spec = OBJECTIVES.get(name, {})
    teacher_src = None
    if spec.get("needs_teacher") and not (cfg.resume and (name == "progressive" or have_pairs)):
        teacher_src = read_teacher(cfg, dataset)
    init_src = read_weight_source(cfg.init_from, "--init-from") if cfg.init_from else None
    if init_src is None and spec.get("init_from_teacher") and not cfg.resume:
        init_src = teacher_src
    if init_src is not None:
        check_init_source(cfg)
    arch = ckpt.get("architecture") if ckpt is not None else init_src.architecture if init_src is not None else None
    torch.manual_seed(cfg.seed)
    raw = build_model(cfg, dataset, arch).to(device)
    t_scale = raw.cfg.t_scale if hasattr(raw, "cfg") else raw.t_scale
    if init_src is not None and name == "meanflow" and t_scale != 1.0 and env.is_main:
        warnings.warn(f"meanflow from {init_src.path!r} keeps its t_scale {t_scale:g} (its t-embedding was trained "
                      f"on it) and embeds h on the same scale; docs/meanflow.md measured 1000·s, 1000·h 8× worse at "
                      f"one step than raw times: --model t_scale=1.0 changes it", stacklevel=4)
    ema = copy.deepcopy(raw).requires_grad_(False).eval()
    if init_src is not None:   # live ← its live weights (else EMA), EMA ← its EMA (else live); a fresh optimizer
        what = f"the weights of {'--init-from' if cfg.init_from else '--teacher'} {init_src.path!r}"
        load_matching(raw, init_src.live if init_src.live is not None else init_src.ema, what)
        load_matching(ema, init_src.weights, what)
    teacher = None
    if name in ("progressive", "consistency_distillation"):
        if teacher_src is not None:
            teacher = teacher_module(teacher_src, cfg.kernels, device)
        else:   # progressive, resumed: the teacher as it was at the checkpoint (refreshed at the stage boundaries)
            teacher = copy_teacher(raw)
            teacher.load_state_dict(ckpt["teacher"])
    return raw, ema, teacher, teacher_src, init_src


def _grad_sync(model, env, fsdp, sync):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if not env.distributed or sync:
        if fsdp:
            model.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if fsdp:
        model.set_requires_gradient_sync(False)
        return contextlib.nullcontext()
    return model.no_sync()


def _check_finite(loss, step, ckpt_path, cfg, env):
    """Stop on a non-finite loss — on every rank at once (one rank alone would leave the others waiting)."""
    flag = loss.detach().float().reshape(1)
    if env.distributed:
        flag = D.all_reduce_sum(flag.clone(), env)
    if not torch.isfinite(flag).all():
        raise FloatingPointError(
            f"non-finite loss ({loss.item()}) at step {step}; stopping. The last good checkpoint "
            f"{ckpt_path if os.path.exists(ckpt_path) else '(none yet)'} is left as it was. "
            f"Try a lower lr (now {cfg.lr}).")


def _loss_sums(loss, parts, counts, keys):
    """[n, loss·n, then part·count, count for each key] (counts["loss"] = n) in float64 (exact for one shard: x·n/n == x for a float32 x);
    a part the micro-batch lacks counts 0 items."""
    n = counts["loss"]
    zero = torch.zeros((), dtype=torch.float64, device=loss.device)
    values = [zero + n, loss.detach().double() * n]
    for key in keys:
        part, c = parts.get(key), counts.get(key, 0)
        values += [part.double() * c if part is not None and c else zero, zero + (c if part is not None else 0)]
    return torch.stack(values)


def _reduce_metrics(sums, keys, time_s, env):
    """The logged row: loss and parts averaged over every item of every shard; time_s, rank 0's."""
    total = torch.stack(sums).sum(0)
    clock = torch.tensor([time_s if env.is_main else 0.0], dtype=torch.float64, device=total.device)
    s = D.all_reduce_sum(torch.cat([total, clock]), env).tolist()
    row = {"loss": s[1] / s[0]}
    for i, key in enumerate(keys):
        if s[3 + 2 * i]:
            row[key] = s[2 + 2 * i] / s[3 + 2 * i]
    row["time_s"] = s[-1]
    return row


def _decoder(dataset, device):
    """Latent data: a function latents -> images through the dataset's VAE (loaded on first use); identity
    otherwise."""
    if not dataset.latent:
        return lambda x: x
    from .encode import load_vae, vae_decode
    vae = []   # loaded at the first grid, not held in memory through training before it is needed

    def decode(z):
        if not vae:
            vae.append(load_vae(dataset.latent["vae"], device))
        return vae_decode(vae[0], z, dataset.latent["scale_factor"])
    return decode


def _grid(ema, dataset, path, device, cfg, decode, env):
    """Sample grid on rank 0 (FSDP: every rank samples — the EMA's forward is collective — rank 0 saves)."""
    save_grid(ema, dataset, path if env.is_main else None, device, cfg.grid_steps, decode=decode)


@torch.no_grad()
def save_grid(model, dataset, path, device, steps=(1, 2, 4, 8, 16, 32, 64, 128), seed=0, decode=None,
              max_columns=16):
    """A PNG: one row per step count; for labelled images, one column per class (same noise per column).

    dataset: a Dataset or its info() dict. decode: latents -> images in [-1, 1] (VAE latents); with many
    classes, `max_columns` classes spread over the label range are shown. path None: sample, save nothing.
    """
    from .eval import grid_image, scatter_image
    dataset = data_shape(dataset)
    decode = decode or (lambda x: x)
    g = torch.Generator().manual_seed(seed)
    if dataset.is_image:
        n = min(max(dataset.num_classes, 8), max_columns)
        noise = torch.randn(n, *dataset.shape, generator=g).to(device)
        y = None
        if dataset.num_classes:
            y = (torch.arange(n) * dataset.num_classes // n if dataset.num_classes > n
                 else torch.arange(n) % dataset.num_classes).to(device)
        rows = [decode(sample(model, noise, s, y=y)).float().cpu() for s in steps]
        if path:
            grid_image(rows, scale=4 if rows[0].shape[-1] < 64 else 1).save(path)
    else:
        noise = torch.randn(1000, *dataset.shape, generator=g).to(device)
        img = scatter_image([sample(model, noise, s).float().cpu() for s in steps])
        if path:
            img.save(path)
