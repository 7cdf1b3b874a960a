"""Consistency distillation and consistency training (Song et al. 2023) as the official code runs them
(baselines/targets_consistency_distillation.py, targets_consistency_training.py, helper_inference.py).

Both train the network's velocity so that one step to t = 1 lands on the EMA network's prediction of the
data from a point further along the same trajectory: with pred_x1 = x_t2 + (1 − t2)·s_ema(x_t2, t2),
the target is v = (pred_x1 − x_t) / (1 − t), i.e. x_t + (1 − t)·v = pred_x1 (the velocity-space form).
"""
import torch

from ..config import ObjectiveConfig
from ..objective import ShortcutBatch, interpolate
from ..sampler import check_labels, guided_velocity
from .common import check_data, check_noise, frozen, grid_t, log2_int, randn, resolve_generator, stage_index


def _velocity_target(ema, x_t, t, x_t2, t2, k, y, dtype):
    """v = (pred_x1 − x_t)/(1 − t) with pred_x1 = x_t2 + (1 − t2)·ema(x_t2, t2, k, y); t < 1 by construction."""
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    v2 = ema(x_t2, t2, k, y)
    pred_x1 = x_t2 + (1 - t2).view(shape) * v2
    return ((pred_x1 - x_t) / (1 - t).view(shape)).to(dtype)


def consistency_distillation_targets(teacher, ema, x1, y, cfg=None, generator=None):
    """One consistency-distillation batch from data x1 (B, ...) and labels y (B,) long.

    teacher: the frozen flow-matching teacher (official: the teacher's EMA weights); ema: the student's
    EMA. Both are called in eval mode without grad, at the finest level log2 M. t is on the 1/M grid
    (t ≤ 1 − 1/M, so 1 − t ≥ 1/M). Labels are not dropped; every item is a network target (num_bootstrap = B).
    """
    cfg = cfg or ObjectiveConfig()
    B = check_data(x1, y)
    generator = resolve_generator(generator)
    device, M = x1.device, cfg.denoise_timesteps
    k = torch.full((B,), log2_int(M), dtype=torch.long, device=device)

    # 1. t on the 1/M grid, x_t on the straight path.
    t = grid_t(B, M, generator, device)
    x0 = randn(x1.shape, generator, device, x1.dtype)
    x_t = interpolate(x0, x1, t, cfg.sigma_min)

    # 2. One fine Euler step (d = 1/M) of the teacher, clipped to ±clip (official ±4).
    # 3. The student's EMA predicts x1 from there; the target is the velocity that reaches that prediction.
    with frozen(teacher, ema):
        x_t2 = torch.clamp(x_t + teacher(x_t, t, k, y) / M, -cfg.clip, cfg.clip)
        v = _velocity_target(ema, x_t, t, x_t2, t + 1.0 / M, k, y, x1.dtype)
    return ShortcutBatch(x_t, t, k, y, v, B)


def consistency_level(step, total_steps, denoise_timesteps=128):
    """The consistency-training curriculum, coarse to fine: level floor(step / (total_steps / log2 M)).

    Official: dt_base = floor(train_state.step / (max_steps / 7)), so with M = 128 the run starts with one
    step of d = 1 (level 0, the target is then the data itself) and ends at level 6 (d = 1/64).
    step: optimizer steps already taken (0 for the first update).
    """
    return stage_index(step, total_steps, log2_int(denoise_timesteps))


def consistency_training_targets(ema, x1, y, step, total_steps, cfg=None, generator=None):
    """One consistency-training batch from data x1 (B, ...) and labels y (B,) long; no teacher.

    ema: the student's EMA, called in eval mode without grad. The curriculum level sets d = 2^-level;
    t is a multiple of d and t2 = t + d is on the same noise path (x_t2 from the same x0 and x1: the
    data stands in for a teacher). Labels are not dropped; num_bootstrap = B.
    """
    cfg = cfg or ObjectiveConfig()
    B = check_data(x1, y)
    generator = resolve_generator(generator)
    device = x1.device
    level = consistency_level(step, total_steps, cfg.denoise_timesteps)
    k = torch.full((B,), level, dtype=torch.long, device=device)

    # 1. t a multiple of d = 2^-level (t ≤ 1 − d), t2 = t + d ≤ 1.
    t = grid_t(B, 2 ** level, generator, device)
    t2 = t + 0.5 ** level

    # 2. Both points on the straight path of one (x0, x1) pair.
    x0 = randn(x1.shape, generator, device, x1.dtype)
    x_t, x_t2 = interpolate(x0, x1, t, cfg.sigma_min), interpolate(x0, x1, t2, cfg.sigma_min)

    # 3. Target from the EMA's x1 prediction at t2 (not clipped, as the official code).
    with frozen(ema):
        v = _velocity_target(ema, x_t, t, x_t2, t2, k, y, x1.dtype)
    return ShortcutBatch(x_t, t, k, y, v, B)


@torch.no_grad()
def consistency_sample(model, noise, steps=1, y=None, cfg_scale=1.0, generator=None, return_trajectory=False):
    """Multistep consistency sampling in any number of steps N ≥ 1 (official helper_inference).

    At t = i/N the network predicts x1 = x + (1 − t)·v, then the sample is re-noised to the next level
    with fresh noise: x ← x1_pred·(t + 1/N) + ε·(1 − t − 1/N). The last step returns x1_pred itself.
    The step input is floor(log2 N) (official: log2 N; consistency models are trained with it zeroed).
    generator: for ε (on any device; None uses torch's global generator on the noise's device).
    """
    check_noise(noise)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    B, device = noise.shape[0], noise.device
    y = check_labels(model, y, B, device)
    null = getattr(model, "null_label", getattr(model, "num_classes", 0))
    k = torch.full((B,), steps.bit_length() - 1, dtype=torch.long, device=device)
    x, d = noise, 1.0 / steps
    traj = [x]
    for i in range(steps):
        t = i * d
        v = guided_velocity(model, x, torch.full((B,), t, device=device), k, y, cfg_scale, null).to(x.dtype)
        x1_pred = x + (1 - t) * v
        if i == steps - 1:
            x = x1_pred                       # the noise weight 1 − t − 1/N is 0 at the last step
        else:
            gdev = generator.device if generator is not None else device
            eps = torch.randn(x.shape, generator=generator, device=gdev, dtype=x.dtype).to(device)
            x = x1_pred * (t + d) + eps * (1 - t - d)
        traj.append(x)
    return (x, traj) if return_trajectory else x
