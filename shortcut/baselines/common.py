"""Pieces the baseline objectives share: input checks, frozen target networks, teacher copies, the fixed-level
Euler loop, and the step schedules of the staged objectives."""
import contextlib
import copy
import math

import torch

from ..sampler import check_labels, check_noise, guided_velocity


def check_data(x1, y):
    """x1: floating (B, ...); y: int64 (B,) on x1's device. Returns B."""
    if not isinstance(x1, torch.Tensor) or x1.dim() < 2 or not x1.is_floating_point():
        raise ValueError(f"x1 must be a floating-point tensor of shape (B, ...), got "
                         f"{tuple(x1.shape) if isinstance(x1, torch.Tensor) else type(x1).__name__}")
    B = x1.shape[0]
    if not isinstance(y, torch.Tensor) or y.shape != (B,) or y.dtype != torch.long:
        raise ValueError(f"y must be an int64 tensor of shape ({B},), got "
                         f"{(tuple(y.shape), y.dtype) if isinstance(y, torch.Tensor) else type(y).__name__}")
    if y.device != x1.device:
        raise ValueError(f"y is on {y.device} but x1 is on {x1.device}")
    return B


def resolve_null_label(null_label, *nets):
    """The null (CFG) label: the argument, else the first net's `null_label` (or `num_classes`) attribute."""
    if null_label is not None:
        return int(null_label)
    for net in nets:
        value = getattr(net, "null_label", getattr(net, "num_classes", None))
        if value is not None:
            return int(value)
    raise ValueError("null_label is needed: pass it, or give the model a `null_label` attribute")


def resolve_generator(generator):
    if generator is None:
        generator = torch.Generator(device="cpu")
        generator.seed()
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


def check_schedule(step, total_steps, num_levels):
    """step: optimizer steps already taken (0 for the first update, the official train_state.step)."""
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < num_levels:
        raise ValueError(f"total_steps must be an int >= {num_levels} (one stage per level), got {total_steps!r}")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < total_steps:
        raise ValueError(f"step must be an int in [0, {total_steps}) (optimizer steps already taken), got {step!r}")


def stage_index(step, total_steps, num_levels):
    """floor(step / (total_steps / num_levels)) in exact integer arithmetic: 0 .. num_levels - 1.

    The official code divides floats (`train_state.step / (max_steps / 7)`); the integer form gives the same
    stage without rounding at the boundaries (1000 steps: steps 0-142 stage 0, 143-285 stage 1, ...).
    """
    check_schedule(step, total_steps, num_levels)
    return step * num_levels // total_steps


@contextlib.contextmanager
def frozen(*nets):
    """Target networks: eval mode and no autograd inside; each net's training flag restored on exit."""
    modes = [net.training for net in nets]
    try:
        for net in nets:
            net.eval()
        with torch.no_grad():
            yield
    finally:
        for net, mode in zip(reversed(nets), reversed(modes)):
            net.train(mode)


def copy_teacher(source):
    """A frozen copy of `source` (eval mode, no grad) to serve as a teacher."""
    return copy.deepcopy(source).requires_grad_(False).eval()


@torch.no_grad()
def refresh_teacher(teacher, source):
    """teacher ← source, parameters and buffers copied (no aliasing); the teacher stays frozen in eval mode."""
    teacher.load_state_dict(source.state_dict())
    return teacher.requires_grad_(False).eval()


def randn(shape, generator, device, dtype):
    """N(0, I) drawn on the generator's device (CPU generators stay usable with CUDA data), then moved."""
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def grid_t(n, sections, generator, device):
    """t = randint(0, sections) / sections for n items: noise levels on the 1/sections grid, float32."""
    t = torch.randint(0, sections, (n,), generator=generator, device=generator.device)
    return t.to(device).float() / sections


def drop_labels(y, p, null_label, generator):
    """Labels replaced by the null label with probability p each (classifier-free guidance training)."""
    drop = torch.rand(y.shape[0], generator=generator, device=generator.device).to(y.device) < p
    return torch.where(drop, torch.full_like(y, null_label), y)


@torch.no_grad()
def euler_sample(model, noise, steps, y=None, cfg_scale=1.0, level=None, return_trajectory=False):
    """N equal Euler steps with the step input fixed at `level`: x ← x + s(x, i/N, level, y)/N.

    The flow-type baselines' sampler (official helper_eval/helper_inference: `x = x + v * delta_t` for every
    train_type but consistency training). level: the k fed to the network; default floor(log2 N), what
    the official code passes (log2 N); models trained with ignore_k do not read it.
    """
    check_noise(noise)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    B, device = noise.shape[0], noise.device
    y = check_labels(model, y, B, device)
    null = getattr(model, "null_label", getattr(model, "num_classes", 0))
    level = steps.bit_length() - 1 if level is None else level
    k = torch.full((B,), level, dtype=torch.long, device=device)
    x, d = noise, 1.0 / steps
    traj = [x]
    for i in range(steps):
        t = torch.full((B,), i * d, dtype=torch.float32, device=device)
        x = x + d * guided_velocity(model, x, t, k, y, cfg_scale, null).to(x.dtype)
        traj.append(x)
    return (x, traj) if return_trajectory else x


def log2_int(m, name="denoise_timesteps"):
    if isinstance(m, bool) or not isinstance(m, int) or m < 2 or m & (m - 1):
        raise ValueError(f"{name} must be a power of two >= 2, got {m!r}")
    return int(math.log2(m))
