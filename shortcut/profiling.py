"""NVTX ranges for Nsight Systems, off by default.

    import shortcut.profiling as prof
    prof.enable_nvtx(True)                 # or SHORTCUT_NVTX=1 in the environment
    with prof.nvtx_range("sample"):
        ...

then `nsys profile -t cuda,nvtx python ...` shows the model's ranges (embed = conditioning, patch_embed,
block{i}.attn, block{i}.mlp, final_layer) and whatever the caller adds. Ranges go to the "shortcut" NVTX domain
when the `nvtx` package is installed; without it (the GPU machines' image lacks it) they go through torch's own
NVTX bindings (CUDA builds; no domain), and on a CPU-only build without the package they are no-ops.

When off, `nvtx_range` returns one shared no-op context: no marker, no allocation, no device work.
Under torch.compile the ranges are skipped (NVTX calls are Python side effects Dynamo cannot trace);
profile eager runs, or CUDA-graph replays whose captured kernels nsys still attributes by name.
"""
import contextlib
import functools
import os

import torch

_NULL = contextlib.nullcontext()
_enabled = os.environ.get("SHORTCUT_NVTX", "0") == "1"


def enable_nvtx(on=True):
    """Switch NVTX ranges on or off for the whole process. Returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(on)
    return previous


def nvtx_enabled():
    return _enabled


@functools.lru_cache(None)
def _nvtx_package():
    """The nvtx module, or None where it is not installed (looked up once)."""
    try:
        import nvtx   # imported on first use: nothing is loaded while profiling is off
    except ImportError:
        return None
    return nvtx


def nvtx_range(name):
    """A context manager marking `name` on the NVTX timeline when enabled; a no-op otherwise (also when no NVTX
    binding exists: neither the nvtx package nor a CUDA build of torch)."""
    if not _enabled or torch.compiler.is_compiling():
        return _NULL
    nvtx = _nvtx_package()
    if nvtx is not None:
        return nvtx.annotate(name, domain="shortcut")
    if torch.cuda.is_available():
        return torch.cuda.nvtx.range(name)
    return _NULL
