"""Reflow (Liu et al. 2023, the paper's two-phase Reflow row) and live reflow (official
baselines/targets_livereflow.py): flow matching on (noise, sample) pairs whose sample a model generated
from that noise, which straightens the paths so few Euler steps suffice.
"""
from dataclasses import dataclass

import torch

from ..config import ObjectiveConfig
from ..objective import ShortcutBatch, interpolate
from .common import (check_data, drop_labels, euler_sample, frozen, grid_t, log2_int, randn, resolve_generator,
                     resolve_null_label)

LIVE_REFLOW_STEPS = 8   # official: `for _ in range(8)` guided Euler steps of the live model


def live_reflow_level(steps, denoise_timesteps=128):
    """The step input a live-reflow model samples with: the one-step level 0 below M steps, log2 M at M.

    Official helper_eval: `if train_type == 'livereflow' and denoise_timesteps < 128: dt_base = 0`, else
    log2 N; the reflow items are trained at level 0 and the flow items at log2 M.
    """
    top = log2_int(denoise_timesteps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= denoise_timesteps:
        raise ValueError(f"steps must be an int in [1, {denoise_timesteps}], got {steps!r}")
    return top if steps == denoise_timesteps else 0


def live_reflow_targets(model, x1, y, cfg=None, generator=None, null_label=None, cfg_scale=None, num_reflow=None):
    """One live-reflow batch from data x1 (B, ...) and labels y (B,) long.

    model: the live network (official `train_state.call_model`, not the EMA), run in eval mode without grad
    to generate the pairs. The first int(B · cfg.bootstrap_fraction) items (official B / bootstrap_every)
    are reflow items: noise x0, its sample x after 8 guided Euler steps at the flow level log2 M (labels
    y[:nb], guidance cfg_scale; None reads cfg.bootstrap_cfg_scale — the official always guides, with its
    cfg_scale), then t on the 1/M grid, x_t between x0 and x, target x − x0 (official, without the
    1 − 1e-5 factor), step level 0, labels kept. The rest are flow items of images x1[nb:] (labels dropped
    with cfg.class_dropout_prob, level log2 M). num_bootstrap = nb (the reflow items come first).
    num_reflow: nb chosen by the caller instead (shortcut.train deals the global batch's reflow items over its
    shards, as it deals the shortcut objective's bootstrap items).
    """
    cfg = cfg or ObjectiveConfig()
    B = check_data(x1, y)
    null_label = resolve_null_label(null_label, model)
    generator = resolve_generator(generator)
    cfg_scale = cfg.bootstrap_cfg_scale if cfg_scale is None else cfg_scale
    device, M = x1.device, cfg.denoise_timesteps
    top, nb = log2_int(M), int(B * cfg.bootstrap_fraction) if num_reflow is None else num_reflow
    if isinstance(nb, bool) or not isinstance(nb, int) or not 0 <= nb <= B:
        raise ValueError(f"num_reflow must be an int in [0, {B}] (reflow items of the batch), got {num_reflow!r}")
    # 1. Noise for every item: the first nb start reflow pairs, the rest flow items (official reuses the
    #    flow items' noise and drops the last nb images; here each image and each noise is used once).
    x0 = randn(x1.shape, generator, device, x1.dtype)

    # 2. Flow items: t on the 1/M grid, finest level, labels dropped to null with class_dropout_prob.
    t_f = grid_t(B - nb, M, generator, device)
    y_f = drop_labels(y[nb:], cfg.class_dropout_prob, null_label, generator)
    x_f = interpolate(x0[nb:], x1[nb:], t_f, cfg.sigma_min)
    v_f = x1[nb:] - (1 - cfg.sigma_min) * x0[nb:]
    k_f = torch.full((B - nb,), top, dtype=torch.long, device=device)
    if nb == 0:
        return ShortcutBatch(x_f, t_f, k_f, y_f, v_f, 0)

    # 3. Reflow items: the live model's 8-step guided sample from x0[:nb], trained at the one-step level.
    x0_r, y_r = x0[:nb], y[:nb]
    with frozen(model):
        x_r = euler_sample(model, x0_r, LIVE_REFLOW_STEPS, y_r, cfg_scale, level=top)
    t_r = grid_t(nb, M, generator, device)
    x_t_r = interpolate(x0_r, x_r, t_r, cfg.sigma_min)
    k_r = torch.zeros(nb, dtype=torch.long, device=device)

    # 4. Merge: reflow items first.
    return ShortcutBatch(torch.cat([x_t_r, x_f]), torch.cat([t_r, t_f]), torch.cat([k_r, k_f]),
                         torch.cat([y_r, y_f]), torch.cat([x_r - x0_r, v_f]), nb)


@dataclass
class ReflowPairs:
    """(noise, sample) pairs of a flow-matching teacher, one per label, on the CPU."""
    x0: torch.Tensor     # (N, ...) noise
    x1: torch.Tensor     # (N, ...) the teacher's sample from that noise
    y: torch.Tensor      # (N,) long, the label it was generated with

    def __len__(self):
        return self.x0.shape[0]


def reflow_pairs(teacher, y, shape, steps=128, cfg_scale=1.0, batch_size=256, generator=None, device=None,
                 denoise_timesteps=128, part=(0, 1)):
    """Phase 1 of reflow: sample one (noise, sample) pair per label with a flow-matching teacher.

    y: (N,) long labels (the null label for unconditional pairs); shape: one item's shape, e.g. (1, 8, 8).
    The teacher takes `steps` guided Euler steps at the flow level log2 M, in batches of batch_size, on
    `device` (default: where its parameters are). All N noises are drawn first from `generator`, so the
    pairs depend on the generator and not on batch_size.
    part: (i, n) computes only the i-th of n contiguous slices of the N pairs (ranks share the work; the
    slices concatenated in order are the pairs of part (0, 1)).
    """
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype != torch.long:
        raise ValueError(f"y must be an int64 tensor of shape (N,), got "
                         f"{(tuple(y.shape), y.dtype) if isinstance(y, torch.Tensor) else type(y).__name__}")
    shape = tuple(shape)
    if not shape or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(f"shape must be one item's shape, a tuple of positive ints, got {shape!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    top = log2_int(denoise_timesteps)
    generator = resolve_generator(generator)
    if device is None:
        device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
    i, n = part
    if not (isinstance(i, int) and isinstance(n, int) and 0 <= i < n):
        raise ValueError(f"part must be (i, n) with 0 <= i < n, got {part!r}")
    x0 = torch.randn((y.shape[0],) + shape, generator=generator, device=generator.device).cpu()
    lo, hi = y.shape[0] * i // n, y.shape[0] * (i + 1) // n
    x0, y = x0[lo:hi], y[lo:hi]
    x1 = torch.empty_like(x0)
    with frozen(teacher):
        for i in range(0, y.shape[0], batch_size):
            xb, yb = x0[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            x1[i:i + batch_size] = euler_sample(teacher, xb, steps, yb, cfg_scale, level=top).float().cpu()
    return ReflowPairs(x0, x1, y.cpu())


def reflow_targets(x0, x1, y, cfg=None, generator=None, null_label=None):
    """Phase 2 of reflow: flow-matching targets on coupled pairs (x0[i], x1[i]) (e.g. a ReflowPairs batch).

    Plain flow matching with the pair's own noise instead of fresh noise: t on the 1/M grid, x_t on the
    straight path, target x1 − (1 − 1e-5)·x0, level log2 M, labels dropped with cfg.class_dropout_prob
    (so the reflowed model keeps classifier-free guidance). null_label: required (there is no model here).
    All items are flow items: num_bootstrap = 0.
    """
    cfg = cfg or ObjectiveConfig()
    B = check_data(x1, y)
    if not isinstance(x0, torch.Tensor) or x0.shape != x1.shape or x0.dtype != x1.dtype or x0.device != x1.device:
        got = (tuple(x0.shape), x0.dtype, str(x0.device)) if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise ValueError(f"x0 must match x1 ({tuple(x1.shape)}, {x1.dtype}, {x1.device}), got {got}")
    null_label = resolve_null_label(null_label)
    generator = resolve_generator(generator)
    M, device = cfg.denoise_timesteps, x1.device
    t = grid_t(B, M, generator, device)
    y = drop_labels(y, cfg.class_dropout_prob, null_label, generator)
    k = torch.full((B,), log2_int(M), dtype=torch.long, device=device)
    return ShortcutBatch(interpolate(x0, x1, t, cfg.sigma_min), t, k, y, x1 - (1 - cfg.sigma_min) * x0, 0)
