"""Attention: non-causal softmax attention in the (B, H, T, Dh) layout of F.scaled_dot_product_attention."""
import torch


def attention_ref(q, k, v, scale=None, upcast=True):
    """softmax(q·kᵀ·scale)·v, computed in fp32 when upcast. q, k, v (B, H, T, Dh)."""
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    p = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)          # (B, H, T, T)
    return (p @ v).to(dtype)                                             # (B, H, T, Dh)
