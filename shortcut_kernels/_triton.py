"""Triton availability and interpreter helpers shared by the kernel files.

Both facts are read once, at import: Triton's interpreter mode is fixed when triton is imported, and a plain
module constant keeps Dynamo from re-tracing an lru_cache'd call on every compile.
"""
import os

import torch


def _importable():
    try:
        import triton  # noqa: F401
    except ImportError:   # absent on macOS / Windows wheels
        return False
    return True


HAS_TRITON = _importable()
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available():
    """True when triton imports."""
    return HAS_TRITON


def interpreting():
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1, set before import)."""
    return INTERPRETING


def can_launch(device):
    """Whether a Triton kernel can run on `device`: CUDA, or the CPU under the interpreter."""
    device = torch.device(device)
    return HAS_TRITON and (device.type == "cuda" or (device.type == "cpu" and INTERPRETING))
