"""The paper's baselines as training objectives on the shortcut framework (issue 12; docs/baselines.md).

Each objective builds the same ShortcutBatch as `shortcut_targets` (so `shortcut_loss` trains it
unchanged) from data, a generator and the networks it needs; each is model-agnostic (any module with
forward(x, t, k, y)). OBJECTIVES records, per objective, what the training loop and the samplers must do.
"""
from .common import copy_teacher, euler_sample, refresh_teacher
from .consistency import (consistency_distillation_targets, consistency_level, consistency_sample,
                          consistency_training_targets)
from .progressive import (progressive_refresh_due, progressive_refresh_source, progressive_stage,
                          progressive_targets)
from .reflow import (LIVE_REFLOW_STEPS, ReflowPairs, live_reflow_level, live_reflow_targets, reflow_pairs,
                     reflow_targets)

# needs_teacher: a flow-matching teacher (--teacher) is required.
# init_from_teacher: the student (and its EMA) start from the teacher's weights (official load_dir for
#   progressive and consistency distillation; rectified flow's 2nd round for reflow).
# ignore_k: train and sample with the step input zeroed (official `ignore_dt` is True for every train_type
#   but shortcut and livereflow).
# uses_ema: the targets read the student's EMA.   scheduled: the targets depend on (step, total_steps).
# sampler: "euler" N equal Euler steps; "consistency" consistency_sample (re-noising); "live_reflow"
#   N equal Euler steps at live_reflow_level(N).
# bootstrap: what ShortcutBatch.num_bootstrap counts (shortcut_loss logs loss_bootstrap on those items,
#   loss_flow on the rest).
OBJECTIVES = {
    "progressive": dict(needs_teacher=True, init_from_teacher=True, ignore_k=True, uses_ema=False,
                        scheduled=True, sampler="euler", bootstrap="all items (teacher targets)"),
    "consistency_distillation": dict(needs_teacher=True, init_from_teacher=True, ignore_k=True, uses_ema=True,
                                     scheduled=False, sampler="euler", bootstrap="all items (teacher + EMA targets)"),
    "consistency_training": dict(needs_teacher=False, init_from_teacher=False, ignore_k=True, uses_ema=True,
                                 scheduled=True, sampler="consistency", bootstrap="all items (EMA targets)"),
    "live_reflow": dict(needs_teacher=False, init_from_teacher=False, ignore_k=False, uses_ema=False,
                        scheduled=False, sampler="live_reflow", bootstrap="the reflow items (first nb)"),
    "reflow": dict(needs_teacher=True, init_from_teacher=True, ignore_k=True, uses_ema=False,
                   scheduled=False, sampler="euler", bootstrap="none (every item is a flow item on a pair)"),
}


def _need(objective, **given):
    for name, value in given.items():
        if value is None:
            raise ValueError(f"objective {objective!r} needs {name}=...")


def baseline_targets(objective, x1, y, *, model=None, ema=None, teacher=None, step=None, total_steps=None,
                     x0=None, cfg=None, generator=None, null_label=None, num_reflow=None):
    """The ShortcutBatch of one baseline objective; each takes the arguments it needs:

    progressive: teacher, step, total_steps; consistency_distillation: teacher, ema;
    consistency_training: ema, step, total_steps; live_reflow: model (the live network);
    reflow: x0 (the pairs' noise for x1), null_label or model. step: optimizer steps already taken.
    num_reflow: live_reflow's reflow items in this batch (default int(B · cfg.bootstrap_fraction)).
    """
    if objective == "progressive":
        _need(objective, teacher=teacher, step=step, total_steps=total_steps)
        return progressive_targets(teacher, x1, y, step, total_steps, cfg, generator, null_label)
    if objective == "consistency_distillation":
        _need(objective, teacher=teacher, ema=ema)
        return consistency_distillation_targets(teacher, ema, x1, y, cfg, generator)
    if objective == "consistency_training":
        _need(objective, ema=ema, step=step, total_steps=total_steps)
        return consistency_training_targets(ema, x1, y, step, total_steps, cfg, generator)
    if objective == "live_reflow":
        _need(objective, model=model)
        return live_reflow_targets(model, x1, y, cfg, generator, null_label, num_reflow=num_reflow)
    if objective == "reflow":
        _need(objective, x0=x0)
        if null_label is None and model is not None:
            null_label = getattr(model, "null_label", getattr(model, "num_classes", None))
        return reflow_targets(x0, x1, y, cfg, generator, null_label)
    raise ValueError(f"unknown baseline objective {objective!r}; expected one of {sorted(OBJECTIVES)}")


def sample_objective(objective, model, noise, steps=1, y=None, cfg_scale=1.0, generator=None,
                     denoise_timesteps=128):
    """Sample a model trained with a baseline objective in any N = steps in 1 .. M, with its own sampler."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown baseline objective {objective!r}; expected one of {sorted(OBJECTIVES)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= denoise_timesteps:
        raise ValueError(f"steps must be an int in [1, {denoise_timesteps}], got {steps!r}")
    kind = OBJECTIVES[objective]["sampler"]
    if kind == "consistency":
        return consistency_sample(model, noise, steps, y, cfg_scale, generator)
    level = live_reflow_level(steps, denoise_timesteps) if kind == "live_reflow" else None
    return euler_sample(model, noise, steps, y, cfg_scale, level=level)


__all__ = ["OBJECTIVES", "baseline_targets", "sample_objective", "copy_teacher", "refresh_teacher", "euler_sample",
           "progressive_stage", "progressive_refresh_due", "progressive_refresh_source", "progressive_targets",
           "consistency_level", "consistency_distillation_targets", "consistency_training_targets", "consistency_sample",
           "LIVE_REFLOW_STEPS", "live_reflow_level", "live_reflow_targets", "ReflowPairs", "reflow_pairs",
           "reflow_targets"]
