"""The baseline objectives (shortcut/baselines) pinned to the official code's definitions by closed forms:
schedules and curricula, targets of affine and exact velocity fields, teacher refresh, label handling,
the samplers (re-noising consistency sampling, fixed-level Euler), devices, dtypes and bad input."""
import math

import pytest
import torch
import torch.nn as nn

from shortcut import ObjectiveConfig, ShortcutMLP, shortcut_loss
from shortcut.baselines import (OBJECTIVES, baseline_targets, consistency_distillation_targets, consistency_level,
                                consistency_sample, consistency_training_targets, copy_teacher, euler_sample,
                                live_reflow_level, live_reflow_targets, progressive_refresh_due, progressive_stage,
                                progressive_targets, reflow_pairs, reflow_targets, refresh_teacher, sample_objective)
from shortcut.objective import interpolate

NULL = 10
SIGMA = 1e-5


def col(v, like):
    """(B,) → (B, 1, ..., 1) in like's dtype, to broadcast over an item."""
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class Field(nn.Module):
    """v = a·x + c + e·(y + 1): a velocity field with closed-form Euler steps; records every call."""
    null_label = NULL

    def __init__(self, a=0.0, c=0.0, e=0.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)))
        self.c, self.e = c, e
        self.calls = []

    def forward(self, x, t, k, y):
        self.calls.append({"training": self.training, "grad": torch.is_grad_enabled(), "x": x.clone(),
                           "t": t.clone(), "k": k.clone(), "y": y.clone()})
        return self.a.to(x.dtype) * x + self.c + self.e * col(y + 1, x)


class Oracle(Field):
    """The exact velocity of the one-point data distribution x1 = z on x_t = (1 − (1 − σ)t)·x0 + t·z:
    v*(x, t) = z − (1 − σ)(x − t·z)/(1 − (1 − σ)t) (finite at t = 1, where the denominator is σ)."""

    def __init__(self, z):
        super().__init__()
        self.z = z

    def forward(self, x, t, k, y):
        super().forward(x, t, k, y)
        t = col(t, x)
        return self.z - (1 - SIGMA) * (x - t * self.z) / (1 - (1 - SIGMA) * t)


def _data(B, gen, device, dtype=torch.float32, scale=0.5):
    x1 = (scale * torch.randn(B, 1, 2, 2, generator=gen, dtype=dtype)).to(device)
    return x1, torch.randint(0, NULL, (B,), generator=gen).to(device)


def _guided(e, y, w):
    """The guided value of the label term e·(y + 1): v_u + w·(v_c − v_u) with v_u at the null label."""
    return e * (NULL + 1) + w * e * (y - NULL).double()


# ---------------------------------------------------------------- schedules, curricula, teacher refresh

@pytest.mark.parametrize("total", [7, 13, 700, 1000, 2000])
def test_stages_match_the_official_formula(total):
    """Official: progressive dt_base = 7 − floor(step / (max_steps / 7)) − 1; consistency = floor(...)."""
    for step in range(total):
        official = math.floor(step / (total / 7))
        assert progressive_stage(step, total) == (official, 6 - official)
        assert consistency_level(step, total) == official


def test_stage_boundaries():
    assert [progressive_stage(s, 700)[1] for s in (0, 99, 100, 350, 699)] == [6, 6, 5, 3, 0]
    assert [consistency_level(s, 1000) for s in (0, 142, 143, 285, 286, 999)] == [0, 0, 1, 1, 2, 6]
    assert progressive_stage(0, 64, denoise_timesteps=16) == (0, 3)         # log2 16 = 4 levels: 3 → 0
    assert progressive_stage(63, 64, denoise_timesteps=16) == (3, 0)


@pytest.mark.parametrize("total,due", [(70, [10, 20, 30, 40, 50, 60]), (1000, [143, 286, 429, 572, 715, 858])])
def test_teacher_refresh_at_each_stage(total, due):
    assert [s for s in range(total) if progressive_refresh_due(s, total)] == due


@pytest.mark.parametrize("step,total", [(-1, 70), (70, 70), (1.0, 70), (True, 70), (0, 6), (0, 70.0)])
def test_schedule_rejects_bad_steps(step, total):
    with pytest.raises(ValueError, match="step"):
        progressive_stage(step, total)
    with pytest.raises(ValueError, match="step"):
        consistency_level(step, total)


def test_schedule_rejects_bad_denoise_timesteps():
    with pytest.raises(ValueError, match="denoise_timesteps must be a power of two"):
        progressive_stage(0, 70, denoise_timesteps=100)


def test_copy_and_refresh_teacher_do_not_alias(device):
    torch.manual_seed(0)
    student = ShortcutMLP(hidden=16, depth=1).to(device)
    teacher = copy_teacher(student)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    assert not torch.equal(teacher.out[1].weight, student.out[1].weight), "copy_teacher must not alias"
    teacher.train()
    refresh_teacher(teacher, student)
    torch.testing.assert_close(teacher.state_dict(), student.state_dict())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        student.out[1].weight.add_(1.0)
    assert not torch.equal(teacher.out[1].weight, student.out[1].weight), "refresh_teacher must copy"


def test_progressive_run_uses_the_teacher_of_its_stage(gen, device):
    """A 14-step run: the student's gain grows by 1 a step; the teacher is refreshed from it at each stage,
    and each stage's targets are two half steps of the teacher as it was at the stage's start."""
    total = 14
    student = Field(a=0.0).to(device)
    teacher = copy_teacher(student)
    cfg = ObjectiveConfig(clip=1e6)
    for step in range(total):
        if progressive_refresh_due(step, total):
            refresh_teacher(teacher, student)
        stage, level = progressive_stage(step, total)
        assert teacher.a.item() == 2 * stage, "the teacher is the student at the start of the stage"
        x1, y = _data(8, gen, device)
        b = progressive_targets(teacher, x1, y, step, total, cfg, generator=gen)
        a, h = 2.0 * stage, 0.5 ** level / 2
        torch.testing.assert_close(b.v, a * b.x_t * (1 + a * h / 2))
        with torch.no_grad():
            student.a.add_(1.0)


# ---------------------------------------------------------------- progressive distillation

@pytest.mark.parametrize("step", [0, 3, 6])
def test_progressive_two_teacher_half_steps(step, gen, device):
    """v = a·x + c: v1 = a·x + c, v2 = v1·(1 + a·h), target (v1 + v2)/2 = v1·(1 + a·h/2), h = d/2."""
    teacher = Field(a=0.3, c=0.2).to(device)
    x1, y = _data(32, gen, device)
    b = progressive_targets(teacher, x1, y, step, 7, ObjectiveConfig(class_dropout_prob=1.0), generator=gen)
    level = 6 - step
    h = 0.5 ** level / 2
    v1 = 0.3 * b.x_t + 0.2
    x2 = torch.clamp(b.x_t + h * v1, -4, 4)
    torch.testing.assert_close(b.v, (v1 + 0.3 * x2 + 0.2) / 2)
    assert (b.k == level).all() and b.num_bootstrap == 32
    grid = b.t * 2 ** level
    assert torch.equal(grid, grid.round()) and (grid >= 0).all() and (grid < 2 ** level).all()
    assert torch.equal(b.y, y), "progressive targets keep the labels (no dropout)"
    c1, c2 = teacher.calls
    assert torch.equal(c1["k"], b.k + 1) and torch.equal(c2["k"], b.k + 1), "the teacher runs at level + 1"
    torch.testing.assert_close(c2["t"], b.t + h)
    assert not any(c["grad"] or c["training"] for c in teacher.calls) and teacher.training


def test_progressive_midpoint_clipped_target_not(gen, device):
    teacher = Field(a=50.0).to(device)
    x1, y = _data(32, gen, device, scale=1.0)
    b = progressive_targets(teacher, x1, y, 6, 7, generator=gen)            # level 0: h = 1/2
    x2 = teacher.calls[1]["x"]
    assert x2.abs().max() == 4.0, "the teacher's midpoint is clipped to ±4"
    torch.testing.assert_close(b.v, (50 * b.x_t + 50 * x2) / 2)
    assert b.v.abs().max() > 4.0, "the official progressive target is not clipped"


@pytest.mark.parametrize("step,w_expected", [(0, 3.0), (1, 1.0), (6, 1.0)])
def test_progressive_guidance_in_the_first_stage_only(step, w_expected, gen, device):
    """A label-only field: two half steps of a constant are that constant, so the target is the guided value."""
    x1, y = _data(16, gen, device)
    cfg = ObjectiveConfig(bootstrap_cfg=True, bootstrap_cfg_scale=3.0)
    b = progressive_targets(Field(e=0.1).to(device), x1, y, step, 7, cfg, generator=gen)
    torch.testing.assert_close(b.v.double(), col(_guided(0.1, y, w_expected), b.v.double()).expand_as(b.v))
    unguided = progressive_targets(Field(e=0.1).to(device), x1, y, 0, 7, ObjectiveConfig(), generator=gen)
    torch.testing.assert_close(unguided.v, col(0.1 * (y + 1), unguided.v).expand_as(unguided.v))
    explicit = progressive_targets(Field(e=0.1).to(device), x1, y, 0, 7, ObjectiveConfig(), generator=gen,
                                   cfg_scale=2.0)
    torch.testing.assert_close(explicit.v.double(), col(_guided(0.1, y, 2.0), b.v.double()).expand_as(b.v))


# ---------------------------------------------------------------- exact fields give the flow velocity

def _oracle_case(B, gen, device):
    z = torch.randn(1, 1, 2, 2, generator=gen, dtype=torch.float64).to(device)
    return z, z.expand(B, -1, -1, -1).clone(), torch.randint(0, NULL, (B,), generator=gen).to(device)


def _flow_velocity(b, z):
    """x0 recovered from x_t = (1 − (1 − σ)t)·x0 + t·z, then the flow target z − (1 − σ)·x0."""
    t = col(b.t, b.x_t)
    x0 = (b.x_t - t * z) / (1 - (1 - SIGMA) * t)
    return z - (1 - SIGMA) * x0


@pytest.mark.parametrize("objective,step", [("progressive", 0), ("progressive", 6), ("consistency_distillation", 0),
                                            ("consistency_training", 0), ("consistency_training", 3),
                                            ("consistency_training", 6)])
def test_exact_field_targets_are_the_flow_velocity(objective, step, gen, device):
    """With the exact velocity of a one-point distribution as every network, a teacher's Euler steps stay on
    the straight path and the EMA's x1 prediction is exact, so each target equals z − (1 − σ)·x0."""
    z, x1, y = _oracle_case(64, gen, device)
    b = baseline_targets(objective, x1, y, teacher=Oracle(z).to(device), ema=Oracle(z).to(device), step=step,
                         total_steps=7, cfg=ObjectiveConfig(clip=1e6), generator=gen)
    # fp64 data, but interpolate forms 1 − (1 − σ)t in t's float32 (~6e-8) and the target divides by 1 − t.
    torch.testing.assert_close(b.v, _flow_velocity(b, z), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- consistency distillation

def test_consistency_distillation_closed_form(gen, device):
    """Teacher v = a·x, EMA v = b·x: x2 = x_t(1 + a/M); target = (x2 + (1 − t − 1/M)·b·x2 − x_t)/(1 − t)."""
    teacher, ema = Field(a=0.5).to(device), Field(a=-0.7).to(device)
    x1, y = _data(64, gen, device, dtype=torch.float64)      # fp32 would lose ~1e-3 dividing by 1 − t = 1/128
    b = consistency_distillation_targets(teacher, ema, x1, y, ObjectiveConfig(class_dropout_prob=1.0),
                                         generator=gen)
    t = col(b.t, b.x_t)
    x2 = b.x_t * (1 + 0.5 / 128)
    torch.testing.assert_close(b.v, (x2 + (1 - t - 1 / 128) * (-0.7) * x2 - b.x_t) / (1 - t))
    tf = b.t * 128
    assert torch.equal(tf, tf.round()) and tf.max() <= 127 and len(tf.unique()) > 20
    assert (b.k == 7).all() and b.num_bootstrap == 64 and torch.equal(b.y, y)
    (ct,), (ce,) = teacher.calls, ema.calls
    assert torch.equal(ct["t"], b.t) and torch.equal(ce["t"], b.t + 1 / 128)
    torch.testing.assert_close(ce["x"], x2)
    assert not any(c["grad"] or c["training"] for c in teacher.calls + ema.calls)


def test_consistency_distillation_clips_the_teacher_step(gen, device):
    x1, y = _data(16, gen, device)
    ema = Field().to(device)
    consistency_distillation_targets(Field(c=1e4).to(device), ema, x1, y, generator=gen)
    assert ema.calls[0]["x"].abs().max() == 4.0


# ---------------------------------------------------------------- consistency training

def test_consistency_training_level_zero_is_flow_matching(gen, device):
    """Level 0: t = 0 and t2 = 1, where (1 − t2) removes the EMA's output: the target is x1 − (1 − σ)x0
    whatever the EMA predicts."""
    torch.manual_seed(0)
    ema = ShortcutMLP(dim=4, hidden=16, depth=1, num_classes=NULL).to(device)
    x1 = torch.randn(32, 4, generator=gen).to(device)
    y = torch.randint(0, NULL, (32,), generator=gen).to(device)
    b = consistency_training_targets(ema, x1, y, 0, 70, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    torch.randint(0, 1, (32,), generator=g)                                         # t, then the noise
    x0 = torch.randn(x1.shape, generator=g).to(device)
    assert (b.t == 0).all() and (b.k == 0).all()
    torch.testing.assert_close(b.v, x1 - (1 - SIGMA) * x0)


@pytest.mark.parametrize("step", [10, 35, 69])
def test_consistency_training_closed_form(step, gen, device):
    """EMA v = b·x at t2 = t + d on the same path: target = (x_t2 + (1 − t2)·b·x_t2 − x_t)/(1 − t)."""
    z, x1, y = _oracle_case(32, gen, device)
    ema = Field(a=0.4).to(device)
    b = consistency_training_targets(ema, x1, y, step, 70, generator=gen)
    level = step // 10
    d = 0.5 ** level
    assert (b.k == level).all() and b.num_bootstrap == 32 and torch.equal(b.y, y)
    grid = b.t * 2 ** level
    assert torch.equal(grid, grid.round()) and (grid < 2 ** level).all()
    t, t2 = col(b.t, b.x_t), col(b.t + d, b.x_t)
    x0 = (b.x_t - t * z) / (1 - (1 - SIGMA) * t)
    x_t2 = (1 - (1 - SIGMA) * t2) * x0 + t2 * z
    (call,) = ema.calls
    torch.testing.assert_close(call["x"], x_t2, rtol=1e-5, atol=1e-5)        # interpolate: fp32 coefficients
    torch.testing.assert_close(call["t"], b.t + d)
    assert torch.equal(call["k"], b.k) and not call["grad"] and not call["training"]
    torch.testing.assert_close(b.v, (x_t2 + (1 - t2) * 0.4 * x_t2 - b.x_t) / (1 - t), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- live reflow

@pytest.mark.parametrize("w", [1.0, 2.5])
def test_live_reflow_items(w, gen, device):
    """Live model v = c + e·(y + 1): 8 guided Euler steps from x0 end at x0 + v_guided, so the reflow target
    x − x0 is v_guided; the reflow items come first, at level 0, with their true labels."""
    live = Field(c=0.3, e=0.1).to(device)
    cfg = ObjectiveConfig(bootstrap_fraction=0.25, class_dropout_prob=1.0)
    x1, y = _data(32, gen, device)
    b = live_reflow_targets(live, x1, y, cfg, generator=gen, cfg_scale=w)
    nb = b.num_bootstrap
    assert nb == 8 and (b.k[:nb] == 0).all() and (b.k[nb:] == 7).all()
    assert torch.equal(b.y[:nb], y[:nb]) and (b.y[nb:] == NULL).all()
    target = 0.3 + _guided(0.1, y[:nb], w).float()
    torch.testing.assert_close(b.v[:nb], col(target, b.v).expand_as(b.v[:nb]))
    # x_t on the straight path between the pair's noise and its sample; t on the 1/M grid.
    x0 = live.calls[0]["x"][:nb]
    torch.testing.assert_close(b.x_t[:nb], interpolate(x0, x0 + b.v[:nb], b.t[:nb]))
    assert torch.equal(b.t * 128, (b.t * 128).round())
    # The generation: 8 calls of the live model at t = i/8 and the flow level, eval mode, no grad, nb items
    # (2·nb with guidance: one forward over [cond; uncond]).
    assert len(live.calls) == 8 and live.training
    for i, c in enumerate(live.calls):
        assert c["x"].shape[0] == (nb if w == 1.0 else 2 * nb) and (c["k"] == 7).all()
        assert torch.allclose(c["t"], torch.full_like(c["t"], i / 8)) and not c["grad"] and not c["training"]


def test_live_reflow_flow_items(gen, device):
    x1, y = _data(32, gen, device)
    b = live_reflow_targets(Field().to(device), x1, y, ObjectiveConfig(bootstrap_fraction=0.25,
                                                                       class_dropout_prob=0.0), generator=gen)
    nb = b.num_bootstrap
    x0 = (x1[nb:] - b.v[nb:]) / (1 - SIGMA)
    torch.testing.assert_close(b.x_t[nb:], interpolate(x0, x1[nb:], b.t[nb:]))
    assert torch.equal(b.y, y), "no flow label dropped at p = 0"
    only_flow = live_reflow_targets(Field().to(device), x1[:4], y[:4], ObjectiveConfig(), generator=gen)
    assert only_flow.num_bootstrap == 0 and (only_flow.k == 7).all()              # int(4 / 8) = 0 reflow items


def test_live_reflow_level():
    assert [live_reflow_level(n) for n in (1, 2, 3, 8, 64, 127, 128)] == [0, 0, 0, 0, 0, 0, 7]
    assert live_reflow_level(16, denoise_timesteps=16) == 4
    for bad in (0, 129, 2.0):
        with pytest.raises(ValueError, match="steps must be an int in"):
            live_reflow_level(bad)


# ---------------------------------------------------------------- reflow

def test_reflow_pairs(gen, device):
    """Teacher v = c + e·(y + 1): Euler from x0 ends at x0 + v; the noise is the generator's first draw and
    the pairs do not depend on the batch size."""
    teacher = Field(c=0.2, e=0.1).to(device)
    y = torch.tensor([0, 3, NULL, 7, 9], device=device)
    pairs = reflow_pairs(teacher, y, (1, 2, 2), steps=4, batch_size=2, generator=torch.Generator().manual_seed(7))
    x0 = torch.randn(5, 1, 2, 2, generator=torch.Generator().manual_seed(7))
    assert len(pairs) == 5 and pairs.x0.device.type == "cpu" and torch.equal(pairs.x0, x0)
    torch.testing.assert_close(pairs.x1, x0 + col(0.2 + 0.1 * (y.cpu() + 1), x0))
    assert torch.equal(pairs.y, y.cpu())
    assert len(teacher.calls) == 4 * 3 and all((c["k"] == 7).all() for c in teacher.calls), "flow level, 3 batches"
    again = reflow_pairs(teacher, y, (1, 2, 2), steps=4, batch_size=16, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(again.x1, pairs.x1)
    guided = reflow_pairs(teacher, y, (1, 2, 2), steps=2, cfg_scale=2.0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(guided.x1, x0 + col(0.2 + _guided(0.1, y.cpu(), 2.0).float(), x0))


def test_reflow_pairs_of_the_exact_field_land_on_the_data(gen, device):
    z = torch.randn(1, 1, 2, 2, generator=gen, dtype=torch.float64).to(device)
    y = torch.zeros(6, dtype=torch.long, device=device)
    pairs = reflow_pairs(Oracle(z).to(device), y, (1, 2, 2), steps=3, generator=gen)
    torch.testing.assert_close(pairs.x1, (z.cpu() + SIGMA * pairs.x0.double()).float().expand_as(pairs.x1))


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_reflow_targets(p, gen, device):
    x0, (x1, y) = torch.randn(16, 1, 2, 2, generator=gen).to(device), _data(16, gen, device)
    b = reflow_targets(x0, x1, y, ObjectiveConfig(class_dropout_prob=p), generator=gen, null_label=NULL)
    torch.testing.assert_close(b.v, x1 - (1 - SIGMA) * x0)
    torch.testing.assert_close(b.x_t, interpolate(x0, x1, b.t))
    assert torch.equal(b.t * 128, (b.t * 128).round()) and (b.k == 7).all() and b.num_bootstrap == 0
    assert torch.equal(b.y, y) if p == 0.0 else (b.y == NULL).all()


def test_reflow_targets_bad_input(gen, device):
    x1, y = _data(4, gen, device)
    with pytest.raises(ValueError, match="x0 must match x1"):
        reflow_targets(x1[:3], x1, y, null_label=NULL)
    with pytest.raises(ValueError, match="null_label is needed"):
        reflow_targets(x1, x1, y)
    with pytest.raises(ValueError, match="y must be an int64 tensor of shape"):
        reflow_pairs(Field(), y.float(), (1, 2, 2))
    with pytest.raises(ValueError, match="shape must be one item's shape"):
        reflow_pairs(Field(), y, (1, 0))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        reflow_pairs(Field(), y, (1, 2, 2), batch_size=0)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        reflow_pairs(Field(), y, (1, 2, 2), steps=0)


# ---------------------------------------------------------------- samplers

def test_consistency_sample_renoises(device):
    """v = c: at t = 0 x1_pred = x0 + c, re-noised to x0/2 + c/2 + ε/2; at t = 1/2 x1_pred = x + c/2, the
    output (the last step adds no noise). Euler would give x0 + c."""
    noise = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(1)).to(device)
    out, traj = consistency_sample(Field(c=0.4).to(device), noise, 2, generator=torch.Generator().manual_seed(9),
                                   return_trajectory=True)
    eps = torch.randn(noise.shape, generator=torch.Generator().manual_seed(9)).to(device)
    torch.testing.assert_close(out, noise / 2 + eps / 2 + 0.4)
    assert len(traj) == 3 and torch.equal(traj[0], noise) and torch.equal(traj[-1], out)
    one = consistency_sample(Field(c=0.4, e=0.1).to(device), noise, 1, y=torch.full((3,), 2, device=device),
                             cfg_scale=3.0)
    torch.testing.assert_close(one, noise + 0.4 + _guided(0.1, torch.tensor(2), 3.0).item())


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_consistency_sample_any_steps_with_the_exact_field(steps, gen, device):
    z = torch.randn(1, 1, 2, 2, generator=gen, dtype=torch.float64).to(device)
    noise = torch.randn(4, 1, 2, 2, generator=gen, dtype=torch.float64).to(device)
    model = Oracle(z)
    out = consistency_sample(model, noise, steps, generator=gen)
    assert (out - z).abs().max() < 1e-4                                              # z + σ·(implied noise)
    assert len(model.calls) == steps and (model.calls[0]["k"] == steps.bit_length() - 1).all()
    torch.testing.assert_close(torch.stack([c["t"][0] for c in model.calls]).double(),
                               torch.arange(steps, device=device).double() / steps)


def test_euler_sample_fixed_level(device):
    noise = torch.randn(2, 3, device=device)
    model = Field(c=0.5)
    torch.testing.assert_close(euler_sample(model, noise, 5), noise + 0.5)
    assert len(model.calls) == 5 and all((c["k"] == 2).all() for c in model.calls)   # floor(log2 5)
    model.calls.clear()
    euler_sample(model, noise, 4, level=0)
    assert all((c["k"] == 0).all() for c in model.calls)


@pytest.mark.parametrize("objective,steps,level", [("live_reflow", 4, 0), ("live_reflow", 128, 7),
                                                   ("progressive", 3, 1), ("reflow", 128, 7),
                                                   ("consistency_distillation", 1, 0)])
def test_sample_objective_euler_levels(objective, steps, level, device):
    model, noise = Field(c=0.5), torch.randn(2, 3, device=device)
    torch.testing.assert_close(sample_objective(objective, model, noise, steps), noise + 0.5)
    assert len(model.calls) == steps and all((c["k"] == level).all() for c in model.calls)


def test_sample_objective_consistency_is_the_renoising_sampler(device):
    noise = torch.randn(2, 3, device=device)
    a = sample_objective("consistency_training", Field(c=0.5), noise, 3, generator=torch.Generator().manual_seed(2))
    b = consistency_sample(Field(c=0.5), noise, 3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, noise + 0.5), "re-noising differs from Euler"


def test_sampler_bad_input(device):
    noise = torch.randn(2, 3, device=device)
    for steps in (0, 1.5, True):
        with pytest.raises(ValueError, match="steps must be a positive int"):
            consistency_sample(Field(), noise, steps)
        with pytest.raises(ValueError, match="steps must be a positive int"):
            euler_sample(Field(), noise, steps)
    for steps in (0, 129):
        with pytest.raises(ValueError, match=r"steps must be an int in \[1, 128\]"):
            sample_objective("reflow", Field(), noise, steps)
    with pytest.raises(ValueError, match="noise must be a floating-point"):
        consistency_sample(Field(), noise.long(), 2)
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        consistency_sample(Field(), noise, 2, generator=0)
    with pytest.raises(ValueError, match="y must be an int64"):
        consistency_sample(Field(), noise, 2, y=torch.zeros(3, dtype=torch.long, device=device))
    with pytest.raises(ValueError, match="unknown baseline objective 'flowish'"):
        sample_objective("flowish", Field(), noise, 2)


# ---------------------------------------------------------------- the table, the dispatcher, devices, dtypes

def test_objectives_table():
    assert set(OBJECTIVES) == {"progressive", "consistency_distillation", "consistency_training", "live_reflow",
                               "reflow"}
    assert [n for n, o in OBJECTIVES.items() if not o["ignore_k"]] == ["live_reflow"]   # official ignore_dt
    assert {n for n, o in OBJECTIVES.items() if o["needs_teacher"]} == {"progressive", "consistency_distillation",
                                                                         "reflow"}
    assert {o["sampler"] for o in OBJECTIVES.values()} <= {"euler", "consistency", "live_reflow"}
    assert OBJECTIVES["consistency_training"]["sampler"] == "consistency"
    assert {n for n, o in OBJECTIVES.items() if o["scheduled"]} == {"progressive", "consistency_training"}


def test_baseline_targets_names_missing_arguments(gen, device):
    x1, y = _data(4, gen, device)
    for objective, match in [("progressive", "teacher"), ("consistency_distillation", "teacher"),
                             ("consistency_training", "ema"), ("live_reflow", "model"), ("reflow", "x0")]:
        with pytest.raises(ValueError, match=f"objective '{objective}' needs {match}="):
            baseline_targets(objective, x1, y, generator=gen)
    with pytest.raises(ValueError, match="needs step="):
        baseline_targets("consistency_training", x1, y, ema=Field(), generator=gen)
    with pytest.raises(ValueError, match="unknown baseline objective 'shortcut'"):
        baseline_targets("shortcut", x1, y)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objective_trains_a_real_model(objective, gen, device):
    """ShortcutMLP (non-zero outputs): fields on the data's device with the right shapes and dtypes, targets
    without grad, every network's mode restored, and shortcut_loss back-propagates finite gradients."""
    torch.manual_seed(0)
    model = ShortcutMLP(dim=4, hidden=16, depth=1, num_classes=NULL).to(device).train()
    ema, teacher = copy_teacher(model), copy_teacher(model)
    x1 = torch.randn(16, 4, generator=gen).to(device)
    y = torch.randint(0, NULL, (16,), generator=gen).to(device)
    x0 = torch.randn(16, 4, generator=gen).to(device)
    b = baseline_targets(objective, x1, y, model=model, ema=ema, teacher=teacher, step=3, total_steps=70, x0=x0,
                         cfg=ObjectiveConfig(bootstrap_fraction=0.25), generator=gen)
    for name, dtype in [("x_t", torch.float32), ("t", torch.float32), ("k", torch.long), ("y", torch.long),
                        ("v", torch.float32)]:
        f = getattr(b, name)
        assert f.device == x1.device and f.dtype == dtype and f.shape[0] == 16, name
    assert b.x_t.shape == b.v.shape == x1.shape and not b.v.requires_grad and torch.isfinite(b.v).all()
    assert model.training and not ema.training and not teacher.training
    loss, parts = shortcut_loss(model, b)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert ("loss_bootstrap" in parts) == (b.num_bootstrap > 0) and ("loss_flow" in parts) == (b.num_bootstrap < 16)


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_targets_keep_the_data_dtype(objective, gen, device):
    x1, y = _data(16, gen, device, dtype=torch.float16)
    b = baseline_targets(objective, x1, y, model=Field(a=0.1), ema=Field(a=0.2), teacher=Field(a=0.3), step=0,
                         total_steps=7, x0=torch.randn(x1.shape, generator=gen).to(device, torch.float16),
                         generator=gen)
    assert b.v.dtype == torch.float16 and torch.isfinite(b.v).all()


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_targets_reject_bad_data(objective, gen, device):
    x1, y = _data(4, gen, device)
    nets = dict(model=Field(), ema=Field(), teacher=Field(), step=0, total_steps=7, x0=x1)
    with pytest.raises(ValueError, match="x1 must be a floating-point"):
        baseline_targets(objective, x1.long(), y, **nets)
    with pytest.raises(ValueError, match=r"y must be an int64 tensor of shape \(4,\)"):
        baseline_targets(objective, x1, y[:3], **nets)
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        baseline_targets(objective, x1, y, generator="seed", **nets)


def test_same_generator_same_batch(gen, device):
    x1, y = _data(8, gen, device)
    a, b = [consistency_training_targets(Field(a=0.2), x1, y, 40, 70, generator=torch.Generator().manual_seed(4))
            for _ in range(2)]
    assert torch.equal(a.x_t, b.x_t) and torch.equal(a.v, b.v)
