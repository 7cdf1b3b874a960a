"""Conditioning: sinusoidal features of the noise level t and of the step level k.

The reference is DiT's / the official code's timestep features: [cos(t·f), sin(t·f)] with
f_i = max_period^(-i / half), half = dim / 2.
"""
import math

import torch


def timestep_embedding_ref(t, dim=256, max_period=10000.0):
    """Sinusoidal features of a batch of scalars. t (B,) float or int -> (B, dim) float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]                             # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)          # (B, 2·half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
