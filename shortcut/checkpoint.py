"""Checkpoints: read without running code (weights-only), written atomically, and the models they describe."""
import copy
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from . import distributed as D
from .build import build_model
from .config import TrainConfig
from .data import make_dataset
from .model import architecture, model_from_architecture

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
TMP_TAG = ".tmp"   # a save writes NAME.tmp<pid> and renames it to NAME


def _numpy_scalar_types():
    """What unpickling a numpy number needs (numpy's scalar constructor and the dtypes): data only."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray.scalar, np.dtype, *{type(np.dtype(c)) for c in "?bhilqBHILQefd"}]


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
    """The network a loaded checkpoint describes (fresh weights), with its guidance record and objective."""
    if "architecture" in ckpt:   # the network as trained, whatever build_model's defaults have become
        model = model_from_architecture(ckpt["architecture"], kernels)
        model.guidance = ckpt.get("guidance")
    else:   # older checkpoints: rebuilt from the config; k was never ignored then
        cfg = TrainConfig.from_dict(ckpt["config"])
        cfg.kernels = kernels
        cfg.model_overrides = {"ignore_k": False, **cfg.model_overrides}
        model = build_model(cfg, ckpt.get("data_info") or make_dataset(cfg.data))
    model.objective = checkpoint_objective(ckpt)
    return model


def checkpoint_objective(ckpt):
    """The objective a checkpoint dict records: its "objective" key, or (older checkpoints) its TrainConfig's."""
    if ckpt.get("objective"):
        return ckpt["objective"]
    objective = (ckpt.get("config") or {}).get("objective")
    return objective.get("objective") if isinstance(objective, dict) else None


def checkpoint_data_info(ckpt):
    """The data description of a checkpoint (older checkpoints: rebuilt from the built-in dataset name)."""
    if ckpt.get("data_info"):
        return ckpt["data_info"]
    return make_dataset(ckpt["config"]["data"]).info()


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


def effective_objective(objective, ignore_k):
    """A model's objective, or for a model without a record (built directly) "flow" when it ignores k, else
    "shortcut" (CONTRACT.md)."""
    return objective or ("flow" if ignore_k else "shortcut")


@dataclass
class WeightSource:
    """Trained weights a run starts from or learns from (--init-from, --teacher): a checkpoint or a save_pretrained
    folder, read without running code (weights-only torch.load, safetensors)."""
    path: str
    architecture: dict           # {"model_type", "model_config"}: see model.architecture
    data_info: dict              # shape, num_classes, ...
    objective: str               # as recorded, else effective_objective
    live: dict = None            # state dicts; a folder may hold only one of them
    ema: dict = None
    guidance: dict = None

    @property
    def ignore_k(self):
        return bool(self.architecture["model_config"].get("ignore_k", False))

    @property
    def weights(self):
        """The weights that sample best: the EMA's, else the live ones."""
        return self.ema if self.ema is not None else self.live


def read_weight_source(path, flag):
    """A WeightSource from a checkpoint file or a save_pretrained folder; `flag` ("--init-from", "--teacher")
    names the argument in errors."""
    path = os.fspath(path)
    if os.path.isdir(path):
        from .pretrained import read_config
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ImportError(f"{flag} {path!r}: reading a save_pretrained folder needs safetensors: "
                              f"pip install safetensors") from e
        config = read_config(path)
        states = {w: load_file(os.path.join(path, f)) for w, f in config["weights"].items()}
        arch = {"model_type": config.get("model_type"), "model_config": config.get("model_config")}
        recorded = config.get("objective") or (config.get("train_config") or {}).get("objective", {}).get("objective")
        info, guidance = config.get("data_info"), config.get("guidance")
    elif os.path.isfile(path):
        ckpt = load_checkpoint(path)
        states = {"live": ckpt["model"], "ema": ckpt["ema"]}
        arch = ckpt.get("architecture") or architecture(checkpoint_model(ckpt))
        recorded, info, guidance = checkpoint_objective(ckpt), checkpoint_data_info(ckpt), ckpt.get("guidance")
    else:
        raise FileNotFoundError(f"{flag}: no checkpoint file or save_pretrained folder at {path!r}")
    if arch["model_type"] not in ("ShortcutDiT", "ShortcutMLP") or not isinstance(arch["model_config"], dict):
        raise ValueError(f"{flag} {path!r}: unknown model_type {arch['model_type']!r} (expected ShortcutDiT or "
                         f"ShortcutMLP)")
    if not info:
        raise ValueError(f"{flag} {path!r} does not record the data it was trained on (data_info)")
    source = WeightSource(path, arch, info, recorded, states.get("live"), states.get("ema"), guidance)
    source.objective = effective_objective(recorded, source.ignore_k)
    return source


def load_matching(model, state, what):
    """model.load_state_dict(state), with a one-line error listing every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} there, {tuple(own[k].shape)} here" for k in sorted(set(own) & set(state))
              if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{name}: {', '.join(keys)}" for name, keys in
                 (("shapes differ", shapes), ("missing", missing), ("unexpected", unexpected)) if keys]
        raise ValueError(f"{what} do not fit this run's network (its data or --model settings differ): "
                         + "; ".join(parts))
    model.load_state_dict(state)


# ----------------------------------------------------------------------------------------------------------------
# Training state: full (unsharded) weights under FSDP2, resuming

def unsharded(module, shadow, device):
    out = copy.deepcopy(shadow)
    out.load_state_dict(gathered_state_dict(module, shadow))
    return out.to(device).eval()


def full_state(model, raw, ema, opt, fsdp, shadow):
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
    return {"model": gathered_state_dict(raw, shadow), "ema": gathered_state_dict(ema, shadow), "optimizer": optim}


@torch.no_grad()
def gathered_state_dict(module, shadow):
    own = dict(shadow.named_parameters())
    for name, p in module.named_parameters():
        own[name].copy_(D.full_tensor(p.detach()).cpu())
    own_buffers = dict(shadow.named_buffers())
    for name, b in module.named_buffers():
        own_buffers[name].copy_(b.detach().cpu())
    return {k: v.clone() for k, v in shadow.state_dict().items()}


def load_training_state(ckpt, raw, ema, opt, fsdp, shadow):
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
                D.local_shard(p).copy_(D.local_shard(D.shard_like(full[name].detach(), p)))
    params = list(raw.parameters())
    optim = ckpt["optimizer"]
    state = {i: {k: D.shard_like(v, params[i]) if torch.is_tensor(v) and v.dim() else v for k, v in st.items()}
             for i, st in optim["state"].items()}
    opt.load_state_dict({"state": state, "param_groups": optim["param_groups"]})


def resume_generators(ckpt, cfg, shards, num_shards, env):
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


def check_resumable(saved, cfg):
    """A checkpoint resumes only a run of the same data, model and objective (and for the staged objectives the
    same length: their stages are fractions of `steps`)."""
    saved = TrainConfig.from_dict(saved).to_dict()   # fields added since the checkpoint was written: their defaults
    new = cfg.to_dict()
    keys = ["data", "preset", "official", "model_overrides", "objective", "image_size"]
    if cfg.objective.objective in ("progressive", "consistency_training"):
        keys.append("steps")
    for key in keys:
        if saved.get(key, new.get(key)) != new.get(key):
            raise ValueError(f"--resume: checkpoint was trained with {key}={saved.get(key)!r}, "
                             f"this run has {key}={new.get(key)!r}")
    if saved.get("batch_size", cfg.batch_size) != cfg.batch_size:
        warnings.warn(f"resuming with batch_size {cfg.batch_size}, the checkpoint used {saved['batch_size']}",
                      stacklevel=3)


def truncate_metrics(path, step):
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
