"""`shortcut convert-official`: a synthetic official checkpoint (flax names and layouts, pickled the way the
official utils/checkpoint.py does, with flax / optax / jax classes that are NOT importable at load time)
converts into a save_pretrained folder whose network equals an independent NumPy evaluation of the official
forward; hostile pickles are refused without running anything; bad input is one line, exit 2, no folder."""
import collections
import contextlib
import json
import os
import pickle
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch

from shortcut import from_pretrained
from shortcut.cli import main
from shortcut.convert import (ConvertError, UnsafePickleError, convert_official, infer_config, load_official,
                              official_trees)

D, DEPTH, HEADS, P, C, N, CLASSES, MLP, FREQ = 32, 2, 2, 2, 4, 8, 3, 128, 256


# ------------------------------------------------------------------------------------------------------
# The official network, from its definitions (official model.py, math_utils.py), in float64 NumPy.

def official_params(rng, width=D, depth=DEPTH, mlp=MLP, classes=CLASSES, make=None):
    """A parameter tree with the official flax names and layouts (Dense kernel (in, out), conv HWIO)."""
    make = make or (lambda shape, std: (rng.standard_normal(shape) * std).astype(np.float32))

    def dense(n_in, n_out, gain=1.0):
        return {"kernel": make((n_in, n_out), gain / np.sqrt(n_in)), "bias": make((n_out,), 0.1)}

    tree = {"PatchEmbed_0": {"Conv_0": {"kernel": make((P, P, C, width), 1 / np.sqrt(P * P * C)),
                                        "bias": make((width,), 0.1)}},
            "TimestepEmbedder_0": {"Dense_0": dense(FREQ, width), "Dense_1": dense(width, width)},
            "TimestepEmbedder_1": {"Dense_0": dense(FREQ, width), "Dense_1": dense(width, width)},
            "LabelEmbedder_0": {"Embed_0": {"embedding": make((classes + 1, width), 1.0)}},
            "FinalLayer_0": {"Dense_0": dense(width, 2 * width, 0.5), "Dense_1": dense(width, P * P * C)},
            "Embed_0": {"embedding": make((256, 1), 1.0)}}
    for i in range(depth):
        # q and k (Dense_2, Dense_1) scaled up so that the attention pattern is far from uniform.
        tree[f"DiTBlock_{i}"] = {"Dense_0": dense(width, 6 * width, 0.5), "Dense_1": dense(width, width, 3.0),
                                 "Dense_2": dense(width, width, 3.0), "Dense_3": dense(width, width),
                                 "Dense_4": dense(width, width),
                                 "MlpBlock_0": {"Dense_0": dense(width, mlp), "Dense_1": dense(mlp, width)}}
    return tree


def official_forward(prm, x, t, dt, y, num_heads):
    """The official DiT.__call__ (train=False) on NHWC x, in float64 (float32 weights promote): (B, H, W, C)."""

    def dense(p, h):
        return h @ p["kernel"] + p["bias"]

    def silu(h):
        return h / (1 + np.exp(-h))

    def gelu(h):   # flax nn.gelu: approximate=True (tanh)
        return 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))

    def layer_norm(h):   # flax LayerNorm(use_bias=False, use_scale=False): eps 1e-6
        mu = h.mean(-1, keepdims=True)
        return (h - mu) / np.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + 1e-6)

    def modulate(h, shift, scale):   # model.py's own modulate (no clipping) shadows math_utils'
        return h * (1 + scale[:, None]) + shift[:, None]

    def timestep(p, s, dim=FREQ, max_period=10000):
        freqs = np.exp(-np.log(max_period) * np.arange(dim // 2) / (dim // 2))
        args = s.astype(np.float64)[:, None] * freqs[None]
        return dense(p["Dense_1"], silu(dense(p["Dense_0"], np.concatenate([np.cos(args), np.sin(args)], -1))))

    def sincos_1d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    B, H, W, ch = x.shape
    kernel = prm["PatchEmbed_0"]["Conv_0"]["kernel"]
    p, width = kernel.shape[0], kernel.shape[3]
    n = H // p
    patches = x.astype(np.float64).reshape(B, n, p, n, p, ch).transpose(0, 1, 3, 2, 4, 5)    # (B, n, n, p, p, C)
    h = np.einsum("bhwijc,ijcd->bhwd", patches, kernel) + prm["PatchEmbed_0"]["Conv_0"]["bias"]
    h = h.reshape(B, n * n, width)
    grid = np.meshgrid(np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64))   # (w, h): w first
    pos = np.concatenate([sincos_1d(width // 2, grid[0]), sincos_1d(width // 2, grid[1])], axis=1)
    h = h + pos[None]
    c = (timestep(prm["TimestepEmbedder_0"], t) + prm["LabelEmbedder_0"]["Embed_0"]["embedding"][y]
         + timestep(prm["TimestepEmbedder_1"], dt))
    dh = width // num_heads
    for i in range(sum(k.startswith("DiTBlock_") for k in prm)):
        blk = prm[f"DiTBlock_{i}"]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = np.split(dense(blk["Dense_0"], silu(c)), 6, -1)
        xm = modulate(layer_norm(h), shift_msa, scale_msa)
        k, q, v = (dense(blk[f"Dense_{j}"], xm).reshape(B, n * n, num_heads, dh) for j in (1, 2, 3))
        w = np.einsum("bqhc,bkhc->bhqk", q / dh, k)
        w = np.exp(w - w.max(-1, keepdims=True))
        w = w / w.sum(-1, keepdims=True)
        o = np.einsum("bhqk,bkhc->bqhc", w, v).reshape(B, n * n, width)
        h = h + gate_msa[:, None] * dense(blk["Dense_4"], o)
        xm = modulate(layer_norm(h), shift_mlp, scale_mlp)
        h = h + gate_mlp[:, None] * dense(blk["MlpBlock_0"]["Dense_1"], gelu(dense(blk["MlpBlock_0"]["Dense_0"], xm)))
    shift, scale = np.split(dense(prm["FinalLayer_0"]["Dense_0"], silu(c)), 2, -1)
    h = dense(prm["FinalLayer_0"]["Dense_1"], modulate(layer_norm(h), shift, scale))
    h = np.einsum("bhwpqc->bhpwqc", h.reshape(B, n, n, p, p, ch))
    return h.reshape(B, n * p, n * p, ch)


# ------------------------------------------------------------------------------------------------------
# Pickling like the official code: flax / optax / jax classes under their real module names, installed in
# sys.modules only while pickling (none of those packages exists here, and the loader must not need them).

class _Box:
    pass


@contextlib.contextmanager
def fake_modules(objects):
    """objects: {"pkg.mod": {name: obj}}; installs the modules (and parents) for the duration."""
    added = []
    for dotted, members in objects.items():
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        for attr, obj in members.items():
            setattr(sys.modules[dotted], attr, obj)
            if isinstance(obj, (type, types.FunctionType)):
                obj.__module__, obj.__qualname__ = dotted, attr
    try:
        yield
    finally:
        for name in added:
            del sys.modules[name]


def _official_classes():
    """Stand-ins with the pickling behaviour of flax FrozenDict (reduce to FrozenDict(dict)), optax states
    (namedtuples), and jax.Array (reduce to jax._src.array._reconstruct_array(numpy reduce, aval state))."""
    class FrozenDict:
        def __init__(self, d):
            self._dict = d

        def __reduce__(self):
            return FrozenDict, (self._dict,)

    def _reconstruct_array(fun, args, arr_state, aval_state):
        raise AssertionError("never called: the loader has its own")

    class ArrayImpl:
        def __init__(self, a):
            self._value = a

        def __reduce__(self):
            fun, args, arr_state = self._value.__reduce__()
            return _reconstruct_array, (fun, args, arr_state, {"weak_type": False})

    adam = collections.namedtuple("ScaleByAdamState", ["count", "mu", "nu"])
    empty = collections.namedtuple("EmptyState", [])
    return {"flax.core.frozen_dict": {"FrozenDict": FrozenDict}, "optax._src.transform": {"ScaleByAdamState": adam},
            "optax._src.base": {"EmptyState": empty},
            "jax._src.array": {"_reconstruct_array": _reconstruct_array, "ArrayImpl": ArrayImpl}}


def official_pickle(live, ema, step=1000, protocol=4):
    """Bytes of {"train_state": {params, params_ema, opt_state, step}, "_timestamp"} as the official writer
    makes them: params as plain dicts of numpy arrays (process_allgather), params_ema as nested FrozenDicts
    of jax arrays, opt_state as optax namedtuples."""
    classes = _official_classes()
    with fake_modules(classes):
        frozen = classes["flax.core.frozen_dict"]["FrozenDict"]
        jax_array = classes["jax._src.array"]["ArrayImpl"]

        def freeze(tree, leaf):
            return frozen({k: freeze(v, leaf) for k, v in tree.items()}) if isinstance(tree, dict) else leaf(tree)

        zeros = freeze(live, np.zeros_like)
        opt = (classes["optax._src.transform"]["ScaleByAdamState"](np.asarray(step, np.int32), zeros, zeros),
               classes["optax._src.base"]["EmptyState"]())
        state = {"params": live, "params_ema": freeze(ema, jax_array), "opt_state": opt,
                 "step": np.asarray(step, np.int32)}
        return pickle.dumps({"train_state": state, "_timestamp": time.time()}, protocol=protocol)


def write_official(root, data, name="ckpt_1000"):
    """The official layout: folder <name> holding <name>.tmp (utils/checkpoint.py moves the temp file in)."""
    folder = os.path.join(root, name)
    os.makedirs(folder)
    with open(os.path.join(folder, name + ".tmp"), "wb") as f:
        f.write(data)
    return folder


@pytest.fixture(scope="module")
def trees():
    rng = np.random.default_rng(0)
    return official_params(rng), official_params(rng)   # live, EMA: different


@pytest.fixture(scope="module")
def converted(trees, tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    src = write_official(str(root), official_pickle(*trees))
    out = str(root / "converted")
    assert main(["convert-official", src, "--out", out, "--num-heads", str(HEADS), "--input-size", str(N)]) is None
    return out


def _inputs(rng, B=5):
    x = rng.standard_normal((B, N, N, C)).astype(np.float32)
    t = rng.random(B).astype(np.float32)
    dt = rng.integers(0, 8, B)
    y = np.concatenate([rng.integers(0, CLASSES, B - 1), [CLASSES]])   # the null label too
    return x, t, dt, y


# ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights, tree", [("ema", 1), ("live", 0)])
def test_converted_model_equals_official_forward(converted, trees, weights, tree, device):
    model = from_pretrained(converted, weights=weights, device=device)
    x, t, dt, y = _inputs(np.random.default_rng(1))
    ref = official_forward(trees[tree], x, t, dt, y, HEADS)
    with torch.no_grad():
        out = model(torch.from_numpy(x).permute(0, 3, 1, 2).to(device), torch.from_numpy(t).to(device),
                    torch.from_numpy(dt).to(device), torch.from_numpy(y).to(device))
    out = out.permute(0, 2, 3, 1).double().cpu().numpy()
    assert np.abs(ref).max() > 0.5 and ref.std(axis=0).mean() > 0.1, "the reference must not be trivial"
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert rel <= 1e-5, f"{weights}: max relative error {rel:.2e}"


def test_folder_contents(converted):
    assert sorted(os.listdir(converted)) == ["config.json", "ema.safetensors", "model.safetensors"]
    with open(os.path.join(converted, "config.json")) as f:
        config = json.load(f)
    mc = config["model_config"]
    assert (mc["hidden_size"], mc["depth"], mc["num_heads"], mc["patch_size"], mc["in_channels"],
            mc["num_classes"], mc["input_size"], mc["mlp_ratio"]) == (D, DEPTH, HEADS, P, C, CLASSES, N, MLP / D)
    assert (mc["attn_scale"], mc["adaln_init"], mc["t_scale"]) == ("head_dim", "xavier", 1.0), "official quirks"
    info = config["data_info"]
    assert info["shape"] == [C, N, N] and info["num_classes"] == CLASSES
    assert info["latent"] == {"vae": "stabilityai/sd-vae-ft-mse", "scale_factor": 0.18215}
    assert config["step"] == 1000
    # The official class-conditional recipe distils w = 1.5 below 128 steps; its null label lives at level 7.
    assert config["guidance"] == {"distilled": True, "scale": 1.5, "null_levels": [7]}
    assert config["objective"] == "shortcut" and from_pretrained(converted).objective == "shortcut"
    assert not any(m.split(".")[0] in ("flax", "jax", "optax", "ml_collections") for m in sys.modules)


def test_live_only_and_protocols(trees, tmp_path):
    live, ema = trees
    for protocol in (2, 5):
        src = str(tmp_path / f"p{protocol}.pkl")
        data = official_pickle(live, ema, protocol=protocol)
        if protocol == 2:   # numpy 1 names its rebuilders numpy.core.*; protocol 2 spells them as text
            assert b"numpy._core.multiarray\n" in data
            data = data.replace(b"numpy._core.", b"numpy.core.")
        with open(src, "wb") as f:
            f.write(data)
        flat, step = official_trees(load_official(src), ("ema", "live"))
        assert step == 1000
        np.testing.assert_array_equal(flat["ema"]["DiTBlock_1/Dense_2/kernel"], ema["DiTBlock_1"]["Dense_2"]["kernel"])
        np.testing.assert_array_equal(flat["live"]["FinalLayer_0/Dense_1/bias"],
                                      live["FinalLayer_0"]["Dense_1"]["bias"])
    out = str(tmp_path / "live")
    convert_official(src, out, input_size=N, num_heads=HEADS, weights=["live"])
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    with pytest.raises(ValueError, match="not 'ema'"):
        from_pretrained(out)
    assert from_pretrained(out, weights="live").cfg.num_heads == HEADS


def test_one_class_is_unconditional(tmp_path):
    """Official CelebA-HQ: num_classes 1 and every label dropped, so the data is unlabelled (samplers and FID
    draw the null label, row 1) while the table keeps its 2 rows."""
    tree = official_params(np.random.default_rng(2), classes=1)
    out = convert_official(write_official(str(tmp_path), official_pickle(tree, tree)), str(tmp_path / "c"),
                           input_size=N, num_heads=HEADS)
    model = from_pretrained(out)
    assert model.num_classes == 1 and model.null_label == 1 and model.data_info["num_classes"] == 0
    assert model.guidance == {"distilled": False, "scale": None, "null_levels": None}


@pytest.mark.parametrize("width, depth, heads", [(384, 12, 6), (768, 12, 12), (1024, 24, 16), (1152, 28, 16)])
def test_heads_by_dit_width(width, depth, heads):
    # Shapes only: broadcast zeros hold no memory, so DiT-XL's tree costs nothing.
    tree = official_params(None, width, depth, 4 * width, make=lambda shape, std: np.broadcast_to(np.float32(0), shape))
    flat = official_trees({"train_state": {"params": tree}}, ("live",))[0]["live"]
    cfg = infer_config(flat)
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads, cfg.input_size, cfg.mlp_ratio) == (width, depth, heads, 32, 4.0)
    assert infer_config(flat, input_size=16, num_heads=8).num_heads == 8


# ------------------------------------------------------------------------------------------------------
# Hostile pickles: refused at the first reference to a callable; nothing runs.

class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _hostile(kind, marker):
    """(payload, the name the refusal must give, fake modules needed while pickling)."""
    if kind == "os.system":
        return _Reduce(os.system, (f"touch {marker}",)), f"{os.system.__module__}.system", {}
    if kind == "eval":
        return _Reduce(eval, (f"open({str(marker)!r}, 'w').close()",)), "builtins.eval", {}
    if kind == "subprocess":
        return _Reduce(subprocess.Popen, (["touch", str(marker)],)), "subprocess.Popen", {}
    # A function in some other module: not a class, not a rebuilder; refused too.
    def _touch(path):
        open(path, "w").close()
    return _Reduce(_touch, (str(marker),)), "somepkg.helpers._touch", {"somepkg.helpers": {"_touch": _touch}}


@pytest.mark.parametrize("kind", ["os.system", "eval", "subprocess", "function"])
def test_code_running_pickle_is_refused(trees, tmp_path, capsys, kind):
    marker = tmp_path / "ran"
    payload, name, modules = _hostile(kind, marker)
    with fake_modules(modules):
        data = pickle.dumps({"train_state": {"params": trees[0], "evil": payload}})
    src = write_official(str(tmp_path), data)
    with pytest.raises(UnsafePickleError, match=f"asks to call {name}, which could run code"):
        load_official(src)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["convert-official", src, "--out", str(out), "--num-heads", "2"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and name in err
    assert not marker.exists() and not out.exists()


def test_classes_become_inert_stand_ins(trees, tmp_path):
    """A class the pickle names is never imported or called, even when importable: its stand-in records."""
    marker = tmp_path / "ran"

    class Boom:
        def __init__(self, *a):
            open(marker, "w").close()

        def __setstate__(self, state):
            open(marker, "w").close()

        def __reduce__(self):
            return Boom, (1, 2), {"k": 3}

    with fake_modules({"ml_collections.config_dict": {"Boom": Boom}}):
        data = pickle.dumps({"train_state": {"params": trees[0], "params_ema": trees[1], "config": Boom.__new__(Boom)}})
        obj = load_official(write_official(str(tmp_path), data))   # the class is importable right now
    stand_in = obj["train_state"]["config"]
    assert type(stand_in).__name__ == "Boom" and type(stand_in) is not Boom
    assert stand_in.args == (1, 2) and stand_in.state == {"k": 3}
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit status 2, nothing written.

def _cli_error(capsys, tmp_path, src, *extra):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["convert-official", str(src), "--out", str(out), *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("shortcut convert-official: error: ") and "\n" not in err, err
    assert not out.exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith("out")], "no temporary folder left behind"
    return err


def test_not_a_pickle(tmp_path, capsys):
    src = tmp_path / "ckpt"
    src.write_text("this is not a pickle\n")
    assert "is not a readable pickle" in _cli_error(capsys, tmp_path, src, "--num-heads", "2")
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "a.tmp").write_bytes(b"x")
    (tmp_path / "two" / "b.tmp").write_bytes(b"x")
    assert "holding 2 files" in _cli_error(capsys, tmp_path, tmp_path / "two", "--num-heads", "2")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"params": {}}))
    assert "expected a dict with 'train_state'" in _cli_error(capsys, tmp_path, tmp_path / "plain.pkl")


def test_not_the_official_dit(trees, tmp_path, capsys):
    live, ema = trees
    bad = {**ema, "DiTBlock_1": {k: v for k, v in ema["DiTBlock_1"].items() if k != "Dense_4"},
           "DiTBlock_0": {**ema["DiTBlock_0"], "Extra_0": {"kernel": np.zeros((2, 2), np.float32)}}}
    src = write_official(str(tmp_path), official_pickle(live, bad))
    err = _cli_error(capsys, tmp_path, src, "--num-heads", "2")
    assert ("params_ema: not the official DiT parameter tree: missing keys ['DiTBlock_1/Dense_4/bias', "
            "'DiTBlock_1/Dense_4/kernel']; unexpected keys ['DiTBlock_0/Extra_0/kernel']") in err
    bad = {k: v for k, v in ema.items() if k != "PatchEmbed_0"}
    src = write_official(str(tmp_path), official_pickle(bad, bad), name="c2")
    assert "missing key PatchEmbed_0/Conv_0/kernel" in _cli_error(capsys, tmp_path, src, "--num-heads", "2")


def test_heads_and_input_size_errors(converted, trees, tmp_path, capsys):
    src = write_official(str(tmp_path), official_pickle(*trees))
    assert "pass --num-heads" in _cli_error(capsys, tmp_path, src)
    assert "--num-heads 5 contradicts the shapes: it must divide the hidden size 32" in \
        _cli_error(capsys, tmp_path, src, "--num-heads", "5")
    assert "--input-size 9 must be a positive multiple of the patch size 2" in \
        _cli_error(capsys, tmp_path, src, "--num-heads", "2", "--input-size", "9")
    with pytest.raises(ConvertError, match="exists and is not an empty folder"):
        convert_official(src, converted, num_heads=2)
