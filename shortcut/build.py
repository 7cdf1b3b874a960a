"""The network a TrainConfig describes: a ShortcutDiT for image data, a ShortcutMLP for 2-D data."""
import dataclasses
import inspect
import numbers
import types

from .config import ModelConfig, TrainConfig
from .model import ShortcutDiT, ShortcutMLP, model_from_architecture


def data_shape(info):
    """A Dataset, or the `info()` dict a checkpoint keeps, as an object with shape / num_classes / is_image."""
    if isinstance(info, dict):
        return types.SimpleNamespace(shape=tuple(info["shape"]), num_classes=info["num_classes"],
                                     is_image=len(info["shape"]) == 3, latent=info.get("latent"))
    return info


def objective_model_settings(objective, source=False):
    """The network settings an objective needs, as ModelConfig / ShortcutMLP keyword values.

    ignore_k: flow matching and the baselines but live reflow zero the step input (official `ignore_dt`;
    shortcut.baselines.OBJECTIVES). MeanFlow: the step input is the interval h (step_input="interval"), with
    t_scale 1.0, raw s and h into the sinusoids as both official MeanFlow codes do (docs/meanflow.md §3: 1000·s
    and 1000·h made one-step samples 8× worse). source=True (weights loaded from elsewhere): only the settings
    that change behaviour and not what the weights mean, so t_scale keeps the source's (its t-embedding was
    trained on that scale).
    """
    from .baselines import OBJECTIVES
    settings = {"ignore_k": objective == "flow" or OBJECTIVES.get(objective, {}).get("ignore_k", False),
                "step_input": "interval" if objective == "meanflow" else "level"}
    if objective == "meanflow" and not source:
        settings["t_scale"] = 1.0
    return settings


def build_model(cfg: TrainConfig, dataset, architecture=None):
    """ShortcutDiT for image data (preset + overrides, shape from the data), ShortcutMLP for 2-D data.

    dataset: a Dataset or its `info()` dict (what checkpoints and pretrained folders store). The objective's
    settings (objective_model_settings: ignore_k, MeanFlow's interval input) apply unless model_overrides say
    otherwise; `model.guidance` records what the objective teaches about guidance (ObjectiveConfig.guidance) and
    `model.objective` the objective. architecture: the `architecture()` record of a network whose weights the run
    starts from (--init-from, a teacher, a resumed checkpoint): that network replaces the preset, with the data's
    shape, the objective's behaviour settings and model_overrides applied.
    """
    dataset = data_shape(dataset)
    objective = cfg.objective.objective
    overrides = {**objective_model_settings(objective, source=architecture is not None), **cfg.model_overrides}
    if architecture is not None:
        model = _from_architecture(architecture, dataset, overrides, cfg.kernels)
    else:
        model = _from_preset(cfg, dataset, overrides)
    model.guidance = cfg.objective.guidance(dataset.num_classes)
    model.objective = objective
    return model


def _from_preset(cfg, dataset, overrides):
    preset = cfg.preset
    if preset == "auto":
        preset = "digits" if dataset.is_image else "mlp"
    if not dataset.is_image:
        if preset != "mlp":
            raise ValueError(f"2-D data trains the 'mlp' model, got preset {cfg.preset!r}")
        return ShortcutMLP(dim=dataset.shape[0], num_classes=dataset.num_classes, **overrides)
    if preset == "mlp":
        raise ValueError("preset 'mlp' is for 2-D data; image data needs a DiT preset")
    c, h, _ = dataset.shape
    mcfg = ModelConfig.preset(preset, official=cfg.official, input_size=h, in_channels=c,
                              num_classes=dataset.num_classes, **overrides)
    return ShortcutDiT(mcfg, kernels=cfg.kernels)


def _from_architecture(arch, dataset, overrides, kernels):
    kind = arch.get("model_type")
    want = "ShortcutDiT" if dataset.is_image else "ShortcutMLP"
    if kind != want:
        data = "image data" if dataset.is_image else "2-D data"
        raise ValueError(f"the network to start from is a {kind}; {data} of shape {tuple(dataset.shape)} "
                         f"trains a {want}")
    config = dict(arch["model_config"])
    if dataset.is_image:
        c, h, _ = dataset.shape
        config.update(input_size=h, in_channels=c)
    else:
        config.update(dim=dataset.shape[0])
    config.update(num_classes=dataset.num_classes, **overrides)
    return model_from_architecture({"model_type": kind, "model_config": config}, kernels)


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
