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
import dataclasses
import inspect
import json
import numbers
import os
import pickle
import re
import time
import types
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed as D
from .config import ModelConfig, TrainConfig
from .data import TOY_2D, StreamSampler, make_dataset, stream_loader
from .model import ShortcutDiT, ShortcutMLP, architecture, model_from_architecture
from .objective import shortcut_loss, shortcut_targets
from .profiling import nvtx_range
from .sampler import sample

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
TMP_TAG = ".tmp"   # a save writes NAME.tmp<pid> and renames it to NAME


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


def data_shape(info):
    """A Dataset, or the `info()` dict a checkpoint keeps, as an object with shape / num_classes / is_image."""
    if isinstance(info, dict):
        return types.SimpleNamespace(shape=tuple(info["shape"]), num_classes=info["num_classes"],
                                     is_image=len(info["shape"]) == 3, latent=info.get("latent"))
    return info


def build_model(cfg: TrainConfig, dataset):
    """ShortcutDiT for image data (preset + overrides, shape from the data), ShortcutMLP for 2-D data.

    dataset: a Dataset or its `info()` dict (what checkpoints and pretrained folders store). Flow-matching
    runs ignore k (official ignore_dt) unless model_overrides say otherwise; `model.guidance` records what
    the objective teaches about guidance (ObjectiveConfig.guidance).
    """
    dataset = data_shape(dataset)
    preset = cfg.preset
    if preset == "auto":
        preset = "digits" if dataset.is_image else "mlp"
    overrides = {"ignore_k": cfg.objective.objective == "flow", **cfg.model_overrides}
    if not dataset.is_image:
        if preset != "mlp":
            raise ValueError(f"2-D data trains the 'mlp' model, got preset {cfg.preset!r}")
        model = ShortcutMLP(dim=dataset.shape[0], num_classes=dataset.num_classes, **overrides)
    elif preset == "mlp":
        raise ValueError("preset 'mlp' is for 2-D data; image data needs a DiT preset")
    else:
        c, h, _ = dataset.shape
        mcfg = ModelConfig.preset(preset, official=cfg.official, input_size=h, in_channels=c,
                                  num_classes=dataset.num_classes, **overrides)
        model = ShortcutDiT(mcfg, kernels=cfg.kernels)
    model.guidance = cfg.objective.guidance(dataset.num_classes)
    return model


# ModelConfig fields that come from the data (image side, channels, classes), not from --model.
DATA_FIELDS = ("input_size", "in_channels", "num_classes")


def _numpy_scalar_types():
    """What unpickling a numpy number needs (numpy's scalar constructor and the dtypes): data only."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray.scalar, np.dtype, *{type(np.dtype(c)) for c in "?bhilqBHILQefd"}]


def check_model_overrides(overrides, is_image):
    """model_overrides (`--model KEY=VALUE`) must name settings of the network built for the data (ModelConfig
    fields for images, ShortcutMLP arguments for 2-D data) with values of the default's type."""
    if is_image:
        accepted = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.name not in DATA_FIELDS}
        what = "image data (ModelConfig)"
    else:
        accepted = {name: p.default for name, p in inspect.signature(ShortcutMLP).parameters.items()
                    if name not in ("dim", "num_classes")}
        what = "2-D data (ShortcutMLP)"
    for key, value in overrides.items():
        if key not in accepted:
            raise ValueError(f"unknown model setting {key!r} (--model KEY=VALUE); {what} accepts "
                             f"{', '.join(accepted)}")
        want = type(accepted[key])
        kinds = {int: numbers.Integral, float: numbers.Real}.get(want, want)   # numpy numbers count too
        if isinstance(value, bool) != (want is bool) or not isinstance(value, kinds):
            kind = {bool: "true or false", int: "an int", float: "a number", str: "a string"}.get(want, want.__name__)
            raise ValueError(f"model setting {key}={value!r}: expected {kind}")


def load_checkpoint(path, map_location="cpu", mmap=False):
    """A checkpoint as a dict, read with torch.load(weights_only=True): only tensors, containers and plain
    values are rebuilt, so loading a downloaded file cannot run code (a full pickle can call any function).
    Checkpoints hold nothing else (configs as dicts, RNG states as uint8 tensors); a file that needs more
    is refused with a ValueError naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_types()):   # checkpoints written before _plain
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:   # torch's weights-only unpickler met something it will not rebuild
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"a Python object ({found.group(1)})" if found else "pickle data other than tensors and plain values"
        raise ValueError(f"refusing to load {path!r}: it holds {what}, and loading it could run code. shortcut "
                         f"checkpoints hold only tensors and plain values; this file was not written by "
                         f"shortcut.train") from None
    except (RuntimeError, EOFError, KeyError) as e:   # not a torch.save file, truncated or empty
        detail = str(e).strip().split("\n")[0]
        raise ValueError(f"{path!r} is not a readable checkpoint: not a torch.save file, or a truncated one "
                         f"({type(e).__name__}{': ' + detail if detail else ''})") from None


def model_from_checkpoint(ckpt, use_ema=True, kernels="auto", map_location="cpu"):
    """Rebuild the (EMA) model of a checkpoint path or loaded dict. Returns (model in eval mode, TrainConfig)."""
    if isinstance(ckpt, (str, os.PathLike)):
        ckpt = load_checkpoint(ckpt, map_location)
    cfg = TrainConfig.from_dict(ckpt["config"])
    cfg.kernels = kernels
    model = checkpoint_model(ckpt, kernels)
    model.load_state_dict(ckpt["ema" if use_ema else "model"])
    return model.eval(), cfg


def checkpoint_model(ckpt, kernels="auto"):
    """The network a loaded checkpoint describes (fresh weights), with its guidance record."""
    if "architecture" in ckpt:   # the network as trained, whatever build_model's defaults have become
        model = model_from_architecture(ckpt["architecture"], kernels)
        model.guidance = ckpt.get("guidance")
        return model
    # Older checkpoints: rebuilt from the config; k was never ignored then.
    cfg = TrainConfig.from_dict(ckpt["config"])
    cfg.kernels = kernels
    cfg.model_overrides = {"ignore_k": False, **cfg.model_overrides}
    return build_model(cfg, ckpt.get("data_info") or make_dataset(cfg.data))


def checkpoint_data_info(ckpt):
    """The data description of a checkpoint (older checkpoints: rebuilt from the built-in dataset name)."""
    if ckpt.get("data_info"):
        return ckpt["data_info"]
    return make_dataset(ckpt["config"]["data"]).info()


def _local(t):
    """The local shard of an FSDP2 DTensor parameter, the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


@torch.no_grad()
def ema_update(ema, model, decay):
    """ema ← decay·ema + (1 − decay)·model, for parameters; buffers copied. FSDP2: on the local shards."""
    for net in (ema, model):
        if hasattr(net, "reshard"):   # FSDP2 keeps the root unsharded after a no-grad forward
            net.reshard()
    e, m = [_local(p) for p in ema.parameters()], [_local(p) for p in model.parameters()]
    torch._foreach_lerp_(e, m, 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def save_atomic(obj, path):
    """torch.save to a temporary file, flushed to disk, then renamed over `path`: a crash or an error while
    saving leaves the previous file as it was (a SIGKILL can leave the temporary file: remove_stale_temps)."""
    tmp = f"{path}{TMP_TAG}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temps(out_dir):
    """Delete the temporary files of saves that a killed process never finished (checkpoint, metrics)."""
    for name in sorted(os.listdir(out_dir)):
        if any(name.startswith(base + TMP_TAG) for base in (CHECKPOINT, METRICS)):
            os.remove(os.path.join(out_dir, name))
            warnings.warn(f"removed {os.path.join(out_dir, name)}, left by an interrupted save", stacklevel=3)


def _plain(value):
    """Plain values as Python builtins (numpy scalars -> int/float: a config built with numpy numbers, the
    optimizer's lr from it), so that weights-only loading needs no allow-list for checkpoints written now."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value.item() if isinstance(value, np.generic) else value


def _to_cpu(value):
    """Tensors inside nested dicts / lists moved to the CPU."""
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value.cpu() if torch.is_tensor(value) else value


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
    device = env.device
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    A = cfg.grad_accum
    S = env.world_size * A
    if cfg.batch_size % S:
        raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by world_size × grad_accum "
                         f"({env.world_size} × {A} = {S}): it is the global batch, split into equal shards")
    shards = list(range(env.rank * A, (env.rank + 1) * A))
    # Bad data or model settings fail before anything is written.
    dataset = make_dataset(cfg.data, **data_options(cfg))
    check_model_overrides(cfg.model_overrides, dataset.is_image)
    torch.manual_seed(cfg.seed)
    raw = build_model(cfg, dataset).to(device)
    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.out_dir, CHECKPOINT)
    ema = copy.deepcopy(raw).requires_grad_(False).eval()
    fsdp = env.distributed and cfg.parallel == "fsdp"
    shadow = copy.deepcopy(raw).cpu() if fsdp else None   # unsharded copy for FSDP checkpoints
    model = D.wrap_model(raw, env, cfg.parallel)
    if fsdp:
        D.wrap_model(ema, env, "fsdp")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    # One generator per shard: data order (sampled datasets), noise, t, levels, label dropout.
    gens = D.shard_generators(cfg.seed, shards)
    start = 0

    if cfg.resume:
        if not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = load_checkpoint(ckpt_path, map_location="cpu" if fsdp else device)
        # RNG states must stay CPU ByteTensors (Generator.set_state, torch(.cuda).set_rng_state take no others),
        # whatever device the weights were mapped to.
        ckpt["rng"] = _to_cpu(ckpt["rng"])
        _check_resumable(ckpt["config"], cfg)
        start = ckpt["step"]
        _load_weights(ckpt, raw, ema, opt, fsdp, shadow)
        for group in opt.param_groups:   # the optimizer's state, this run's settings (`--resume --lr 1e-5`)
            group.update(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        gens = _resume_generators(ckpt, cfg, shards, S, env)
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        del ckpt
    metrics_path = os.path.join(cfg.out_dir, METRICS)
    if env.is_main:
        remove_stale_temps(cfg.out_dir)
        _truncate_metrics(metrics_path, start)
    data_info = dataset.info()

    def checkpoint(step):
        states = [s for rank_states in D.gather_objects([g.get_state() for g in gens], env) for s in rank_states]
        weights = _full_state(model, raw, ema, opt, fsdp, shadow)
        if env.is_main:
            optim = {**weights["optimizer"], "param_groups": _plain(weights["optimizer"]["param_groups"])}
            save_atomic({**weights, "optimizer": optim, "step": step, "config": _plain(cfg.to_dict()),
                         "data_info": _plain(data_info), "architecture": _plain(architecture(raw)),
                         "guidance": _plain(raw.guidance),
                         "world": {"world_size": env.world_size, "grad_accum": A, "parallel": cfg.parallel},
                         "rng": {"generator": states[0], "generators": states, "torch": torch.get_rng_state(),
                                 "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}},
                        ckpt_path)
        D.barrier(env)

    batches = _Batches(dataset, cfg, env, shards, S, start, device)
    decode = _decoder(dataset, device) if env.is_main or fsdp else None
    target_net = ema if cfg.targets == "ema" else raw
    history = []
    bar = tqdm(total=cfg.steps, initial=start, unit="step", disable=not (cfg.progress and env.is_main),
               dynamic_ncols=True)
    t_last, s_last = time.perf_counter(), start
    model.train()
    log = open(metrics_path, "a") if env.is_main else contextlib.nullcontext()
    with log, bar:
        for step in range(start + 1, cfg.steps + 1):
            # Shards: the global batch's bootstrap levels, dealt out. One process: shortcut_targets draws
            # them itself, exactly as the objective API does in a user's own loop.
            levels = (D.deal_levels(cfg.batch_size, cfg.objective, S, step, cfg.seed)
                      if cfg.objective.objective == "shortcut" and S > 1 else None)
            sums = []   # per micro-batch: items, loss·n, flow loss·n, flow n, bootstrap loss·n, bootstrap n
            opt.zero_grad(set_to_none=True)
            for a, j in enumerate(shards):
                with nvtx_range("data"):
                    x1, y = batches.next(gens[a])
                    x1, y = x1.to(device, non_blocking=True), y.to(device, non_blocking=True)
                last = a == A - 1
                with _grad_sync(model, env, fsdp, last):
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        with nvtx_range("forward"):
                            batch = shortcut_targets(target_net, x1, y, cfg.objective, generator=gens[a],
                                                     levels=levels[j] if levels is not None else None)
                            loss, parts = shortcut_loss(model, batch)
                    _check_finite(loss, step, ckpt_path, cfg, env)
                    with nvtx_range("backward"):
                        (loss / A if A > 1 else loss).backward()
                sums.append(_loss_sums(loss, parts, batch))
            with nvtx_range("optimizer"):
                opt.step()
            with nvtx_range("ema"):
                ema_update(ema, raw, cfg.ema_decay)

            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                row = {"step": step, **_reduce_metrics(sums, env), "it_s": (step - s_last) / max(now - t_last, 1e-9)}
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
        raw, ema = _unsharded(raw, shadow, device).train(), _unsharded(ema, shadow, device).requires_grad_(False)
    D.barrier(env)
    return TrainResult(raw, ema, cfg.steps, history, cfg.out_dir, env.rank, env.world_size)


def _unsharded(module, shadow, device):
    out = copy.deepcopy(shadow)
    out.load_state_dict(_gathered_state_dict(module, shadow))
    return out.to(device).eval()


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


def _loss_sums(loss, parts, batch):
    """Item-weighted sums in float64 (exact for the one-shard case: x·n/n == x for a float32 x)."""
    n, nb = batch.t.shape[0], batch.num_bootstrap
    zero = torch.zeros((), dtype=torch.float64, device=loss.device)
    lf, lb = parts.get("loss_flow"), parts.get("loss_bootstrap")
    return torch.stack([zero + n, loss.detach().double() * n,
                        lf.double() * (n - nb) if lf is not None else zero, zero + (n - nb),
                        lb.double() * nb if lb is not None else zero, zero + nb])


def _reduce_metrics(sums, env):
    s = D.all_reduce_sum(torch.stack(sums).sum(0), env).tolist()
    row = {"loss": s[1] / s[0]}
    if s[3]:
        row["loss_flow"] = s[2] / s[3]
    if s[5]:
        row["loss_bootstrap"] = s[4] / s[5]
    return row


def _full_state(model, raw, ema, opt, fsdp, shadow):
    """Unsharded model / EMA / optimizer state in the one-process format (DiT key layout, optimizer state
    by parameter index), so a checkpoint loads on any world size with DDP, FSDP or neither.

    FSDP2 parameters are gathered with full_tensor() and poured into `shadow`, an unsharded CPU copy of the
    model, whose state_dict() applies the model's key-layout hooks (torch's distributed state-dict helpers
    cannot follow them). Every rank takes part in the gathers; rank 0 writes.
    """
    if not fsdp:
        return {"model": raw.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict()}
    optim = opt.state_dict()
    optim["state"] = {i: {k: D.full_tensor(v).cpu() if torch.is_tensor(v) else v for k, v in st.items()}
                      for i, st in optim["state"].items()}
    return {"model": _gathered_state_dict(raw, shadow), "ema": _gathered_state_dict(ema, shadow), "optimizer": optim}


@torch.no_grad()
def _gathered_state_dict(module, shadow):
    own = dict(shadow.named_parameters())
    for name, p in module.named_parameters():
        own[name].copy_(D.full_tensor(p.detach()).cpu())
    own_buffers = dict(shadow.named_buffers())
    for name, b in module.named_buffers():
        own_buffers[name].copy_(b.detach().cpu())
    return {k: v.clone() for k, v in shadow.state_dict().items()}


def _load_weights(ckpt, raw, ema, opt, fsdp, shadow):
    if not fsdp:
        raw.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        return
    with torch.no_grad():
        for module, key in ((raw, "model"), (ema, "ema")):
            shadow.load_state_dict(ckpt[key])
            full = dict(shadow.named_parameters())
            for name, p in module.named_parameters():
                _local(p).copy_(_local(D.shard_like(full[name].detach(), p)))
    params = list(raw.parameters())
    optim = ckpt["optimizer"]
    state = {i: {k: D.shard_like(v, params[i]) if torch.is_tensor(v) and v.dim() else v for k, v in st.items()}
             for i, st in optim["state"].items()}
    opt.load_state_dict({"state": state, "param_groups": optim["param_groups"]})


def _resume_generators(ckpt, cfg, shards, num_shards, env):
    """The shards' generators as saved; re-seeded from (seed, shard, step) when the shard count changed."""
    states = ckpt["rng"].get("generators") or [ckpt["rng"]["generator"]]
    if len(states) == num_shards:
        gens = [torch.Generator() for _ in shards]
        for g, j in zip(gens, shards):
            g.set_state(states[j])
        return gens
    if env.is_main:
        warnings.warn(f"resuming with {num_shards} shards (world_size × grad_accum), the checkpoint was written "
                      f"with {len(states)}: weights, optimizer and data order continue exactly, the noise "
                      f"streams are re-seeded (keep world_size × grad_accum to resume bit for bit)", stacklevel=3)
    step = ckpt["step"]
    return [torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, j, step])
                                              .generate_state(1, np.uint64)[0] >> np.uint64(1))) for j in shards]


def _check_resumable(saved, cfg):
    """A checkpoint resumes only a run of the same data, model and objective."""
    new = cfg.to_dict()
    for key in ("data", "preset", "official", "model_overrides", "objective", "image_size"):
        if saved.get(key, new.get(key)) != new.get(key):
            raise ValueError(f"--resume: checkpoint was trained with {key}={saved.get(key)!r}, "
                             f"this run has {key}={new.get(key)!r}")
    if saved.get("batch_size", cfg.batch_size) != cfg.batch_size:
        warnings.warn(f"resuming with batch_size {cfg.batch_size}, the checkpoint used {saved['batch_size']}",
                      stacklevel=3)


def _truncate_metrics(path, step):
    """Keep the metric rows up to `step` (the checkpoint's): an interrupted run may have logged past its last
    checkpoint, and a kill mid-write leaves a torn last line, dropped with a warning. Rewritten atomically."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [(i + 1, line) for i, line in enumerate(f.read().split("\n")) if line.strip()]
    rows = []
    for number, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number != lines[-1][0]:
                raise ValueError(f"{path}, line {number}: not a JSON row ({line[:60]!r}); a crash can only tear the "
                                 f"last line, so this file was edited: fix or remove that line") from None
            warnings.warn(f"{path}: dropped a torn last line ({line[:60]!r}) left by an interrupted run",
                          stacklevel=4)
            continue
        if row["step"] <= step:
            rows.append(line + "\n")
    tmp = f"{path}{TMP_TAG}{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(rows)
    os.replace(tmp, path)


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
