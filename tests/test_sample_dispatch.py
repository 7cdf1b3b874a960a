"""shortcut.sample picks the sampler of the model's objective (model.objective): each dispatch against the
function it stands for (baselines' euler_sample / consistency_sample, meanflow_sample), the schedules of
every objective at every step count, and the guidance rules that depend on the objective."""
import pytest
import torch
from conftest import redraw_zero_init

from shortcut import ShortcutMLP, sample
from shortcut.baselines import consistency_sample, euler_sample, live_reflow_level
from shortcut.meanflow import meanflow_sample
from shortcut.sampler import SAMPLERS, guidance_scales, objective_of, sampling_plan, schedule_for

UNIFORM = ("flow", "progressive", "consistency_distillation", "reflow")


def _mlp(gen, device, objective=None, ignore_k=False):
    """A small 2-D MLP (3 classes) with random weights: it reads t, k (ints or floats) and y."""
    torch.manual_seed(0)
    model = redraw_zero_init(ShortcutMLP(hidden=32, depth=2, num_classes=3, ignore_k=ignore_k), gen).eval()
    model.objective = objective
    return model.to(device)


def _inputs(gen, device, B=6):
    noise = torch.randn(B, 2, generator=gen).to(device)
    return noise, (torch.arange(B) % 4).to(device)   # labels 0, 1, 2 and the null label 3


def _differs(a, b):
    return (a - b).abs().max().item() > 1e-3


def test_objective_of_defaults_and_errors(gen, device):
    assert objective_of(_mlp(gen, device)) == "shortcut"
    assert objective_of(_mlp(gen, device, ignore_k=True)) == "flow"
    for name in SAMPLERS:
        assert objective_of(_mlp(gen, device, name)) == name
    with pytest.raises(ValueError, match="model.objective must be one of"):
        objective_of(_mlp(gen, device, "diffusion"))
    with pytest.raises(ValueError, match="model.objective must be one of"):
        sample(_mlp(gen, device, "diffusion"), torch.zeros(2, 2, device=device))


@pytest.mark.parametrize("objective", UNIFORM)
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_uniform_objectives_are_equal_euler_steps(objective, steps, gen, device):
    model = _mlp(gen, device, objective)          # k is read: the level must be euler_sample's too
    noise, y = _inputs(gen, device)
    out, traj = sample(model, noise, steps, y=y, return_trajectory=True)
    torch.testing.assert_close(out, euler_sample(model, noise, steps, y), rtol=1e-6, atol=1e-6)
    assert len(traj) == steps + 1 and traj[0] is noise
    if steps == 3:   # the shortcut schedule (1/2, 1/4, 1/4) is another sampler
        model.objective = None
        assert _differs(out, sample(model, noise, steps, y=y))


@pytest.mark.parametrize("steps", [1, 3, 128])
def test_live_reflow_steps_at_its_level(steps, gen, device):
    model = _mlp(gen, device, "live_reflow")
    noise, y = _inputs(gen, device)
    ref = euler_sample(model, noise, steps, y, level=live_reflow_level(steps))
    torch.testing.assert_close(sample(model, noise, steps, y=y), ref, rtol=1e-6, atol=1e-6)
    assert [k for _, _, k in schedule_for(model, steps)] == [7 if steps == 128 else 0] * steps
    if steps == 3:
        assert _differs(ref, euler_sample(model, noise, steps, y))   # level 1 (log2 3) would differ


@pytest.mark.parametrize("steps", [1, 3, 6])
def test_consistency_training_resamples_noise(steps, gen, device):
    model = _mlp(gen, device, "consistency_training")
    noise, y = _inputs(gen, device)
    out = sample(model, noise, steps, y=y, generator=torch.Generator().manual_seed(5))
    ref = consistency_sample(model, noise, steps, y, 1.0, torch.Generator().manual_seed(5))
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    # generator=None: a generator seeded 0, so a call repeats.
    default = sample(model, noise, steps, y=y)
    torch.testing.assert_close(default, sample(model, noise, steps, y=y), rtol=0, atol=0)
    torch.testing.assert_close(default, consistency_sample(model, noise, steps, y, 1.0, torch.Generator().manual_seed(0)),
                               rtol=1e-6, atol=1e-6)
    if steps > 1:
        assert _differs(out, default), "another generator re-noises differently"
        model.objective = "flow"
        assert _differs(out, sample(model, noise, steps, y=y))
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        sample(model, noise, steps, generator=5)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_meanflow_equal_intervals(steps, gen, device):
    model = _mlp(gen, device, "meanflow")
    noise, y = _inputs(gen, device)
    out = sample(model, noise, steps, y=y)
    torch.testing.assert_close(out, meanflow_sample(model, noise, steps, y), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sample(model, noise, steps, y=y, cfg_scale=1.0), out, rtol=0, atol=0)
    assert schedule_for(model, steps) == [(i / steps, 1 / steps, 1 / steps) for i in range(steps)]
    if steps == 1:   # one step: z ← z + u(z, 0, 1)
        t0, h = torch.zeros(6, device=device), torch.ones(6, device=device)
        torch.testing.assert_close(out, noise + model(noise, t0, h, y), rtol=1e-6, atol=1e-6)


def test_meanflow_refuses_explicit_guidance_unless_forced(gen, device):
    model = _mlp(gen, device, "meanflow")
    noise, y = _inputs(gen, device)
    with pytest.raises(ValueError, match=r"cfg_scale=1.5: a MeanFlow model has its guidance trained into u"):
        sample(model, noise, 2, y=y, cfg_scale=1.5)
    out = sample(model, noise, 2, y=y, cfg_scale=1.5, force_cfg=True)
    x, null = noise, torch.full_like(y, 3)
    for i in range(2):   # forced: u_∅ + w·(u_c − u_∅) over each interval of 1/2
        t, h = torch.full((6,), i / 2, device=device), torch.full((6,), 0.5, device=device)
        u_c, u_u = model(x, t, h, y), model(x, t, h, null)
        x = x + 0.5 * (u_u + 1.5 * (u_c - u_u))
    torch.testing.assert_close(out, x, rtol=1e-6, atol=1e-6)


def test_shortcut_objective_is_the_default_sampler(gen, device):
    model = _mlp(gen, device)
    noise, y = _inputs(gen, device)
    for steps in (1, 3, 5):
        ref = sample(model, noise, steps, y=y)
        model.objective = "shortcut"
        torch.testing.assert_close(sample(model, noise, steps, y=y), ref, rtol=0, atol=0)
        model.objective = None
    flow = _mlp(gen, device, ignore_k=True)   # no objective, ignore_k: equal steps (k = 0, not read)
    assert schedule_for(flow, 3) == [(0.0, 1 / 3, 0), (1 / 3, 1 / 3, 0), (2 / 3, 1 / 3, 0)]


@pytest.mark.parametrize("objective", sorted(SAMPLERS))
def test_every_step_count_every_objective(objective, gen, device):
    model = _mlp(gen, device, objective)
    for n in range(1, 129):
        plan = sampling_plan(model, n)
        assert plan.steps == n and plan.objective == objective
        assert plan.rule == ("consistency" if objective == "consistency_training" else "euler")
        t = 0.0
        for t_i, d, k in plan.schedule:   # contiguous steps from 0 to 1
            assert t_i == pytest.approx(t, abs=1e-12) and d > 0
            assert isinstance(k, float) if objective == "meanflow" else isinstance(k, int)
            t += d
        assert t == pytest.approx(1.0, abs=1e-12)
    for bad in (0, 129, 2.5, True):
        with pytest.raises(ValueError, match="steps must be an int in 1"):
            sampling_plan(model, bad)
    noise, y = _inputs(gen, device, B=2)
    for n in (7, 100):
        assert sample(model, noise, n, y=y).shape == noise.shape


def test_guidance_for_models_that_ignore_k(gen, device):
    """The step input of an ignore_k model is zeroed: a null label trained at one level is trained at all."""
    record = {"distilled": False, "scale": None, "null_levels": [7]}
    model = _mlp(gen, device, "progressive", ignore_k=True)
    model.guidance = record
    assert guidance_scales(model, schedule_for(model, 4), 2.0) == [2.0] * 4
    shortcut = _mlp(gen, device, "shortcut")
    shortcut.guidance = record
    with pytest.raises(ValueError, match="never trained it"):
        guidance_scales(shortcut, schedule_for(shortcut, 4), 2.0)
    model.guidance = {"distilled": False, "scale": None, "null_levels": []}
    with pytest.raises(ValueError, match="never trained it"):
        guidance_scales(model, schedule_for(model, 4), 2.0)
