"""The interpreter flag is read as Triton reads it, and the strict switch turns every silent fallback into an error."""
import pytest
import torch

import shortcut_kernels
from shortcut_kernels import _triton, adaln_modulate, embed_conditioning, gated_adaln, timestep_features


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "on", "yes", "Y", " 1 "])
def test_truthy_spellings(value):
    assert _triton.env_truthy(value)


@pytest.mark.parametrize("value", [None, "", "0", "false", "off", "no", "2"])
def test_falsy_spellings(value):
    assert not _triton.env_truthy(value)


def test_tests_run_kernels_not_references():
    # conftest forces the interpreter on CPU machines; on CUDA machines the kernels run natively.
    assert _triton.can_launch("cuda" if torch.cuda.is_available() else "cpu")


def _adaln_inputs(dtype):
    x = torch.randn(2, 3, 16, dtype=dtype)
    return x, torch.randn(2, 16, dtype=dtype), torch.randn(2, 16, dtype=dtype)


def test_strict_raises_where_adaln_would_fall_back():
    x, shift, scale = _adaln_inputs(torch.float64)            # float64: the kernels do not take it
    ref = adaln_modulate(x, shift, scale)                       # outside strict: the reference, silently
    assert ref.dtype == torch.float64
    with shortcut_kernels.strict():
        assert shortcut_kernels.is_strict()
        with pytest.raises(RuntimeError, match="adaln_modulate.*float64.*strict"):
            adaln_modulate(x, shift, scale)
        with pytest.raises(RuntimeError, match="gated_adaln.*strict"):
            gated_adaln(x, x.clone(), shift, shift, scale)
    assert not shortcut_kernels.is_strict()


def test_strict_raises_where_no_kernel_can_launch(monkeypatch):
    monkeypatch.setattr(_triton, "INTERPRETING", False)        # as if triton were imported without it
    x, shift, scale = _adaln_inputs(torch.float32)
    t, k = torch.rand(2), torch.randint(0, 8, (2,))
    D, F = 16, 8
    mlp = (torch.randn(D, F), torch.randn(D), torch.randn(D, D), torch.randn(D))
    with shortcut_kernels.strict():
        with pytest.raises(RuntimeError, match="adaln_modulate.*cpu"):
            adaln_modulate(x, shift, scale)
        with pytest.raises(RuntimeError, match="timestep_features.*cpu"):
            timestep_features(t, k, dim=F)
        with pytest.raises(RuntimeError, match="embed_conditioning.*cpu"):
            embed_conditioning(t, k, torch.tensor([0, 1]), mlp, mlp, torch.randn(3, D))


def test_strict_is_restored_after_an_error():
    with pytest.raises(ValueError):
        with shortcut_kernels.strict():
            raise ValueError("boom")
    assert not shortcut_kernels.is_strict()
