"""Convert an official JAX checkpoint (kvfrans/shortcut-models) into a save_pretrained folder. No JAX needed.

    shortcut convert-official checkpoints/imagenet256_dit_b --out dit-b2-in256
    model = shortcut.from_pretrained("dit-b2-in256")           # EMA weights; weights="live" for the others

The pickle is read by a restricted unpickler (`load_official`): numpy arrays and plain containers are
rebuilt, other classes become inert stand-ins, anything else is refused. The network shape is inferred
from the parameter shapes (`infer_config`), the flax tree is renamed and transposed into ShortcutDiT's DiT
key layout (`official_state_dict`), and the folder is written all at once or not at all.
"""
import builtins
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch

from .config import PRESETS, ModelConfig, ObjectiveConfig
from .model import ShortcutDiT
from .pretrained import write_pretrained

# Official utils/stable_vae.py encodes with pcuenq/sd-vae-ft-mse-flax, the Flax port of this VAE, and
# multiplies the latents by its scaling_factor (0.18215); train.py uses the VAE by default (use_stable_vae 1).
OFFICIAL_VAE = {"vae": "stabilityai/sd-vae-ft-mse", "scale_factor": 0.18215}
# Heads are not in the shapes: the DiT presets by width (384 -> 6, 768 -> 12, 1024 -> 16, 1152 -> 16).
HEADS_BY_WIDTH = {w: h for name, (w, _, h) in PRESETS.items() if name.startswith("DiT-")}
# Official trees -> our weight files: "params_ema" is the EMA (official update_ema, rate 0.999).
TREES = {"ema": "params_ema", "live": "params"}


class ConvertError(ValueError):
    """The input is not an official checkpoint this converter can read (one line, names what was expected)."""


class UnsafePickleError(ConvertError):
    """The pickle asks to call something other than a numpy / container rebuilder (it could run code)."""


# ------------------------------------------------------------------------------------------------------
# The restricted unpickler.

class StandIn:
    """An inert placeholder for a class the checkpoint names (flax FrozenDict, optax states, ConfigDict).

    It only records what the pickle hands it (constructor arguments, state, items); no method of the
    original class runs, and nothing is imported. `_origin` is the "module.name" the pickle asked for.
    """
    _origin = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def append(self, value):
        self.items.append(value)

    def extend(self, values):
        self.items.extend(values)

    def __setitem__(self, key, value):
        self.items.append((key, value))

    def __repr__(self):
        return f"<stand-in for {self._origin}>"


def _reconstructor(cls, base, state):
    """copyreg._reconstructor (protocol 0/1 objects) for stand-ins and containers only."""
    if isinstance(cls, type) and issubclass(cls, StandIn):
        obj = cls()
        obj.state = state
        return obj
    if cls in _CONTAINERS.values():
        return cls() if state is None else cls(state)
    raise UnsafePickleError(f"the pickle rebuilds {cls!r} through copyreg, which is not allowed")


def _codecs_encode(text, encoding="utf-8"):
    """_codecs.encode as protocol 2 uses it for bytes: encode(str, 'latin1')."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"the pickle calls _codecs.encode with {type(text).__name__}, {encoding!r}")
    return text.encode("latin-1")


def _numpy_rebuilders():
    try:
        from numpy._core import multiarray, numeric
    except ImportError:   # numpy < 1.26
        from numpy.core import multiarray, numeric
    return multiarray._reconstruct, multiarray.scalar, numeric._frombuffer


_NP_RECONSTRUCT, _NP_SCALAR, _NP_FROMBUFFER = _numpy_rebuilders()


def _jax_array(fun, args, arr_state, aval_state):
    """A pickled jax.Array (jax._src.array._reconstruct_array: numpy's reduce plus aval flags) as numpy."""
    if fun is not _NP_RECONSTRUCT:
        raise UnsafePickleError(f"the pickle rebuilds a jax array through {fun!r}, expected numpy's _reconstruct")
    arr = fun(*args)
    arr.__setstate__(arr_state)
    return arr


_CONTAINERS = {name: getattr(builtins, name) for name in ("dict", "list", "tuple", "set", "frozenset", "bytearray",
                                                        "bytes", "int", "float", "complex", "str", "bool",
                                                        "slice", "object")}
# (module, name) -> what find_class returns. numpy 1 pickles name numpy.core, numpy 2 numpy._core.
_ALLOWED = {
    **{(m, n): v for m in ("builtins", "__builtin__") for n, v in _CONTAINERS.items()},
    ("collections", "OrderedDict"): OrderedDict,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("_codecs", "encode"): _codecs_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(f"numpy.{c}.multiarray", "_reconstruct"): _NP_RECONSTRUCT for c in ("core", "_core")},
    **{(f"numpy.{c}.multiarray", "scalar"): _NP_SCALAR for c in ("core", "_core")},
    **{(f"numpy.{c}.numeric", "_frombuffer"): _NP_FROMBUFFER for c in ("core", "_core")},
    ("jax._src.array", "_reconstruct_array"): _jax_array,
    ("jax._src.device_array", "reconstruct_device_array"): _jax_array,
}
# Modules whose names a checkpoint has no reason to use, and which run code when called: refused outright
# (even class-like names such as subprocess.Popen), so the error says what the pickle tried.
_DENIED = {"os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "shutil", "importlib", "runpy",
           "code", "codeop", "pickle", "_pickle", "marshal", "ctypes", "types", "functools", "operator", "io",
           "_io", "pty", "socket", "multiprocessing", "threading", "_thread", "signal", "webbrowser", "pydoc",
           "tempfile", "pathlib", "glob", "platform", "timeit", "trace", "pdb", "bdb", "cProfile", "profile",
           "asyncio", "concurrent", "inspect", "ast", "commands", "popen2", "torch", "numpy", "copyreg",
           "copy_reg", "_codecs", "codecs", "urllib", "http", "requests"}


class _RestrictedUnpickler(pickle.Unpickler):
    """find_class is the only way a pickle reaches a callable: it hands out the allowed rebuilders, a fresh
    StandIn subclass for a class-like name (CamelCase, from a module not in _DENIED), and refuses the rest."""

    def __init__(self, file):
        super().__init__(file)
        self.stand_ins = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        leaf = name.rpartition(".")[2]
        if module.partition(".")[0] not in _DENIED and leaf[:1].isupper():
            key = (module, name)
            if key not in self.stand_ins:
                self.stand_ins[key] = type(leaf, (StandIn,), {"_origin": f"{module}.{name}", "__module__": __name__})
            return self.stand_ins[key]
        raise UnsafePickleError(f"the pickle asks to call {module}.{name}, which could run code; refused (only "
                                f"numpy arrays, plain containers and inert stand-ins for classes are rebuilt)")


def resolve_path(path):
    """The checkpoint file: PATH itself, or the one file in the folder PATH (the official writer saves
    `<name>/<name>.tmp`: it makes the folder `<name>`, then moves the temporary file into it)."""
    if not os.path.exists(path):
        raise ConvertError(f"PATH {path!r} does not exist")
    if not os.path.isdir(path):
        return path
    files = sorted(f for f in os.listdir(path) if not f.startswith(".") and os.path.isfile(os.path.join(path, f)))
    if len(files) != 1:
        raise ConvertError(f"PATH {path!r} is a folder holding {len(files)} files {files[:5]}; expected exactly one "
                           f"(the pickle the official utils/checkpoint.py writes)")
    return os.path.join(path, files[0])


def load_official(path):
    """The official checkpoint at `path` (file or folder) as a dict, through the restricted unpickler."""
    path = resolve_path(path)
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f).load()
        except ConvertError as e:
            raise type(e)(f"{path}: {e}") from None
        except Exception as e:   # the unpickler raises many kinds (UnpicklingError, EOFError, KeyError, ...)
            raise ConvertError(f"{path} is not a readable pickle ({type(e).__name__}: {e}); expected the file "
                               f"the official utils/checkpoint.py writes") from None


def _mapping(obj):
    """A dict, or the dict inside a stand-in for a mapping class (flax FrozenDict pickles as
    FrozenDict(dict); a dataclass-like object as its __dict__ state); None otherwise."""
    if isinstance(obj, Mapping):
        return obj
    if isinstance(obj, StandIn):
        if len(obj.args) == 1 and isinstance(obj.args[0], Mapping) and not obj.kwargs:
            return obj.args[0]
        state = obj.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], Mapping):   # (dict, slots)
            state = state[1] if state[0] is None else {**state[0], **state[1]}
        if isinstance(state, Mapping):
            inner = state.get("_dict")   # older FrozenDicts: default pickling of their __slots__
            return inner if isinstance(inner, Mapping) else state
    return None


def flatten_params(tree, prefix=""):
    """{"DiTBlock_0/Dense_1/kernel": ndarray} from a nested dict / FrozenDict tree; other leaves are kept."""
    m = _mapping(tree)
    if m is None:
        return {prefix.rstrip("/"): tree}
    flat = {}
    for key, value in m.items():
        flat.update(flatten_params(value, f"{prefix}{key}/"))
    return flat


def official_trees(ckpt, weights=("ema", "live")):
    """({"ema": flat params_ema, "live": flat params} for the requested weights, step) from a loaded checkpoint."""
    top = _mapping(ckpt)
    if top is None or "train_state" not in top:
        got = sorted(map(str, top)) if top is not None else type(ckpt).__name__
        raise ConvertError(f"not an official checkpoint: expected a dict with 'train_state' "
                           f"(utils/checkpoint.py), got {got}")
    state = _mapping(top["train_state"])
    if state is None:
        raise ConvertError(f"not an official checkpoint: 'train_state' is a {type(top['train_state']).__name__}, "
                           f"expected a dict with 'params' and 'params_ema'")
    trees = {}
    for w in weights:
        if TREES[w] not in state:
            raise ConvertError(f"the checkpoint has no {TREES[w]!r} (needed for --weights {w}); its train_state "
                               f"holds {sorted(map(str, state))}")
        tree = state[TREES[w]]
        inner = _mapping(tree)
        if inner is not None and set(inner) == {"params"}:   # a flax variables dict {"params": ...}
            tree = inner["params"]
        trees[w] = flatten_params(tree)
    step = state.get("step")
    try:
        step = int(np.asarray(step)) if step is not None else None
    except (TypeError, ValueError):
        step = None
    return trees, step


# ------------------------------------------------------------------------------------------------------
# Shapes and names. Facts from the official model.py (flax auto-names modules Class_i, counted per class):
#   PatchEmbed_0/Conv_0 (kernel HWIO (p, p, C, D)); TimestepEmbedder_0 = t, TimestepEmbedder_1 = dt (the
#   step level), each Dense_0 (256, D), SiLU, Dense_1 (D, D), sinusoids [cos, sin] of the raw value;
#   LabelEmbedder_0/Embed_0/embedding (num_classes + 1, D); DiTBlock_i: Dense_0 adaLN (D, 6D) split as
#   shift/scale/gate msa, shift/scale/gate mlp, Dense_1 = k, Dense_2 = q, Dense_3 = v (created in that
#   order), Dense_4 attention output, MlpBlock_0/Dense_0, Dense_1 (GELU tanh); FinalLayer_0: Dense_0 adaLN
#   (D, 2D) = shift, scale, Dense_1 (D, p·p·C); Embed_0/embedding (256, 1): log-variances, not used by the
#   output. Dense kernels are (in, out).

def official_shapes(cfg):
    """{flat official key: shape} of the official DiT with cfg's sizes (Embed_0 excluded: optional, unused)."""
    D, p, C = cfg.hidden_size, cfg.patch_size, cfg.in_channels
    mlp = int(D * cfg.mlp_ratio)
    dense = {f"{e}/Dense_0": (cfg.freq_dim, D) for e in ("TimestepEmbedder_0", "TimestepEmbedder_1")}
    dense.update({f"{e}/Dense_1": (D, D) for e in ("TimestepEmbedder_0", "TimestepEmbedder_1")})
    for i in range(cfg.depth):
        b = f"DiTBlock_{i}"
        dense.update({f"{b}/Dense_0": (D, 6 * D), f"{b}/MlpBlock_0/Dense_0": (D, mlp),
                      f"{b}/MlpBlock_0/Dense_1": (mlp, D)})
        dense.update({f"{b}/Dense_{j}": (D, D) for j in range(1, 5)})
    dense.update({"FinalLayer_0/Dense_0": (D, 2 * D), "FinalLayer_0/Dense_1": (D, p * p * C)})
    shapes = {"PatchEmbed_0/Conv_0/kernel": (p, p, C, D), "PatchEmbed_0/Conv_0/bias": (D,),
              "LabelEmbedder_0/Embed_0/embedding": (cfg.num_classes + 1, D)}
    for name, (n_in, n_out) in dense.items():
        shapes.update({f"{name}/kernel": (n_in, n_out), f"{name}/bias": (n_out,)})
    return shapes


UNUSED = {"Embed_0/embedding"}


def _shape(flat, key):
    a = flat.get(key)
    if not isinstance(a, np.ndarray):
        raise ConvertError(f"not the official DiT: missing key {key}; the tree's top-level modules are "
                           f"{sorted({k.split('/')[0] for k in flat})}, expected PatchEmbed_0, TimestepEmbedder_0, "
                           f"TimestepEmbedder_1, LabelEmbedder_0, DiTBlock_0.., FinalLayer_0 (and Embed_0)")
    return a.shape


def infer_config(flat, input_size=32, num_heads=None):
    """The ModelConfig (official quirks) whose shapes the flat official tree has. Heads by width (DiT
    presets) unless num_heads is given; input_size is not in the shapes (the official pos-embed is built
    from the input at every call)."""
    kernel = _shape(flat, "PatchEmbed_0/Conv_0/kernel")
    if len(kernel) != 4 or kernel[0] != kernel[1]:
        raise ConvertError(f"not the official DiT: PatchEmbed_0/Conv_0/kernel has shape {kernel}, expected "
                           f"(p, p, channels, hidden) (HWIO)")
    p, _, C, D = kernel
    depth = 0
    while any(k.startswith(f"DiTBlock_{depth}/") for k in flat):
        depth += 1
    if depth == 0:
        raise ConvertError("not the official DiT: no DiTBlock_0 in the parameter tree")
    mlp = _shape(flat, "DiTBlock_0/MlpBlock_0/Dense_0/kernel")[-1]
    freq = _shape(flat, "TimestepEmbedder_0/Dense_0/kernel")[0]
    classes = _shape(flat, "LabelEmbedder_0/Embed_0/embedding")[0] - 1
    source = f"hidden size {D} (PatchEmbed_0/Conv_0/kernel {kernel})"
    if num_heads is None:
        if D not in HEADS_BY_WIDTH:
            raise ConvertError(f"cannot tell the number of heads of {source}: not a DiT preset width "
                               f"{sorted(HEADS_BY_WIDTH)}; pass --num-heads")
        num_heads = HEADS_BY_WIDTH[D]
    elif not isinstance(num_heads, int) or num_heads < 1 or D % num_heads:
        raise ConvertError(f"--num-heads {num_heads} contradicts the shapes: it must divide the {source}")
    if not isinstance(input_size, int) or input_size < 1 or input_size % p:
        raise ConvertError(f"--input-size {input_size} must be a positive multiple of the patch size {p} "
                           f"(PatchEmbed_0/Conv_0/kernel {kernel})")
    if int(D * (mlp / D)) != mlp:
        raise ConvertError(f"MLP width {mlp} is not int(hidden · ratio) for any ratio ShortcutDiT can hold")
    shape = dict(input_size=input_size, in_channels=C, num_classes=classes, patch_size=p, hidden_size=D,
                 depth=depth, num_heads=num_heads, mlp_ratio=mlp / D, freq_dim=freq)
    try:
        # official=True: q·k/head_dim, xavier adaLN, raw t into the sinusoids; every shape field overridden.
        return ModelConfig.preset("tiny", official=True, **shape)
    except ValueError as e:
        raise ConvertError(f"the shapes give a network ShortcutDiT cannot build: {e}") from None


def check_tree(flat, cfg):
    """Raise ConvertError listing missing, unexpected and mis-shaped keys against the official layout."""
    want = official_shapes(cfg)
    missing = sorted(set(want) - set(flat))
    unexpected = sorted(set(flat) - set(want) - UNUSED)
    wrong = [f"{k} {tuple(np.shape(flat[k]))} (expected {want[k]})" for k in sorted(set(want) & set(flat))
             if not isinstance(flat[k], np.ndarray) or tuple(flat[k].shape) != want[k]]
    if missing or unexpected or wrong:
        parts = [f"{label} {items[:8]}{' …' if len(items) > 8 else ''}" for label, items in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if items]
        raise ConvertError("not the official DiT parameter tree: " + "; ".join(parts))
    bad = [k for k in want if flat[k].dtype.kind != "f"]
    if bad:
        raise ConvertError(f"parameters must be floating point, got {flat[bad[0]].dtype} for {bad[0]}")


def official_state_dict(flat, cfg):
    """ShortcutDiT state_dict (DiT key layout, fp32) from a checked flat official tree."""
    def arr(key):   # a writable fp32 copy only when needed (pickled bytes can rebuild read-only arrays)
        return torch.from_numpy(np.require(flat[key], np.float32, ["C", "W"]))

    def linear(ours, theirs):   # flax Dense kernel (in, out) -> nn.Linear weight (out, in)
        return {f"{ours}.weight": arr(f"{theirs}/kernel").T.contiguous(), f"{ours}.bias": arr(f"{theirs}/bias")}

    sd = {"x_embedder.weight": arr("PatchEmbed_0/Conv_0/kernel").permute(3, 2, 0, 1).contiguous(),   # HWIO -> OIHW
          "x_embedder.bias": arr("PatchEmbed_0/Conv_0/bias"),
          "y_embedder.embedding_table.weight": arr("LabelEmbedder_0/Embed_0/embedding"),
          **linear("final_layer.adaLN_modulation.1", "FinalLayer_0/Dense_0"),
          **linear("final_layer.linear", "FinalLayer_0/Dense_1")}
    for ours, theirs in (("t_embedder", "TimestepEmbedder_0"), ("k_embedder", "TimestepEmbedder_1")):
        sd.update(linear(f"{ours}.mlp.0", f"{theirs}/Dense_0"), **linear(f"{ours}.mlp.2", f"{theirs}/Dense_1"))
    for i in range(cfg.depth):
        b, o = f"DiTBlock_{i}", f"blocks.{i}"
        sd.update(linear(f"{o}.adaLN_modulation.1", f"{b}/Dense_0"), **linear(f"{o}.attn.proj", f"{b}/Dense_4"),
                  **linear(f"{o}.mlp.fc1", f"{b}/MlpBlock_0/Dense_0"),
                  **linear(f"{o}.mlp.fc2", f"{b}/MlpBlock_0/Dense_1"))
        qkv = [f"{b}/Dense_{j}" for j in (2, 1, 3)]   # q, k, v: the official block creates k, q, v in that order
        sd[f"{o}.attn.qkv.weight"] = torch.cat([arr(f"{n}/kernel").T for n in qkv])   # (3D, D), timm/DiT order
        sd[f"{o}.attn.qkv.bias"] = torch.cat([arr(f"{n}/bias") for n in qkv])
    return sd


# ------------------------------------------------------------------------------------------------------

def convert_official(path, out, input_size=32, num_heads=None, weights=("ema", "live"), data_info=None):
    """Write the save_pretrained folder `out` from the official checkpoint at `path` (file or folder).

    weights: which trees to write ("ema" = params_ema, "live" = params). data_info: the folder's data
    description (default: the latents of the official SD-VAE for 4 channels, raw images otherwise).
    Returns `out`. Raises ConvertError (nothing written) for anything that is not an official checkpoint.
    """
    weights = (weights,) if isinstance(weights, str) else tuple(dict.fromkeys(weights))
    if not weights or any(w not in TREES for w in weights):
        raise ConvertError(f"--weights must be one or more of {tuple(TREES)}, got {list(weights)}")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ConvertError(f"--out {out!r} exists and is not an empty folder")
    ckpt = load_official(path)
    trees, step = official_trees(ckpt, weights)
    del ckpt   # the optimizer state is as large as both trees together (DiT-XL: 5.4 GB)
    cfg = infer_config(trees[weights[0]], input_size, num_heads)
    for w in weights:
        try:
            check_tree(trees[w], cfg)
        except ConvertError as e:
            raise ConvertError(f"{TREES[w]}: {e}") from None
    model = ShortcutDiT(cfg, kernels="torch")
    states = {}
    for w in weights:
        states[w] = official_state_dict(trees[w], cfg)
        model.load_state_dict(states[w])   # the mapping must fill every key with the right shape
        trees[w] = None
    C, N = cfg.in_channels, cfg.input_size
    # One class means unconditional (official CelebA-HQ: num_classes 1, every label dropped to the null row
    # 1; row 0 is never trained), so samplers must draw the null label: the data has 0 classes.
    info = data_info or {"name": f"official:{os.path.basename(os.path.normpath(path))}", "shape": [C, N, N],
                         "num_classes": 0 if cfg.num_classes == 1 else cfg.num_classes,
                         "latent": dict(OFFICIAL_VAE) if C == 4 else None, "classes": []}
    # The guidance record of the official README's recipes: ImageNet (1000 classes) distils w = 1.5 into the
    # levels below 128 steps (bootstrap_cfg 1, cfg_scale 1.5); CelebA-HQ is unconditional (every label null).
    recipe = (ObjectiveConfig(bootstrap_cfg=True, bootstrap_cfg_scale=1.5) if info["num_classes"] > 1
              else ObjectiveConfig(class_dropout_prob=1.0))
    extra = {"objective": "shortcut", "guidance": recipe.guidance(info["num_classes"]), "step": step,
             "source": {"kind": "kvfrans/shortcut-models checkpoint", "file": os.path.basename(resolve_path(path)),
                        "trees": {w: TREES[w] for w in weights}}}
    try:
        write_pretrained(out, model, states, info, extra)
    except FileExistsError as e:
        raise ConvertError(f"--out {e}") from None
    return out
