"""The `shortcut` command: train, demo, eval, sample.

    shortcut demo                                  # digits: shortcut vs flow matching, table + PNG
    shortcut compare [--quick]                     # digits: every method, same budget (the paper's Table 1)
    shortcut train --data digits --steps 2000 --bootstrap-fraction 0.25 --out-dir runs/digits
    shortcut train --objective flow --out-dir runs/flow                        # then a baseline from that teacher:
    shortcut train --objective progressive --teacher runs/flow/checkpoint.pt --out-dir runs/progressive
    shortcut train --objective shortcut --init-from runs/flow-export --out-dir runs/finetuned   # fine-tune
    shortcut eval --ckpt runs/digits/checkpoint.pt --steps 1 4 128
    shortcut sample --ckpt runs/digits/checkpoint.pt --steps 1 --n 10 --out samples.png
"""
import argparse
import copy
import dataclasses
import inspect
import json
import os
import re
import sys

import torch

from .config import OBJECTIVE_NAMES, TOY_2D_DEFAULTS, ObjectiveConfig, TrainConfig
from .data import TOY_2D


class CommandError(Exception):
    """Bad input found by the CLI itself; main() reports it like the library's ValueErrors."""


class ExitError(SystemExit):
    """Exit status 2 after the one-line message on stderr; str() is the message."""

    def __init__(self, message):
        super().__init__(2)
        self.message = message

    def __str__(self):
        return self.message


# What a user's input can cause: bad values (ValueError, from the library's checks), missing, existing or
# unreadable files (OSError), a missing optional extra (ImportError, whose message says what to install).
# Anything else is a bug and keeps its traceback; SHORTCUT_TRACEBACK=1 shows it for these too.
USER_ERRORS = (CommandError, ValueError, OSError, ImportError)


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """argparse's errors as one line, like the others (argparse prints the usage block too)."""
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise ExitError(message)


def _parse_value(text):
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, anything else stays a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _bool(text):
    low = str(text).lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def field_comments(cls):
    """{field: its trailing comment in the dataclass source}: the comments are the flags' help text."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m:
            comments[m.group(1)] = m.group(2).strip()
    return comments


def add_dataclass_args(parser, cls, skip=()):
    """One --flag per dataclass field (underscores become dashes), typed from the default."""
    notes = field_comments(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        text = f"{notes[f.name]} (default {shown})" if f.name in notes else f"default {shown}"
        if isinstance(default, bool):
            parser.add_argument(flag, type=_bool, default=None, metavar="BOOL", help=text)
        elif isinstance(default, tuple):
            parser.add_argument(flag, type=type(default[0]), nargs="+", default=None, help=text)
        elif isinstance(default, (int, float, str)):
            parser.add_argument(flag, type=type(default), default=None, help=text)


def config_from_args(args, base=None):
    """TrainConfig from parsed args: fields left unset keep `base`'s (or the defaults)."""
    base = base or TrainConfig()
    obj = {f.name: getattr(args, f.name) for f in dataclasses.fields(ObjectiveConfig)
           if getattr(args, f.name, None) is not None}
    top = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
           if f.name not in ("objective", "model_overrides") and getattr(args, f.name, None) is not None}
    overrides = dict(base.model_overrides)
    for item in getattr(args, "model", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CommandError(f"--model expects KEY=VALUE (a model setting, e.g. depth=6), got {item!r}")
        overrides[key] = _parse_value(value)
    return dataclasses.replace(base, objective=dataclasses.replace(base.objective, **obj),
                               model_overrides=overrides, **top)


CFG_HELP = ("guidance weight w; default: where the official code applies it (models trained with bootstrap_cfg: "
            "their scale at 128 steps, w = 1 below; others: w = 1)")
FORCE_CFG_HELP = "allow --cfg-scale at step counts whose levels never trained the null label"


def check_guidance(model, steps, cfg_scale, force_cfg):
    """Refuse an explicit --cfg-scale the model was never trained for (or a step count out of range) before
    any sampling: one line, exit 2."""
    from .sampler import sampling_plan
    try:
        for s in steps:
            sampling_plan(model, s, cfg_scale, force_cfg)
    except ValueError as e:
        raise CommandError(str(e)) from None


def build_parser():
    p = Parser(prog="shortcut", description="Shortcut models: one-step diffusion.")
    sub = p.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train a model (all TrainConfig / ObjectiveConfig fields are flags)",
                        description="Train a model. 2-D data (checkerboard, moons, 8gaussians) starts from "
                        "shortcut.config.TOY_2D_DEFAULTS instead of the defaults shown; flags override either.")
    add_dataclass_args(tr, TrainConfig, skip=("objective", "model_overrides"))
    add_dataclass_args(tr, ObjectiveConfig)
    next(a for a in tr._actions if a.dest == "objective").choices = OBJECTIVE_NAMES
    tr.add_argument("--model", action="append", metavar="KEY=VALUE", help="ModelConfig override, repeatable")
    tr.add_argument("--recipe", default=None, help="a paper recipe (TRAIN_PRESETS: celebahq256-dit-b2, "
                    "imagenet256-dit-b2, imagenet256-dit-xl2) as the base; other flags override it; needs --data")

    en = sub.add_parser("encode", help="pre-extract SD-VAE latents of an image folder (needs shortcut[vae])")
    en.add_argument("--data", required=True, help="image folder: DIR/CLASS/*.png (labelled) or DIR/*.png")
    en.add_argument("--out", required=True, help="new folder for the latent shards and manifest.json")
    en.add_argument("--vae", default="stabilityai/sd-vae-ft-mse", help="diffusers AutoencoderKL folder or hub id")
    en.add_argument("--image-size", type=int, default=256, help="center-crop + resize side (0: keep, must match)")
    en.add_argument("--batch-size", type=int, default=64)
    en.add_argument("--flip", type=_bool, default=True, metavar="BOOL", help="also store each image's mirror")
    en.add_argument("--sample", choices=("posterior", "mean"), default="posterior", help="posterior sample or mean")
    en.add_argument("--shard-size", type=int, default=4096, help="entries per safetensors shard")
    en.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    en.add_argument("--scale-factor", type=float, default=None, help="default: the VAE's (0.18215 for SD-VAE)")
    en.add_argument("--seed", type=int, default=0)
    en.add_argument("--num-workers", type=int, default=4)
    en.add_argument("--device", default="auto")

    ex = sub.add_parser("export", help="write a checkpoint's weights + config for sharing (save_pretrained)")
    ex.add_argument("--ckpt", required=True)
    ex.add_argument("--out", required=True)
    ex.add_argument("--weights", nargs="+", choices=("ema", "live"), default=["ema", "live"])

    de = sub.add_parser("demo", help="digits: train shortcut and flow matching, print the quality table")
    de.add_argument("--out-dir", default="runs/demo")
    de.add_argument("--steps", type=int, default=None, help="training steps per run (default: the demo's)")
    de.add_argument("--per-class", type=int, default=100, help="samples per class for evaluation")
    de.add_argument("--device", default="auto")

    co = sub.add_parser("compare", help="digits: every method on the same network and budget, FD and accuracy "
                        "at 1 … 128 steps (the paper's Table 1)", description="Train every method (shortcut, "
                        "flow matching, the paper's baselines, MeanFlow, a shortcut model fine-tuned from the flow "
                        "model) on the digits with the same network, batch and optimizer-step budget, and write "
                        "compare.json and compare.md to --out-dir. About 50 minutes on 2 CPU cores.")
    co.add_argument("--out-dir", default="runs/compare")
    co.add_argument("--quick", action="store_true", help="the whole pipeline at a toy budget (about a minute)")
    co.add_argument("--budget", type=int, default=None, help="optimizer steps per method (default 2000, quick 16)")
    co.add_argument("--teacher-fraction", type=float, default=None,
                    help="share of the budget the two-phase methods spend on the flow teacher (default 0.5)")
    co.add_argument("--per-class", type=int, default=None, help="evaluation samples per class (default 100)")
    co.add_argument("--sample-steps", type=int, nargs="+", default=None,
                    help="sampling step counts (default 1 2 3 4 6 8 16 32 64 128)")
    co.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                    help="a subset of: progressive consistency_distillation reflow flow consistency_training "
                    "live_reflow shortcut meanflow shortcut_from_flow")
    co.add_argument("--device", default="auto")

    ev = sub.add_parser("eval", help="evaluate checkpoints at several step counts (one column group each)")
    ev.add_argument("--ckpt", required=True, nargs="+")
    ev.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128])
    ev.add_argument("--per-class", type=int, default=100)
    ev.add_argument("--live", action="store_true", help="evaluate the live weights instead of the EMA")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--fid", action="store_true", help="Inception FID (needs shortcut[fid]) per step count")
    ev.add_argument("--fid-ref", default=None, help="reference: an .npz (mu, sigma) or image folder / latents")
    ev.add_argument("--fid-ref-out", default=None, help="save the reference statistics computed here (.npz)")
    ev.add_argument("--fid-n", type=int, default=50_000, help="generated samples per step count (FID-50k)")
    ev.add_argument("--fid-ref-n", type=int, default=None, help="reference images used (default: all)")
    ev.add_argument("--image-size", type=int, default=0, help="reference folder: center-crop + resize side")
    ev.add_argument("--batch-size", type=int, default=100)
    ev.add_argument("--cfg-scale", type=float, default=None, help=CFG_HELP)
    ev.add_argument("--force-cfg", action="store_true", help=FORCE_CFG_HELP)
    ev.add_argument("--inception-weights", default=None, help="local pt_inception-2015-12-05-6726825d.pth")
    ev.add_argument("--num-workers", type=int, default=4)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--progress", type=_bool, default=True, metavar="BOOL")

    co = sub.add_parser("convert-official", help="official JAX checkpoint (kvfrans/shortcut-models) -> a "
                        "save_pretrained folder; no JAX needed")
    co.add_argument("path", help="the pickle the official utils/checkpoint.py writes, or the folder holding it")
    co.add_argument("--out", required=True, help="new folder (save_pretrained format)")
    co.add_argument("--input-size", type=int, default=32, help="latent side (default 32: 256-px images, SD-VAE)")
    co.add_argument("--num-heads", type=int, default=None, help="attention heads (default: DiT preset by width)")
    co.add_argument("--weights", nargs="+", choices=("ema", "live"), default=["ema", "live"],
                    help="trees to write: ema = params_ema, live = params (default both)")

    sa = sub.add_parser("sample", help="write a PNG of samples from a checkpoint")
    sa.add_argument("--ckpt", required=True)
    sa.add_argument("--steps", type=int, nargs="+", default=[1])
    sa.add_argument("--n", type=int, default=10, help="samples per row")
    sa.add_argument("--cfg-scale", type=float, default=None, help=CFG_HELP)
    sa.add_argument("--force-cfg", action="store_true", help=FORCE_CFG_HELP)
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--out", default="samples.png")
    sa.add_argument("--graph", action="store_true", help="CUDA-graph sampler (falls back to eager on CPU)")
    sa.add_argument("--device", default="auto")
    return p


def main(argv=None):
    """The `shortcut` command. Bad input (a wrong value, a missing or unsafe file) ends with one line on
    stderr and exit status 2, without a traceback."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except USER_ERRORS as e:
        if os.environ.get("SHORTCUT_TRACEBACK"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"shortcut {args.command}: error: {message}", file=sys.stderr)
        raise ExitError(message) from None


def run(args):
    if args.command == "train":
        from .train import train
        result = train(train_config(args))
        if result.rank == 0:   # under torchrun every rank returns the same (reduced) metrics
            print(json.dumps(result.history[-1] if result.history else {}))
    elif args.command == "demo":
        from .demo import run_demo
        run_demo(out_dir=args.out_dir, steps=args.steps, per_class=args.per_class, device=args.device)
    elif args.command == "eval":
        eval_cmd(args)
    elif args.command == "compare":
        compare_cmd(args)
    elif args.command == "sample":
        sample_cmd(args)
    elif args.command == "encode":
        encode_cmd(args)
    elif args.command == "convert-official":
        convert_official_cmd(args)
    elif args.command == "export":
        from .pretrained import save_pretrained
        print(save_pretrained(args.ckpt, args.out, weights=args.weights))


def convert_official_cmd(args):
    """`shortcut convert-official`: a bad checkpoint (ConvertError, a ValueError) is one line on stderr through
    main's error path, exit status 2, nothing written."""
    from .convert import convert_official
    print(convert_official(args.path, args.out, input_size=args.input_size, num_heads=args.num_heads,
                           weights=args.weights))


def train_config(args):
    """The TrainConfig of `shortcut train ARGS`: flags over a base, which is the recipe (--recipe), the run's
    own config (--resume), TOY_2D_DEFAULTS (2-D data) or the TrainConfig defaults."""
    if args.resume and args.init_from:
        raise CommandError(f"--init-from ({args.init_from}) and --resume exclude each other: a resumed run keeps "
                           f"its own weights (drop --init-from to resume, or start a new --out-dir)")
    base = None
    if args.recipe:
        if args.data is None:
            raise CommandError("--recipe needs --data (an image folder or latents:DIR from `shortcut encode`)")
        base = TrainConfig.recipe(args.recipe, data=args.data)
    elif args.resume:
        base = _resumed_config(args.out_dir or TrainConfig().out_dir)
    elif args.data in TOY_2D:
        base = TrainConfig(data=args.data, **copy.deepcopy(TOY_2D_DEFAULTS))
    return config_from_args(args, base)


def _resumed_config(out_dir):
    """`--resume`: the run's own TrainConfig from its checkpoint, so flags not given keep the run's values
    (resuming with the defaults would silently change lr, batch size, EMA, ...). Memory-mapped: no weights
    are read. Its init_from is dropped: a resumed run continues from its own weights (the checkpoint keeps
    where they first came from)."""
    from .train import CHECKPOINT, load_checkpoint
    path = os.path.join(out_dir, CHECKPOINT)
    if not os.path.exists(path):
        raise FileNotFoundError(f"--resume: no checkpoint at {path} (pass the run's --out-dir)")
    return TrainConfig.from_dict({**load_checkpoint(path, mmap=True)["config"], "init_from": "", "resume": True})


def compare_cmd(args):
    """`shortcut compare`: settings from the defaults (or --quick's), flags over them."""
    from .compare import METHOD_NAMES, CompareSettings, run_compare
    settings = CompareSettings.quick() if args.quick else CompareSettings()
    given = {"budget": args.budget, "teacher_fraction": args.teacher_fraction, "per_class": args.per_class,
             "steps": tuple(args.sample_steps) if args.sample_steps else None}
    settings = dataclasses.replace(settings, **{k: v for k, v in given.items() if v is not None})
    run_compare(args.out_dir, settings, tuple(args.methods or METHOD_NAMES), device=args.device,
                progress=not args.quick)


def eval_cmd(args):
    """`shortcut eval`: digits (accuracy, FD) or 2-D (energy, SWD, support, coverage, spread) metrics per step
    count; --fid for images."""
    from .eval import METRICS_2D, METRICS_DIGITS, evaluate_2d, evaluate_digits, format_table
    from .train import resolve_device
    if args.fid:
        return fid_cmd(args)
    if args.cfg_scale is not None or args.force_cfg:
        raise CommandError("--cfg-scale / --force-cfg apply to --fid only: the digits and 2-D metrics sample "
                           "each model with its own guidance policy")
    device = resolve_device(args.device)
    results, metrics = {}, None
    for ckpt in args.ckpt:
        model, info, _ = load_for_sampling(ckpt, device, live=args.live)
        name = os.path.basename(os.path.abspath(ckpt if os.path.isdir(ckpt) else os.path.dirname(ckpt)))
        if info["name"] == "digits":
            results[name] = evaluate_digits(model, args.steps, per_class=args.per_class, device=device)
            kind = METRICS_DIGITS
        elif info["name"] in TOY_2D:
            results[name] = evaluate_2d(model, info["name"], args.steps, device=device)
            kind = METRICS_2D
        else:
            raise CommandError(f"no built-in metric for data {info['name']!r} ({ckpt}); use --fid for images")
        if metrics not in (None, kind):
            raise CommandError(f"--ckpt: checkpoints of different kinds of data cannot share a table ({ckpt})")
        metrics = kind
    print(format_table(results, metrics))


def encode_cmd(args):
    from .encode import encode_folder
    from .train import resolve_device
    man = encode_folder(args.data, args.out, args.vae, image_size=args.image_size, batch_size=args.batch_size,
                        flip=args.flip, mode=args.sample, shard_size=args.shard_size, dtype=args.dtype,
                        scale_factor=args.scale_factor, seed=args.seed, device=resolve_device(args.device),
                        num_workers=args.num_workers)
    print(json.dumps({k: man[k] for k in ("count", "shape", "num_classes", "scale_factor", "vae")}))


def fid_cmd(args):
    """`shortcut eval --fid`: FID of each checkpoint (or pretrained folder) at each step count."""
    from .eval import format_table
    from .fid import evaluate_fid, inception_features, reference_stats
    from .train import resolve_device
    if not args.fid_ref:
        raise CommandError("--fid needs --fid-ref: an .npz with mu/sigma, or the image folder to compute it from")
    device = resolve_device(args.device)
    results = {}
    ref = None
    for ckpt in args.ckpt:
        model, info, decode = load_for_sampling(ckpt, device, live=args.live)
        check_guidance(model, args.steps, args.cfg_scale, args.force_cfg)
        if ref is None:
            try:
                features = inception_features(device, args.inception_weights)
            except (RuntimeError, FileNotFoundError) as e:
                raise CommandError(f"--fid: {e}") from None
            ref = reference_stats(args.fid_ref, features, image_size=args.image_size, n=args.fid_ref_n,
                                  batch_size=args.batch_size, num_workers=args.num_workers, progress=args.progress,
                                  save=args.fid_ref_out)
        name = os.path.basename(os.path.abspath(ckpt if os.path.isdir(ckpt) else os.path.dirname(ckpt)))
        results[name] = evaluate_fid(model, features, ref, args.steps, args.fid_n, tuple(info["shape"]),
                                     info["num_classes"], args.batch_size, args.cfg_scale, decode, args.seed,
                                     device, args.progress, args.force_cfg)
    print(format_table(results, ["fid"]))


def load_for_sampling(path, device, live=False):
    """(model, data_info, decode) from a checkpoint file or a save_pretrained folder; decode maps samples to
    images (the VAE for latent models, identity otherwise). The model carries the objective it was trained
    with (`model.objective`), so `shortcut.sample` picks its sampler."""
    from .pretrained import from_pretrained
    from .train import checkpoint_data_info, load_checkpoint, model_from_checkpoint
    if os.path.isdir(path):
        model = from_pretrained(path, weights="live" if live else "ema")
        info = model.data_info
    else:
        ckpt = load_checkpoint(path)
        model, _ = model_from_checkpoint(ckpt, use_ema=not live)   # carries the checkpoint's objective
        info = checkpoint_data_info(ckpt)
    model = model.to(device)
    decode = None
    if info.get("latent"):
        from .encode import load_vae, vae_decode
        vae, scale = load_vae(info["latent"]["vae"], device), info["latent"]["scale_factor"]
        decode = lambda z: vae_decode(vae, z, scale)   # noqa: E731
    return model, info, decode


def sample_cmd(args):
    """`shortcut sample`: a PNG grid, one row per step count (latent models decoded with their VAE)."""
    from .eval import grid_image, scatter_image
    from .sampler import sample
    from .train import resolve_device
    device = resolve_device(args.device)
    model, info, decode = load_for_sampling(args.ckpt, device)
    check_guidance(model, args.steps, args.cfg_scale, args.force_cfg)
    shape, num_classes = tuple(info["shape"]), info["num_classes"]
    g = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.n, *shape, generator=g).to(device)
    y = (torch.arange(args.n, device=device) % num_classes) if num_classes else None
    if args.graph and device.type != "cuda":
        print("--graph needs CUDA; sampling eagerly on the CPU", file=sys.stderr)
    rows = []
    for s in args.steps:
        if args.graph and device.type == "cuda":
            from .graph import GraphSampler
            # The sampler's dtype (bf16 under autocast for an fp32 checkpoint) is the fast path; it casts the noise.
            gs = GraphSampler(model, batch_size=args.n, steps=s, cfg_scale=args.cfg_scale, force_cfg=args.force_cfg)
            # A consistency-training model re-noises between steps: in the graph, from --seed's seeded streams.
            x = gs(noise, y, seed=args.seed) if gs.plan.rule == "consistency" and s > 1 else gs(noise, y)
        else:
            # Re-noising of consistency-training models (unused by the others): its own stream of --seed.
            renoise = torch.Generator().manual_seed(args.seed + 1)
            x = sample(model, noise, s, y=y, cfg_scale=args.cfg_scale, force_cfg=args.force_cfg, generator=renoise)
        rows.append((decode(x) if decode else x).float().cpu())
    img = grid_image(rows) if len(shape) == 3 else scatter_image(rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    img.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
