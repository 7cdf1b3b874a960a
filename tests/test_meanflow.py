"""MeanFlow (shortcut/meanflow.py) pinned by closed forms in our convention (s = 0 noise, h the jump toward data):
the JVP tangent against finite differences, the MeanFlow identity on exact average-velocity fields, the (s, h)
sampling statistics, the adaptive weight, gradients through u only, guidance and label dropout, the sampler,
and ShortcutMLP / ShortcutDiT with a float interval input."""
import math

import pytest
import torch
import torch.nn as nn

from shortcut import ModelConfig, ShortcutDiT, ShortcutMLP
from shortcut.meanflow import (MeanFlowConfig, adaptive_weight, meanflow_batch_loss, meanflow_inputs, meanflow_loss,
                               meanflow_sample, meanflow_target, sample_interval)

A = 1 - 1e-5     # 1 − sigma_min
NULL = 10


def col(v, like):
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class GaussianField(nn.Module):
    """The exact average velocity when the data is N(mu, sd²·I) in 2-D: the flow keeps z-scores, so
    x_e = m(e) + σ(e)/σ(s)·(x − m(s)) with m(s) = s·mu, σ(s)² = (1 − A·s)² + s²·sd²; u = (x_{s+h} − x)/h,
    and at h = 0 the marginal velocity v = m' + σ'/σ·(x − m)."""
    null_label = NULL

    def __init__(self, mu, sd):
        super().__init__()
        self.mu, self.sd = mu, sd

    def m(self, s):
        return s[:, None] * self.mu

    def sig(self, s):
        return torch.sqrt((1 - A * s) ** 2 + s ** 2 * self.sd ** 2)[:, None]

    def velocity(self, x, s):
        dsig = (-A * (1 - A * s) + s * self.sd ** 2)[:, None] / self.sig(s)
        return self.mu + dsig / self.sig(s) * (x - self.m(s))

    def flow(self, x, s, e):
        return self.m(e) + self.sig(e) / self.sig(s) * (x - self.m(s))

    def forward(self, x, s, h, y):
        s, h = s.to(x.dtype), h.to(x.dtype)
        hs = torch.where(h > 0, h, torch.ones_like(h))     # no 0/0 in the branch not taken
        avg = (self.flow(x, s, s + hs) - x) / hs[:, None]
        return torch.where((h > 0)[:, None], avg, self.velocity(x, s))


class PointField(nn.Module):
    """The exact field when the data is the single point z: straight paths, u = z − A·(x − s·z)/(1 − A·s) for
    every h (the conditional velocity equals the marginal one, so the MeanFlow loss is zero)."""
    null_label = NULL

    def __init__(self, z):
        super().__init__()
        self.z = z

    def forward(self, x, s, h, y):
        s = col(s, x)
        return self.z - A * (x - s * self.z) / (1 - A * s)


class Smooth(nn.Module):
    """A generic smooth u(x, s, h) (tanh MLP on [x, s, h]) for the finite-difference check."""
    null_label = NULL

    def __init__(self, dim, gen):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(dim + 2, 16, generator=gen, dtype=torch.float64))
        self.w2 = nn.Parameter(torch.randn(16, dim, generator=gen, dtype=torch.float64) / 4)

    def forward(self, x, s, h, y):
        f = torch.cat([x.flatten(1), s[:, None].to(x.dtype), h[:, None].to(x.dtype)], 1)
        return (torch.tanh(f @ self.w1) @ self.w2).view_as(x)


class Linear(nn.Module):
    """u = a·x + b·s + c·h + e·(y + 1) with scalar parameters: du/ds along (v, 1, −1) is a·v + b − c."""
    null_label = NULL

    def __init__(self, a=0.3, b=-0.5, c=0.8, e=0.0):
        super().__init__()
        self.a, self.b, self.c = (nn.Parameter(torch.tensor(v)) for v in (a, b, c))
        self.e = e
        self.calls = []

    def forward(self, x, s, h, y):
        self.calls.append({"training": self.training, "grad": torch.is_grad_enabled(), "s": s.clone(),
                           "h": h.clone(), "y": y.clone()})
        return (self.a * x + self.b * col(s, x) + self.c * col(h, x) + self.e * col(y + 1, x)).to(x.dtype)


# ---------------------------------------------------------------------------------------------------------------
def test_config_defaults_and_errors():
    cfg = MeanFlowConfig()
    assert (cfg.flow_fraction, cfg.time_dist, cfg.P_mean, cfg.P_std) == (0.75, "logit_normal", -0.4, 1.0)
    assert (cfg.norm_p, cfg.norm_eps, cfg.class_dropout_prob, cfg.jvp) == (1.0, 0.01, 0.1, "joint")
    assert not cfg.guided and cfg.effective_guidance == 1.0
    assert MeanFlowConfig(cfg_omega=1.0, cfg_kappa=0.5).effective_guidance == pytest.approx(2.0)
    for kw, field in [(dict(flow_fraction=1.5), "flow_fraction"), (dict(class_dropout_prob=-0.1), "class_dropout"),
                      (dict(time_dist="normal"), "time_dist"), (dict(P_std=0.0), "P_std"),
                      (dict(norm_eps=0.0), "norm_eps"), (dict(norm_p=-1.0), "norm_p"),
                      (dict(cfg_kappa=1.0), "cfg_kappa"), (dict(cfg_omega=0.0), "cfg_omega"),
                      (dict(cfg_s_range=(0.8, 0.2)), "cfg_s_range"), (dict(P_mean=float("nan")), "P_mean"),
                      (dict(jvp="forward"), "jvp")]:
        with pytest.raises(ValueError, match=field):
            MeanFlowConfig(**kw)


def test_interval_sampling_statistics(gen, device):
    n = 40000
    s, h = sample_interval(n, MeanFlowConfig(), gen, device)
    assert s.device.type == device.type and s.dtype == h.dtype == torch.float32
    nf = int(n * 0.75)
    assert (h[:nf] == 0).all() and (h[nf:] > 0).all(), "the first 75 % have h = 0, the rest h > 0"
    e = s + h
    assert (s > 0).all() and (e < 1 + 1e-6).all()
    logit = lambda p: torch.log(p / (1 - p)).double().cpu()   # noqa: E731
    # h > 0: {logit s, logit(s + h)} are the two N(+0.4, 1) draws (the paper's -0.4 in t = 1 − s), sorted.
    both = logit(s[nf:]) + logit(e[nf:])
    assert abs(both.mean() - 0.8) < 0.06 and abs(both.var() - 2.0) < 0.12
    assert (s[nf:] < e[nf:]).all()
    # h = 0: s is the smaller of two draws (paper: t the larger), E = 0.4 − 1/√π.
    assert abs(logit(s[:nf]).mean() - (0.4 - 1 / math.sqrt(math.pi))) < 0.03
    # uniform: order statistics of two U(0, 1): E s = 1/3, E(s + h) = 2/3.
    s, h = sample_interval(n, MeanFlowConfig(time_dist="uniform", flow_fraction=0.0), gen, device)
    assert abs(s.mean().item() - 1 / 3) < 0.01 and abs((s + h).mean().item() - 2 / 3) < 0.01


def test_adaptive_weight_values():
    sq = torch.tensor([0.99, 3.0, 0.0], requires_grad=True)
    torch.testing.assert_close(adaptive_weight(sq, 1.0, 0.01), torch.tensor([1.0, 1 / 3.01, 100.0]))
    torch.testing.assert_close(adaptive_weight(sq, 0.5, 1.0), torch.tensor([1 / math.sqrt(1.99), 0.5, 1.0]))
    torch.testing.assert_close(adaptive_weight(sq, 0.0, 0.01), torch.ones(3))
    assert not adaptive_weight(sq, 1.0, 0.01).requires_grad, "the weight is stop-gradient"


@pytest.mark.parametrize("jvp", ["joint", "separate"])
def test_jvp_target_equals_finite_difference(jvp, gen, device):
    """u_tgt = v + h·du/ds with du/ds the derivative along x → x + ε·v, s → s + ε, h → h − ε (end point fixed)."""
    B, D = 6, 3
    model = Smooth(D, gen).to(device)
    x = torch.randn(B, D, generator=gen, dtype=torch.float64).to(device)
    v = torch.randn(B, D, generator=gen, dtype=torch.float64).to(device)
    s = (torch.rand(B, generator=gen, dtype=torch.float64) * 0.5).to(device)
    h = (torch.rand(B, generator=gen, dtype=torch.float64) * 0.4 + 0.05).to(device)
    y = torch.zeros(B, dtype=torch.long, device=device)
    u, u_tgt = meanflow_target(model, x, s, h, y, v, jvp)
    eps = 1e-6
    with torch.no_grad():
        fd = (model(x + eps * v, s + eps, h - eps, y) - model(x - eps * v, s - eps, h + eps, y)) / (2 * eps)
    torch.testing.assert_close(u, model(x, s, h, y), rtol=0, atol=0)
    torch.testing.assert_close(u_tgt, v + h[:, None] * fd, rtol=1e-7, atol=1e-8)
    assert u.requires_grad and not u_tgt.requires_grad


def test_identity_on_exact_gaussian_field(gen, device):
    """On the exact average velocity of Gaussian data, with the marginal velocity as tangent, the target is u."""
    mu = torch.tensor([0.7, -0.3], dtype=torch.float64, device=device)
    model = GaussianField(mu, 0.4)
    B = 16
    x = torch.randn(B, 2, generator=gen, dtype=torch.float64).to(device)
    s = (torch.rand(B, generator=gen, dtype=torch.float64) * 0.9).to(device)
    h = (torch.rand(B, generator=gen, dtype=torch.float64) * (1 - s.cpu())).to(device)
    h[:4] = 0.0
    y = torch.zeros(B, dtype=torch.long, device=device)
    u, u_tgt = meanflow_target(model, x, s, h, y, model.velocity(x, s))
    torch.testing.assert_close(u_tgt, u, rtol=0, atol=1e-12)
    assert (u[4:] - model.velocity(x, s)[4:]).abs().max() > 0.05, "u depends on h: the check can fail"


def test_loss_vanishes_on_exact_point_field(gen, device):
    z = torch.tensor([0.5, -1.0, 0.25, 2.0], dtype=torch.float64, device=device).view(1, 1, 2, 2)
    B = 64
    x1 = z.expand(B, 1, 2, 2).contiguous()
    y = torch.randint(0, NULL, (B,), generator=gen).to(device)
    for p in (0.0, 1.0):
        loss, parts = meanflow_loss(PointField(z), x1, y, MeanFlowConfig(norm_p=p), generator=gen)
        assert loss.item() < 1e-18 and parts["mse"].item() < 1e-20
    loss, parts = meanflow_loss(PointField(1.01 * z), x1, y, MeanFlowConfig(norm_p=0.0), generator=gen)
    assert loss.item() > 1e-4, "a wrong field is not at zero loss"
    assert set(parts) == {"mse", "loss_flow", "mse_flow", "loss_interval", "mse_interval"}


@pytest.mark.parametrize("norm_p", [0.0, 1.0])
def test_gradients_flow_through_u_only(norm_p, gen, device):
    """Linear field: the loss gradient is the hand formula with the target and the weight held constant."""
    cfg = MeanFlowConfig(norm_p=norm_p, class_dropout_prob=0.0)
    B = 32
    x1 = torch.randn(B, 1, 2, 2, generator=gen).to(device)
    y = torch.randint(0, NULL, (B,), generator=gen).to(device)
    model = Linear().to(device)
    batch = meanflow_inputs(model, x1, y, cfg, gen)
    grads = {}
    for jvp in ("joint", "separate"):
        model.zero_grad()
        loss, _ = meanflow_batch_loss(model, batch, MeanFlowConfig(norm_p=norm_p, jvp=jvp))
        loss.backward()
        grads[jvp] = [p.grad.clone() for p in (model.a, model.b, model.c)]
    with torch.no_grad():
        x, s, h, v = batch.x_s, col(batch.s, x1), col(batch.h, x1), batch.v
        u = model.a * x + model.b * s + model.c * h
        tgt = v + h * (model.a * v + model.b - model.c)
        r = u - tgt
        w = (r.pow(2).flatten(1).sum(1) + cfg.norm_eps).pow(-norm_p).view(-1, 1, 1, 1)
        want = [(2 * w * r * d).flatten(1).sum(1).mean() for d in (x, s.expand_as(x), h.expand_as(x))]
    for jvp in ("joint", "separate"):
        for g, ref in zip(grads[jvp], want):
            torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)
    assert abs(want[2].item()) > 1e-3, "the h gradient is exercised"


def test_guidance_and_label_dropout(gen, device):
    B, w, k = 200, 1.5, 0.3
    x1 = torch.randn(B, 1, 2, 2, generator=gen).to(device)
    y = torch.randint(0, NULL, (B,), generator=gen).to(device)
    model = Linear(e=0.2).to(device)
    cfg = MeanFlowConfig(cfg_omega=w, cfg_kappa=k, cfg_s_range=(0.2, 0.9), class_dropout_prob=0.25)
    g2 = torch.Generator().manual_seed(7)
    batch = meanflow_inputs(model, x1, y, cfg, g2)
    # the same draws without guidance give the plain velocity
    plain = meanflow_inputs(model, x1, y, MeanFlowConfig(cfg_s_range=(0.2, 0.9), class_dropout_prob=0.25),
                            torch.Generator().manual_seed(7))
    torch.testing.assert_close(batch.x_s, plain.x_s)
    dropped = batch.y == NULL
    n_drop = int(dropped.sum())
    assert 20 < n_drop < 80 and dropped[:n_drop].all(), "a Binomial count of the FIRST items is dropped"
    guided = ~dropped & (batch.s >= 0.2) & (batch.s <= 0.9)
    assert 0 < int(guided.sum()) < B - n_drop
    with torch.no_grad():
        zero = torch.zeros_like(batch.s)
        u_c = model(batch.x_s, batch.s, zero, batch.y)
        u_u = model(batch.x_s, batch.s, zero, torch.full_like(batch.y, NULL))
    want = torch.where(col(guided, x1).bool(), w * plain.v + k * u_c + (1 - w - k) * u_u, plain.v)
    torch.testing.assert_close(batch.v, want)
    assert (batch.v - plain.v).abs().max() > 0.1
    call = model.calls[0]
    assert not call["training"] and not call["grad"] and (call["h"] == 0).all(), "guidance: eval, no grad, h = 0"
    assert model.training, "training mode restored"


def test_guidance_kappa_zero_is_one_unconditional_forward(gen, device):
    x1 = torch.randn(16, 2, generator=gen).to(device)
    y = torch.randint(0, NULL, (16,), generator=gen).to(device)
    model = Linear(e=0.2).to(device)
    meanflow_inputs(model, x1, y, MeanFlowConfig(cfg_omega=2.0, class_dropout_prob=0.0), gen)
    assert len(model.calls) == 1 and (model.calls[0]["y"] == NULL).all()
    model.calls.clear()
    meanflow_inputs(model, x1, y, MeanFlowConfig(), gen)
    assert not model.calls, "no guidance: the model is not called"


@pytest.mark.parametrize("steps", [1, 3, 128])
def test_sampler_on_exact_field(steps, gen, device):
    """Exact average velocities make any number of equal intervals exact: x1 = Φ_{0→1}(x0), x_i = Φ_{0→i/N}(x0)."""
    mu = torch.tensor([0.7, -0.3], dtype=torch.float64, device=device)
    model = GaussianField(mu, 0.4)
    x0 = torch.randn(32, 2, generator=gen, dtype=torch.float64).to(device)
    x, traj = meanflow_sample(model, x0, steps, return_trajectory=True)
    zero = torch.zeros(32, dtype=torch.float64, device=device)
    torch.testing.assert_close(x, model.flow(x0, zero, zero + 1), rtol=0, atol=1e-10)
    assert len(traj) == steps + 1
    i = steps // 2
    torch.testing.assert_close(traj[i], model.flow(x0, zero, zero + i / steps), rtol=0, atol=1e-10)


def test_sampler_inputs_and_errors(gen, device):
    model = Linear(e=0.1).to(device)
    noise = torch.randn(4, 2, generator=gen).to(device)
    y = torch.tensor([0, 1, 2, 3], device=device)
    meanflow_sample(model, noise, 3, y=y)
    torch.testing.assert_close(torch.stack([c["s"] for c in model.calls]).cpu(),
                               torch.tensor([0.0, 1 / 3, 2 / 3]).repeat_interleave(4).view(3, 4))
    assert all((c["h"] == 1 / 3).all() and (c["y"] == y).all() and not c["grad"] for c in model.calls)
    model.calls.clear()
    meanflow_sample(model, noise, 1)
    assert (model.calls[0]["y"] == NULL).all(), "y=None samples with the null label"
    for bad in (0, 129, 2.0, True):
        with pytest.raises(ValueError, match="steps"):
            meanflow_sample(model, noise, bad)
    with pytest.raises(ValueError, match="noise"):
        meanflow_sample(model, noise.long(), 1)


def test_inputs_errors(gen, device):
    model = Linear().to(device)
    x1 = torch.randn(4, 2, generator=gen).to(device)
    with pytest.raises(ValueError, match="y must"):
        meanflow_loss(model, x1, torch.zeros(3, dtype=torch.long, device=device), generator=gen)
    with pytest.raises(ValueError, match="x1 must"):
        meanflow_loss(model, x1.long(), torch.zeros(4, dtype=torch.long, device=device), generator=gen)
    with pytest.raises(ValueError, match="null_label"):
        meanflow_loss(nn.Identity(), x1, torch.zeros(4, dtype=torch.long, device=device), generator=gen)
    with pytest.raises(ValueError, match="jvp"):
        meanflow_target(model, x1, x1[:, 0], x1[:, 0], torch.zeros(4, dtype=torch.long, device=device), x1, "fwd")


class IntervalMLP(nn.Module):
    """ShortcutMLP with the interval h in place of its step input, scaled like t (its sinusoids see 1000·t)."""

    def __init__(self, **kw):
        super().__init__()
        self.net = ShortcutMLP(**kw)
        self.null_label = self.net.null_label

    def forward(self, x, s, h, y):
        return self.net(x, s, 1000 * h, y)


class IntervalDiT(nn.Module):
    """ShortcutDiT with a float interval h as its step input, through its public pieces, because its forward
    checks that k is an integer level. model.py needs ModelConfig.step_input = "interval": accept float k and
    embed it like t (k_embedder scale t_scale instead of 1)."""

    def __init__(self, dit):
        super().__init__()
        self.dit = dit
        self.null_label = dit.null_label

    def forward(self, x, s, h, y):
        d = self.dit
        return d.forward_with_modulations(x, d.modulations(*d.embed(s, h * d.cfg.t_scale, y, silu=True)))


def test_with_shortcut_mlp(gen, device):
    torch.manual_seed(0)
    model = IntervalMLP(dim=2, hidden=32, depth=2, num_classes=3).to(device)
    x1 = torch.randn(16, 2, generator=gen).to(device)
    y = torch.randint(0, 3, (16,), generator=gen).to(device)
    loss, parts = meanflow_loss(model, x1, y, MeanFlowConfig(cfg_omega=1.5, cfg_kappa=0.2), generator=gen)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
    assert model.net.inp.weight.grad.abs().sum() > 0
    for steps in (1, 5):
        out = meanflow_sample(model, torch.randn(4, 2, generator=gen).to(device), steps, y=y[:4])
        assert out.shape == (4, 2) and torch.isfinite(out).all()


def _tiny_dit(gen, device, dtype=torch.float32):
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=1, num_classes=NULL, adaln_init="xavier")
    dit = ShortcutDiT(cfg, kernels="torch", attention="torch")
    with torch.no_grad():      # non-zero outputs: re-draw the zero-initialised final layer
        dit.final_layer.linear.weight.normal_(std=0.2, generator=gen)
        dit.final_layer.adaLN_modulation[1].weight.normal_(std=0.1, generator=gen)
    return IntervalDiT(dit).to(device=device, dtype=dtype)


def test_with_shortcut_dit_jvp_and_modes(gen, device):
    """Tiny DiT (torch kernels and attention): the forward-mode JVP target equals one built from reverse mode
    (torch.autograd.functional.jvp, the double-backward trick); joint and separate JVP give the same loss and
    gradients. (Finite differences are useless here: the sinusoids see 1000·s in fp32.)"""
    model = _tiny_dit(gen, device)
    B = 3
    x = torch.randn(B, 1, 8, 8, generator=gen).to(device)
    v = torch.randn(B, 1, 8, 8, generator=gen).to(device)
    s = torch.tensor([0.1, 0.4, 0.7], device=device)
    h = torch.tensor([0.5, 0.2, 0.0], device=device)
    y = torch.tensor([1, 4, NULL], device=device)
    u, u_tgt = meanflow_target(model, x, s, h, y, v)
    tangents = (v, torch.ones_like(s), -torch.ones_like(h))
    _, du = torch.autograd.functional.jvp(lambda *a: model(*a, y), (x, s, h), tangents)
    assert du[:2].abs().max() > 1e-2
    ref = v + col(h, v) * du
    torch.testing.assert_close(u_tgt, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())

    x1 = torch.randn(8, 1, 8, 8, generator=gen).to(device)
    y = torch.randint(0, NULL, (8,), generator=gen).to(device)
    batch = meanflow_inputs(model, x1, y, MeanFlowConfig(), gen)
    out = {}
    for jvp in ("joint", "separate"):
        model.zero_grad()
        loss, parts = meanflow_batch_loss(model, batch, MeanFlowConfig(jvp=jvp))
        loss.backward()
        out[jvp] = (loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(out["joint"][0], out["separate"][0])
    assert len(out["joint"][1]) == len(out["separate"][1]) > 10
    for a, b in zip(out["joint"][1], out["separate"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for steps in (1, 3):
        assert meanflow_sample(model, torch.randn(2, 1, 8, 8, generator=gen).to(device), steps).shape == (2, 1, 8, 8)
