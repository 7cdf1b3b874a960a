"""The Hugging Face habit: model.save_pretrained(dir), ShortcutDiT.from_pretrained(dir); a bare model saved
without weights=; the same folders as shortcut.save_pretrained / shortcut.from_pretrained."""
import json
import os

import pytest
import torch

import shortcut
from shortcut import ModelConfig, ShortcutDiT, ShortcutMLP


def _dit():
    torch.manual_seed(0)
    model = ShortcutDiT(ModelConfig.preset("tiny", input_size=4, in_channels=2, num_classes=3, ignore_k=True))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    return model


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bare_model_methods_and_functions_write_the_same_folder(tmp_path):
    model = _dit()
    a = model.save_pretrained(str(tmp_path / "a"))
    b = shortcut.save_pretrained(model, str(tmp_path / "b"))          # no weights= needed
    assert sorted(os.listdir(a)) == sorted(os.listdir(b)) == ["config.json", "ema.safetensors"]
    assert open(os.path.join(a, "config.json")).read() == open(os.path.join(b, "config.json")).read()
    assert json.load(open(os.path.join(a, "config.json")))["model_config"]["ignore_k"] is True
    for loaded in (ShortcutDiT.from_pretrained(a), shortcut.from_pretrained(b)):
        assert isinstance(loaded, ShortcutDiT) and not loaded.training and loaded.cfg == model.cfg
        assert _same(loaded, model)
    live = model.save_pretrained(str(tmp_path / "live"), weights="live")
    assert _same(ShortcutDiT.from_pretrained(live, weights="live"), model)


def test_mlp_and_class_mismatch(tmp_path):
    torch.manual_seed(0)
    mlp = ShortcutMLP(hidden=16, depth=1, num_classes=2, ignore_k=True)
    d = mlp.save_pretrained(str(tmp_path / "mlp"))
    loaded = ShortcutMLP.from_pretrained(d)
    assert loaded.ignore_k and _same(loaded, mlp)
    with pytest.raises(TypeError, match="holds a ShortcutMLP, not a ShortcutDiT"):
        ShortcutDiT.from_pretrained(d)
    with pytest.raises(TypeError, match="takes a ShortcutDiT or ShortcutMLP"):
        shortcut.save_pretrained(torch.nn.Linear(2, 2), str(tmp_path / "lin"))


def test_data_info_survives_a_round_trip(tmp_path):
    info = {"name": "x", "shape": [2, 4, 4], "num_classes": 3, "classes": ["a", "b", "c"],
            "latent": {"vae": "some/vae", "scale_factor": 0.18215}}
    d = shortcut.save_pretrained(_dit(), str(tmp_path / "a"), data_info=info)
    model = ShortcutDiT.from_pretrained(d)
    again = model.save_pretrained(str(tmp_path / "b"))                # keeps the VAE to decode with
    assert ShortcutDiT.from_pretrained(again).data_info == info
