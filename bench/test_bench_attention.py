"""Attention benchmarks at DiT shapes: our Triton kernel vs PyTorch SDPA (each backend) vs flash-attn.

    pytest bench/test_bench_attention.py --benchmark-json=attn.json     # CUDA: bf16, real shapes
    pytest bench/ --benchmark-disable                                   # CPU: tiny shapes, a smoke run

Every provider runs the model's own data path: a fused (B, T, 3, H, Dh) qkv goes in, o comes out as the
(B, T, H·Dh) input of the proj Linear, and "fwd+bwd" returns the gradient of qkv. So SDPA pays for the
(B, H, T, Dh) <-> (B, T, H, Dh) handling the model would pay (its flash backend writes o in the model's
layout already; its backward stacks dq, dk, dv into dqkv).

Shapes (CUDA): T = 256 (256 px, 32×32 latents, patch 2) and 1024 (512 px); DiT-B/2 heads (12 × 64) and
DiT-XL/2 heads (16 × 72); B ∈ {1, 8, 64, 256}. FLOPs count useful work only (head_dim 72, not a padded
width): forward 4·B·H·T²·Dh (q·kᵀ and p·v), backward 2.5× that (five T×T×Dh matmuls, q·kᵀ recomputed),
the convention of the FlashAttention papers. extra_info records the SDPA backend that actually ran
(from the aten op SDPA dispatched to) and, for "triton_pad128", the cost of padding 72 to 128 instead of
our 64 + 16 tiles.
"""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from common import measure, sdpa_backend_of
from shortcut_kernels import attention_qkvpacked, flash_attn_available, flash_attn_qkvpacked
from shortcut_kernels.attention import _HAS_TRITON, _INTERPRETED, _backward, _forward, _head_blocks

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32   # the interpreter gets bf16 wrong (SPEC §3)
TRITON_OK = _HAS_TRITON and (CUDA or _INTERPRETED)

if CUDA:
    SHAPES = [(B, 256, H, Dh) for H, Dh in ((12, 64), (16, 72)) for B in (1, 8, 64, 256)]
    SHAPES += [(8, 1024, H, Dh) for H, Dh in ((12, 64), (16, 72))]
else:
    SHAPES = [(1, 16, 2, 32), (1, 16, 2, 72)]

SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                 "math": "MATH"}


def _sdpa_qkvpacked(qkv, scale):
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                     # 3 × (B, H, T, Dh) views
    return F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2)   # (B, T, H, Dh)


def _pad128(qkv, scale, backward, do):
    """Our kernels with head_dim padded to one power-of-two tile (72 -> 128), called without autograd."""
    B, T, _, H, Dh = qkv.shape
    q, k, v = (qkv.select(2, i).transpose(1, 2) for i in range(3))
    o = qkv.new_empty(B, T, H, Dh)
    lse = qkv.new_empty(B, H, T, dtype=torch.float32)
    _forward(q, k, v, o.transpose(1, 2), lse, scale, split=False)
    if not backward:
        return o
    dqkv = torch.empty_like(qkv)
    _backward(do.transpose(1, 2), q, k, v, o.transpose(1, 2), lse, scale,
              *(dqkv.select(2, i).transpose(1, 2) for i in range(3)), split=False)
    return dqkv


PROVIDERS = ["triton", "triton_pad128", "flash_attn"] + [f"sdpa_{b}" for b in SDPA_BACKENDS] + ["sdpa"]


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("B, T, H, Dh", SHAPES, ids=lambda s: str(s))
def test_attention(benchmark, B, T, H, Dh, provider, mode):
    backward = mode == "fwd+bwd"
    if provider.startswith("triton") and not TRITON_OK:
        pytest.skip("Triton kernels need CUDA, or TRITON_INTERPRET=1 set before shortcut_kernels is imported")
    if provider == "triton_pad128" and _head_blocks(Dh) == _head_blocks(Dh, split=False):
        pytest.skip(f"head_dim {Dh} is one power-of-two tile already")
    if provider == "flash_attn" and not (flash_attn_available() and CUDA):
        pytest.skip("flash-attn is not installed (or no CUDA)")
    if provider.startswith("sdpa_") and not CUDA:
        pytest.skip("forcing one SDPA backend is measured on CUDA only")

    gen = torch.Generator().manual_seed(0)
    scale = Dh ** -0.5
    qkv = torch.randn(B, T, 3, H, Dh, generator=gen).to(DEVICE, DTYPE).requires_grad_(backward)
    do = torch.randn(B, T, H, Dh, generator=gen).to(DEVICE, DTYPE)
    extra = {"dtype": str(DTYPE).removeprefix("torch.")}
    if provider.startswith("triton"):
        extra["head_blocks"] = list(_head_blocks(Dh, split=provider == "triton"))   # tile widths run
    if provider == "triton_pad128":
        fn = lambda: _pad128(qkv.detach(), scale, backward, do)   # noqa: E731
    else:
        attend = {"triton": lambda x: attention_qkvpacked(x, scale=scale),
                  "flash_attn": lambda x: flash_attn_qkvpacked(x, scale=scale)}.get(
            provider, lambda x: _sdpa_qkvpacked(x, scale))

        def fn():
            o = attend(qkv).reshape(B, T, H * Dh)              # the proj Linear's input
            if not backward:
                return o
            return torch.autograd.grad(o, qkv, do.reshape(B, T, H * Dh))[0]

    forced = contextlib.nullcontext()
    if provider.startswith("sdpa_"):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        forced = sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[provider.removeprefix("sdpa_")]))
    with forced:
        if provider.startswith("sdpa"):
            try:
                extra["sdpa_backend"] = sdpa_backend_of(lambda: _sdpa_qkvpacked(qkv, scale))
            except RuntimeError as e:   # "No available kernel": this backend does not take this shape/dtype
                pytest.skip(f"{provider} cannot run {(B, H, T, Dh)} {DTYPE}: {str(e).splitlines()[0]}")
        fwd_flops = 4 * B * H * T * T * Dh
        out = measure(benchmark, fn, op=f"attention_{mode}", provider=provider, shape=[B, H, T, Dh],
                      device=DEVICE, flops=fwd_flops * (3.5 if backward else 1.0), **extra)
    assert torch.isfinite(out).all()
