"""MeanFlow (Geng, Deng, Bai, Kolter, He 2025, arXiv 2505.13447) in our time convention: objective and sampler.

The network u(x_s, s, h, y) is the AVERAGE velocity over [s, s + h] (s = 0 noise, s = 1 data, h ≥ 0 the jump
toward data): x_{s+h} = x_s + h·u. Differentiating h·u = ∫_s^{s+h} v dτ in s with the end point s + h fixed
gives the MeanFlow identity u = v + h·du/ds, where du/ds is the JVP of u along (dx, ds, dh) = (v, 1, −1); the
training target is sg(v + h·du/ds). Model-agnostic: any module with forward(x, s, h, y), h a float tensor fed
where shortcut models take the step level k. Derivation, the paper's numbers and their sources: docs/meanflow.md.
"""
import contextlib
from dataclasses import dataclass

import torch

from .baselines.common import check_data, check_noise, frozen, randn, resolve_generator, resolve_null_label
from .config import JVP_MODES, TIME_DISTS, MeanFlowConfig
from .objective import interpolate
from .sampler import MAX_STEPS, check_labels

__all__ = ["MeanFlowConfig", "MeanFlowBatch", "TIME_DISTS", "JVP_MODES", "sample_interval", "adaptive_weight",
           "fold_guidance", "meanflow_inputs", "meanflow_target", "meanflow_batch_loss", "meanflow_loss",
           "meanflow_sample"]


@dataclass
class MeanFlowBatch:
    """Network inputs and the tangent velocity. The first `num_flow` items have h = 0 (plain flow matching)."""
    x_s: torch.Tensor      # (B, ...) point on the noise–data path
    s: torch.Tensor        # (B,) float32, time (0 = noise, 1 = data)
    h: torch.Tensor        # (B,) float32, interval length toward data, s + h <= 1
    y: torch.Tensor        # (B,) long, labels (null label where dropped)
    v: torch.Tensor        # (B, ...) velocity: x1 − (1 − sigma_min)·x0, guided where guidance applies
    num_flow: int


def _col(v, like):
    """(B,) → (B, 1, ..., 1) in like's dtype, to broadcast over an item."""
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def sample_interval(n, cfg, generator, device):
    """(s, h) for n items, float32 on `device`: two times drawn independently, s the smaller, s + h the larger.

    Paper/official: t, r drawn from logit-normal(P_mean, P_std) in t = 1 − s, t = max, r = min; in s that is
    s = 1 − t = min of two logit-normal(−P_mean, P_std) draws. The first int(n·flow_fraction) items get h = 0
    (official: the first data_proportion of the batch gets r = t), so their s is also the min of two draws.
    """
    g = generator
    if cfg.time_dist == "logit_normal":
        a = torch.sigmoid(-cfg.P_mean + cfg.P_std * torch.randn(2, n, generator=g, device=g.device))
    else:
        a = torch.rand(2, n, generator=g, device=g.device)
    s, end = a.min(0).values, a.max(0).values
    h = end - s
    h[: int(n * cfg.flow_fraction)] = 0.0
    return s.float().to(device), h.float().to(device)


def adaptive_weight(sq_err, p, c):
    """w = 1 / (‖Δ‖² + c)^p per item, without gradient (the paper's sg(w)); p = 0 gives plain squared error."""
    return (sq_err.detach() + c).pow(-p)


@torch.no_grad()
def fold_guidance(model, x_s, s, v, y, null_label, cfg):
    """v_g = ω·v + κ·u(x_s, s, 0 | y) + (1 − ω − κ)·u(x_s, s, 0 | ∅) where guided, else v.

    The paper's guided field (appendix; official guidance_fn) with u at h = 0 standing in for the conditional and
    unconditional instantaneous velocities; the sign flip of our convention cancels (every term is a velocity).
    Guided items: label not null and s in cfg_s_range. The network runs in eval mode without grad.
    """
    lo, hi = cfg.cfg_s_range
    guided = (y != null_label) & (s >= lo) & (s <= hi)
    if not cfg.guided or not bool(guided.any()):
        return v
    idx = guided.nonzero().squeeze(1)
    x_g, s_g, y_g, n = x_s[idx], s[idx], y[idx], idx.numel()
    zero, null = torch.zeros_like(s_g), torch.full_like(y_g, null_label)
    with frozen(model):
        if cfg.cfg_kappa == 0.0:   # the conditional term drops out: one forward (official does the same)
            u_c, u_u = torch.zeros_like(x_g), model(x_g, s_g, zero, null)
        else:
            u = model(torch.cat([x_g, x_g]), torch.cat([s_g, s_g]), torch.cat([zero, zero]), torch.cat([y_g, null]))
            u_c, u_u = u[:n], u[n:]
    w, k = cfg.cfg_omega, cfg.cfg_kappa
    v = v.clone()
    v[idx] = (w * v[idx] + k * u_c.to(v.dtype) + (1 - w - k) * u_u.to(v.dtype))
    return v


def meanflow_inputs(model, x1, y, cfg=None, generator=None, null_label=None):
    """One MeanFlow batch from data x1 (B, ...) and labels y (B,) long. The model is only called when guidance
    is on (cfg.guided). generator: torch.Generator for all randomness (times, noise, label dropout)."""
    cfg = cfg or MeanFlowConfig()
    B = check_data(x1, y)
    generator = resolve_generator(generator)
    null_label = resolve_null_label(null_label, model)
    device = x1.device

    # 1. Times: the first int(B·flow_fraction) items have h = 0, the rest h > 0 with s + h <= 1.
    s, h = sample_interval(B, cfg, generator, device)

    # 2. Noise, the point on the path, the conditional velocity.
    x0 = randn(x1.shape, generator, device, x1.dtype)
    x_s = interpolate(x0, x1, s.to(torch.promote_types(x1.dtype, torch.float32)), cfg.sigma_min)   # fp64 data: fp64
    v = x1 - (1 - cfg.sigma_min) * x0

    # 3. Label dropout as the official cond_drop: a Binomial(B, p) count of items, the FIRST ones, gets the null
    #    label (so they are h = 0 items: the unconditional field is only ever queried at h = 0, by guidance).
    n_drop = int((torch.rand(B, generator=generator, device=generator.device) < cfg.class_dropout_prob).sum())
    y = y.clone()
    y[:n_drop] = null_label

    # 4. Guidance folded into the velocity (unguided where the label is null).
    v = fold_guidance(model, x_s, s, v, y, null_label, cfg).to(x1.dtype)
    return MeanFlowBatch(x_s, s, h, y, v, int(B * cfg.flow_fraction))


def meanflow_target(model, x_s, s, h, y, v, jvp="joint", autocast=True):
    """(u, u_tgt): u = model(x_s, s, h, y) with grad; u_tgt = sg(v + h·du/ds), du/ds the JVP along (v, 1, −1).

    jvp="joint": one torch.func.jvp returns both (the primal keeps its graph); "separate": a plain forward for u
    and the JVP under no_grad (same values; less memory without compile, one more forward).
    autocast=False: the JVP runs with autocast off, in the inputs' (fp32) precision; with jvp="joint" that is u
    too. True: under whatever autocast the caller set (bf16 through the fused JVP rules: not yet measured on a GPU).
    """
    if jvp not in JVP_MODES:
        raise ValueError(f"jvp must be one of {JVP_MODES}, got {jvp!r}")

    def u_fn(x, s_, h_):
        return model(x, s_, h_, y)

    primals = (x_s, s, h)
    tangents = (v.to(x_s.dtype), torch.ones_like(s), -torch.ones_like(h))   # end point s + h fixed
    exact = contextlib.nullcontext() if autocast else torch.autocast(x_s.device.type, enabled=False)
    if jvp == "joint":
        with exact:
            u, du_ds = torch.func.jvp(u_fn, primals, tangents)
    else:
        u = u_fn(*primals)
        with torch.no_grad(), exact:
            _, du_ds = torch.func.jvp(u_fn, primals, tangents)
    dt = torch.promote_types(torch.promote_types(u.dtype, du_ds.dtype), torch.float32)   # the target in >= fp32
    u_tgt = (v.to(dt) + _col(h, du_ds.to(dt)) * du_ds.to(dt)).detach()
    return u, u_tgt


def meanflow_batch_loss(model, batch, cfg=None):
    """Adaptively weighted squared error of u against its target. Returns (loss, parts): loss_flow / loss_interval
    (weighted, h = 0 items / h > 0 items), mse (raw, per element) and mse_flow / mse_interval."""
    cfg = cfg or MeanFlowConfig()
    u, u_tgt = meanflow_target(model, batch.x_s, batch.s, batch.h, batch.y, batch.v, cfg.jvp,
                                autocast=cfg.jvp_autocast)
    dt = torch.promote_types(u.dtype, torch.float32)                            # bf16/fp16 → fp32; fp64 stays
    sq = (u.to(dt) - u_tgt.to(dt)).pow(2).flatten(1).sum(1)                     # (B,) ‖Δ‖² over the item
    per_item = adaptive_weight(sq, cfg.norm_p, cfg.norm_eps) * sq               # (B,) sg(w)·‖Δ‖²
    loss = per_item.mean()
    mse = sq.detach() / u[0].numel()
    nf, B = batch.num_flow, per_item.numel()
    parts = {"mse": mse.mean()}
    if nf:
        parts.update(loss_flow=per_item[:nf].mean().detach(), mse_flow=mse[:nf].mean())
    if nf < B:
        parts.update(loss_interval=per_item[nf:].mean().detach(), mse_interval=mse[nf:].mean())
    return loss, parts


def meanflow_loss(model, x1, y, cfg=None, generator=None, null_label=None):
    """The MeanFlow training loss on data x1 (B, ...) with labels y (B,) long: (scalar loss, logged parts).
    Gradients reach the model through u only (the target and the weights are stop-gradient)."""
    cfg = cfg or MeanFlowConfig()
    batch = meanflow_inputs(model, x1, y, cfg, generator, null_label)
    return meanflow_batch_loss(model, batch, cfg)


@torch.no_grad()
def meanflow_sample(model, noise, steps=1, y=None, return_trajectory=False):
    """x1 from noise x0 in N = steps equal intervals: x ← x + (1/N)·u(x, i/N, 1/N, y); one step is
    x0 + u(x0, 0, 1). Any N in 1 .. 128. Guidance is trained into u (no cfg_scale at sampling).
    With return_trajectory, also returns the N + 1 points."""
    check_noise(noise)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an int in [1, {MAX_STEPS}], got {steps!r}")
    B, device = noise.shape[0], noise.device
    y = check_labels(model, y, B, device)
    dt = torch.promote_types(noise.dtype, torch.float32)     # times in fp32 (fp64 for fp64 noise)
    h = torch.full((B,), 1.0 / steps, dtype=dt, device=device)
    x, traj = noise, [noise]
    for i in range(steps):
        s = torch.full((B,), i / steps, dtype=dt, device=device)
        x = x + _col(h, x) * model(x, s, h, y).to(x.dtype)
        traj.append(x)
    return (x, traj) if return_trajectory else x
