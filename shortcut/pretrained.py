"""Share trained models without the training state: a folder with config.json + safetensors weights.

    shortcut.save_pretrained("runs/in256/checkpoint.pt", "dit-b2-in256")        # EMA and live weights
    model = shortcut.from_pretrained("dit-b2-in256")                            # EMA weights, eval mode
    model = shortcut.from_pretrained("dit-b2-in256", weights="live")
    model.save_pretrained("my-dit")                                             # a bare model: its weights
    model = shortcut.ShortcutDiT.from_pretrained("my-dit")

    shortcut export --ckpt runs/in256/checkpoint.pt --out dit-b2-in256

config.json holds the network's config (ModelConfig for ShortcutDiT, ignore_k included), the training
objective (`objective`: which sampler `shortcut.sample` uses; null for a bare model that never recorded one),
the guidance record (whether and with which scale guidance was distilled, where the null label was trained:
`shortcut.sample` reads it), the data description (shape, classes, and for latent models the VAE and its scale factor, so
samples can be decoded) and, when saved from a checkpoint, the TrainConfig and step for reference.
Weights are in the DiT key layout.
"""
import json
import os
import shutil

import torch

from .model import ShortcutDiT, ShortcutMLP, architecture, model_from_architecture

PRETRAINED_FORMAT = "shortcut-pretrained"
CONFIG = "config.json"
WEIGHT_FILES = {"ema": "ema.safetensors", "live": "model.safetensors"}


def _safetensors():
    try:
        from safetensors.torch import load_file, save_file
    except ImportError as e:
        raise ImportError("save_pretrained / from_pretrained need safetensors: pip install safetensors "
                          "(or 'shortcut[vae]')") from e
    return load_file, save_file


def _default_info(model):
    if isinstance(model, ShortcutDiT):
        c = model.cfg
        return {"name": "", "shape": [c.in_channels, c.input_size, c.input_size], "num_classes": c.num_classes,
                "latent": None, "classes": []}
    return {"name": "", "shape": [model.cfg_dim], "num_classes": model.num_classes, "latent": None, "classes": []}


def save_pretrained(source, directory, weights=None, data_info=None):
    """Write `directory` (must not exist or be empty) from a checkpoint (path or dict), a TrainResult, or a
    model. weights: which of "ema" / "live" to include; default both for a checkpoint or TrainResult, and
    for a bare model its one set of weights, written as "ema" (weights="live" writes it as the live ones).
    Written to a temporary folder and renamed: no partial folder on error."""
    from .train import TrainResult, checkpoint_data_info, checkpoint_model, load_checkpoint
    bare = isinstance(source, torch.nn.Module)
    if weights is None:
        weights = ("ema",) if bare else ("ema", "live")
    weights = (weights,) if isinstance(weights, str) else tuple(weights)
    bad = [w for w in weights if w not in WEIGHT_FILES]
    if not weights or bad:
        raise ValueError(f"weights must be a non-empty subset of {tuple(WEIGHT_FILES)}, got {weights!r}")
    extra = {}
    if isinstance(source, (str, os.PathLike)):
        source = load_checkpoint(source)
    if isinstance(source, dict):
        info = data_info or checkpoint_data_info(source)
        model = checkpoint_model(source)
        states = {"ema": source["ema"], "live": source["model"]}
        extra = {"train_config": source["config"], "step": source["step"]}
    elif isinstance(source, TrainResult):
        model, info = source.ema, data_info or _default_info(source.ema)
        states = {"ema": source.ema.state_dict(), "live": source.model.state_dict()}
        extra = {"step": source.step}
    elif bare:
        if not isinstance(source, (ShortcutDiT, ShortcutMLP)):
            raise TypeError(f"save_pretrained takes a ShortcutDiT or ShortcutMLP, got {type(source).__name__}")
        model, info = source, data_info or getattr(source, "data_info", None) or _default_info(source)
        if len(weights) != 1:
            raise ValueError("a bare model has one set of weights: pass weights='ema' or weights='live'")
        states = {weights[0]: source.state_dict()}
    else:
        raise TypeError(f"save_pretrained takes a checkpoint path or dict, a TrainResult or a model, "
                        f"got {type(source).__name__}")
    states = {w: states[w] for w in weights}
    return write_pretrained(directory, model, states, info,
                            {"objective": getattr(model, "objective", None), "guidance": getattr(model, "guidance", None), **extra})


def write_pretrained(directory, model, states, data_info, extra=None):
    """Write the folder: config.json (architecture of `model`, data description, `extra` keys) and one
    safetensors file per entry of `states` ({"ema" | "live": state_dict}). `directory` must not exist or be
    empty; the folder is written under a temporary name and renamed, so an error leaves nothing behind."""
    _, save_file = _safetensors()
    if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
        raise FileExistsError(f"{directory!r} exists and is not an empty folder")
    config = {"format": PRETRAINED_FORMAT, "version": 1, **architecture(model), "data_info": data_info,
              "weights": {w: WEIGHT_FILES[w] for w in states}, **(extra or {})}
    tmp = f"{os.path.abspath(directory).rstrip(os.sep)}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        for w, state in states.items():
            # clone: the DiT-layout state_dict holds views into one adaLN tensor; safetensors wants owners
            save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()},
                      os.path.join(tmp, WEIGHT_FILES[w]))
        with open(os.path.join(tmp, CONFIG), "w") as f:
            json.dump(config, f, indent=1)
        if os.path.isdir(directory):
            os.rmdir(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_config(directory):
    path = os.path.join(directory, CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory!r} is not a pretrained shortcut model (no {CONFIG})")
    with open(path) as f:
        config = json.load(f)
    if config.get("format") != PRETRAINED_FORMAT:
        raise ValueError(f"{path} is not a shortcut pretrained config (format {config.get('format')!r})")
    return config


def from_pretrained(directory, weights="ema", kernels="auto", device="cpu"):
    """The model saved by save_pretrained, with its "ema" (default) or "live" weights, in eval mode.

    The model's data description is at `model.data_info` (shape, classes, VAE for latent models)."""
    load_file, _ = _safetensors()
    config = read_config(directory)
    if weights not in config["weights"]:
        raise ValueError(f"{directory!r} holds weights {sorted(config['weights'])}, not {weights!r}")
    try:
        model = model_from_architecture(config, kernels)
    except ValueError as e:
        raise ValueError(f"{directory!r}: {e}") from e
    model.guidance = config.get("guidance")   # None for folders written before it was recorded
    model.objective = config.get("objective")   # None likewise: sampled as before (shortcut, or flow if ignore_k)
    path = os.path.join(directory, config["weights"][weights])
    state = load_file(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"weights {path} do not fit the model described by {CONFIG} "
                         f"({config['model_type']} {config['model_config']}): {e}") from e
    model.data_info = config.get("data_info")
    return model.to(device).eval()
