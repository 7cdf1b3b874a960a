"""NVTX ranges for Nsight Systems, off by default.

    import shortcut.profiling as prof
    prof.enable_nvtx(True)                 # or SHORTCUT_NVTX=1 in the environment
    with prof.nvtx_range("sample"):
        ...

then `nsys profile -t cuda,nvtx python ...` shows the model's ranges (embed = conditioning, patch_embed,
block{i}.attn, block{i}.mlp, final_layer) and whatever the caller adds. Ranges go to the "shortcut" NVTX domain.

When off, `nvtx_range` returns one shared no-op context: no marker, no allocation, no device work.
Under torch.compile the ranges are skipped (NVTX calls are Python side effects Dynamo cannot trace);
profile eager runs, or CUDA-graph replays whose captured kernels nsys still attributes by name.
"""
import contextlib
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


def nvtx_range(name):
    """A context manager marking `name` on the NVTX timeline when enabled; a no-op otherwise."""
    if not _enabled or torch.compiler.is_compiling():
        return _NULL
    import nvtx   # imported on first use: nothing is loaded while profiling is off
    return nvtx.annotate(name, domain="shortcut")
