"""Timing helper shared by the benchmark files: warm-up, synchronised timing, physics in extra_info.

Every benchmark calls `measure(benchmark, fn, ...)`. On CUDA, `fn` runs `inner` times between two
synchronisations so launch and sync overheads are amortised; the per-call median lands in
`benchmark.extra_info["median_s"]` together with GB/s and TFLOP/s when bytes / flops are given.
"""
import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def device_info(device):
    info = {"torch": torch.__version__, "device": str(device)}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def measure(benchmark, fn, *, op, provider, shape, device, bytes_moved=None, flops=None, inner=None,
            rounds=None, warmup=3, **extra):
    """Time `fn()` and record per-call physics. Returns fn's last result."""
    cuda = torch.device(device).type == "cuda"
    inner = inner or (20 if cuda else 1)
    rounds = rounds or (20 if cuda else 3)
    out = None
    for _ in range(warmup):   # compile / autotune / JIT happen here, out of the numbers
        out = fn()
    sync(device)

    def timed():
        for _ in range(inner):
            fn()
        sync(device)

    benchmark.extra_info.update(op=op, provider=provider, shape=shape, inner=inner, **device_info(device), **extra)
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        median = stats.stats.median / inner
        benchmark.extra_info["median_s"] = median
        if bytes_moved:
            benchmark.extra_info["gbps"] = bytes_moved / median / 1e9
        if flops:
            benchmark.extra_info["tflops"] = flops / median / 1e12
    return out
