"""Euler sampling of a shortcut model: x ← x + d·s(x, t, log2 N, y) for N = 1/d steps, t from 0 (noise) to 1."""
import math

import torch

from .profiling import nvtx_range

MAX_STEPS = 128


def check_steps(steps, max_steps=MAX_STEPS):
    """Steps must be a power of two in 1 .. max_steps: the model was trained on levels k = log2(steps)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or steps > max_steps or steps & (steps - 1):
        valid = ", ".join(str(2 ** i) for i in range(int(math.log2(max_steps)) + 1))
        raise ValueError(f"steps must be one of {valid} (a power of two up to the finest trained level), got {steps!r}")
    return int(math.log2(steps))


def check_labels(model, y, batch, device):
    """Labels for a batch: None means the null label (unconditional). Returns an int64 (B,) tensor."""
    null = getattr(model, "null_label", getattr(model, "num_classes", 0))
    if y is None:
        return torch.full((batch,), null, dtype=torch.long, device=device)
    if not isinstance(y, torch.Tensor) or y.shape != (batch,) or y.dtype != torch.long:
        got = (tuple(y.shape), y.dtype) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"y must be an int64 tensor of shape ({batch},), got {got}")
    if y.device.type != torch.device(device).type:
        raise ValueError(f"y is on {y.device} but noise is on {device}")
    if batch and (int(y.min()) < 0 or int(y.max()) > null):
        raise ValueError(f"y must hold labels in [0, {null}] ({null} = null), got [{int(y.min())}, {int(y.max())}]")
    return y.to(device)


def guided_velocity(model, x, t, k, y, cfg_scale, null_label):
    """v = s(x, t, k, y); with cfg_scale != 1, v_u + w·(v_c − v_u) from one forward over [cond; uncond]."""
    if cfg_scale == 1.0:
        return model(x, t, k, y)
    v = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([k, k]), torch.cat([y, torch.full_like(y, null_label)]))
    v_c, v_u = v.chunk(2)
    return v_u + cfg_scale * (v_c - v_u)


@torch.no_grad()
def sample(model, noise, steps=1, y=None, cfg_scale=1.0, return_trajectory=False):
    """Generate x1 from noise x0 in `steps` Euler steps (a power of two ≤ 128).

    model: any module with forward(x, t, k, y). noise: (B, ...) x0 ~ N(0, I). y: (B,) long labels or None
    (null label). cfg_scale: classifier-free guidance weight w (1.0 = conditional only).
    With return_trajectory, also returns the list of intermediate x (steps + 1 entries).
    """
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.dim() < 2:
        raise ValueError("noise must be a floating-point tensor of shape (B, ...)")
    k_level = check_steps(steps)
    B = noise.shape[0]
    y = check_labels(model, y, B, noise.device)
    null = getattr(model, "null_label", getattr(model, "num_classes", 0))
    k = torch.full((B,), k_level, dtype=torch.long, device=noise.device)
    x, d = noise, 1.0 / steps
    traj = [x]
    for i in range(steps):
        with nvtx_range(f"sample.step{i}"):
            t = torch.full((B,), i * d, dtype=torch.float32, device=noise.device)
            x = x + d * guided_velocity(model, x, t, k, y, cfg_scale, null).to(x.dtype)
        traj.append(x)
    return (x, traj) if return_trajectory else x


# The CUDA-graph sampler lives in graph.py (it imports this module's helpers, so it is imported last).
from .graph import GraphSampler  # noqa: E402,F401
