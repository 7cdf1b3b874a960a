"""The shortcut objective pinned to SPEC §1: split, levels, t grid, bootstrap targets, clipping, dropout."""
import math

import pytest
import torch
import torch.nn as nn

from shortcut import ObjectiveConfig, ShortcutMLP, shortcut_loss, shortcut_targets
from shortcut.objective import bootstrap_levels, interpolate


class LinearField(nn.Module):
    """A model with a closed-form velocity: v = (k + 1)·x + t + 0.1·y, recording how it was called."""
    null_label = 10

    def __init__(self, gain=1.0):
        super().__init__()
        self.gain = gain
        self.p = nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, t, k, y):
        self.calls.append({"training": self.training, "grad": torch.is_grad_enabled(), "k": k.clone(),
                           "y": y.clone(), "t": t.clone()})
        s = lambda v: v.view(-1, *([1] * (x.dim() - 1))).float()   # noqa: E731
        return self.gain * ((s(k) + 1) * x + s(t) + 0.1 * s(y)) + 0 * self.p


def _data(B, gen, shape=(1, 4, 4), device="cpu"):
    """Data and labels on `device`, drawn from the CPU generator (as the trainer's data comes)."""
    return torch.randn(B, *shape, generator=gen).to(device), torch.randint(0, 10, (B,), generator=gen).to(device)


@pytest.mark.parametrize("B,frac", [(8, 0.125), (8, 0.25), (32, 0.125), (32, 0.25), (256, 0.125), (256, 0.25)])
def test_level_spread(B, frac, gen, device):
    cfg = ObjectiveConfig(bootstrap_fraction=frac)
    x1, y = _data(B, gen, device=device)
    batch = shortcut_targets(LinearField(), x1, y, cfg, generator=gen)
    nb = int(B * frac)
    assert batch.num_bootstrap == nb
    kb = batch.k[:nb]
    assert ((kb >= 0) & (kb <= 6)).all()
    assert (batch.k[nb:] == 7).all(), "flow items are conditioned on the finest level log2 M"
    if nb >= 7:
        counts = torch.bincount(kb, minlength=7)
        per = nb // 7
        assert (counts[1:] == per).all() and counts[0] == per + nb - 7 * per   # leftovers at k = 0
    else:
        assert kb.unique().numel() == nb, "fewer items than levels: distinct random levels"


@pytest.mark.parametrize("B", [8, 32])
def test_all_levels_trained_at_small_batch(B, gen, device):
    """Official issue #11: with fewer bootstrap items than levels, every level must still be drawn."""
    cfg = ObjectiveConfig(bootstrap_fraction=0.125)
    seen = torch.zeros(7, dtype=torch.long, device=device)
    for _ in range(60):
        x1, y = _data(B, gen, device=device)
        b = shortcut_targets(LinearField(), x1, y, cfg, generator=gen)
        seen += torch.bincount(b.k[: b.num_bootstrap], minlength=7)
    assert (seen > 0).all(), f"levels never trained: {seen.tolist()}"


def test_bootstrap_levels_rejects_nothing_silently(gen, device):
    assert bootstrap_levels(14, 7, gen, device).tolist() == [6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0]
    assert bootstrap_levels(9, 7, gen, device).tolist() == [6, 5, 4, 3, 2, 1, 0, 0, 0]
    assert bootstrap_levels(3, 7, gen, device).device.type == torch.device(device).type


def test_t_on_level_grid(gen, device):
    cfg = ObjectiveConfig(bootstrap_fraction=0.25)
    x1, y = _data(256, gen, device=device)
    b = shortcut_targets(LinearField(), x1, y, cfg, generator=gen)
    nb = b.num_bootstrap
    steps = 2.0 ** b.k[:nb].float()
    grid = b.t[:nb] * steps
    assert torch.equal(grid, grid.round()) and (grid >= 0).all() and (grid < steps).all()
    tf = b.t[nb:] * 128
    assert torch.equal(tf, tf.round()) and (tf >= 0).all() and (tf <= 127).all()
    assert len(torch.unique(b.t[nb:])) > 20, "flow t should spread over the grid"


def test_flow_targets_and_interpolation(gen, device):
    """Flow items: x_t = (1 − (1 − 1e-5)t)x0 + t·x1 and v = x1 − (1 − 1e-5)x0, regenerating x0 from the seed."""
    cfg = ObjectiveConfig(bootstrap_fraction=0.25)
    x1, y = _data(16, gen, device=device)
    g1 = torch.Generator().manual_seed(5)
    b = shortcut_targets(LinearField(), x1, y, cfg, generator=g1)
    x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(5)).to(device)   # the objective's 1st draw
    nb = b.num_bootstrap
    torch.testing.assert_close(b.v[nb:], x1[nb:] - (1 - 1e-5) * x0[nb:])
    torch.testing.assert_close(b.x_t[nb:], interpolate(x0[nb:], x1[nb:], b.t[nb:]))
    torch.testing.assert_close(b.x_t[:nb], interpolate(x0[:nb], x1[:nb], b.t[:nb]))


def test_bootstrap_target_is_mean_of_two_half_steps(gen, device):
    cfg = ObjectiveConfig(bootstrap_fraction=0.5, clip=1e6)
    model = LinearField(gain=0.3)
    x1, y = _data(28, gen, device=device)
    b = shortcut_targets(model, x1, y, cfg, generator=gen)
    nb = b.num_bootstrap
    x, t, k, yb = b.x_t[:nb], b.t[:nb], b.k[:nb], b.y[:nb]
    col = lambda v: v.view(-1, 1, 1, 1).float()   # noqa: E731
    dh = col(0.5 ** k.float() / 2)
    v1 = 0.3 * ((col(k) + 2) * x + col(t) + 0.1 * col(yb))              # at level k + 1
    x2 = x + dh * v1
    v2 = 0.3 * ((col(k) + 2) * x2 + col(t) + dh + 0.1 * col(yb))
    torch.testing.assert_close(b.v[:nb], (v1 + v2) / 2)
    # The target network ran without grad, in eval mode, at level k + 1, with the true labels.
    assert all(not c["grad"] and not c["training"] for c in model.calls)
    assert torch.equal(model.calls[0]["k"], k + 1) and torch.equal(model.calls[0]["y"], y[:nb])
    assert model.training, "the model's mode is restored"


def test_bootstrap_clipping(gen, device):
    cfg = ObjectiveConfig(bootstrap_fraction=0.5, clip=4.0)
    model = LinearField(gain=100.0)
    x1, y = _data(16, gen, device=device)
    b = shortcut_targets(model, x1, y, cfg, generator=gen)
    nb = b.num_bootstrap
    assert b.v[:nb].abs().max() <= 4.0 and (b.v[:nb].abs() == 4.0).any()


def test_x2_is_clipped(gen, device):
    seen = {}

    class Recorder(LinearField):
        def forward(self, x, t, k, y):
            seen.setdefault("x", []).append(x.clone())
            return torch.full_like(x, 1e3)

    x1, y = _data(16, gen, device=device)
    shortcut_targets(Recorder(), x1, y, ObjectiveConfig(bootstrap_fraction=0.5), generator=gen)
    assert seen["x"][1].abs().max() <= 4.0


def test_label_dropout_rate(gen, device):
    cfg = ObjectiveConfig(bootstrap_fraction=0.25, class_dropout_prob=0.1)
    x1, y = _data(4096, gen, shape=(2,), device=device)
    b = shortcut_targets(LinearField(), x1, y, cfg, generator=gen)
    nb = b.num_bootstrap
    assert torch.equal(b.y[:nb], y[:nb]), "bootstrap items keep their true labels"
    dropped = (b.y[nb:] == 10).float().mean().item()
    assert abs(dropped - 0.1) < 0.02                    # binomial sd ≈ 0.005 at n = 3072
    kept = b.y[nb:] != 10
    assert torch.equal(b.y[nb:][kept], y[nb:][kept])


def test_flow_objective_has_no_bootstrap_items(gen, device):
    x1, y = _data(32, gen, device=device)
    model = LinearField()
    b = shortcut_targets(model, x1, y, ObjectiveConfig(objective="flow"), generator=gen)
    assert b.num_bootstrap == 0 and (b.k == 7).all() and not model.calls


def test_targets_come_from_the_given_network(gen, device):
    """The trainer passes the EMA network; the targets must depend on its weights only."""
    torch.manual_seed(0)
    live, ema = ShortcutMLP(hidden=32, depth=1).to(device), ShortcutMLP(hidden=32, depth=1).to(device)
    x1 = torch.randn(32, 2, generator=gen).to(device)
    y = torch.zeros(32, dtype=torch.long, device=device)
    cfg = ObjectiveConfig(bootstrap_fraction=0.5)
    b_ema = shortcut_targets(ema, x1, y, cfg, generator=torch.Generator().manual_seed(1))
    b_live = shortcut_targets(live, x1, y, cfg, generator=torch.Generator().manual_seed(1))
    nb = b_ema.num_bootstrap
    assert not torch.allclose(b_ema.v[:nb], b_live.v[:nb])
    torch.testing.assert_close(b_ema.v[nb:], b_live.v[nb:])   # flow targets do not use the network
    assert not b_ema.v.requires_grad


def test_bootstrap_cfg_guides_finest_level_only(gen, device):
    cfg = ObjectiveConfig(bootstrap_fraction=0.5, bootstrap_cfg=True, bootstrap_cfg_scale=1.5, clip=1e6)
    model = LinearField(gain=0.3)
    x1, y = _data(28, gen, device=device)
    b = shortcut_targets(model, x1, y, cfg, generator=gen)
    nb = b.num_bootstrap
    x, t, k, yb = b.x_t[:nb], b.t[:nb], b.k[:nb], b.y[:nb]
    fine = k == 6
    assert fine.any() and (~fine).any()
    # One forward over [all items; guided items with the null label].
    first = model.calls[0]
    assert first["y"].shape[0] == nb + int(fine.sum()) and (first["y"][nb:] == 10).all()
    col = lambda v: v.view(-1, 1, 1, 1).float()   # noqa: E731
    w = torch.where(fine, 1.5, 1.0).view(-1, 1, 1, 1)

    def v(x_, t_):   # guided where fine: v_u + w·(v_c − v_u)
        v_c = 0.3 * ((col(k) + 2) * x_ + col(t_) + 0.1 * col(yb))
        v_u = 0.3 * ((col(k) + 2) * x_ + col(t_) + 0.1 * 10)
        return v_u + w * (v_c - v_u)

    dh = 0.5 ** k.float() / 2
    v1 = v(x, t)
    v2 = v(x + col(dh) * v1, t + dh)
    torch.testing.assert_close(b.v[:nb], (v1 + v2) / 2)


def test_loss_parts(gen, device):
    model = ShortcutMLP(hidden=32, depth=1).to(device)
    x1 = torch.randn(16, 2, generator=gen).to(device)
    b = shortcut_targets(model, x1, torch.zeros(16, dtype=torch.long, device=device),
                         ObjectiveConfig(bootstrap_fraction=0.25), generator=gen)
    loss, parts = shortcut_loss(model, b)
    n = b.num_bootstrap
    expected = (n * parts["loss_bootstrap"] + (16 - n) * parts["loss_flow"]) / 16
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert model.inp.weight.grad is not None


@pytest.mark.parametrize("kwargs,match", [
    (dict(objective="score"), "objective"),
    (dict(denoise_timesteps=100), "power of two"),
    (dict(bootstrap_fraction=1.0), "bootstrap_fraction"),
    (dict(class_dropout_prob=-0.1), "class_dropout_prob"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ObjectiveConfig(**kwargs)


def test_bad_inputs(gen, device):
    x1, y = _data(8, gen, device=device)
    with pytest.raises(ValueError, match="y must be an int64 tensor of shape"):
        shortcut_targets(LinearField(), x1, y[:4], generator=gen)
    with pytest.raises(ValueError, match="y must be an int64"):
        shortcut_targets(LinearField(), x1, y.float(), generator=gen)
    with pytest.raises(ValueError, match="x1 must be a floating-point"):
        shortcut_targets(LinearField(), x1.long(), y, generator=gen)
    with pytest.raises(ValueError, match="null_label"):
        shortcut_targets(nn.Identity(), x1, y, generator=gen)
    assert math.isclose(ObjectiveConfig().max_level, 7)
