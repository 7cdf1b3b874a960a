"""official=True initialises q, k and v as the official network's three Dense layers: each block of the fused
(3D, D) weight xavier-uniform over (D, D) (variance 1/D), not one xavier over (3D, D) (variance 1/(2D))."""
import pytest
import torch

from shortcut import ModelConfig, ShortcutDiT


def _qkv(official, D=384):
    cfg = ModelConfig.preset("tiny", official=official, hidden_size=D, num_heads=6, depth=2, input_size=4,
                             in_channels=1, num_classes=2)
    torch.manual_seed(0)
    return [b.attn.qkv.weight.detach() for b in ShortcutDiT(cfg, kernels="torch").blocks], D


@pytest.mark.parametrize("official,var_factor", [(True, 1.0), (False, 0.5)])
def test_qkv_variance(official, var_factor):
    weights, D = _qkv(official)
    bound = (6.0 / (2 * D if official else 4 * D)) ** 0.5          # xavier-uniform: U(-b, b), var b²/3
    for w in weights:
        for block in w.chunk(3):                                  # q, k, v: 3 × (D, D), 147k samples each
            assert block.abs().max() <= bound
            assert block.var().item() == pytest.approx(var_factor / D, rel=0.02)
    assert ModelConfig.preset("DiT-B/2", official=True).qkv_init == "separate"
    assert ModelConfig.preset("DiT-B/2").qkv_init == "fused"
    with pytest.raises(ValueError, match="qkv_init must be 'fused' or 'separate'"):
        ModelConfig(qkv_init="xavier")
