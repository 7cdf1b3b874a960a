"""ShortcutDiT (reference path): presets, shapes, init, conditioning, errors."""
import pytest
import torch

from shortcut import ModelConfig, ShortcutDiT
from shortcut.model import get_2d_sincos_pos_embed


def _inputs(cfg, B, gen, device="cpu"):
    x = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen)
    t = torch.rand(B, generator=gen)
    k = torch.randint(0, 8, (B,), generator=gen)
    y = torch.randint(0, cfg.num_classes + 1, (B,), generator=gen)
    return x.to(device), t.to(device), k.to(device), y.to(device)


# DiT paper (Peebles & Xie, Table 1) parameter counts, in millions; ours adds the step-level embedder
# (≈ 0.26·D + D² parameters) and predicts no sigma, so counts agree within 1 %.
@pytest.mark.parametrize("name,millions", [("DiT-S/2", 33.0), ("DiT-B/2", 130.5), ("DiT-L/2", 458.0),
                                           ("DiT-XL/2", 675.0)])
def test_preset_parameter_counts(name, millions):
    cfg = ModelConfig.preset(name, input_size=32, in_channels=4, num_classes=1000)
    with torch.device("meta"):
        n = sum(p.numel() for p in ShortcutDiT(cfg, kernels="torch").parameters())
    assert abs(n / 1e6 - millions) / millions < 0.01, f"{name}: {n / 1e6:.1f} M"


def test_presets_shape():
    xl = ModelConfig.preset("DiT-XL/2")
    assert (xl.hidden_size, xl.depth, xl.num_heads, xl.head_dim, xl.patch_size) == (1152, 28, 16, 72, 2)
    assert ModelConfig.preset("DiT-B/4").patch_size == 4
    off = ModelConfig.preset("DiT-B/2", official=True)
    assert (off.attn_scale, off.adaln_init, off.t_scale) == ("head_dim", "xavier", 1.0)
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.preset("DiT-Z/2")


def test_forward_shape_and_zero_init(gen, device):
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=3, num_classes=5)
    model = ShortcutDiT(cfg, kernels="torch").to(device)
    x, t, k, y = _inputs(cfg, 3, gen, device)
    out = model(x, t, k, y)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out)), "final layer is zero-initialised: v̂ = 0 at init"


def test_conditioning_reaches_output(gen, device):
    """After perturbing the zero-initialised layers, t, k and y each change the output."""
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=3, num_classes=5)
    model = ShortcutDiT(cfg, kernels="torch")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.to(device)
    x, t, k, y = _inputs(cfg, 2, gen, device)
    base = model(x, t, k, y)
    for changed in ((x, t + 0.5, k, y), (x, t, (k + 1) % 8, y), (x, t, k, (y + 1) % 6)):
        assert not torch.allclose(model(*changed), base)


def test_official_switches(gen):
    cfg = ModelConfig.preset("tiny", official=True, input_size=8, in_channels=3, num_classes=5)
    model = ShortcutDiT(cfg, kernels="torch")
    assert model.blocks[0].attn.scale == pytest.approx(1 / cfg.head_dim)
    assert model.blocks[0].adaLN_modulation[1].weight.abs().sum() > 0, "official: xavier adaLN"
    dit = ShortcutDiT(ModelConfig.preset("tiny", input_size=8, in_channels=3, num_classes=5), kernels="torch")
    assert dit.blocks[0].attn.scale == pytest.approx(cfg.head_dim ** -0.5)
    assert dit.blocks[0].adaLN_modulation[1].weight.abs().sum() == 0, "DiT: adaLN-Zero"


def test_block_maths_matches_dit(gen, device):
    """The fused-across-blocks loop equals DiT's per-block formulation."""
    import torch.nn.functional as F
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=3, num_classes=5, adaln_init="xavier")
    model = ShortcutDiT(cfg, kernels="torch")
    with torch.no_grad():
        model.final_layer.linear.weight.normal_(generator=gen)
        model.final_layer.adaLN_modulation[1].weight.normal_(std=0.1, generator=gen)
    model.to(device)
    x, t, k, y = _inputs(cfg, 2, gen, device)
    ln = lambda v: F.layer_norm(v, (v.shape[-1],), eps=1e-6)   # noqa: E731
    mod = lambda v, s, c: v * (1 + c[:, None]) + s[:, None]    # noqa: E731
    h = model.x_embedder(x).flatten(2).transpose(1, 2) + model.pos_embed
    c = model.embed(t, k, y)
    for blk in model.blocks:
        s1, c1, g1, s2, c2, g2 = blk.adaLN_modulation(c).chunk(6, dim=1)
        h = h + g1[:, None] * blk.attn(mod(ln(h), s1, c1))
        h = h + g2[:, None] * blk.mlp(mod(ln(h), s2, c2))
    s, sc = model.final_layer.adaLN_modulation(c).chunk(2, dim=1)
    ref = model.unpatchify(model.final_layer.linear(mod(ln(h), s, sc)))
    torch.testing.assert_close(model(x, t, k, y), ref, rtol=1e-5, atol=1e-5)


def test_pos_embed_matches_dit_formula():
    emb = get_2d_sincos_pos_embed(8, 2)
    assert emb.shape == (4, 8)
    # token 1 is (row 0, col 1): first half encodes the column, second half the row
    assert emb[1, 0] == pytest.approx(0.8414709848)   # sin(1 · ω0)
    assert emb[1, 4] == pytest.approx(0.0)            # sin(0)


def test_state_dict_layout():
    model = ShortcutDiT(ModelConfig.preset("tiny", input_size=8, in_channels=3, num_classes=5), kernels="torch")
    keys = set(model.state_dict())
    for key in ("blocks.0.adaLN_modulation.1.weight", "blocks.1.attn.qkv.weight", "final_layer.linear.weight",
                "t_embedder.mlp.0.weight", "k_embedder.mlp.2.bias", "y_embedder.embedding_table.weight"):
        assert key in keys
    assert model.y_embedder.embedding_table.weight.shape[0] == 6, "num_classes + 1 rows (null label last)"


def test_input_errors(gen, device):
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=3, num_classes=5)
    model = ShortcutDiT(cfg, kernels="torch").to(device)
    x, t, k, y = _inputs(cfg, 2, gen, device)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, 8, 8\)"):
        model(x[:, :2], t, k, y)
    with pytest.raises(ValueError, match=r"t must be a tensor of shape \(2,\)"):
        model(x, t[:1], k, y)
    with pytest.raises(TypeError, match="k must be an integer tensor"):
        model(x, t, k.float(), y)
    with pytest.raises(TypeError, match="t must be a floating-point"):
        model(x, k, k, y)
    with pytest.raises(TypeError, match="y must be an int64"):
        model(x, t, k, y.float())
    with pytest.raises(ValueError, match="y is on meta but x is on"):
        model(x, t, k, y.to("meta"))
    # Label values are checked on CPU tensors only (on a GPU the check would sync every forward): CPU here.
    with pytest.raises(ValueError, match=r"y must hold labels in \[0, 5\]"):
        model.cpu()(x.cpu(), t.cpu(), k.cpu(), torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="kernels must be one of"):
        ShortcutDiT(cfg, kernels="cuda")
    with pytest.raises(ValueError, match="attention must be one of"):
        ShortcutDiT(cfg, attention="xformers")


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_size=9), "divisible by patch_size"),
    (dict(hidden_size=30, num_heads=4), "divisible by num_heads"),
    (dict(attn_scale="cube"), "attn_scale"),
    (dict(depth=0), "depth"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)
