"""Weights a run starts from or learns from: `--init-from` and `--teacher`, checked before anything is written,
and reflow's (noise, sample) pairs, generated once per run directory (docs/baselines.md, docs/training.md)."""
import os
import time

import torch

from . import distributed as D
from .baselines import OBJECTIVES, ReflowPairs, copy_teacher, reflow_pairs
from .checkpoint import load_checkpoint, read_weight_source, save_atomic
from .model import model_from_architecture

PAIRS = "reflow_pairs.pt"
TOY_PAIRS = 10_000   # reflow pairs of sampled 2-D data (no dataset size): ~5 batches of 2,048 per epoch


def teacher_objectives():
    return [name for name, spec in OBJECTIVES.items() if spec["needs_teacher"]]


def check_teacher_flag(cfg):
    """--teacher given exactly when the objective has a teacher."""
    name = cfg.objective.objective
    needs = OBJECTIVES.get(name, {}).get("needs_teacher", False)
    if needs and not cfg.teacher:
        raise ValueError(f"objective {name!r} needs --teacher PATH: a flow-matching model (a checkpoint or a "
                         f"save_pretrained folder of a run with --objective flow)")
    if cfg.teacher and not needs:
        raise ValueError(f"--teacher is used by {', '.join(teacher_objectives())}; objective {name!r} has no "
                         f"teacher (drop --teacher)")


def check_same_data(source, dataset, flag, data_name):
    """The source was trained on data of this run's shape and number of classes."""
    shape, classes = tuple(source.data_info["shape"]), source.data_info["num_classes"]
    if shape != tuple(dataset.shape) or classes != dataset.num_classes:
        raise ValueError(f"{flag} {source.path!r} was trained on data of shape {shape} with {classes} classes; "
                         f"this run's data ({data_name}) has shape {tuple(dataset.shape)} with "
                         f"{dataset.num_classes} classes")


def read_teacher(cfg, dataset):
    """The --teacher WeightSource, checked: same data shape and classes, and a flow-matching model (objective
    "flow", step input ignored), the only kind the baselines distil (docs/baselines.md)."""
    source = read_weight_source(cfg.teacher, "--teacher")
    check_same_data(source, dataset, "--teacher", cfg.data)
    if source.objective != "flow" or not source.ignore_k:
        what = (f"a {source.objective!r} model" if source.objective != "flow"
                else "a flow model that reads the step level (ignore_k false)")
        raise ValueError(f"--teacher {source.path!r} is {what}; {cfg.objective.objective} distils a flow-matching "
                         f"teacher (objective 'flow', ignore_k): train one with --objective flow")
    return source


def teacher_module(source, kernels, device):
    """The frozen network (eval mode, no grad) of a WeightSource, with its EMA weights when it has them (the
    official teachers are called through their EMA: bootstrap_ema = 1)."""
    model = model_from_architecture(source.architecture, kernels)
    model.load_state_dict(source.weights)
    model.objective, model.guidance = source.objective, source.guidance
    return copy_teacher(model.to(device))


def check_init_source(cfg):
    """--init-from picks the network: --preset and --official (a new network's shape and quirks) would be ignored."""
    if cfg.preset != "auto" or cfg.official:
        given = "--preset " + cfg.preset if cfg.preset != "auto" else "--official"
        raise ValueError(f"{given}: this run's network is the one it starts from (--init-from, or the teacher of "
                         f"{cfg.objective.objective}); drop {given.split()[0]} (change settings with --model KEY=VALUE)")


# ----------------------------------------------------------------------------------------------------------------
# Reflow pairs

def reflow_settings(cfg, dataset):
    """The record that identifies a run's pairs: count, teacher steps and guidance, seed, item shape, teacher."""
    obj = cfg.objective
    count = obj.reflow_pairs or (len(dataset) if hasattr(dataset, "__len__") else TOY_PAIRS)
    return {"count": int(count), "steps": obj.reflow_teacher_steps or obj.denoise_timesteps,
            "cfg_scale": obj.bootstrap_cfg_scale if obj.bootstrap_cfg and dataset.num_classes else 1.0,
            "seed": cfg.seed, "shape": list(dataset.shape), "teacher": os.path.abspath(cfg.teacher)}


def reflow_labels(cfg, dataset, count):
    """One label per pair: the classes in turn (balanced), or the null label for unconditional runs."""
    null = dataset.num_classes
    if dataset.num_classes == 0 or cfg.objective.class_dropout_prob == 1.0:
        return torch.full((count,), null, dtype=torch.long)
    return torch.arange(count) % dataset.num_classes


def saved_reflow_pairs(cfg, dataset, resume):
    """(pairs, seconds their making took) from out_dir when they were made with this run's settings (on resume the
    teacher may have moved: its path is not compared), else (None, 0.0)."""
    path = os.path.join(cfg.out_dir, PAIRS)
    if not os.path.isfile(path):
        return None, 0.0
    saved = load_checkpoint(path)
    want = reflow_settings(cfg, dataset)
    if any(saved["settings"].get(k) != v for k, v in want.items() if not (resume and k == "teacher")):
        return None, 0.0
    return ReflowPairs(saved["x0"], saved["x1"], saved["y"]), saved["seconds"]


def make_reflow_pairs(cfg, dataset, teacher, env):
    """Phase 1 of reflow, shared by the ranks (each computes its slice, all gather); rank 0 saves the file.
    Returns (pairs on the CPU, seconds taken)."""
    start = time.perf_counter()
    settings = reflow_settings(cfg, dataset)
    y = reflow_labels(cfg, dataset, settings["count"])
    part = reflow_pairs(teacher, y, tuple(dataset.shape), steps=settings["steps"], cfg_scale=settings["cfg_scale"],
                        batch_size=cfg.batch_size, generator=torch.Generator().manual_seed(cfg.seed),
                        device=env.device, denoise_timesteps=cfg.objective.denoise_timesteps,
                        part=(env.rank, env.world_size))
    parts = D.gather_objects((part.x0, part.x1, part.y), env)
    pairs = ReflowPairs(*(torch.cat([p[i] for p in parts]) for i in range(3)))
    seconds = time.perf_counter() - start
    if env.is_main:
        save_atomic({"x0": pairs.x0, "x1": pairs.x1, "y": pairs.y, "settings": settings, "seconds": seconds},
                    os.path.join(cfg.out_dir, PAIRS))
    D.barrier(env)
    return pairs, seconds
