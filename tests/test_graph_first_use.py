"""GraphSampler as a new user meets it: float32 noise from torch.randn into any sampler dtype, the model's
own dtype by default on the CPU, a new capture when the kernels / attention backend change."""
import pytest
import torch
from conftest import cuda, random_tiny_dit

from shortcut import GraphSampler, sample
from shortcut.graph import _cached_graphs


def _model(gen, device):
    return random_tiny_dit(gen, device)


def test_any_floating_noise_is_cast_into_the_buffer(gen, device):
    model = _model(gen, device)
    noise = torch.randn(2, 3, 8, 8, generator=gen).to(device)           # float32, as the README shows
    y = torch.tensor([0, 3], device=device)
    gs = GraphSampler(model, 2, 2, dtype=torch.bfloat16, cond_cache=False)
    out = gs(noise, y)
    assert out.dtype == torch.bfloat16 and torch.equal(out, gs(noise.to(torch.bfloat16), y))
    assert torch.equal(gs(noise.double(), y), out)
    with pytest.raises(ValueError, match="noise must be a floating-point tensor"):
        gs(noise.long(), y)


def test_cpu_default_dtype_is_the_models():
    model = _model(torch.Generator().manual_seed(0), "cpu")
    gs = GraphSampler(model, 2, 1)
    assert gs.dtype == torch.float32
    noise = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(gs(noise), sample(model, noise, 1), rtol=1e-5, atol=1e-5)


def test_backend_is_part_of_the_capture_key(gen, device):
    model = _model(gen, device)
    a = GraphSampler(model, 1, 1, dtype=torch.float32)
    model.attention = "torch"
    b = GraphSampler(model, 1, 1, dtype=torch.float32)
    model.kernels = "triton"
    c = GraphSampler(model, 1, 1, dtype=torch.float32)
    assert len({id(a._entry), id(b._entry), id(c._entry)}) == 3 and len(_cached_graphs(model)) == 3
    model.kernels, model.attention = "torch", "auto"
    assert GraphSampler(model, 1, 1, dtype=torch.float32)._entry is a._entry


@cuda
def test_cpu_noise_into_a_cuda_graph(gen):
    model = _model(gen, "cuda")
    noise = torch.randn(2, 3, 8, 8, generator=gen)                     # on the CPU
    gs = GraphSampler(model, 2, 1)
    assert gs.dtype == torch.bfloat16 and gs.graphed
    assert torch.equal(gs(noise), gs(noise.cuda().to(torch.bfloat16)))
