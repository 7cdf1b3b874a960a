"""Sampling from noise (t = 0) to data (t = 1) in any number of steps 1 … 128, with the sampler of the
objective the model was trained with (`model.objective`, see SAMPLERS): shortcut models take power-of-two
steps, each at its own level k (`step_schedule`); flow-type models N equal Euler steps; MeanFlow models N
equal intervals; consistency-training models the multistep consistency sampler (re-noising between steps).
Classifier-free guidance is applied where the model was trained for it (`guidance_scales`).
`sampling_plan` is the one place that decides; `sample`, shortcut.condcache and shortcut.graph.GraphSampler
all run its plan.
"""
import math
import numbers
from dataclasses import dataclass

import torch

from .profiling import nvtx_range

MAX_STEPS = 128
FINEST_LEVEL = 7            # log2 MAX_STEPS: the level of the finest trained step, 1/128

# The sampler of each training objective (ObjectiveConfig.objective; issue 12, issue 14):
#   "shortcut"     power-of-two Euler steps, largest first, each at its own level (step_schedule);
#   "uniform"      N equal Euler steps at level floor(log2 N), the official helper_eval's dt_base (these models
#                  are trained with ignore_k, so the level is not read);
#   "live_reflow"  N equal Euler steps at live_reflow_level(N): 0 below 128 steps, 7 at 128 (official);
#   "interval"     N equal intervals, the step input the interval length 1/N (MeanFlow: x ← x + u(x, t, 1/N)/N);
#   "consistency"  predict x1 = x + (1 − t)·v, re-noise to t + 1/N with fresh noise (official helper_inference).
SAMPLERS = {"shortcut": "shortcut", "flow": "uniform", "progressive": "uniform", "consistency_distillation": "uniform",
            "reflow": "uniform", "live_reflow": "live_reflow", "meanflow": "interval",
            "consistency_training": "consistency"}


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
        return _equal_steps(n, 0)
    m = n.bit_length() - 1
    levels = [m] * (2 ** (m + 1) - n) + [m + 1] * (2 * (n - 2 ** m))
    schedule, t = [], 0.0
    for k in levels:
        schedule.append((t, 2.0 ** -k, k))
        t += 2.0 ** -k
    return schedule


def _equal_steps(n, k):
    return [(i / n, 1.0 / n, k) for i in range(n)]


def ignores_k(model):
    """True for models built with ignore_k (ModelConfig.ignore_k, ShortcutMLP(ignore_k=True))."""
    return bool(getattr(unwrap(model), "ignore_k", False))


def unwrap(model):
    """The module behind a torch.compile wrapper (OptimizedModule keeps it in _orig_mod)."""
    return getattr(model, "_orig_mod", model)


def objective_of(model):
    """The objective `model` was trained with: `model.objective` (set by training, checkpoints and
    from_pretrained), or for a model without one (None: built by the user, or saved before it was recorded)
    "flow" when it ignores k, else "shortcut"."""
    objective = getattr(unwrap(model), "objective", None)
    if objective is None:
        return "flow" if ignores_k(model) else "shortcut"
    if objective not in SAMPLERS:
        raise ValueError(f"model.objective must be one of {sorted(SAMPLERS)} (or None), got {objective!r}")
    return objective


def schedule_for(model, steps):
    """The (t, d, k) of each step of this model's N-step sampler: k an int level, or for MeanFlow models
    the float interval length 1/N (see SAMPLERS)."""
    n = check_steps(steps)
    objective = getattr(unwrap(model), "objective", None)
    if objective is None:   # the behaviour before objectives were recorded
        return step_schedule(n, uniform=ignores_k(model))
    kind = SAMPLERS[objective_of(model)]
    if kind == "shortcut":
        return step_schedule(n)
    if kind == "interval":
        return _equal_steps(n, 1.0 / n)
    if kind == "live_reflow":
        return _equal_steps(n, FINEST_LEVEL if n == MAX_STEPS else 0)
    return _equal_steps(n, n.bit_length() - 1)   # uniform, consistency: floor(log2 N), as the official code


def step_input(k, batch, device):
    """The (batch,) k tensor of one step: int64 for a level, float32 for an interval length (MeanFlow)."""
    return torch.full((batch,), k, dtype=torch.float32 if isinstance(k, float) else torch.long, device=device)


def check_cfg_scale(cfg_scale):
    if cfg_scale is not None and (isinstance(cfg_scale, bool) or not isinstance(cfg_scale, numbers.Real)
                                  or not math.isfinite(cfg_scale)):
        raise ValueError(f"cfg_scale must be a finite number or None (the model's own policy), got {cfg_scale!r}")
    return cfg_scale


def _null_trained(record, k, any_level):
    levels = record.get("null_levels")
    return levels is None or (bool(levels) if any_level else k in levels)


def guidance_scales(model, schedule, cfg_scale=None, force_cfg=False):
    """The guidance weight w of each step of `schedule` (a list, one float per step).

    The model's `guidance` record (ObjectiveConfig.guidance, kept in checkpoints and pretrained folders)
    says whether guidance was distilled (bootstrap_cfg) and at which levels the null label was trained.
    cfg_scale None: what the official evaluation does (helper_eval.py: 1, 4, 32 steps at w = 1, the
    'cfg' row at 128 steps with the training scale): the distilled scale at the steps whose level knows the
    null label (the finest, 128 steps: every step), 1 elsewhere; w = 1 for models that did not distil
    guidance or whose record is unknown.
    A number: that w at every step. w != 1 at a level whose null label was never trained (a class-conditional
    shortcut model below 128 steps: only flow items drop labels) raises unless force_cfg=True. A model that
    ignores k knows the null label at every level once it knows it at one.
    MeanFlow models have guidance trained into u (the paper's ω, κ): w = 1, and an explicit w != 1 raises
    unless force_cfg=True (then u_∅ + w·(u_c − u_∅) at every step).
    """
    check_cfg_scale(cfg_scale)
    n = len(schedule)
    if objective_of(model) == "meanflow":
        if cfg_scale is None or cfg_scale == 1.0 or force_cfg:
            return [1.0 if cfg_scale is None else float(cfg_scale)] * n
        raise ValueError(f"cfg_scale={cfg_scale}: a MeanFlow model has its guidance trained into u (MeanFlowConfig "
                         f"cfg_omega / cfg_kappa) and samples without cfg_scale. Use cfg_scale=None or 1.0, or "
                         f"force_cfg=True to guide u anyway")
    record = getattr(unwrap(model), "guidance", None)
    any_level = ignores_k(model)
    if cfg_scale is None:
        if not record or not record.get("distilled"):
            return [1.0] * n
        return [float(record["scale"]) if _null_trained(record, k, any_level) else 1.0 for _, _, k in schedule]
    w = float(cfg_scale)
    if w != 1.0 and record and not force_cfg:
        untrained = sorted({k for _, _, k in schedule if not _null_trained(record, k, any_level)})
        if untrained:
            known = record.get("null_levels") or []
            where = (f"only at level {', '.join(map(str, known))} ({', '.join(str(2 ** k) for k in known)} steps)"
                     if known else "at no level (class_dropout_prob 0)")
            distilled = (f"; guidance with w = {record['scale']} is already distilled into the coarser levels"
                         if record.get("distilled") else "")
            raise ValueError(
                f"cfg_scale={cfg_scale} at {n} steps needs the null label at level "
                f"{', '.join(map(str, untrained))}, where this model never trained it (it did {where}{distilled}). "
                f"Use cfg_scale=None (guidance where the official code applies it) or 1.0, or force_cfg=True "
                f"to guide anyway")
    return [w] * n


@dataclass(frozen=True)
class SamplingPlan:
    """How a model samples in N steps: what `sample`, the conditioning cache and GraphSampler all run."""
    objective: str     # the objective the sampler follows (objective_of)
    rule: str          # "euler": x ← x + d·v; "consistency": x1 = x + (1 − t)·v, re-noised to t + d
    schedule: tuple    # ((t, d, k), ...) per step; k an int level or a float interval length (MeanFlow)
    scales: tuple      # the guidance weight w of each step

    @property
    def steps(self):
        return len(self.schedule)

    @property
    def guided(self):
        return any(w != 1.0 for w in self.scales)


def sampling_plan(model, steps, cfg_scale=None, force_cfg=False):
    """The SamplingPlan of `model` in `steps` steps (any int 1 … 128) with guidance `cfg_scale` (None: the
    model's policy, see guidance_scales). Raises for a cfg_scale the model was not trained for."""
    schedule = tuple(schedule_for(model, steps))
    objective = objective_of(model)
    rule = "consistency" if SAMPLERS[objective] == "consistency" else "euler"
    return SamplingPlan(objective, rule, schedule, tuple(guidance_scales(model, schedule, cfg_scale, force_cfg)))


def integrate(plan, x, velocity, noise=None, trajectory=None):
    """Run the plan's update rule from x0 = x. velocity(i, x): the (guided) velocity of step i; noise(i): the
    fresh N(0, I) the consistency rule mixes in after step i (never after the last: its weight is 0 there).
    trajectory: a list the x after each step is appended to."""
    last = plan.steps - 1
    for i, (t, d, _) in enumerate(plan.schedule):
        v = velocity(i, x).to(x.dtype)
        if plan.rule == "euler":
            x = x + d * v
        else:
            x1 = x + (1 - t) * v                                   # the model's prediction of the data
            x = x1 if i == last else x1 * (t + d) + noise(i) * (1 - t - d)
        if trajectory is not None:
            trajectory.append(x)
    return x


def check_labels(model, y, batch, device):
    """Labels for a batch: None means the null label (unconditional). Returns an int64 (B,) tensor."""
    null = null_label_of(model)
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


def null_label_of(model):
    return getattr(model, "null_label", getattr(model, "num_classes", 0))


def guided_velocity(model, x, t, k, y, cfg_scale, null_label):
    """v = s(x, t, k, y); with cfg_scale != 1, v_u + w·(v_c − v_u) from one forward over [cond; uncond]."""
    if cfg_scale == 1.0:
        return model(x, t, k, y)
    v = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([k, k]), torch.cat([y, torch.full_like(y, null_label)]))
    v_c, v_u = v.chunk(2)
    return v_u + cfg_scale * (v_c - v_u)


def check_noise(noise):
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.dim() < 2:
        raise ValueError("noise must be a floating-point tensor of shape (B, ...)")


def check_generator(generator):
    """generator: a torch.Generator, or None for a CPU generator seeded 0 (the same samples every call)."""
    if generator is None:
        return torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def generator_noise(generator, like):
    """noise(i) for `integrate`: N(0, I) like `like`, drawn on the generator's device (a CPU generator gives
    the same numbers on any device), as shortcut.baselines.consistency_sample draws them."""
    return lambda i: torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype).to(
        like.device)


@torch.no_grad()
def sample(model, noise, steps=1, y=None, cfg_scale=None, return_trajectory=False, *, force_cfg=False,
           generator=None):
    """Generate x1 from noise x0 in `steps` steps (any int in 1 … 128) with the sampler of the model's
    objective (`model.objective`; SAMPLERS): shortcut models power-of-two Euler steps (`step_schedule`),
    flow-type models N equal Euler steps, live reflow its levels, MeanFlow N equal intervals, consistency
    training the multistep consistency sampler.

    model: any module with forward(x, t, k, y). noise: (B, ...) x0 ~ N(0, I). y: (B,) long labels or None
    (null label). cfg_scale: classifier-free guidance weight w; None (default) applies guidance only where
    the official code does (see `guidance_scales`; MeanFlow models: never), 1.0 is conditional only.
    force_cfg: allow an explicit cfg_scale the model was never trained for. generator: the re-noising of
    consistency-training models (None: a CPU generator seeded 0, so a call repeats); unused otherwise.
    With return_trajectory, also returns the list of intermediate x (steps + 1 entries).
    """
    check_noise(noise)
    plan = sampling_plan(model, steps, cfg_scale, force_cfg)
    if plan.rule == "consistency" or generator is not None:
        generator = check_generator(generator)
    B, device = noise.shape[0], noise.device
    y = check_labels(model, y, B, device)
    null = null_label_of(model)

    def velocity(i, x):
        t_i, _, k_i = plan.schedule[i]
        with nvtx_range(f"sample.step{i}"):
            t = torch.full((B,), t_i, dtype=torch.float32, device=device)
            return guided_velocity(model, x, t, step_input(k_i, B, device), y, plan.scales[i], null)

    traj = [noise]
    x = integrate(plan, noise, velocity, None if generator is None else generator_noise(generator, noise), traj)
    return (x, traj) if return_trajectory else x
