"""Triton availability, interpreter mode and the strict switch, shared by the kernel files.

Availability and interpreter mode are read once, at import: Triton fixes its interpreter mode when a kernel is
decorated, and a plain module constant keeps Dynamo from re-tracing an lru_cache'd call on every compile.
"""
import contextlib
import os

import torch

# Triton's own rule for boolean variables (C++ getenv_bool): these spellings, any case, mean true.
TRUTHY = ("1", "true", "on", "yes", "y")


def env_truthy(value):
    """Whether an environment value reads as true the way Triton reads it ('1', 'true', 'on', 'yes', 'y')."""
    return value is not None and value.strip().lower() in TRUTHY


def _importable():
    try:
        import triton  # noqa: F401
    except ImportError:   # absent on macOS / Windows wheels
        return False
    return True


def _interpreter_on():
    """Triton's own answer when it has one (triton >= 3.4 exposes knobs), else its rule applied to the variable."""
    if HAS_TRITON:
        try:
            from triton import knobs
            return bool(knobs.runtime.interpret)
        except (ImportError, AttributeError):
            pass
    return env_truthy(os.environ.get("TRITON_INTERPRET"))


HAS_TRITON = _importable()
INTERPRETING = _interpreter_on()
_STRICT = False


def triton_available():
    """True when triton imports."""
    return HAS_TRITON


def interpreting():
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET truthy before import)."""
    return INTERPRETING


def can_launch(device):
    """Whether a Triton kernel can run on `device`: CUDA, or the CPU under the interpreter."""
    device = torch.device(device)
    return HAS_TRITON and (device.type == "cuda" or (device.type == "cpu" and INTERPRETING))


def is_strict():
    """Whether ops must run their Triton kernels (see `strict`)."""
    return _STRICT


@contextlib.contextmanager
def strict(enabled=True):
    """Inside, an op that would fall back to its PyTorch reference (no CUDA and no interpreter, a dtype the
    kernel does not take, bf16 under the interpreter, ...) raises instead: tests use it to prove that the
    kernel, not the reference, produced the result they check."""
    global _STRICT
    before, _STRICT = _STRICT, bool(enabled)
    try:
        yield
    finally:
        _STRICT = before


def fallback(op, reason):
    """Called where `op` is about to run its reference instead of its kernel: an error under `strict`."""
    if _STRICT:
        raise RuntimeError(f"{op}: the Triton kernel cannot run ({reason}) and strict mode forbids falling back "
                           f"to the PyTorch reference")
