"""Euler sampling from noise (t = 0) to data (t = 1) in any number of steps 1 … 128.

A shortcut model takes power-of-two steps, each at its own level k (d = 2^-k; `step_schedule`); a model that
ignores k (flow matching) takes equal steps. Classifier-free guidance is applied where the model was trained
for it (`guidance_scales`). The CUDA-graph sampler built on these helpers is shortcut.graph.GraphSampler.
"""
import math
import numbers

import torch

from .profiling import nvtx_range

MAX_STEPS = 128


def check_steps(steps, max_steps=MAX_STEPS):
    """Steps must be an int in 1 .. max_steps (128: the finest level the model was trained on). Returns it."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 1 <= steps <= max_steps:
        raise ValueError(f"steps must be an int in 1 … {max_steps} (any count; {max_steps} is the finest trained "
                         f"step size 1/{max_steps}), got {steps!r}")
    return int(steps)


def step_schedule(steps, uniform=False):
    """The Euler steps of an N-step sampler: a list of (t, d, k) = (start time, step size, step level).

    Shortcut models: step sizes are powers of two as equal as possible, largest first. With
    2^m ≤ N < 2^(m+1): 2^(m+1) − N steps of d = 2^-m at level m, then 2·(N − 2^m) steps of d = 2^-(m+1) at
    level m + 1 (3 steps: 1/2, 1/4, 1/4 at levels 1, 2, 2). For N = 2^m: N steps of 1/N at level m, the
    official sampler. t and d are dyadic (exact in float32) and sum to 1.
    uniform=True (a model that ignores k, e.g. flow matching): N equal steps of 1/N, k = 0.
    """
    n = check_steps(steps)
    if uniform:
        return [(i / n, 1.0 / n, 0) for i in range(n)]
    m = n.bit_length() - 1
    levels = [m] * (2 ** (m + 1) - n) + [m + 1] * (2 * (n - 2 ** m))
    schedule, t = [], 0.0
    for k in levels:
        schedule.append((t, 2.0 ** -k, k))
        t += 2.0 ** -k
    return schedule


def ignores_k(model):
    """True for models built with ignore_k (ModelConfig.ignore_k, ShortcutMLP(ignore_k=True))."""
    return bool(getattr(model, "ignore_k", False))


def schedule_for(model, steps):
    """`step_schedule` for this model: equal steps when it ignores k, power-of-two steps otherwise."""
    return step_schedule(steps, uniform=ignores_k(model))


def check_cfg_scale(cfg_scale):
    if cfg_scale is not None and (isinstance(cfg_scale, bool) or not isinstance(cfg_scale, numbers.Real)
                                  or not math.isfinite(cfg_scale)):
        raise ValueError(f"cfg_scale must be a finite number or None (the model's own policy), got {cfg_scale!r}")
    return cfg_scale


def _null_trained(record, k):
    levels = record.get("null_levels")
    return levels is None or k in levels


def guidance_scales(model, schedule, cfg_scale=None, force_cfg=False):
    """The guidance weight w of each step of `schedule` (a list, one float per step).

    The model's `guidance` record (ObjectiveConfig.guidance, kept in checkpoints and pretrained folders)
    says whether guidance was distilled (bootstrap_cfg) and at which levels the null label was trained.
    cfg_scale None: what the official evaluation does (helper_eval.py: 1, 4, 32 steps at w = 1, the
    'cfg' row at 128 steps with the training scale): the distilled scale at the steps whose level knows the
    null label (the finest, 128 steps: every step), 1 elsewhere; w = 1 for models that did not distil
    guidance or whose record is unknown.
    A number: that w at every step. w != 1 at a level whose null label was never trained (a class-conditional
    shortcut model below 128 steps: only flow items drop labels) raises unless force_cfg=True.
    """
    check_cfg_scale(cfg_scale)
    record = getattr(model, "guidance", None)
    if cfg_scale is None:
        if not record or not record.get("distilled"):
            return [1.0] * len(schedule)
        return [float(record["scale"]) if _null_trained(record, k) else 1.0 for _, _, k in schedule]
    w = float(cfg_scale)
    if w != 1.0 and record and not force_cfg:
        untrained = sorted({k for _, _, k in schedule if not _null_trained(record, k)})
        if untrained:
            known = record.get("null_levels") or []
            where = (f"only at level {', '.join(map(str, known))} ({', '.join(str(2 ** k) for k in known)} steps)"
                     if known else "at no level (class_dropout_prob 0)")
            distilled = (f"; guidance with w = {record['scale']} is already distilled into the coarser levels"
                         if record.get("distilled") else "")
            raise ValueError(
                f"cfg_scale={cfg_scale} at {len(schedule)} steps needs the null label at level "
                f"{', '.join(map(str, untrained))}, where this model never trained it (it did {where}{distilled}). "
                f"Use cfg_scale=None (guidance where the official code applies it) or 1.0, or force_cfg=True "
                f"to guide anyway")
    return [w] * len(schedule)


def check_labels(model, y, batch, device):
    """Labels for a batch: None means the null label (unconditional). Returns an int64 (B,) tensor."""
    null = getattr(model, "null_label", getattr(model, "num_classes", 0))
    if y is None:
        return torch.full((batch,), null, dtype=torch.long, device=device)
    if not isinstance(y, torch.Tensor) or y.shape != (batch,) or y.dtype != torch.long:
        got = (tuple(y.shape), y.dtype) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"y must be an int64 tensor of shape ({batch},), got {got}")
    if y.device.type != torch.device(device).type:
        raise ValueError(f"y is on {y.device} but noise is on {device}")
    if batch and (int(y.min()) < 0 or int(y.max()) > null):
        raise ValueError(f"y must hold labels in [0, {null}] ({null} = null), got [{int(y.min())}, {int(y.max())}]")
    return y.to(device)


def guided_velocity(model, x, t, k, y, cfg_scale, null_label):
    """v = s(x, t, k, y); with cfg_scale != 1, v_u + w·(v_c − v_u) from one forward over [cond; uncond]."""
    if cfg_scale == 1.0:
        return model(x, t, k, y)
    v = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([k, k]), torch.cat([y, torch.full_like(y, null_label)]))
    v_c, v_u = v.chunk(2)
    return v_u + cfg_scale * (v_c - v_u)


@torch.no_grad()
def sample(model, noise, steps=1, y=None, cfg_scale=None, return_trajectory=False, *, force_cfg=False):
    """Generate x1 from noise x0 in `steps` Euler steps (any int in 1 … 128; see `step_schedule`).

    model: any module with forward(x, t, k, y). noise: (B, ...) x0 ~ N(0, I). y: (B,) long labels or None
    (null label). cfg_scale: classifier-free guidance weight w; None (default) applies guidance only where
    the official code does (see `guidance_scales`), 1.0 is conditional only. force_cfg: allow an explicit
    cfg_scale at levels whose null label the model never trained.
    With return_trajectory, also returns the list of intermediate x (steps + 1 entries).
    """
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.dim() < 2:
        raise ValueError("noise must be a floating-point tensor of shape (B, ...)")
    schedule = schedule_for(model, steps)
    scales = guidance_scales(model, schedule, cfg_scale, force_cfg)
    B = noise.shape[0]
    y = check_labels(model, y, B, noise.device)
    null = getattr(model, "null_label", getattr(model, "num_classes", 0))
    x = noise
    traj = [x]
    for i, ((t_i, d, k_i), w) in enumerate(zip(schedule, scales)):
        with nvtx_range(f"sample.step{i}"):
            t = torch.full((B,), t_i, dtype=torch.float32, device=noise.device)
            k = torch.full((B,), k_i, dtype=torch.long, device=noise.device)
            x = x + d * guided_velocity(model, x, t, k, y, w, null).to(x.dtype)
        traj.append(x)
    return (x, traj) if return_trajectory else x
