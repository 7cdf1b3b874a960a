"""The shortcut objective: build the training batch (inputs and velocity targets) from data.

Written as the official code's numbered steps: split the batch, sample levels, sample t, bootstrap
targets from the target (EMA) network, flow targets, merge. Model-agnostic: any module with
forward(x, t, k, y) works (ShortcutDiT, ShortcutMLP, ...).
"""
from dataclasses import dataclass

import torch

from .config import ObjectiveConfig


@dataclass
class ShortcutBatch:
    """Network inputs and targets. The first `num_bootstrap` items are bootstrap items, the rest flow items."""
    x_t: torch.Tensor      # (B, ...) noisy input
    t: torch.Tensor        # (B,) float, noise level (0 = noise, 1 = data)
    k: torch.Tensor        # (B,) long, step level (step size d = 2^-k)
    y: torch.Tensor        # (B,) long, labels (null label where dropped)
    v: torch.Tensor        # (B, ...) velocity target
    num_bootstrap: int


def interpolate(x0, x1, t, sigma_min=1e-5):
    """x_t = (1 - (1 - sigma_min)·t)·x0 + t·x1 with t broadcast over the non-batch dimensions."""
    t = t.view(-1, *([1] * (x1.dim() - 1)))
    return (1 - (1 - sigma_min) * t) * x0 + t * x1


def bootstrap_levels(n, num_levels, generator, device):
    """Step levels for n bootstrap items over levels 0 .. num_levels-1.

    With n >= num_levels: the official spread, finest level first, n // num_levels items per level and
    the leftovers at level 0 (one step). With n < num_levels the official code gives every item level 0
    and the finer levels are never trained (official issue #11); we draw n distinct levels at random so
    that every level is trained over the run.
    """
    if n >= num_levels:
        per = n // num_levels
        k = torch.arange(num_levels - 1, -1, -1).repeat_interleave(per)          # finest first
        return torch.cat([k, torch.zeros(n - k.numel(), dtype=torch.long)]).to(device)
    return torch.randperm(num_levels, generator=generator, device=generator.device)[:n].to(device)


def _uniform_grid(steps, generator):
    """randint(0, steps) / steps, elementwise for a (n,) tensor of grid sizes."""
    u = torch.rand(steps.shape, generator=generator, device=steps.device)
    return torch.minimum(torch.floor(u * steps), steps - 1) / steps


@torch.no_grad()
def _guided_velocity(model, x, t, k, y, null_label, scale, guided):
    """v = model(x, t, k, y); where `guided`, v = v_u + scale·(v_c − v_u), in one forward of the joint batch."""
    n = int(guided.sum())
    if n == 0:
        return model(x, t, k, y)
    idx = guided.nonzero().squeeze(1)
    v = model(torch.cat([x, x[idx]]), torch.cat([t, t[idx]]), torch.cat([k, k[idx]]),
              torch.cat([y, torch.full_like(y[idx], null_label)]))
    v_c, v_u = v[: x.shape[0]], v[x.shape[0]:]
    v_c = v_c.clone()
    v_c[idx] = v_u + scale * (v_c[idx] - v_u)
    return v_c


def shortcut_targets(model, x1, y, cfg=None, generator=None, null_label=None, levels=None):
    """Build one training batch from data x1 (B, ...) and labels y (B,) long.

    model: the target network (the EMA weights in the official recipe), called without grad in eval mode
    for the bootstrap targets. cfg: ObjectiveConfig. generator: torch.Generator for all randomness
    (noise, t, levels, label dropout). null_label: defaults to model.null_label (or model.num_classes).
    levels: the step levels of the bootstrap items, chosen by the caller (shortcut.train deals the global
    batch's levels over its shards: distributed.deal_levels); their number replaces int(B · fraction).
    None: `bootstrap_levels` of int(B · bootstrap_fraction) items.
    """
    cfg = cfg or ObjectiveConfig()
    if not isinstance(x1, torch.Tensor) or x1.dim() < 2 or not x1.is_floating_point():
        raise ValueError(f"x1 must be a floating-point tensor of shape (B, ...), got "
                         f"{tuple(x1.shape) if isinstance(x1, torch.Tensor) else type(x1).__name__}")
    B, device = x1.shape[0], x1.device
    if not isinstance(y, torch.Tensor) or y.shape != (B,) or y.dtype != torch.long:
        raise ValueError(f"y must be an int64 tensor of shape ({B},), got "
                         f"{(tuple(y.shape), y.dtype) if isinstance(y, torch.Tensor) else type(y).__name__}")
    if null_label is None:
        null_label = getattr(model, "null_label", getattr(model, "num_classes", None))
        if null_label is None:
            raise ValueError("null_label is needed: pass it, or give the model a `null_label` attribute")
    if generator is None:
        generator = torch.Generator(device="cpu")
        generator.seed()
    gdev = generator.device

    def to(v):
        return v.to(device)

    M, top = cfg.denoise_timesteps, cfg.max_level
    if levels is not None:
        levels = _check_levels(levels, cfg, B, top)
    # 1. Split: the first nb items get bootstrap targets, the rest flow targets (each image used once).
    if levels is not None:
        nb = levels.numel()
    else:
        nb = int(B * cfg.bootstrap_fraction) if cfg.objective == "shortcut" else 0
    x0 = to(torch.randn(x1.shape, generator=generator, device=gdev, dtype=x1.dtype))

    # 2. Flow items: t on the 1/M grid, finest level, labels dropped to null with p = class_dropout_prob.
    nf = B - nb
    t_f = to(torch.randint(0, M, (nf,), generator=generator, device=gdev).float() / M)
    k_f = torch.full((nf,), top, dtype=torch.long, device=device)
    drop = to(torch.rand(nf, generator=generator, device=gdev) < cfg.class_dropout_prob)
    y_f = torch.where(drop, torch.full_like(y[nb:], null_label), y[nb:])
    x_f = interpolate(x0[nb:], x1[nb:], t_f, cfg.sigma_min)
    v_f = x1[nb:] - (1 - cfg.sigma_min) * x0[nb:]
    if nb == 0:
        return ShortcutBatch(x_f, t_f, k_f, y_f, v_f, 0)

    # 3. Bootstrap items: levels k in 0 .. top-1, t a multiple of d = 2^-k, true labels.
    k_b = bootstrap_levels(nb, top, generator, device) if levels is None else levels.to(device)
    t_b = to(_uniform_grid(2.0 ** k_b.to(gdev), generator))
    x_b = interpolate(x0[:nb], x1[:nb], t_b, cfg.sigma_min)
    y_b = y[:nb]
    d_half = (0.5 ** k_b.float() / 2).view(-1, *([1] * (x1.dim() - 1)))

    # 4. Target: two half steps at level k + 1 with the target network, averaged and clipped.
    guided = (k_b == top - 1) & (y_b != null_label) if cfg.bootstrap_cfg else torch.zeros_like(k_b, dtype=torch.bool)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            v1 = _guided_velocity(model, x_b, t_b, k_b + 1, y_b, null_label, cfg.bootstrap_cfg_scale, guided)
            x2 = torch.clamp(x_b + d_half * v1, -cfg.clip, cfg.clip)
            v2 = _guided_velocity(model, x2, t_b + d_half.flatten(), k_b + 1, y_b, null_label,
                                  cfg.bootstrap_cfg_scale, guided)
            v_b = torch.clamp((v1 + v2) / 2, -cfg.clip, cfg.clip).to(x1.dtype)
    finally:
        model.train(was_training)

    # 5. Merge: bootstrap items first.
    return ShortcutBatch(torch.cat([x_b, x_f]), torch.cat([t_b, t_f]), torch.cat([k_b, k_f]),
                         torch.cat([y_b, y_f]), torch.cat([v_b, v_f]), nb)


def _check_levels(levels, cfg, B, top):
    if cfg.objective != "shortcut":
        raise ValueError(f"levels= gives bootstrap items their levels; objective {cfg.objective!r} has none")
    if (not isinstance(levels, torch.Tensor) or levels.dim() != 1 or levels.is_floating_point()
            or levels.is_complex() or levels.dtype == torch.bool):
        raise ValueError(f"levels must be a 1-D integer tensor of bootstrap step levels, got "
                         f"{(levels.dtype, tuple(levels.shape)) if isinstance(levels, torch.Tensor) else levels!r}")
    if levels.numel() > B:
        raise ValueError(f"levels holds {levels.numel()} bootstrap items, more than the batch's {B}")
    if levels.numel() and (int(levels.min()) < 0 or int(levels.max()) >= top):
        raise ValueError(f"levels must lie in [0, {top - 1}] (bootstrap levels below log2 M = {top}), got "
                         f"[{int(levels.min())}, {int(levels.max())}]")
    return levels.long()


def shortcut_loss(model, batch):
    """MSE on velocity over all items (equal weight). Returns (loss, {"loss_flow", "loss_bootstrap"})."""
    v_hat = model(batch.x_t, batch.t, batch.k, batch.y)
    per_item = (v_hat.float() - batch.v.float()).pow(2).flatten(1).mean(1)           # (B,)
    loss = per_item.mean()
    nb = batch.num_bootstrap
    parts = {"loss_flow": per_item[nb:].mean().detach() if nb < per_item.numel() else None,
             "loss_bootstrap": per_item[:nb].mean().detach() if nb else None}
    return loss, {k: v for k, v in parts.items() if v is not None}
