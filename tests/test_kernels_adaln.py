"""adaln_modulate / gated_adaln: kernels (Triton interpreter on CPU, compiled on CUDA) against the references.

Accuracy rule (STYLE habit 2): the kernel's error against a float64 reference is at most twice
PyTorch's own error in the kernel's dtype, plus ATOL, for every output and every gradient.
Every test runs under `strict_kernels` (a quiet fallback to the reference fails it) unless it tests a fallback.
"""
import contextlib
import re

import pytest
import torch
from conftest import HAS_CUDA, assert_close_rel, cuda

import shortcut_kernels
from shortcut_kernels import _triton
from shortcut_kernels import adaln as adaln_mod
from shortcut_kernels import adaln_modulate, adaln_modulate_ref, gated_adaln, gated_adaln_ref

pytestmark = pytest.mark.usefixtures("strict_kernels")

DTYPES = [torch.float32, torch.float16]
# T = 1, odd B, D = 1152 (DiT-XL) and other non-powers of two; one T that splits unevenly in the backward.
SHAPES = [(3, 1, 40), (1, 2, 1152), (2, 5, 96), (5, 3, 33), (1, 7, 8)]


def _master(B, T, D, gen, device):
    """float64 inputs on `device`: x with a non-zero mean, the (B, 6D) adaLN output, a branch."""
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64) * 2 + 0.5
    mods = torch.randn(B, 6 * D, generator=gen, dtype=torch.float64) * 0.5
    branch = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    return x.to(device), mods.to(device), branch.to(device)


def _randn(*shape, gen, device, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=dtype).to(device)


def _leaves(tensors, dtypes):
    return [t.detach().to(d).requires_grad_() for t, d in zip(tensors, dtypes)]


def _run(fn, leaves, grad_outs):
    """Outputs of fn(*leaves) and the gradients of sum(out·g) with respect to every leaf."""
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = torch.autograd.grad(outs, leaves, [g.to(o.dtype) for g, o in zip(grad_outs, outs)])
    return [o.detach() for o in outs], grads


def _modulate(op):
    # shift/scale are chunks of one (B, 6D) tensor: strided views, exactly what ShortcutDiT passes.
    return lambda x, mods: op(x, *mods.chunk(6, dim=1)[:2])


def _gated(op):
    def fn(x, mods, branch):
        _, _, gate, shift, scale, _ = mods.chunk(6, dim=1)
        return op(x, branch, gate, shift, scale)
    return fn


def _check(kernel_fn, ref_fn, master, dtypes, grad_outs, names):
    out_k, grads_k = _run(kernel_fn, _leaves(master, dtypes), grad_outs)
    out_s, grads_s = _run(ref_fn, _leaves(master, dtypes), grad_outs)
    out_r, grads_r = _run(ref_fn, _leaves(master, [torch.float64] * len(master)), grad_outs)
    for name, k, s, r in zip(names, out_k, out_s, out_r):
        assert k.dtype == s.dtype, f"{name}: dtype {k.dtype}, reference gives {s.dtype}"
        assert_close_rel(k, r, s, name)
    for i, (k, s, r) in enumerate(zip(grads_k, grads_s, grads_r)):
        assert k.dtype == s.dtype
        assert_close_rel(k, r, s, f"grad of input {i}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_adaln_modulate_matches_reference(shape, dtype, gen, device):
    x, mods, _ = _master(*shape, gen, device)
    gh = _randn(*shape, gen=gen, device=device)
    _check(_modulate(adaln_modulate), _modulate(adaln_modulate_ref), [x, mods], [dtype] * 2, [gh], ["h"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gated_adaln_matches_reference(shape, dtype, gen, device):
    x, mods, branch = _master(*shape, gen, device)
    gx2 = _randn(*shape, gen=gen, device=device)
    gh = _randn(*shape, gen=gen, device=device)
    _check(_gated(gated_adaln), _gated(gated_adaln_ref), [x, mods, branch], [dtype] * 3, [gx2, gh], ["x2", "h"])


def test_widest_rows(gen, device):
    """D = MAX_D, the widest row the kernels take (one row per backward step, 16 warps on a GPU)."""
    D = adaln_mod.MAX_D
    x, mods, branch = _master(1, 3, D, gen, device)
    gx2, gh = _randn(2, 1, 3, D, gen=gen, device=device)
    _check(_gated(gated_adaln), _gated(gated_adaln_ref), [x, mods, branch], [torch.float32] * 3, [gx2, gh],
           ["x2", "h"])


@pytest.mark.parametrize("B, T", [(1, 1), (1, 7), (3, 5), (256, 256), (300, 256), (2, 1000)])
@pytest.mark.parametrize("arch", [None, 90])
def test_backward_grid_covers_every_row_once(B, T, arch):
    """Programs (b, chunk) walk rows [chunk·per_prog, (chunk + 1)·per_prog) ∩ [0, T): every token once, no
    program without one, and per_prog a multiple of the tile height (a tile never crosses into the next
    chunk). arch 90 sizes the grid as on an H100 (132 SMs), None as the interpreter does."""
    for rows in (1, 2):
        with _triton.recording(arch) if arch else contextlib.nullcontext():
            per_prog, chunks = adaln_mod._bwd_grid(B, T, rows, torch.device("meta" if arch else "cpu"))
        assert per_prog % rows == 0
        assert (chunks - 1) * per_prog < T <= chunks * per_prog
        if arch and B * T >= 256 * 256:
            assert 4 * 132 <= B * chunks, "a few programs per SM"


def test_gated_adaln_one_output_used(gen, device):
    """Only h (or only x2) reaches the loss: the other output's gradient is None inside the backward."""
    x, mods, branch = _master(2, 3, 24, gen, device)
    g = _randn(2, 3, 24, gen=gen, device=device)
    for pick in (0, 1):
        fn_k = lambda *a, op=_gated(gated_adaln): op(*a)[pick]       # noqa: E731
        fn_r = lambda *a, op=_gated(gated_adaln_ref): op(*a)[pick]   # noqa: E731
        _check(fn_k, fn_r, [x, mods, branch], [torch.float32] * 3, [g], [f"output {pick}"])


def test_mixed_dtypes_follow_promotion(gen, device):
    """CUDA bf16 autocast case (fp16 on CPU: the interpreter's bf16 is wrong): x fp32, the rest half."""
    x, mods, branch = _master(3, 4, 40, gen, device)
    gx2, gh = _randn(2, 3, 4, 40, gen=gen, device=device)
    dtypes = [torch.float32, torch.float16, torch.float16]
    _check(_gated(gated_adaln), _gated(gated_adaln_ref), [x, mods, branch], dtypes, [gx2, gh], ["x2", "h"])
    _check(_modulate(adaln_modulate), _modulate(adaln_modulate_ref), [x, mods], dtypes[:2], [gh], ["h"])
    # Half x with fp32 modulation promotes the other way.
    _check(_modulate(adaln_modulate), _modulate(adaln_modulate_ref), [x, mods], dtypes[:2][::-1], [gh], ["h"])


def test_out_dtype(gen, device):
    """out_dtype writes h in another dtype (the model's autocast path): same values, rounded once."""
    x, mods, branch = _master(2, 3, 40, gen, device)
    x, mods, branch = x.float(), mods.half(), branch.half()
    _, _, gate, shift, scale, _ = mods.chunk(6, dim=1)
    x2, h = gated_adaln(x, branch, gate, shift, scale, out_dtype=torch.float16)
    assert x2.dtype == torch.float32 and h.dtype == torch.float16
    x2_r, h_r = gated_adaln_ref(x.double(), branch.double(), gate.double(), shift.double(), scale.double())
    assert_close_rel(h, h_r, h_r.half(), "h")
    h1 = adaln_modulate(x, shift, scale, out_dtype=torch.float16)
    assert h1.dtype == torch.float16
    assert_close_rel(h1, adaln_modulate_ref(x.double(), shift.double(), scale.double()),
                     adaln_modulate_ref(x, shift, scale).half(), "h")


def test_strided_modulation_is_read_in_place(gen, monkeypatch, device):
    """shift with a non-unit stride and a transposed scale: correct, and passed to the kernel uncopied."""
    B, T, D = 3, 4, 24
    x = _randn(B, T, D, gen=gen, device=device, dtype=torch.float32).requires_grad_()
    shift_base = _randn(B, 2 * D, gen=gen, device=device, dtype=torch.float32).requires_grad_()
    scale_base = _randn(D, B, gen=gen, device=device, dtype=torch.float32).requires_grad_()
    shift, scale = shift_base[:, ::2], scale_base.t()
    seen = []
    launch = adaln_mod._adaln_fwd

    def spy(x_, branch, gate, shift_, scale_, eps, out_dtype):
        seen.append((shift_.data_ptr(), shift_.stride(), scale_.data_ptr(), scale_.stride()))
        return launch(x_, branch, gate, shift_, scale_, eps, out_dtype)

    monkeypatch.setattr(adaln_mod, "_adaln_fwd", spy)
    h = adaln_modulate(x, shift, scale)
    assert seen == [(shift.data_ptr(), (2 * D, 2), scale.data_ptr(), (1, B))]
    g = _randn(B, T, D, gen=gen, device=device, dtype=torch.float32)
    grads = torch.autograd.grad(h, (x, shift_base, scale_base), g)
    leaves = [v.detach().double().requires_grad_() for v in (x, shift_base, scale_base)]
    h_r = adaln_modulate_ref(leaves[0], leaves[1][:, ::2], leaves[2].t())
    grads_r = torch.autograd.grad(h_r, leaves, g.double())
    h_s = adaln_modulate_ref(x, shift, scale)
    grads_s = torch.autograd.grad(h_s, (x, shift_base, scale_base), g)
    assert_close_rel(h, h_r, h_s, "h")
    for a, r, s in zip(grads, grads_r, grads_s):
        assert_close_rel(a, r, s, "grad")


def test_empty_batch(device):
    x = torch.randn(0, 3, 16, device=device, requires_grad=True)
    m = torch.randn(0, 32, device=device, requires_grad=True)
    h = adaln_modulate(x, *m.chunk(2, dim=1))
    assert h.shape == (0, 3, 16)
    h.sum().backward()
    assert x.grad.shape == x.shape and m.grad.shape == m.shape


def test_references_gradcheck(gen, device):
    x = _randn(3, 2, 5, gen=gen, device=device).requires_grad_()
    m = _randn(3, 15, gen=gen, device=device).requires_grad_()
    br = _randn(3, 2, 5, gen=gen, device=device).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, m: adaln_modulate_ref(x, *m.chunk(3, dim=1)[:2]), (x, m))
    assert torch.autograd.gradcheck(lambda x, m, br: gated_adaln_ref(x, br, *m.chunk(3, dim=1)), (x, m, br))


def test_float64_runs_the_reference(gen, device):
    x = _randn(2, 3, 8, gen=gen, device=device)
    m = _randn(2, 48, gen=gen, device=device)
    _, _, gate, shift, scale, _ = m.chunk(6, dim=1)
    with shortcut_kernels.strict(False):
        assert torch.equal(adaln_modulate(x, shift, scale), adaln_modulate_ref(x, shift, scale))
        for a, b in zip(gated_adaln(x, x, gate, shift, scale), gated_adaln_ref(x, x, gate, shift, scale)):
            assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match=r"adaln_modulate: the Triton kernel cannot run \(dtypes"):
        adaln_modulate(x, shift, scale)   # strict: the fallback is an error


@pytest.mark.skipif(HAS_CUDA, reason="CPU fallback")
def test_cpu_without_interpreter_runs_the_reference(gen, monkeypatch):
    monkeypatch.setattr(_triton, "INTERPRETING", False)   # as if triton were imported without it

    def no_kernel(*args):
        raise AssertionError("the kernel must not launch on CPU outside the interpreter")

    monkeypatch.setattr(adaln_mod, "_adaln_fwd", no_kernel)
    x = torch.randn(2, 3, 8, generator=gen)
    m = torch.randn(2, 48, generator=gen)
    _, _, gate, shift, scale, _ = m.chunk(6, dim=1)
    with shortcut_kernels.strict(False):
        assert torch.equal(adaln_modulate(x, shift, scale), adaln_modulate_ref(x, shift, scale))
        assert torch.equal(gated_adaln(x, x, gate, shift, scale)[1], gated_adaln_ref(x, x, gate, shift, scale)[1])


def test_custom_ops_registration(gen, device):
    """Schema, fake (meta) implementations and autograd registration agree with the real kernels."""
    x = _randn(2, 3, 16, gen=gen, device=device, dtype=torch.float32).requires_grad_()
    m = _randn(2, 96, gen=gen, device=device, dtype=torch.float32).requires_grad_()
    br = _randn(2, 3, 16, gen=gen, device=device, dtype=torch.float32).requires_grad_()
    _, _, gate, shift, scale, _ = m.chunk(6, dim=1)
    tests = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(adaln_mod._adaln_modulate_fwd, (x, shift, scale, 1e-6, None), test_utils=tests)
    torch.library.opcheck(adaln_mod._gated_adaln_fwd, (x, br, gate, shift, scale, 1e-6, torch.float16),
                          test_utils=tests)


def test_errors(gen, device):
    x = _randn(2, 3, 8, gen=gen, device=device, dtype=torch.float32)
    s = _randn(2, 8, gen=gen, device=device, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, D\)"):
        adaln_modulate(x[0], s, s)
    with pytest.raises(ValueError, match=r"shift must have shape \(B, D\) = \(2, 8\)"):
        adaln_modulate(x, s[:1], s)
    with pytest.raises(ValueError, match=r"scale must have shape"):
        adaln_modulate(x, s, s[:, :4])
    with pytest.raises(ValueError, match=r"gate must have shape"):
        gated_adaln(x, x, s[:, None], s, s)
    with pytest.raises(ValueError, match=r"branch must have the shape of x"):
        gated_adaln(x, x[:, :2], s, s, s)
    with pytest.raises(ValueError, match=r"x must be contiguous"):
        adaln_modulate(x.transpose(0, 1), s.new_ones(3, 8), s.new_ones(3, 8))
    with pytest.raises(ValueError, match=r"branch must be contiguous"):
        gated_adaln(x, x.new_ones(3, 2, 8).transpose(0, 1), s, s, s)
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor"):
        adaln_modulate(x.long(), s, s)
    with pytest.raises(TypeError, match=r"scale must be a floating-point tensor"):
        adaln_modulate(x, s, s.int())
    with pytest.raises(ValueError, match=rf"shift is on meta but x is on {re.escape(str(x.device))}"):
        adaln_modulate(x, s.to("meta"), s)
    wide = adaln_mod.MAX_D + 1
    with pytest.raises(ValueError, match=rf"D = {wide} features; .* support D <= 4096 \(wider rows spill"):
        adaln_modulate(x.new_ones(1, 1, wide), s.new_ones(1, wide), s.new_ones(1, wide))
    with pytest.raises(ValueError, match=r"eps must be > 0"):
        adaln_modulate(x, s, s, eps=0.0)
    with pytest.raises(TypeError, match=r"out_dtype must be None or a floating-point dtype"):
        adaln_modulate(x, s, s, out_dtype=torch.int32)


# --------------------------------------------------------------------------------------------------
# GPU: bf16 and the autocast mix at DiT-XL width (D = 1152) and a real token count.
@cuda
@pytest.mark.parametrize("dtypes", [(torch.bfloat16,) * 3, (torch.float32, torch.bfloat16, torch.bfloat16),
                                    (torch.float16,) * 3])
@pytest.mark.parametrize("shape", [(4, 256, 1152), (3, 1, 1152), (2, 256, 768)])
def test_cuda_gated_adaln(shape, dtypes):
    gen = torch.Generator().manual_seed(0)
    x, mods, branch = _master(*shape, gen, "cuda")
    gx2, gh = _randn(2, *shape, gen=gen, device="cuda")
    _check(_gated(gated_adaln), _gated(gated_adaln_ref), [x, mods, branch], dtypes, [gx2, gh], ["x2", "h"])
    _check(_modulate(adaln_modulate), _modulate(adaln_modulate_ref), [x, mods], dtypes[:2], [gh], ["h"])


@cuda
def test_cuda_out_dtype_under_autocast():
    gen = torch.Generator().manual_seed(0)
    x, mods, branch = _master(4, 256, 1152, gen, "cuda")
    x, mods, branch = x.float(), mods.bfloat16(), branch.bfloat16()
    _, _, gate, shift, scale, _ = mods.chunk(6, dim=1)
    x2, h = gated_adaln(x, branch, gate, shift, scale, out_dtype=torch.bfloat16)
    x2_r, h_r = gated_adaln_ref(x.double(), branch.double(), gate.double(), shift.double(), scale.double())
    assert x2.dtype == torch.float32 and h.dtype == torch.bfloat16
    assert_close_rel(x2, x2_r, gated_adaln_ref(x, branch, gate, shift, scale)[0], "x2")
    assert_close_rel(h, h_r, h_r.bfloat16(), "h")
