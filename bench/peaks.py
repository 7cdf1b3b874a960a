"""Measured peaks of this machine: copy bandwidth and dense matmul throughput, plus the environment.

The report divides every GB/s and TFLOP/s by these, so "% of peak" is against what this GPU, at its
clocks today, actually reaches, not a datasheet number (an H100 SXM's 3.35 TB/s and 989 bf16 TFLOP/s
are not reachable by any kernel; a device-to-device copy and a large cuBLAS GEMM are the practical
ceilings).

    python bench/peaks.py --out peaks.json        # ~10 s on a GPU, a second on CPU
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # `python -m bench.peaks` finds common.py
from common import device_info, gpu_clocks, sdpa_backend  # noqa: E402


def _time(fn, device, reps):
    """Median seconds of one fn() call: CUDA events on GPU, wall clock on CPU."""
    for _ in range(3):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(reps):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def copy_bandwidth(device, nbytes=None, reps=20):
    """GB/s of dst.copy_(src): nbytes read + nbytes written. 1 GiB on GPU (20× an H100's L2), 64 MiB on CPU."""
    nbytes = nbytes or (2 ** 30 if device.type == "cuda" else 2 ** 26)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = _time(lambda: dst.copy_(src), device, reps)
    return {"copy_gbps": 2 * nbytes / seconds / 1e9, "copy_bytes": nbytes}


def matmul_throughput(device, dtype=None, sizes=None, reps=20):
    """Best TFLOP/s over a few large square matmuls (bf16 on GPU, fp32 on CPU)."""
    cuda = device.type == "cuda"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    sizes = sizes or ((4096, 8192, 16384) if cuda else (512,))
    gen = torch.Generator().manual_seed(0)

    def tflops(n):
        # Random values, not zeros: tensor cores draw less power on zeros and run faster than on data.
        a, b = (torch.randn(n, n, generator=gen).to(device, dtype) for _ in range(2))
        return 2 * n ** 3 / _time(lambda: a @ b, device, reps if n <= 8192 else max(3, reps // 4)) / 1e12

    best, best_n = max((tflops(n), n) for n in sizes)
    return {"matmul_tflops": best, "matmul_dtype": str(dtype).removeprefix("torch."), "matmul_n": best_n}


def environment(device):
    """GPU name, clocks, versions and the SDPA backend DiT-B/2's attention gets on this machine."""
    env = dict(device_info(str(device)))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                   memory_gb=round(props.total_memory / 1e9, 1),
                   l2_mb=round(getattr(props, "L2_cache_size", 0) / 2 ** 20, 1),
                   cudnn=torch.backends.cudnn.version(), clocks=gpu_clocks())
        dtype, shape = torch.bfloat16, (64, 12, 256, 64)
    else:
        dtype, shape = torch.float32, (2, 12, 256, 64)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
    env["sdpa_backend"] = {"shape": list(shape), "dtype": str(dtype).removeprefix("torch."),
                           "backend": sdpa_backend(q, k, v)}
    return env


def measure_peaks(device=None):
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    peaks = {**copy_bandwidth(device), **matmul_throughput(device)}
    return {"env": environment(device), "peaks": peaks}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON here (default: stdout)")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    text = json.dumps(measure_peaks(args.device), indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
