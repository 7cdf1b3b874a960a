"""Sampler benchmarks: latency and images/s of one- and few-step generation.

    pytest bench/test_bench_sampler.py --benchmark-json=sampler.json   # CUDA: DiT-B/2, DiT-XL/2
    pytest bench/ --benchmark-disable                                  # CPU: tiny model, a smoke run

CUDA providers (DiT-B/2 and DiT-XL/2 at 256 px latents: 32×32×4, 1000 classes, random bf16 weights;
batch 1 and 64; 1 and 4 steps; no CFG). The baselines run the reference model (kernels="torch", SDPA
attention), ours the fused one (kernels="auto": Triton on CUDA), same weights:
  eager            shortcut.sample(reference, ...)
  compile-ro       shortcut.sample(torch.compile(reference, mode="reduce-overhead", dynamic=False), ...): the
                   baseline that lets Inductor capture CUDA graphs itself, one forward at a time
  graph            GraphSampler with the conditioning cache (the whole loop is one graph)
  graph-nocache    GraphSampler without it: what the cache saves
  graph-compiled   GraphSampler over torch.compile(model) (default mode): the two together
Labels live on the device and every provider pays the same label check (`check_labels`, two device
reads): `sample` runs it inside, the GraphSampler rows call it before `gs(noise, y)`.
Every call is timed to completion (inner=1: copy in, replay, clone out, synchronise), so median_s is
the latency a caller waits for one batch; images_per_s = batch / median_s. bytes_moved counts the weights
a provider must read per call (the cached providers skip the embedders and adaLN projections: a third
of a DiT's weights); flops counts the forward GEMMs and attention. Target (SPEC §6): DiT-B/2, 1 step,
batch 1 ≤ 0.3 ms on an H100 and ≥ 10× eager. Not yet measured: this file was written without a GPU.

CPU providers (tiny model, fp32, batch 2): eager `shortcut.sample` vs `sample_cached`, the same loop
through a ConditioningCache; `aten_ops` in extra_info counts the ops each one dispatches per call, the
launch-count argument for the cache on a machine without a GPU.
"""
import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from common import measure
from shortcut import GraphSampler, ModelConfig, ShortcutDiT, sample
from shortcut.graph import ConditioningCache, sample_cached
from shortcut.sampler import check_labels

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

if CUDA:
    PRESETS = ["DiT-B/2", "DiT-XL/2"]
    BATCHES = [1, 64]
    PROVIDERS = ["eager", "compile-ro", "graph", "graph-nocache", "graph-compiled"]
    DTYPE = torch.bfloat16   # bench/conftest.py raises Dynamo's recompile limit for the compiled rows
else:
    PRESETS = ["tiny"]
    BATCHES = [2]
    PROVIDERS = ["eager", "cached-eager"]
    DTYPE = torch.float32
STEPS = [1, 4]

_models = {}


def _model(preset, variant):
    """One model per (preset, variant): the fused model ("plain", or compiled in "default" mode), or the
    reference model with the same weights ("reference", or compiled in "reduce-overhead" mode)."""
    key = (preset, variant)
    if key not in _models:
        if variant in ("reference", "reduce-overhead"):
            fused = _model(preset, "plain")
            model = ShortcutDiT(fused.cfg, kernels="torch", attention="sdpa").to(DEVICE, DTYPE).eval()
            model.load_state_dict(fused.state_dict())
        else:
            if CUDA:
                cfg = ModelConfig.preset(preset, input_size=32, in_channels=4, num_classes=1000)
            else:
                cfg = ModelConfig.preset(preset, input_size=8, in_channels=4, num_classes=10)
            model = ShortcutDiT(cfg).to(DEVICE, DTYPE).eval()
        if variant == "reduce-overhead":
            model = torch.compile(model, mode="reduce-overhead", dynamic=False)
        elif variant == "default":
            model = torch.compile(model, dynamic=False)
        _models[key] = model
    return _models[key]


def _flops(cfg, B, steps):
    """Forward GEMMs (qkv, proj, MLP: 24·T·D² per block and sample) and attention (4·T²·D), per call."""
    T, D = cfg.num_tokens, cfg.hidden_size
    return steps * B * cfg.depth * (24 * T * D * D + 4 * T * T * D)


def _weight_bytes(model, cached):
    net = getattr(model, "_orig_mod", model)
    total = sum(p.numel() * p.element_size() for p in net.parameters())
    if not cached:
        return total
    cond = [*net.adaLN.parameters(), *net.t_embedder.parameters(), *net.k_embedder.parameters(),
            *net.y_embedder.parameters()]
    return total - sum(p.numel() * p.element_size() for p in cond)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n[func.overloadpacket] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("preset", PRESETS)
def test_sampler(benchmark, preset, B, steps, provider):
    variant = {"eager": "reference", "compile-ro": "reduce-overhead", "graph-compiled": "default"}.get(provider, "plain")
    model = _model(preset, variant)
    net = getattr(model, "_orig_mod", model)
    cfg = net.cfg
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen).to(DEVICE, DTYPE)
    y = torch.randint(0, cfg.num_classes, (B,), generator=gen).to(DEVICE)
    cached = provider in ("graph", "cached-eager")

    if provider in ("eager", "compile-ro"):
        def fn():
            return sample(model, noise, steps, y=y)
    elif provider == "cached-eager":
        cache = ConditioningCache(net, steps)

        def fn():
            return sample_cached(model, noise, steps, y=y, cache=cache)
    else:
        gs = GraphSampler(model, B, steps, cond_cache=provider == "graph")
        assert gs.graphed and (gs.cond_cache is not None) == (provider == "graph")

        def fn():
            check_labels(net, y, B, noise.device)   # what sample() pays inside
            return gs(noise, y)

    extra = dict(preset=preset, steps=steps, batch=B, dtype=str(DTYPE).removeprefix("torch."),
                 kernels="triton" if net.uses_triton(noise) else "torch", attention=net.attention_backend(noise))
    if not CUDA:
        with _CountOps() as ops:
            fn()
        extra["aten_ops"] = sum(ops.n.values())
    out = measure(benchmark, fn, op="sample", provider=provider, shape=[B, steps], device=DEVICE,
                  bytes_moved=steps * _weight_bytes(model, cached), flops=_flops(cfg, B, steps), inner=1,
                  rounds=30 if CUDA else 3, **extra)
    if benchmark.extra_info.get("median_s"):
        benchmark.extra_info["images_per_s"] = B / benchmark.extra_info["median_s"]
    assert out.shape == noise.shape and torch.isfinite(out).all()
