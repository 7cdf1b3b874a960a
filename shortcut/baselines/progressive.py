"""Progressive distillation (Salimans & Ho 2022) as the official code runs it (baselines/targets_progressive.py).

The student starts from a flow-matching teacher and learns, stage by stage, to cover in one step what the
teacher covers in two: 7 stages of total_steps / 7 optimizer steps, level 6 (64 steps) down to level 0
(one step). At each stage boundary the teacher becomes a copy of the student (official train.py copies the
whole train state, and the targets call the teacher's EMA weights, `bootstrap_ema = 1`).
"""
import torch

from ..config import ObjectiveConfig
from ..objective import ShortcutBatch, interpolate
from ..sampler import guided_velocity
from .common import (check_data, frozen, grid_t, log2_int, randn, resolve_generator, resolve_null_label,
                     stage_index)


def progressive_stage(step, total_steps, denoise_timesteps=128):
    """(stage, level) of the update after `step` optimizer steps (0 for the first update).

    Official: dt_base = log2 M − floor(step / (max_steps / log2 M)) − 1, so with M = 128 stage 0 trains
    level 6 (64 steps) from a level-7 teacher and stage 6 trains level 0 (one step); a stage lasts
    total_steps / 7 steps.
    """
    top = log2_int(denoise_timesteps)
    stage = stage_index(step, total_steps, top)
    return stage, top - 1 - stage


def progressive_refresh_due(step, total_steps, denoise_timesteps=128):
    """True when the update after `step` steps opens a new stage (stage ≥ 1): refresh the teacher first.

    Official train.py refreshes after loop iteration i with i % (max_steps // 7) == 0 — within two updates
    of the stage boundary (its loop counter starts at 2 and train_state.step at 0); we refresh exactly at it.
    """
    top = log2_int(denoise_timesteps)
    return step > 0 and stage_index(step, total_steps, top) != stage_index(step - 1, total_steps, top)


def progressive_refresh_source(total_steps, ema_decay, denoise_timesteps=128):
    """Which student weights become the teacher at a stage boundary: "ema" (official) or "live".

    Official train.py copies the whole train state and the targets read its EMA (`bootstrap_ema = 1`). An EMA
    of decay β keeps e^-3 ≈ 5 % of weights older than 3/(1 − β) steps (3000 at β = 0.999): with stages of
    1 M / 7 ≈ 143k steps (official) the EMA is the current student, but with stages shorter than that the
    EMA still carries the previous stages (a digits run of 2,000 steps has stages of 285), and the teacher
    would lag a stage behind. So: "ema" when total_steps / log2 M ≥ 3 / (1 − β), else "live".
    """
    stage_len = total_steps / log2_int(denoise_timesteps)
    return "ema" if ema_decay == 0 or stage_len >= 3 / (1 - ema_decay) else "live"


def progressive_targets(teacher, x1, y, step, total_steps, cfg=None, generator=None, null_label=None,
                        cfg_scale=None):
    """One progressive-distillation batch from data x1 (B, ...) and labels y (B,) long.

    teacher: the frozen teacher (its EMA weights in the official recipe), called in eval mode without grad.
    step, total_steps: optimizer steps already taken and the run's length (they set the stage).
    cfg_scale: guidance distilled into the student in the first stage; None reads cfg.bootstrap_cfg_scale
    when cfg.bootstrap_cfg is set, else 1.0 (no guidance). Later stages use the conditional teacher.
    Labels are not dropped (the official progressive targets keep them). Every item is a teacher target:
    num_bootstrap = B.
    """
    cfg = cfg or ObjectiveConfig()
    B = check_data(x1, y)
    null_label = resolve_null_label(null_label, teacher)
    generator = resolve_generator(generator)
    stage, level = progressive_stage(step, total_steps, cfg.denoise_timesteps)
    if cfg_scale is None:
        cfg_scale = cfg.bootstrap_cfg_scale if cfg.bootstrap_cfg else 1.0
    device = x1.device

    # 1. Level of this stage for every item: d = 2^-level, the teacher at level + 1 takes d/2 steps.
    k = torch.full((B,), level, dtype=torch.long, device=device)
    half = 0.5 ** level / 2

    # 2. t a multiple of d, and x_t on the straight path from fresh noise.
    t = grid_t(B, 2 ** level, generator, device)
    x0 = randn(x1.shape, generator, device, x1.dtype)
    x_t = interpolate(x0, x1, t, cfg.sigma_min)

    # 3. Target: two teacher half steps, the midpoint clipped to ±clip, the velocities averaged (the
    #    official progressive target is not clipped). Guided only in the first stage (official:
    #    cfg_scale where dt_base == log2 M − 1, else 1).
    w = cfg_scale if stage == 0 else 1.0
    with frozen(teacher):
        v1 = guided_velocity(teacher, x_t, t, k + 1, y, w, null_label)
        x2 = torch.clamp(x_t + half * v1, -cfg.clip, cfg.clip)
        v2 = guided_velocity(teacher, x2, t + half, k + 1, y, w, null_label)
        v = ((v1 + v2) / 2).to(x1.dtype)
    return ShortcutBatch(x_t, t, k, y, v, B)
