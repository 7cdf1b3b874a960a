"""Shared test setup: the Triton interpreter on CPU-only machines, the CUDA marker, the tolerance rule."""
import contextlib
import os
import sys

import pytest
import torch

# Without a GPU, Triton kernels run through the interpreter; the variable must be set before triton is
# imported anywhere (SPEC §3).
# Forced, not defaulted: an inherited TRITON_INTERPRET=0 would otherwise turn every kernel test into a test
# of the reference (and the strict switch into a wall of errors).
HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    assert "triton" not in sys.modules, "triton was imported before TRITON_INTERPRET could be set"
    os.environ["TRITON_INTERPRET"] = "1"

# Absolute slack added to the relative rule, per dtype: covers elements where the same-dtype PyTorch
# result happens to be exact (zero error) while the kernel rounds differently.
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-10}


def assert_close_rel(out, ref, same_dtype, name="output", atol=None, factor=2.0):
    """STYLE habit 2: |out - ref| <= factor·max|same_dtype - ref| + atol, with ref computed in fp32/fp64.

    `same_dtype` is PyTorch's own result in the kernel's dtype; its error against `ref` sets the bar.
    """
    ref = ref.double()
    err = (out.double() - ref).abs().max().item()
    base = (same_dtype.double() - ref).abs().max().item()
    tol = factor * base + (ATOL[out.dtype] if atol is None else atol)
    assert err <= tol, f"{name}: max error {err:.3e} > {factor}×{base:.3e} + atol (dtype {out.dtype})"


# A real mark (`pytest -m cuda` selects these tests on a GPU machine: bench/gpu_check.py does), skipped
# without a GPU by the hook below.
cuda = pytest.mark.cuda


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture
def device():
    """The device every non-`cuda` test runs on: CUDA where there is one (the kernels run natively), else the
    CPU (the kernels run through the interpreter). Build every tensor of a test on it."""
    return DEVICE


@pytest.fixture
def strict_kernels():
    """Run the test under shortcut_kernels.strict(): an op that would quietly run its reference raises."""
    import shortcut_kernels
    with shortcut_kernels.strict():
        yield


@torch.no_grad()
def redraw_zero_init(model, generator, std=0.1):
    """Re-draw every exactly-zero parameter element of `model` from N(0, std²), in place; returns the model.

    A fresh ShortcutDiT predicts v̂ = 0 (zero final layer) and, with adaLN-Zero, every block is the identity:
    samples then equal the noise and a sampler, graph or FID test compares noise with noise. This gives the
    final layer, the adaLN projections and the zero biases small random values (the other weights keep their
    initialisation). `generator` is a CPU torch.Generator; the values are moved to each parameter's device.
    """
    for p in model.parameters():
        zero = p == 0
        if zero.any():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32) * std
            p.copy_(torch.where(zero, noise.to(p.device, p.dtype), p))
    return model


def assert_replay_matches(out, ref):
    """A CUDA-graph replay against the same loop run eagerly: bitwise on the CPU (same ops, same order). On a
    GPU cuBLAS may pick another GEMM algorithm inside stream capture, so a last-bits tolerance of the dtype."""
    assert out.dtype == ref.dtype and out.shape == ref.shape, (out.dtype, ref.dtype, out.shape, ref.shape)
    if out.device.type == "cpu":
        assert torch.equal(out, ref), f"max difference {(out.double() - ref.double()).abs().max().item():.3e}"
    else:
        tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[out.dtype]
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


def cli_error(argv, capsys, monkeypatch):
    """Run `shortcut ARGV`, which must fail as bad input does: exit status 2 and one line on stderr,
    `shortcut COMMAND: error: ...`, no traceback. Returns that line."""
    from shortcut.cli import main
    monkeypatch.delenv("SHORTCUT_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    assert err.startswith(f"shortcut {argv[0]}: error: "), err
    return err


@contextlib.contextmanager
def init_from(gen):
    """Module initialisation drawn from `gen` instead of the global RNG (which earlier tests move), so a test
    sees the same weights whatever ran before it; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(2 ** 31, (1,), generator=gen)))
        yield


def load_bench(name):
    """bench/NAME.py as a module. bench/ is not a package and its modules have generic names (common, report):
    loaded by path under unique names instead of putting bench/ on sys.path for every test."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_tiny_dit(gen, device=None, kernels="torch", num_classes=5, **overrides):
    """The "tiny" ShortcutDiT on 3×8×8 inputs with every weight random (its initialisation from `gen`, then
    N(0, 0.1²) added to every parameter: adaLN-Zero and the zero final layer would make v̂ = 0), in eval mode."""
    from shortcut import ModelConfig, ShortcutDiT
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=3, num_classes=num_classes, **overrides)
    with init_from(gen):
        model = ShortcutDiT(cfg, kernels=kernels).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.to(device or DEVICE)

