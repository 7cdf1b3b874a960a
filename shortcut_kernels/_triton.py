"""Triton availability, interpreter mode and the strict switch, shared by the kernel files.

Availability and interpreter mode are read once, at import: Triton fixes its interpreter mode when a kernel is
decorated, and a plain module constant keeps Dynamo from re-tracing an lru_cache'd call on every compile.
"""
import contextlib
import functools
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


# ---------------------------------------------------------------------------------------------------
# Launching. Every kernel launch goes through `launch`: it runs under the tensors' CUDA device (with
# `--device cuda:1` a bare `kernel[grid](...)` would launch on the current device, cuda:0), and it is the
# one place where the ahead-of-time compiler (shortcut_kernels.aot) collects the launches the launchers make.
class _Recording:
    def __init__(self, arch, num_sms):
        self.arch, self.num_sms, self.launches = arch, num_sms, []


_RECORDING = None

# Streaming multiprocessors of the GPUs the launch configurations are chosen for (H100/H200 SXM, A100).
NUM_SMS = {90: 132, 80: 108}


@contextlib.contextmanager
def recording(arch):
    """Inside, `launch` records (kernel, args, kwargs) instead of launching, and `cuda_arch` / `num_sms` answer
    for compute capability `arch` (90 or 80) whatever the tensors' device: run the launchers on meta tensors
    inside it to see every launch they would make on that GPU. Yields the list of launches."""
    global _RECORDING
    before, _RECORDING = _RECORDING, _Recording(arch, NUM_SMS.get(arch, 108))
    try:
        yield _RECORDING.launches
    finally:
        _RECORDING = before


def launch(kernel, grid, device, *args, **kwargs):
    """kernel[grid](*args, **kwargs) on `device` (a torch.device: the CUDA device it runs on is made current)."""
    if _RECORDING is not None:
        _RECORDING.launches.append((kernel, args, kwargs))
    elif device.type == "cuda":
        with torch.cuda.device(device):
            kernel[grid](*args, **kwargs)
    else:
        kernel[grid](*args, **kwargs)


def cuda_arch(device):
    """Compute capability of `device` as 10·major + minor (90 for H100/H200, 80 for A100); None off CUDA."""
    if _RECORDING is not None:
        return _RECORDING.arch
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return _capability(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(None)
def _capability(index):
    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor


def num_sms(device):
    """Streaming multiprocessors of the CUDA `device`."""
    if _RECORDING is not None:
        return _RECORDING.num_sms
    device = torch.device(device)
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(None)
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count
