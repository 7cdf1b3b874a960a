"""Share trained models without the training state: a folder with config.json + safetensors weights.

    shortcut.save_pretrained("runs/in256/checkpoint.pt", "dit-b2-in256")        # EMA and live weights
    model = shortcut.from_pretrained("dit-b2-in256")                            # EMA weights, eval mode
    model = shortcut.from_pretrained("dit-b2-in256", weights="live")

    shortcut export --ckpt runs/in256/checkpoint.pt --out dit-b2-in256

config.json holds the network's config (ModelConfig for ShortcutDiT), the data description (shape,
classes, and for latent models the VAE and its scale factor, so samples can be decoded) and, when saved
from a checkpoint, the TrainConfig and step for reference. Weights are in the DiT key layout.
"""
import json
import os
import shutil

import torch

from .config import ModelConfig
from .model import ShortcutDiT, ShortcutMLP

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


def _architecture(model):
    if isinstance(model, ShortcutDiT):
        return {"model_type": "ShortcutDiT", "model_config": model.cfg.to_dict()}
    if isinstance(model, ShortcutMLP):
        return {"model_type": "ShortcutMLP",
                "model_config": {"dim": model.cfg_dim, "hidden": model.inp.out_features, "depth": len(model.layers),
                                 "num_classes": model.num_classes, "freq_dim": model.freq_dim,
                                 "x_freqs": model.x_freqs}}
    raise TypeError(f"save_pretrained takes a ShortcutDiT or ShortcutMLP, got {type(model).__name__}")


def _default_info(model):
    if isinstance(model, ShortcutDiT):
        c = model.cfg
        return {"name": "", "shape": [c.in_channels, c.input_size, c.input_size], "num_classes": c.num_classes,
                "latent": None, "classes": []}
    return {"name": "", "shape": [model.cfg_dim], "num_classes": model.num_classes, "latent": None, "classes": []}


def save_pretrained(source, directory, weights=("ema", "live"), data_info=None):
    """Write `directory` (must not exist or be empty) from a checkpoint (path or dict), a TrainResult, or a
    model. weights: which of "ema" / "live" to include (a bare model is written as its "ema" weights
    unless weights=("live",)). Written to a temporary folder and renamed: no partial folder on error."""
    from .train import TrainResult, build_model, checkpoint_data_info, load_checkpoint
    weights = (weights,) if isinstance(weights, str) else tuple(weights)
    bad = [w for w in weights if w not in WEIGHT_FILES]
    if not weights or bad:
        raise ValueError(f"weights must be a non-empty subset of {tuple(WEIGHT_FILES)}, got {weights!r}")
    extra = {}
    if isinstance(source, (str, os.PathLike)):
        source = load_checkpoint(source)
    if isinstance(source, dict):
        from .config import TrainConfig
        cfg = TrainConfig.from_dict(source["config"])
        info = data_info or checkpoint_data_info(source)
        model = build_model(cfg, info)
        states = {"ema": source["ema"], "live": source["model"]}
        extra = {"train_config": source["config"], "step": source["step"]}
    elif isinstance(source, TrainResult):
        model, info = source.ema, data_info or _default_info(source.ema)
        states = {"ema": source.ema.state_dict(), "live": source.model.state_dict()}
        extra = {"step": source.step}
    elif isinstance(source, torch.nn.Module):
        model, info = source, data_info or _default_info(source)
        if len(weights) != 1:
            raise ValueError("a bare model has one set of weights: pass weights='ema' or weights='live'")
        states = {weights[0]: source.state_dict()}
    else:
        raise TypeError(f"save_pretrained takes a checkpoint path or dict, a TrainResult or a model, "
                        f"got {type(source).__name__}")
    _, save_file = _safetensors()
    if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
        raise FileExistsError(f"{directory!r} exists and is not an empty folder")
    config = {"format": PRETRAINED_FORMAT, "version": 1, **_architecture(model), "data_info": info,
              "weights": {w: WEIGHT_FILES[w] for w in weights}, **extra}
    tmp = f"{os.path.abspath(directory).rstrip(os.sep)}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        for w in weights:
            # clone: the DiT-layout state_dict holds views into one adaLN tensor; safetensors wants owners
            save_file({k: v.detach().cpu().contiguous().clone() for k, v in states[w].items()},
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
    if config["model_type"] == "ShortcutDiT":
        model = ShortcutDiT(ModelConfig(**config["model_config"]), kernels=kernels)
    elif config["model_type"] == "ShortcutMLP":
        model = ShortcutMLP(**config["model_config"])
    else:
        raise ValueError(f"unknown model_type {config['model_type']!r} in {directory!r}")
    path = os.path.join(directory, config["weights"][weights])
    state = load_file(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"weights {path} do not fit the model described by {CONFIG} "
                         f"({config['model_type']} {config['model_config']}): {e}") from e
    model.data_info = config.get("data_info")
    return model.to(device).eval()
