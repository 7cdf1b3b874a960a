"""Triton availability and interpreter helpers shared by the kernel files."""
import functools
import os

import torch


@functools.lru_cache(None)
def triton_available():
    """True when triton imports (it is absent on macOS/Windows wheels)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting():
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1, set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def can_launch(*tensors):
    """Whether a Triton kernel can run on these tensors: CUDA tensors, or CPU tensors under the interpreter."""
    if not triton_available():
        return False
    dev = tensors[0].device.type
    return dev == "cuda" or (dev == "cpu" and interpreting())
