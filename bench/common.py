"""Timing helper shared by the benchmark files: warm-up, GPU-side timing, physics in extra_info.

Every benchmark calls `measure(benchmark, fn, op=, provider=, shape=, device=, ...)`; bench/gpu_check.py uses
`time_per_call` (back-to-back calls behind a spin kernel: launch latency hidden, per call), `transient_memory`
and `Records` (JSON lines written as they are made). What `measure` does:

- warm-up: `warmup` calls before anything is timed, so torch.compile, Triton JIT and autotuning stay out
  of the numbers (their wall time is recorded as `warmup_s`);
- CUDA, default: each call timed alone with CUDA events, L2 flushed (a 2×L2 buffer zeroed) before it so
  inputs are read from HBM as in a real network, where the next layer's data are never L2-resident.
  This does what rotating several input copies would do, for any closure. The flush is enqueued ahead
  of the call and is not inside the events; the CPU gets the flush's duration as a head start on
  launching, as in `triton.testing.do_bench`;
- CUDA with `inner=N`: N back-to-back calls between two events (latency loops, e.g. samplers), no flush;
- CPU: wall-clock per call (CPU numbers only exercise the suite; they are not claims);
- rounds: calibrated from one timed call so each case costs about `TARGET_S` seconds, unless given;
- the median per call goes to `extra_info["median_s"]`, with GB/s and TFLOP/s when bytes / flops are
  given, and the GPU, versions and timer used. The report (bench/report.py) reads these, not
  pytest-benchmark's own wall-clock columns (those include the flush and a synchronisation).

With `--benchmark-disable` (the CI smoke run) `fn` runs once, untimed.
`MODE` ("quick" | "default" | "full") is set by bench/conftest.py from `--bench-mode`; benchmark files may
read it to pick their shapes.
"""
import functools
import importlib.metadata
import json
import os
import statistics
import subprocess
import time
import traceback

import torch

MODE = os.environ.get("SHORTCUT_BENCH_MODE", "default")
# Timed seconds per case on CUDA (rounds calibrated from one call, within [MIN_ROUNDS, MAX_ROUNDS]). The
# suite has a few hundred cases and one 10-minute call to run them in, compiles included; the median of
# 200 flushed calls of a 50 µs kernel is stable to ~1 %.
TARGET_S = {"quick": 0.15, "default": 0.4, "full": 1.0}
MIN_ROUNDS, MAX_ROUNDS = 5, 200
CPU_ROUNDS = 3


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(None)
def device_info(device):
    """Versions and the device name, recorded with every result."""
    info = {"torch": torch.__version__, "triton": _version("triton"), "flash_attn": _version("flash-attn"),
            "device": str(device)}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def gpu_clocks():
    """SM / memory clocks, power and driver from nvidia-smi (or pynvml), {} when neither is readable.

    Clocks explain run-to-run spread (an H100 under power capping runs its SMs below 1980 MHz); they are
    recorded, never required.
    """
    fields = ("name", "driver_version", "pstate", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem",
              "power.draw", "power.limit", "temperature.gpu")
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return _nvml_clocks()
    first = out.strip().splitlines()[0] if out.strip() else ""
    values = [v.strip() for v in first.split(",")]
    if len(values) != len(fields):
        return {}
    return {"source": "nvidia-smi", **{f.replace(".", "_"): v for f, v in zip(fields, values)}}


def _nvml_clocks():
    try:
        import pynvml
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device() if torch.cuda.is_available() else 0)
        return {"source": "pynvml",
                "clocks_sm": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                "clocks_max_sm": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
                "clocks_mem": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)}
    except Exception:   # pynvml absent, or no NVML on this machine: clocks are optional
        return {}


# aten op that SDPA dispatched to -> backend name
_SDPA_OPS = {"aten._scaled_dot_product_flash_attention": "flash",
             "aten._scaled_dot_product_flash_attention_for_cpu": "flash_cpu",
             "aten._scaled_dot_product_efficient_attention": "efficient",
             "aten._scaled_dot_product_cudnn_attention": "cudnn",
             "aten._scaled_dot_product_fused_attention_overrideable": "overrideable",
             "aten._scaled_dot_product_attention_math": "math"}


def sdpa_backend_of(fn):
    """The SDPA backend that runs inside `fn()`, read from the first aten SDPA op it dispatches to.

    "math" when it falls back to plain matmuls (no fused op is called).
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class _FirstSdpaOp(TorchDispatchMode):
        backend = None

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket)
            if self.backend is None and name in _SDPA_OPS:
                self.backend = _SDPA_OPS[name]
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), _FirstSdpaOp() as mode:
        fn()
    return mode.backend or "math"


def sdpa_backend(q, k, v, scale=None):
    """The SDPA backend that actually runs for these inputs."""
    return sdpa_backend_of(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale))


_FLUSH = {}


def flush_l2(device):
    """Zero a buffer twice the L2 size so the next kernel reads its inputs from HBM (asynchronous)."""
    dev = torch.device(device)
    if dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    buf = _FLUSH.get(dev)
    if buf is None:
        l2 = getattr(torch.cuda.get_device_properties(dev), "L2_cache_size", 0) or 128 * 2 ** 20
        buf = _FLUSH[dev] = torch.empty(2 * l2 // 4, dtype=torch.int32, device=dev)
    buf.zero_()


def measure(benchmark, fn, *, op, provider, shape, device, bytes_moved=None, flops=None, inner=None,
            rounds=None, warmup=3, peak_memory=False, **extra):
    """Time `fn()` and record per-call physics in `benchmark.extra_info`. Returns fn's last result.

    op / provider / shape name the row (rows with equal op and shape are compared in the report);
    bytes_moved / flops are per call of fn. inner: calls per timed round (CUDA latency loops; default 1
    with the L2 flushed per call). rounds: timed rounds (default: calibrated). peak_memory: also record
    peak allocated CUDA memory during the timed calls, the memory resident before them, and the
    difference (activations and other transient buffers). Extra keywords are stored as they are.
    """
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    shape = list(shape) if isinstance(shape, (tuple, list, torch.Size)) else shape
    benchmark.extra_info.update(op=op, provider=provider, shape=shape, **device_info(str(device)), **extra)
    if getattr(benchmark, "disabled", False):   # --benchmark-disable: a smoke run, nothing is timed
        return benchmark.pedantic(fn, rounds=1, iterations=1)

    t0 = time.perf_counter()
    out = None
    for _ in range(warmup):   # compile / autotune / JIT happen here, out of the numbers
        out = fn()
    sync(device)
    warmup_s = time.perf_counter() - t0

    times = []
    if cuda:
        loop = inner is not None
        inner = inner or 1
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def setup():
            if not loop:
                flush_l2(dev)

        def timed():
            result = None
            start.record()
            for _ in range(inner):
                result = fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / inner)
            return result

        setup()
        out = timed()                         # calibration: one round sets the round count
        if rounds is None:
            budget = TARGET_S.get(MODE, TARGET_S["default"])
            rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, budget / max(times[-1] * inner, 1e-7))))
        times.clear()
        if peak_memory:
            torch.cuda.synchronize(dev)
            resident = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        result = benchmark.pedantic(timed, setup=setup, rounds=rounds, iterations=1)
        if peak_memory:
            peak = torch.cuda.max_memory_allocated(dev)
            benchmark.extra_info.update(peak_mem_gb=peak / 1e9, resident_mem_gb=resident / 1e9,
                                        transient_mem_gb=(peak - resident) / 1e9)
        timer = "cuda_event_loop" if loop else "cuda_event_l2_flushed"
    else:
        inner = inner or 1
        rounds = rounds or CPU_ROUNDS

        def timed():
            result = None
            t = time.perf_counter()
            for _ in range(inner):
                result = fn()
            times.append((time.perf_counter() - t) / inner)
            return result

        result = benchmark.pedantic(timed, rounds=rounds, iterations=1)
        timer = "perf_counter"
    out = result if result is not None else out

    median = statistics.median(times)
    benchmark.extra_info.update(median_s=median, min_s=min(times), rounds=len(times), inner=inner,
                                timer=timer, warmup_s=warmup_s)
    if bytes_moved:
        benchmark.extra_info["gbps"] = bytes_moved / median / 1e9
    if flops:
        benchmark.extra_info["tflops"] = flops / median / 1e12
    return out


# ------------------------------------------------------------------------------------------------------------
# Per-call timing with launch overhead hidden (bench/gpu_check.py), and transient memory.
_SPIN = {}


def _spin_rate(device):
    """Cycles per second of torch.cuda._sleep on `device` (its SM clock), measured once; None without _sleep."""
    if device not in _SPIN:
        sleep = getattr(torch.cuda, "_sleep", None)
        rate = None
        if sleep is not None:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            sleep(1000)   # load the kernel before timing it
            cycles = 10_000_000   # ~5 ms at an H100's 1.98 GHz
            start.record()
            sleep(cycles)
            end.record()
            end.synchronize()
            rate = cycles / max(start.elapsed_time(end) / 1e3, 1e-6)
        _SPIN[device] = rate
    return _SPIN[device]


def time_per_call(fns, device, *, reps=None, warmup=2, round_s=0.02, total_s=0.3, max_inner=20, latency=False):
    """Seconds per call of the callables `fns`, called in turn (one per input set, so that back-to-back calls do
    not find their inputs in L2). Returns a dict: per_call_s (median over rounds), min_s, reps, inner,
    host_per_call_s, warmup_s, timer.

    CUDA, default: each round enqueues `inner` back-to-back calls behind a spin kernel (torch.cuda._sleep)
    that lasts longer than the host needs to enqueue them, between two events: the GPU then runs the calls
    without waiting for the host, and the events time its work alone (launch overhead hidden; `inner` is
    sized so a round lasts ~round_s, at most max_inner calls: CUDA's launch queue holds about a thousand
    kernels and an eager backward is ~25 of them; a fuller queue would block the host during the spin).
    host_per_call_s is the host's enqueue time per call; when it is not below the GPU time, the op
    would be launch-bound in real use without a CUDA graph (reported as launch_bound).
    latency=True: each round is one call timed to completion on the host clock (synchronize before and
    after): what a caller waits for, launch overhead included (samplers).
    CPU: wall clock per call (the dry run; the numbers mean nothing).
    """
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    fns = list(fns)
    t0 = time.perf_counter()
    for i in range(max(warmup, 1) * len(fns) if warmup else 0):   # compile, autotune, graph capture
        fns[i % len(fns)]()
    sync(dev)
    warmup_s = time.perf_counter() - t0
    if latency or not cuda:
        reps = reps or (30 if cuda else 3)
        times = []
        for i in range(reps):
            sync(dev)
            t = time.perf_counter()
            fns[i % len(fns)]()
            sync(dev)
            times.append(time.perf_counter() - t)
        return {"per_call_s": statistics.median(times), "min_s": min(times), "reps": reps, "inner": 1,
                "warmup_s": warmup_s, "timer": "wall_to_completion" if cuda else "perf_counter"}

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    # Calibration: one pass over the input sets, host enqueue time and GPU time.
    torch.cuda.synchronize(dev)
    start.record()
    h = time.perf_counter()
    for fn in fns:
        fn()
    host = (time.perf_counter() - h) / len(fns)
    end.record()
    end.synchronize()
    gpu = max(start.elapsed_time(end) / 1e3 / len(fns), 1e-7)
    inner = int(min(max_inner, max(1, round(round_s / gpu))))
    reps = reps or int(min(30, max(3, total_s / (inner * max(gpu, host)))))
    rate = _spin_rate(dev)
    times, hosts = [], []
    for _ in range(reps):
        if rate:
            # Long enough for the host to enqueue every call (1.5× the calibrated time + 50 µs), at most 0.2 s.
            torch.cuda._sleep(int(rate * min(0.2, 1.5 * host * inner + 5e-5)))
        start.record()
        h = time.perf_counter()
        for i in range(inner):
            fns[i % len(fns)]()
        hosts.append((time.perf_counter() - h) / inner)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / inner)
    per_call, host_per_call = statistics.median(times), statistics.median(hosts)
    return {"per_call_s": per_call, "min_s": min(times), "reps": reps, "inner": inner, "warmup_s": warmup_s,
            "host_per_call_s": host_per_call, "launch_bound": host_per_call >= per_call,
            "timer": "cuda_events_behind_spin" if rate else "cuda_events_back_to_back"}


def transient_memory(fn, device):
    """Peak CUDA memory allocated during one fn() beyond what was allocated before it (activations, gradients,
    workspaces), in GB, with the resident and peak figures; {} on CPU. The peak counter is reset right before
    the call, so earlier calls (warm-up, compiles) do not count."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return {}
    torch.cuda.synchronize(dev)
    resident = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev)
    return {"resident_mem_gb": resident / 1e9, "peak_mem_gb": peak / 1e9, "transient_mem_gb": (peak - resident) / 1e9}


class Records:
    """JSON lines appended to `path` as they are made (flushed each time), so a stage that is killed at its
    time limit leaves every finished record behind. path None: kept in memory only (`items`)."""

    def __init__(self, path=None, **common):
        self.path, self.common, self.items = path, common, []

    def add(self, kind, **fields):
        record = {"kind": kind, **self.common, **fields}
        self.items.append(record)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, default=str) + "\n")
        return record

    def error(self, kind, exc, **fields):
        """Record an exception as one line: type, message's first line, and the innermost frame."""
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" ({os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
        text = (str(exc).strip().splitlines() or [""])[0][:400]
        return self.add(kind, error=f"{type(exc).__name__}: {text}{where}", **fields)
