"""Flash-attention kernels (shortcut_kernels/attention.py) against attention_ref, on CPU through the Triton
interpreter (fp32, fp16) and on CUDA (the same tests compiled, plus bf16 at DiT shapes).

Accuracy rule (STYLE habit 2): |kernel − ref| <= 2·|torch same dtype − ref| + atol, for o, dq, dk, dv, with
the reference in fp64 for fp32 inputs and in fp32 otherwise. Every test runs under `strict_kernels`.
"""
import importlib
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import assert_close_rel, cuda
from shortcut import ModelConfig, ShortcutDiT
from shortcut_kernels import _triton, attention, attention_qkvpacked, attention_ref, flash_attn_available
from shortcut_kernels.attention import _attention_fwd_op, _backward, _forward, _head_blocks

attention_mod = importlib.import_module("shortcut_kernels.attention")   # the package's `attention` is the op
pytestmark = pytest.mark.usefixtures("strict_kernels")
REF_DTYPE = {torch.float32: torch.float64, torch.float16: torch.float32, torch.bfloat16: torch.float32}


def _randn(*shape, gen, device, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)


def _inputs(shape, dtype, gen, device):
    return [_randn(*shape, gen=gen, device=device, dtype=dtype) for _ in range(3)]


def _grads(fn, q, k, v, do):
    """fn's output and (dq, dk, dv) for cotangent do, with fresh leaf copies of q, k, v."""
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    o = fn(*leaves)
    return (o, *torch.autograd.grad(o, leaves, do.to(o.dtype)))


def _check_against_ref(q, k, v, scale, gen):
    """attention(q, k, v) and its gradients vs attention_ref, under the 2× rule."""
    do = _randn(*q.shape, gen=gen, device=q.device)
    rd = REF_DTYPE[q.dtype]
    out = _grads(lambda *a: attention(*a, scale=scale), q, k, v, do)
    same = _grads(lambda *a: attention_ref(*a, scale=scale, upcast=False), q, k, v, do)
    ref = _grads(lambda *a: attention_ref(*a, scale=scale, upcast=False), q.to(rd), k.to(rd), v.to(rd), do)
    for name, o, s, r in zip(("o", "dq", "dk", "dv"), out, same, ref):
        assert o.dtype == q.dtype and o.shape == q.shape
        assert_close_rel(o, r, s, name=name)


# Every T and every head_dim appear with both dtypes and both scales, without the full cross product
# (the interpreter takes ~0.1–1 s per case): (T, head_dim, dtype, scale, B, H).
CASES = [
    (1, 64, torch.float32, "sqrt", 2, 3),
    (7, 128, torch.float32, "head_dim", 1, 2),
    (64, 128, torch.float32, "head_dim", 1, 2),
    (100, 32, torch.float32, "sqrt", 3, 1),
    (256, 72, torch.float32, "head_dim", 1, 1),
    (1, 72, torch.float16, "sqrt", 1, 2),
    (7, 32, torch.float16, "head_dim", 2, 2),
    (64, 72, torch.float16, "sqrt", 1, 2),
    (100, 128, torch.float16, "head_dim", 1, 1),
    (256, 64, torch.float16, "sqrt", 1, 1),
    (33, 40, torch.float32, "sqrt", 1, 2),     # 32 + 16 tiles, 8 masked columns
    (50, 96, torch.float16, "head_dim", 1, 1),  # 64 + 32 tiles, none masked
]


@pytest.mark.parametrize("T, head_dim, dtype, scale_rule, B, H", CASES)
def test_attention_matches_reference(T, head_dim, dtype, scale_rule, B, H, gen, device):
    q, k, v = _inputs((B, H, T, head_dim), dtype, gen, device)
    scale = None if scale_rule == "sqrt" else 1.0 / head_dim
    _check_against_ref(q, k, v, scale, gen)


@pytest.fixture
def first_config(monkeypatch):
    """Each autotuned kernel gets its first candidate only. On a GPU a new head_dim is a new autotune key that
    compiles every candidate (~15 compiles a head_dim); the interpreter runs one config anyway."""
    for key, candidates in list(attention_mod.CONFIGS.items()):
        monkeypatch.setitem(attention_mod.CONFIGS, key, candidates[:1])
    attention_mod._tuned.cache_clear()
    yield
    attention_mod._tuned.cache_clear()


@pytest.mark.parametrize("head_dim", range(attention_mod.MIN_HEAD_DIM, attention_mod.MAX_HEAD_DIM + 1, 8))
def test_every_head_dim_forward_and_backward(head_dim, gen, device, first_config):
    """Every supported head_dim (each its own tiling: one tile, two tiles, a padded tile), fp32, against the
    fp64 reference: o, dq, dk, dv. T = 37: two query and key tiles of 32, the second mostly masked."""
    q, k, v = _inputs((1, 2, 37, head_dim), torch.float32, gen, device)
    _check_against_ref(q, k, v, None, gen)


def test_bh_bucket_is_a_power_of_two_cover():
    """The autotune key sees B·H rounded up to a power of two (at most 1024): the 33 batch sizes of a
    guided bootstrap batch at B 256 (H = 16) make 7 tunings instead of 33."""
    bucket = attention_mod._bh_bucket
    assert [bucket(n) for n in (1, 2, 3, 12, 16, 17, 1000, 1024, 1025, 4096)] == [1, 2, 4, 16, 16, 32, 1024,
                                                                                 1024, 1024, 1024]
    assert len({bucket(16 * b) for b in range(1, 34)}) == 7


def test_config_lists_follow_the_device_architecture():
    """sm_90 and later take the sm_90 lists, every earlier card the sm_80 ones; fp32 its own list; the
    interpreter one config. Each autotuner tunes over exactly its list."""
    cfg = attention_mod.configs
    for kernel in ("fwd", "dkdv", "dq"):
        assert cfg(kernel, 90, torch.bfloat16) == cfg(kernel, 100, torch.float16) == attention_mod.CONFIGS[
            kernel, 90, 16]
        assert cfg(kernel, 80, torch.bfloat16) == cfg(kernel, 86, torch.float16) == attention_mod.CONFIGS[
            kernel, 80, 16]
        assert cfg(kernel, 90, torch.float32) == attention_mod.CONFIGS[kernel, 90, 32]
        assert cfg(kernel, None, torch.float16) == (attention_mod.INTERPRETER_CONFIG,)
        tuned = attention_mod._tuned(kernel, 80, torch.float16)
        assert [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in tuned.configs] == \
            list(attention_mod.CONFIGS[kernel, 80, 16])
    assert attention_mod.CONFIGS["fwd", 80, 16] != attention_mod.CONFIGS["fwd", 90, 16]


def test_launches_pick_the_list_of_the_device(gen):
    """What the launchers hand to `launch` on an sm_80 and an sm_90 GPU (recorded, not run): the autotuner
    of that architecture, and the B·H bucket as BH."""
    q = torch.empty(3, 5, 256, 72, device="meta", dtype=torch.bfloat16)
    lse = torch.empty(3, 5, 256, device="meta")
    for arch in (80, 90):
        with _triton.recording(arch) as launches:
            _forward(q, q, q, q, lse, 0.1)
            _backward(q, q, q, q, q, lse, 0.1, q, q, q)
        fwd, delta, dkdv, dq = (kernel for kernel, _, _ in launches)
        assert fwd is attention_mod._tuned("fwd", arch, torch.float16)
        assert dkdv is attention_mod._tuned("dkdv", arch, torch.float16)
        assert dq is attention_mod._tuned("dq", arch, torch.float16)
        assert launches[0][1][-2] == 16, "BH = 15 rounded up"


def test_very_negative_scores_stay_finite(gen, device):
    """Every score ≈ -100 (lse ≈ -98): padded key columns must not turn into exp(+98) = inf -> NaN.

    Factor 8, not 2: the backward recomputes p = exp2(s − lse) from fp32 scores of size ~144 (base 2),
    ~1e-5 relative error in p, where PyTorch reuses its forward p; dk = scale·dSᵀ·q then carries |q| = 100
    (measured: 4.3× PyTorch's fp32 error here, 1.0× at |s| ≈ 20).
    """
    u = _randn(32, gen=gen, device=device)
    u = u / u.norm()
    k = u.expand(1, 2, 7, 32) + 0.01 * _randn(1, 2, 7, 32, gen=gen, device=device)
    q = -100.0 * u.expand(1, 2, 7, 32).clone()
    v = _randn(1, 2, 7, 32, gen=gen, device=device)
    do = _randn(*q.shape, gen=gen, device=device)
    out = _grads(lambda *a: attention(*a, scale=1.0), q, k, v, do)
    same = _grads(lambda *a: attention_ref(*a, scale=1.0, upcast=False), q, k, v, do)
    ref = _grads(lambda *a: attention_ref(*a, scale=1.0, upcast=False), q.double(), k.double(), v.double(), do)
    for name, o, s, r in zip(("o", "dq", "dk", "dv"), out, same, ref):
        assert torch.isfinite(o).all(), name
        assert_close_rel(o, r, s, name=name, factor=8.0)


def test_head_blocks_cover_head_dim_with_little_padding():
    assert _head_blocks(72) == (64, 16)          # DiT-XL/2: 80 computed columns instead of 128
    assert _head_blocks(72, split=False) == (128, 0)
    assert _head_blocks(64) == (64, 0)
    assert _head_blocks(96) == (64, 32)
    assert _head_blocks(56) == (64, 0)           # 32 + 32 would cost as much as one 64 tile
    assert _head_blocks(16) == (16, 0)
    for hd in range(16, 129, 8):
        d0, d1 = _head_blocks(hd)
        assert d0 + d1 >= hd and (d0 <= hd or d1 == 0)
        assert d0 + d1 <= 1 << (hd - 1).bit_length()
        assert d1 == 0 or d1 >= 16


def test_padded_head_dim_gives_the_same_result(gen, device):
    """The 64 + 16 split and the single 128-wide padded tile compute the same attention (to rounding: the dots
    sum in another order, and on a GPU exp2 is approximate)."""
    q, k, v = _inputs((1, 2, 40, 72), torch.float32, gen, device)
    do = _randn(*q.shape, gen=gen, device=device)
    results = []
    for split in (True, False):
        o = q.new_empty(1, 40, 2, 72).transpose(1, 2)
        lse = q.new_empty(1, 2, 40)
        _forward(q, k, v, o, lse, 0.1, split=split)
        grads = [torch.empty_like(q) for _ in range(3)]
        _backward(do, q, k, v, o, lse, 0.1, *grads, split=split)
        results.append((o, lse, *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_lse_is_the_base2_log_sum_exp_of_scaled_scores(gen, device):
    q, k, v = _inputs((2, 2, 37, 32), torch.float32, gen, device)
    _, lse = _attention_fwd_op(q, k, v, 0.3)
    want = torch.logsumexp(q.double() @ k.double().transpose(-1, -2) * 0.3, dim=-1) * math.log2(math.e)
    torch.testing.assert_close(lse.double(), want, rtol=0, atol=1e-5)


def _fused_qkv(B, T, H, Dh, dtype, gen, device):
    return _randn(B, T, 3, H, Dh, gen=gen, device=device, dtype=dtype)


def test_strided_views_are_read_in_place(gen, device):
    """q, k, v as views of a fused (B, T, 3, H, Dh) projection, and a layout with head_dim strided: the
    kernel reads them through their strides and gives the results of contiguous copies. Equal up to fp32
    rounding, not bit for bit: on a GPU the two layouts are different compiled specialisations."""
    qkv = _fused_qkv(2, 19, 2, 24, torch.float32, gen, device)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous()
    v = _randn(2, 2, 24, 19, gen=gen, device=device).transpose(-1, -2)   # head_dim stride 19
    do = _randn(2, 2, 19, 24, gen=gen, device=device)
    strided = _grads(attention, q, k, v, do)
    dense = _grads(attention, q.contiguous(), k.contiguous(), v.contiguous(), do)
    for a, b in zip(strided, dense):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_output_layout_lets_proj_read_without_copy(gen, device):
    q, k, v = _inputs((2, 3, 11, 32), torch.float32, gen, device)
    o = attention(q, k, v)
    assert o.shape == (2, 3, 11, 32) and o.transpose(1, 2).is_contiguous()
    assert attention_qkvpacked(_fused_qkv(2, 11, 3, 32, torch.float32, gen, device)).is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_qkvpacked_matches_reference(dtype, gen, device):
    B, T, H, Dh = 2, 45, 2, 72
    qkv = _fused_qkv(B, T, H, Dh, dtype, gen, device)
    do = _randn(B, T, H, Dh, gen=gen, device=device, dtype=dtype)

    def run(fn, qkv):
        leaf = qkv.detach().clone().requires_grad_()
        o = fn(leaf)
        return o, torch.autograd.grad(o, leaf, do.to(o.dtype))[0]

    def packed_ref(qkv, upcast=False):
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return attention_ref(q, k, v, scale=1 / Dh, upcast=upcast).transpose(1, 2)

    out = run(lambda x: attention_qkvpacked(x, scale=1 / Dh), qkv)
    same = run(packed_ref, qkv)
    ref = run(packed_ref, qkv.to(REF_DTYPE[dtype]))
    assert out[0].shape == (B, T, H, Dh) and out[1].shape == qkv.shape
    for name, o, s, r in zip(("o", "dqkv"), out, same, ref):
        assert_close_rel(o, r, s, name=name)


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_model_attention_copies_nothing(gen, device):
    """Attention.forward + backward with the Triton backend: the fused qkv goes in and the proj input comes
    out without a transpose copy, and the backward writes one dqkv (no stack of dq, dk, dv)."""
    model = ShortcutDiT(ModelConfig.preset("tiny", input_size=8, in_channels=4, num_classes=10)).to(device)
    attn = model.blocks[0].attn
    x = _randn(2, 16, 32, gen=gen, device=device).requires_grad_()
    with _RecordOps() as rec:
        attn(x, "triton").square().sum().backward()
    copies = [op for op in rec.ops if op in ("aten.clone", "aten.copy_", "aten.contiguous", "aten.stack",
                                             "aten.cat", "aten._to_copy")]
    assert "shortcut_kernels.attention_qkvpacked_fwd" in rec.ops
    assert "shortcut_kernels.attention_qkvpacked_bwd" in rec.ops
    assert not copies, f"copies in the Triton attention path: {copies}"


def _randomize(model, gen):
    # adaLN-Zero and the zero final layer would make the output (and most gradients) exactly zero; weights
    # get std 1/√fan_in so activations (and attention logits) stay O(1) at any width.
    with torch.no_grad():
        for p in model.parameters():
            std = p[0].numel() ** -0.5 if p.dim() > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def test_model_triton_attention_equals_sdpa(gen, device):
    """ShortcutDiT(attention="triton") vs "sdpa" (fp32) vs fp64 SDPA: outputs and every parameter gradient."""
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=4, num_classes=10)
    models = {a: ShortcutDiT(cfg, kernels="torch", attention=a).to(device) for a in ("triton", "sdpa")}
    _randomize(models["sdpa"], gen)
    models["triton"].load_state_dict(models["sdpa"].state_dict())
    ref_model = ShortcutDiT(cfg, kernels="torch", attention="sdpa").to(device).double()
    ref_model.load_state_dict(models["sdpa"].state_dict())
    x = _randn(3, 4, 8, 8, gen=gen, device=device)
    t = torch.rand(3, generator=gen).to(device)
    k, y = torch.tensor([0, 3, 7], device=device), torch.tensor([1, 10, 4], device=device)
    cot = _randn(3, 4, 8, 8, gen=gen, device=device)

    def run(model, x):
        out = model(x, t.to(x.dtype), k, y)
        grads = torch.autograd.grad(out, list(model.parameters()), cot.to(out.dtype))
        return [out, *grads]

    out, same, ref = run(models["triton"], x), run(models["sdpa"], x), run(ref_model, x.double())
    names = ["output"] + [n for n, _ in models["sdpa"].named_parameters()]
    assert out[0].abs().max() > 0
    for name, o, s, r in zip(names, out, same, ref):
        assert_close_rel(o, r, s, name=name)


def test_auto_attention_sends_fp32_to_sdpa(device):
    """attention="auto" with the Triton kernels: 16-bit attention (a half model, or autocast) runs the Triton
    kernel, fp32 attention (the EMA model sampled without autocast) runs SDPA; a named backend is kept."""
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=4, num_classes=10)
    model = ShortcutDiT(cfg, kernels="triton").to(device)
    x = torch.zeros(1, 4, 8, 8, device=device)
    assert model.attention_backend(x) == "sdpa"
    with torch.autocast(device.type, torch.bfloat16):
        assert model.attention_backend(x) == "triton"
    assert model.half().attention_backend(x.half()) == "triton"
    assert ShortcutDiT(cfg, kernels="torch").to(device).attention_backend(x.half()) == "sdpa"
    assert ShortcutDiT(cfg, kernels="triton", attention="triton").to(device).attention_backend(x) == "triton"


def test_compiled_fullgraph_matches_eager(gen, device):
    """Both custom ops inside torch.compile(fullgraph=True), forward and backward."""
    qkv = _fused_qkv(1, 20, 2, 32, torch.float32, gen, device)
    q, k, v = _inputs((1, 2, 20, 32), torch.float32, gen, device)

    def fn(qkv, q, k, v):
        return attention_qkvpacked(qkv, scale=0.2) + attention(q, k, v).transpose(1, 2)

    def run(f):
        leaves = [x.detach().clone().requires_grad_() for x in (qkv, q, k, v)]
        out = f(*leaves)
        out.square().sum().backward()
        return [out] + [x.grad for x in leaves]

    eager, compiled = run(fn), run(torch.compile(fn, fullgraph=True))
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------------------------------
def test_rejects_mismatched_shapes_dtypes_devices(device):
    q = torch.randn(1, 2, 8, 32, device=device)
    with pytest.raises(ValueError, match="same shape"):
        attention(q, q[:, :, :7], q)
    with pytest.raises(ValueError, match="4-D"):
        attention(q[0], q[0], q[0])
    with pytest.raises(TypeError, match="share one dtype"):
        attention(q, q.half(), q)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        attention(q.double(), q.double(), q.double())
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        attention(q, q, q.cpu().numpy())
    with pytest.raises(ValueError, match="one device"):
        attention(q, q.to("meta"), q)
    with pytest.raises(RuntimeError, match="is on meta"):
        attention(*(q.to("meta") for _ in range(3)))


@pytest.mark.parametrize("head_dim", [8, 12, 70, 136])
def test_rejects_unsupported_head_dim(head_dim, device):
    q = torch.randn(1, 1, 4, head_dim, device=device)
    with pytest.raises(ValueError, match=f"head_dim must be a multiple of 8 in \\[16, 128\\], got {head_dim}"):
        attention(q, q, q)
    with pytest.raises(ValueError, match="head_dim must be"):
        attention_qkvpacked(torch.randn(1, 4, 3, 1, head_dim, device=device))


@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf, True, "0.1", torch.tensor(0.1)])
def test_rejects_bad_scale(scale, device):
    q = torch.randn(1, 1, 4, 16, device=device)
    with pytest.raises(ValueError, match="scale must be a positive finite number"):
        attention(q, q, q, scale=scale)


def test_qkvpacked_rejects_bad_layout(device):
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, head_dim\)"):
        attention_qkvpacked(torch.randn(1, 4, 2, 1, 16, device=device))
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, head_dim\)"):
        attention_qkvpacked(torch.randn(4, 3, 1, 16, device=device))


@pytest.mark.skipif(flash_attn_available(), reason="flash-attn is installed")
def test_flash_attn_backend_absent_is_a_clear_error(gen, device):
    model = ShortcutDiT(ModelConfig.preset("tiny", input_size=8, in_channels=4, num_classes=10),
                        kernels="torch", attention="flash_attn").to(device)
    with pytest.raises(RuntimeError, match="needs the flash-attn package"):
        model(torch.randn(1, 4, 8, 8, device=device), torch.rand(1, device=device),
              torch.tensor([0], device=device), torch.tensor([0], device=device))


# ----------------------------------------------------------------------------------------------------
# GPU: bf16 at DiT shapes (T 256 = 32×32 latents, 1024 = 64×64), DiT-B/2 (12 × 64) and DiT-XL/2 (16 × 72).
# ----------------------------------------------------------------------------------------------------
@cuda
@pytest.mark.parametrize("T", [256, 1024])
@pytest.mark.parametrize("H, head_dim", [(12, 64), (16, 72)])
@pytest.mark.parametrize("scale_rule", ["sqrt", "head_dim"])
def test_cuda_bf16_dit_shapes(T, H, head_dim, scale_rule, gen):
    q, k, v = _inputs((2, H, T, head_dim), torch.bfloat16, gen, device="cuda")
    _check_against_ref(q, k, v, None if scale_rule == "sqrt" else 1.0 / head_dim, gen)


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("T, head_dim", [(1, 72), (77, 128), (256, 40), (300, 96)])
def test_cuda_other_dtypes_and_tails(dtype, T, head_dim, gen):
    q, k, v = _inputs((3, 2, T, head_dim), dtype, gen, device="cuda")
    _check_against_ref(q, k, v, None, gen)


@cuda
@pytest.mark.parametrize("H, head_dim", [(12, 64), (16, 72)])
def test_cuda_qkvpacked_bf16_equals_unpacked(H, head_dim, gen):
    qkv = _fused_qkv(4, 256, H, head_dim, torch.bfloat16, gen, device="cuda").requires_grad_()
    q, k, v = (x.detach().clone().requires_grad_() for x in qkv.permute(2, 0, 3, 1, 4).unbind(0))
    do = torch.randn(4, 256, H, head_dim, generator=gen).to("cuda", torch.bfloat16)
    o_packed = attention_qkvpacked(qkv)
    o_packed.backward(do)
    o = attention(q, k, v)
    o.backward(do.transpose(1, 2))
    # The two layouts are different compiled specialisations (strides): equal to a bf16 rounding step.
    tol = dict(rtol=2 ** -7, atol=1e-3)
    torch.testing.assert_close(o_packed, o.transpose(1, 2), **tol)
    torch.testing.assert_close(qkv.grad, torch.stack([q.grad, k.grad, v.grad], 0).permute(1, 3, 0, 2, 4), **tol)


@cuda
def test_cuda_model_bf16_triton_equals_sdpa(gen):
    """DiT-XL-shaped heads (16 × 72) in a 2-block model under bf16 autocast: Triton vs SDPA vs fp32 SDPA."""
    cfg = ModelConfig.preset("DiT-XL/2", input_size=32, in_channels=4, num_classes=10, depth=2)
    sdpa = ShortcutDiT(cfg, kernels="torch", attention="sdpa").cuda()
    _randomize(sdpa, gen)
    triton_model = ShortcutDiT(cfg, kernels="torch", attention="triton").cuda()
    triton_model.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 4, 32, 32, generator=gen).cuda()
    t, k, y = torch.rand(2).cuda(), torch.tensor([0, 7]).cuda(), torch.tensor([1, 10]).cuda()
    with torch.no_grad():
        ref = sdpa(x, t, k, y)
        with torch.autocast("cuda", torch.bfloat16):
            out, same = triton_model(x, t, k, y), sdpa(x, t, k, y)
    assert_close_rel(out.to(torch.bfloat16), ref, same.to(torch.bfloat16))


@cuda
@pytest.mark.skipif(not flash_attn_available(), reason="flash-attn not installed")
def test_cuda_flash_attn_backend_matches_triton(gen):
    from shortcut_kernels import flash_attn_qkvpacked
    qkv = _fused_qkv(2, 256, 16, 72, torch.bfloat16, gen, device="cuda")
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    ref = attention_ref(q.float(), k.float(), v.float()).transpose(1, 2)
    same = attention_ref(q, k, v, upcast=False).transpose(1, 2)
    assert_close_rel(attention_qkvpacked(qkv), ref, same)
    assert_close_rel(flash_attn_qkvpacked(qkv), ref, same)
