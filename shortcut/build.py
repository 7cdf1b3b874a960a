"""The network a TrainConfig describes: a ShortcutDiT for image data, a ShortcutMLP for 2-D data."""
import dataclasses
import inspect
import numbers
import types

from .config import ModelConfig, TrainConfig
from .model import ShortcutDiT, ShortcutMLP


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
