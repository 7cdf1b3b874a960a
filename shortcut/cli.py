"""The `shortcut` command: train, demo, eval, sample.

    shortcut demo                                  # digits: shortcut vs flow matching, table + PNG
    shortcut train --data digits --steps 2000 --bootstrap-fraction 0.25 --out-dir runs/digits
    shortcut eval --ckpt runs/digits/checkpoint.pt --steps 1 4 128
    shortcut sample --ckpt runs/digits/checkpoint.pt --steps 1 --n 10 --out samples.png
"""
import argparse
import dataclasses
import json
import os
import sys

import torch

from .config import ObjectiveConfig, TrainConfig


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


def add_dataclass_args(parser, cls, skip=()):
    """One --flag per dataclass field (underscores become dashes), typed from the default."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, type=_bool, default=None, metavar="BOOL", help=f"default {default}")
        elif isinstance(default, tuple):
            parser.add_argument(flag, type=type(default[0]), nargs=len(default), default=None,
                                help=f"default {' '.join(map(str, default))}")
        elif isinstance(default, (int, float, str)):
            parser.add_argument(flag, type=type(default), default=None, help=f"default {default}")


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
            raise SystemExit(f"--model expects KEY=VALUE (a ModelConfig field), got {item!r}")
        overrides[key] = _parse_value(value)
    return dataclasses.replace(base, objective=dataclasses.replace(base.objective, **obj),
                               model_overrides=overrides, **top)


def build_parser():
    p = argparse.ArgumentParser(prog="shortcut", description="Shortcut models: one-step diffusion.")
    sub = p.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train a model (all TrainConfig / ObjectiveConfig fields are flags)")
    add_dataclass_args(tr, TrainConfig, skip=("objective", "model_overrides"))
    add_dataclass_args(tr, ObjectiveConfig)
    tr.add_argument("--model", action="append", metavar="KEY=VALUE", help="ModelConfig override, repeatable")

    de = sub.add_parser("demo", help="digits: train shortcut and flow matching, print the quality table")
    de.add_argument("--out-dir", default="runs/demo")
    de.add_argument("--steps", type=int, default=None, help="training steps per run (default: the demo's)")
    de.add_argument("--per-class", type=int, default=100, help="samples per class for evaluation")
    de.add_argument("--device", default="auto")

    ev = sub.add_parser("eval", help="evaluate checkpoints at several step counts (one column group each)")
    ev.add_argument("--ckpt", required=True, nargs="+")
    ev.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128])
    ev.add_argument("--per-class", type=int, default=100)
    ev.add_argument("--live", action="store_true", help="evaluate the live weights instead of the EMA")
    ev.add_argument("--device", default="auto")

    sa = sub.add_parser("sample", help="write a PNG of samples from a checkpoint")
    sa.add_argument("--ckpt", required=True)
    sa.add_argument("--steps", type=int, nargs="+", default=[1])
    sa.add_argument("--n", type=int, default=10, help="samples per row")
    sa.add_argument("--cfg-scale", type=float, default=1.0)
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--out", default="samples.png")
    sa.add_argument("--graph", action="store_true", help="CUDA-graph sampler (falls back to eager on CPU)")
    sa.add_argument("--device", default="auto")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "train":
        cfg = config_from_args(args)
        from .train import train
        result = train(cfg)
        print(json.dumps(result.history[-1] if result.history else {}))
    elif args.command == "demo":
        from .demo import run_demo
        run_demo(out_dir=args.out_dir, steps=args.steps, per_class=args.per_class, device=args.device)
    elif args.command == "eval":
        eval_cmd(args)
    elif args.command == "sample":
        sample_cmd(args)


def _load(args, ckpt):
    from .train import model_from_checkpoint, resolve_device
    device = resolve_device(args.device)
    model, cfg = model_from_checkpoint(ckpt, use_ema=not getattr(args, "live", False))
    return model.to(device), cfg, device


def eval_cmd(args):
    from .data import make_dataset
    from .eval import evaluate_2d, evaluate_digits, format_table
    results, metrics = {}, None
    for ckpt in args.ckpt:
        model, cfg, device = _load(args, ckpt)
        name = os.path.basename(os.path.dirname(os.path.abspath(ckpt))) or ckpt
        if cfg.data == "digits":
            results[name] = evaluate_digits(model, args.steps, per_class=args.per_class, device=device)
            kind = ["accuracy", "fd"]
        elif not make_dataset(cfg.data).is_image:
            results[name] = evaluate_2d(model, cfg.data, args.steps, device=device)
            kind = ["energy", "swd"]
        else:
            raise SystemExit(f"no evaluation for data {cfg.data!r} ({ckpt})")
        if metrics not in (None, kind):
            raise SystemExit(f"--ckpt: checkpoints of different kinds of data cannot share a table ({ckpt})")
        metrics = kind
    print(format_table(results, metrics))


def sample_cmd(args):
    from .data import make_dataset
    from .eval import grid_image, scatter_image
    from .sampler import sample
    model, cfg, device = _load(args, args.ckpt)
    data = make_dataset(cfg.data)
    g = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.n, *data.shape, generator=g).to(device)
    y = (torch.arange(args.n, device=device) % data.num_classes) if data.num_classes else None
    if args.graph and device.type != "cuda":
        print("--graph needs CUDA; sampling eagerly on the CPU", file=sys.stderr)
    rows = []
    for s in args.steps:
        if args.graph and device.type == "cuda":
            from .sampler import GraphSampler
            # The sampler's dtype (bf16 under autocast for an fp32 checkpoint) is the fast path: cast the noise.
            gs = GraphSampler(model, batch_size=args.n, steps=s, cfg_scale=args.cfg_scale)
            rows.append(gs(noise.to(gs.dtype), y).float().cpu())
        else:
            rows.append(sample(model, noise, s, y=y, cfg_scale=args.cfg_scale).float().cpu())
    img = grid_image(rows) if data.is_image else scatter_image(rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    img.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
