"""Checkpoints: read without running code (weights-only), written atomically, and the models they describe."""
import os
import pickle
import re
import warnings

import numpy as np
import torch

from .build import build_model
from .config import TrainConfig
from .data import make_dataset
from .model import model_from_architecture

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
