"""Ahead-of-time compilation of every Triton launch for sm_90 (H100/H200) and sm_80 (A100), without a GPU.

    python -m shortcut_kernels.aot [--arch 90 80] [--json PATH]    # compile; exit status 1 on a problem
    python -m shortcut_kernels.aot --table A.json B.json              # saved results side by side

The launchers themselves are run on meta tensors at DiT-B/2 and DiT-XL/2 shapes inside
`_triton.recording(arch)`, so each launch they would make on that GPU (every autotune candidate included)
is captured with its real arguments. Each distinct specialisation is bound as a launch binds it (the
binder from `create_function_from_signature`, then `JITFunction._pack_args`) and compiled with
`triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` and the ptxas bundled with Triton.
Without a driver the compiled kernel has no register count: the ptxas log gives registers and spills;
`metadata.shared` gives shared memory. tests/test_aot_compile.py asserts on the result.

Needs Triton's compiler, not its interpreter: run it where TRITON_INTERPRET is off (`run_in_subprocess`).
"""
import argparse
import collections
import concurrent.futures
import contextlib
import importlib
import io
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time

import torch

# Per-block shared memory limits (cudaDevAttrMaxSharedMemoryPerBlockOptin): H100/H200 227 KB, A100 163 KB.
SHARED_LIMIT = {90: 232_448, 80: 166_912}
ARCHS = (90, 80)
# Kernels that run float64 on purpose: the sinusoidal features are cos/sin of an fp32-rounded argument
# evaluated in fp64, so the result is the correctly rounded value; fp32 cos on the GPU is approximate for
# the arguments up to 1000 that t_scale = 1000 makes (shortcut_kernels/conditioning.py).
FLOAT64_ALLOWED = {"_timestep_features_kernel": "fp64 cos/sin of the fp32 argument, correctly rounded",
                   "_embed_hidden_kernel": "fp64 cos of the fp32 argument inside the fused first Linear"}
# DiT presets at 256 px (32×32 latents, patch 2): T = 256 tokens.
SHAPES = {"DiT-B/2": dict(D=768, H=12, head_dim=64), "DiT-XL/2": dict(D=1152, H=16, head_dim=72)}
T_TOKENS = 256
BATCHES = (256, 1)          # training / large sampling batches, and batch-1 sampling
COND_BATCHES = (256, 32, 7, 1)   # the conditioning launcher's tiles depend on B: 64, 32 and 16 rows


def _meta(shape, dtype):
    return torch.empty(shape, dtype=dtype, device="meta")


# ---------------------------------------------------------------------------------------------------
# The workloads: the launchers called as the ops call them, on meta tensors.
def _adaln_workloads():
    """(label, thunk) for the adaLN forward and backward launchers."""
    from . import adaln
    # (name, x dtype, modulation/branch dtype, h dtype): the autocast row is the model's training case
    # (residual stream fp32, branch and adaLN vectors bf16, h written in bf16).
    dtypes = [("bf16", torch.bfloat16, torch.bfloat16, None), ("fp16", torch.float16, torch.float16, None),
              ("fp32", torch.float32, torch.float32, None),
              ("autocast", torch.float32, torch.bfloat16, torch.bfloat16)]
    # DiT-B/2 and DiT-XL/2 at both batch sizes (B changes the backward's grid, and B = 1 its specialisation);
    # DiT-S/2 for the smallest warp count and MAX_D for the widest tile the launchers pick.
    widths = [(preset, s["D"], BATCHES) for preset, s in SHAPES.items()]
    widths += [("DiT-S/2", 384, BATCHES[:1]), ("max D", adaln.MAX_D, BATCHES[:1])]
    for preset, D, batches in widths:
        for B in batches:
            for name, xd, md, out in dtypes:
                x, branch = _meta((B, T_TOKENS, D), xd), _meta((B, T_TOKENS, D), md)
                _, _, gate, shift, scale, _ = _meta((B, 6 * D), md).chunk(6, dim=1)
                rows = _meta((B * T_TOKENS,), torch.float32)
                label = dict(shape=f"{preset} B{B}", dtype=name)
                h_dtype = out or xd
                x2 = _meta((B, T_TOKENS, D), torch.promote_types(xd, md))
                yield label, lambda x=x, s=shift, c=scale, o=out: adaln._adaln_fwd(x, None, None, s, c, 1e-6, o)
                yield label, lambda x=x, b=branch, g=gate, s=shift, c=scale, o=out: adaln._adaln_fwd(
                    x, b, g, s, c, 1e-6, o)
                dh = _meta((B, T_TOKENS, D), h_dtype)
                yield label, lambda dh=dh, x=x, s=shift, c=scale, r=rows: adaln._adaln_bwd(
                    dh, None, x, None, None, c, r, r, x.dtype, s.dtype)
                for dx2 in (None, _meta(x2.shape, x2.dtype)):
                    yield label, lambda dh=dh, dx2=dx2, x2=x2, b=branch, g=gate, s=shift, c=scale, r=rows, xd=xd: (
                        adaln._adaln_bwd(dh, dx2, x2, b, g, c, r, r, xd, s.dtype))


def _attention_workloads():
    attention = importlib.import_module("shortcut_kernels.attention")   # the package's `attention` is the function
    for preset, s in SHAPES.items():
        H, Dh = s["H"], s["head_dim"]
        for B in BATCHES:
            for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
                label = dict(shape=f"{preset} B{B}", dtype=name)
                scale = Dh ** -0.5
                lse = _meta((B, H, T_TOKENS), torch.float32)
                # The model's layout: q, k, v read in place from the (B, T, 3, H, Dh) projection, o and the
                # gradient of qkv written as (B, T, H, Dh) / (B, T, 3, H, Dh) memory.
                qkv = _meta((B, T_TOKENS, 3, H, Dh), dtype)
                o = _meta((B, T_TOKENS, H, Dh), dtype).transpose(1, 2)
                packed = attention._unpack(qkv)
                dpacked = attention._unpack(torch.empty_like(qkv))
                yield label, lambda p=packed, o=o, lse=lse, sc=scale: attention._forward(*p, o, lse, sc)
                yield label, lambda p=packed, dp=dpacked, o=o, lse=lse, sc=scale: attention._backward(
                    o, *p, o, lse, sc, *dp)
                if name == "bf16":
                    # attention(q, k, v) on contiguous (B, H, T, Dh) tensors: other strides, so at head_dim 72
                    # other specialisations (one dtype keeps the test's cost down; the dtypes share configs).
                    q = _meta((B, H, T_TOKENS, Dh), dtype)
                    yield label, lambda q=q, o=o, lse=lse, sc=scale: attention._forward(q, q, q, o, lse, sc)
                    yield label, lambda q=q, o=o, lse=lse, sc=scale: attention._backward(
                        q, q, q, q, o, lse, sc, q, q, q)


def _adaln_jvp_workloads():
    """The adaLN tangent launcher (forward-mode AD), with and without the residual. One program per row: B does
    not change the compile, so one batch size."""
    from . import adaln, adaln_jvp
    dtypes = [("bf16", torch.bfloat16, torch.bfloat16, None), ("fp16", torch.float16, torch.float16, None),
              ("fp32", torch.float32, torch.float32, None),
              ("autocast", torch.float32, torch.bfloat16, torch.bfloat16)]
    widths = [(preset, s["D"]) for preset, s in SHAPES.items()] + [("DiT-S/2", 384), ("max D", adaln.MAX_D)]
    B = BATCHES[0]
    for preset, D in widths:
        for name, xd, md, out in dtypes:
            label = dict(shape=f"{preset} B{B}", dtype=name)
            x, branch = _meta((B, T_TOKENS, D), xd), _meta((B, T_TOKENS, D), md)
            _, _, gate, shift, scale, _ = _meta((B, 6 * D), md).chunk(6, dim=1)
            rows = _meta((B * T_TOKENS,), torch.float32)
            x2_dtype = torch.promote_types(xd, md)
            x2 = _meta((B, T_TOKENS, D), x2_dtype)
            yield label, lambda x=x, s=shift, c=scale, r=rows, h=out or xd: adaln_jvp._adaln_tangent(
                x, x, None, None, None, None, c, c, s, r, r, None, h)
            yield label, lambda x2=x2, b=branch, g=gate, s=shift, c=scale, r=rows, d=x2_dtype, h=out or x2_dtype: (
                adaln_jvp._adaln_tangent(x2, x2, b, b, g, g, c, c, s, r, r, d, h))


def _attention_jvp_workloads():
    """The attention JVP launcher in both modes: one pass (o, t_o, lse; attention_jvp) and the tangent given o
    and lse (the JVP rule of attention under torch.func.jvp)."""
    attention = importlib.import_module("shortcut_kernels.attention")
    attention_jvp = importlib.import_module("shortcut_kernels.attention_jvp")
    B = BATCHES[0]   # the kernel takes B only as the grid and the BH bucket (not specialised on)
    for preset, s in SHAPES.items():
        H, Dh = s["H"], s["head_dim"]
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
            label = dict(shape=f"{preset} B{B}", dtype=name)
            scale = Dh ** -0.5
            lse = _meta((B, H, T_TOKENS), torch.float32)
            # The model's layout (q, k, v and tangents read in place from (B, T, 3, H, Dh), o and t_o (B, T, H,
            # Dh) memory) for every dtype; contiguous (B, H, T, Dh) operands for bf16, as for the forward.
            packed = attention._unpack(_meta((B, T_TOKENS, 3, H, Dh), dtype))
            o = _meta((B, T_TOKENS, H, Dh), dtype).transpose(1, 2)
            layouts = [packed] + ([[_meta((B, H, T_TOKENS, Dh), dtype)] * 3] if name == "bf16" else [])
            for operands in layouts:
                for primal_known in (False, True):
                    yield label, lambda p=operands, o=o, lse=lse, sc=scale, pk=primal_known: attention_jvp._jvp(
                        *p, *p, o, o, lse, sc, pk)


def _conditioning_workloads():
    from . import conditioning
    # (name, weight dtype, compute dtype): fp32 weights compute in bf16 under autocast (training) or in fp32
    # (the EMA model sampled without autocast); bf16 / fp16 weights for sampling.
    dtypes = [("bf16", torch.bfloat16, torch.bfloat16), ("fp16", torch.float16, torch.float16),
              ("fp32", torch.float32, torch.float32), ("autocast", torch.float32, torch.bfloat16)]
    F_dim = 256
    for preset, s in SHAPES.items():
        D = s["D"]
        for B in COND_BATCHES:
            t, k, y = _meta((B,), torch.float32), _meta((B,), torch.int64), _meta((B,), torch.int64)
            yield dict(shape=f"{preset} B{B}", dtype="fp32"), lambda t=t, k=k: conditioning._timestep_features(
                t, k, F_dim, 1000.0, 1.0, 10000.0)
            for name, wd, cd in dtypes:
                label = dict(shape=f"{preset} B{B}", dtype=name)
                w1, b1, w2, b2 = (_meta((D, F_dim), wd), _meta((D,), wd), _meta((D, D), wd), _meta((D,), wd))
                table = _meta((1001, D), wd)
                c_dtype = torch.promote_types(cd, wd)
                yield label, lambda t=t, k=k, w1=w1, b1=b1, cd=cd: conditioning._embed_hidden(
                    t, k, w1, b1, w1, b1, 1000.0, 1.0, 10000.0, cd)
                a = _meta((2, B, D), cd)
                yield label, lambda a=a, w2=w2, b2=b2, table=table, y=y, c=c_dtype, s=(cd if cd != wd else c_dtype): (
                    conditioning._embed_sum(a, w2, b2, w2, b2, table, y, c, s))


def workloads():
    """Every (label, thunk): calling a thunk inside `_triton.recording` records the launches it makes."""
    yield from _adaln_workloads()
    yield from _adaln_jvp_workloads()
    yield from _attention_workloads()
    yield from _attention_jvp_workloads()
    yield from _conditioning_workloads()


# ---------------------------------------------------------------------------------------------------
# From recorded launches to compile jobs.
class _Pointer:
    """Stands in for a tensor argument: a dtype and a 16-byte-aligned address (what a real launch's
    allocations give; the views the launchers pass keep that alignment at these shapes)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def data_ptr(self):
        return 1 << 20


def _stand_in(arg):
    return _Pointer(arg.dtype) if isinstance(arg, torch.Tensor) else arg


def _variants(kernel, kwargs):
    """(JITFunction, kwargs) for each config an autotuned launch can run; one for a plain launch."""
    from triton.runtime.autotuner import Autotuner
    if isinstance(kernel, Autotuner):
        for config in kernel.configs:
            yield kernel.fn, {**kwargs, **config.all_kwargs()}
    else:
        yield kernel, kwargs


# Constexprs that select a kernel's mode: (name when false, name when true), shown beside the kernel's name.
MODES = {"PRIMAL_KNOWN": ("one pass", "tangent")}


def _mode(kwargs):
    return next((names[bool(kwargs[k])] for k, names in MODES.items() if k in kwargs), None)


def _config_label(kwargs):
    blocks = "×".join(f"{k.replace('BLOCK_', '')}{v}" for k, v in kwargs.items() if k.startswith("BLOCK"))
    rest = "".join(f" {k}{kwargs[k]}" for k in ("ROWS",) if k in kwargs)
    return f"{blocks}{rest} w{kwargs.get('num_warps', 4)} s{kwargs.get('num_stages', 3)}"


def _bind(fn, args, kwargs, target):
    """(signature, constexprs, attrs, options) exactly as JITFunction.run derives them for these arguments."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, options


def _key(fn, signature, constexprs, attrs, options):
    opts = tuple(sorted((k, repr(v)) for k, v in options.__dict__.items()))
    return (fn.__name__, tuple(signature.items()), tuple(sorted((k, repr(v)) for k, v in constexprs.items())),
            tuple(sorted((k, repr(v)) for k, v in attrs.items())), opts)


def collect(archs=ARCHS):
    """{key: job}: the distinct compiles for `archs`; a job lists every (label) that needs it."""
    from triton.backends.compiler import GPUTarget
    from . import _triton
    jobs = {}
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        for label, thunk in workloads():
            with _triton.recording(arch) as launches:
                thunk()
            for kernel, args, kwargs in launches:
                for fn, kw in _variants(kernel, kwargs):
                    stand_ins = [_stand_in(a) for a in args]
                    sig, constexprs, attrs, options = _bind(fn, stand_ins, kw, target)
                    key = (arch, _key(fn, sig, constexprs, attrs, options))
                    job = jobs.setdefault(key, dict(arch=arch, kernel=fn.__name__, mode=_mode(kw), fn=fn,
                                                    signature=sig, constexprs=constexprs, attrs=attrs,
                                                    options=options, config=_config_label(kw), labels=[]))
                    if label not in job["labels"]:
                        job["labels"].append(label)
    return jobs


# ---------------------------------------------------------------------------------------------------
# Compiling one job.
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_FLOAT64 = re.compile(r"\.f64\b")


def parse_ptxas(log):
    """(registers, stack frame bytes, spill store bytes, spill load bytes) from a `ptxas -v` log."""
    regs, spill = _PTXAS_REGS.search(log), _PTXAS_SPILL.search(log)
    if regs is None or spill is None:
        raise ValueError(f"no register report in the ptxas log: {log[-500:]!r}")
    return (int(regs.group(1)), *map(int, spill.groups()))


def compile_job(job):
    """Compile one job; returns its result row (registers, spills, shared memory, float64 use, seconds)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    row = {k: job[k] for k in ("arch", "kernel", "mode", "config", "labels")}
    start = time.perf_counter()
    log = io.StringIO()
    try:
        # Triton prints the ptxas log to stdout when asked; always_compile bypasses the on-disk cache (a
        # cached kernel runs no ptxas, so there would be no log).
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(ASTSource(job["fn"], job["signature"], job["constexprs"], job["attrs"]),
                                    target=GPUTarget("cuda", job["arch"], 32), options=job["options"].__dict__)
        regs, stack, spill_st, spill_ld = parse_ptxas(log.getvalue())
        row.update(registers=regs, stack=stack, spill_stores=spill_st, spill_loads=spill_ld,
                   shared=int(kernel.metadata.shared), float64=bool(_FLOAT64.search(kernel.asm["ptx"])),
                   error=None)
    except Exception as e:   # a compile failure is a result to report, not a crash of the whole run
        row.update(registers=None, stack=None, spill_stores=None, spill_loads=None, shared=None, float64=None,
                   error=f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


_JOBS = []   # filled before the worker processes fork: they read their job by index


def _compile_index(i):
    return compile_job(_JOBS[i])


def compile_all(archs=ARCHS, workers=None):
    """Result rows for every distinct launch on `archs`, compiled in `workers` processes (default: all CPUs)."""
    from . import _triton
    if _triton.INTERPRETING:
        raise RuntimeError("shortcut_kernels.aot needs Triton's compiler: run it with TRITON_INTERPRET unset "
                           "(shortcut_kernels.aot.run_in_subprocess does)")
    from triton import knobs
    jobs = list(collect(archs).values())
    saved = (knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile, knobs.cache.dir)
    with tempfile.TemporaryDirectory() as cache:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile, knobs.cache.dir = True, True, cache
        try:
            _JOBS[:] = jobs
            workers = workers or os.cpu_count() or 1
            if workers == 1:
                rows = [compile_job(job) for job in jobs]
            else:
                ctx = multiprocessing.get_context("fork")
                with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                    rows = list(pool.map(_compile_index, range(len(jobs)), chunksize=4))
        finally:
            _JOBS[:] = []
            knobs.nvidia.dump_ptxas_log, knobs.compilation.always_compile, knobs.cache.dir = saved
    return rows


def problems(row):
    """What is wrong with one result row (empty: it compiles, does not spill, fits, and uses fp64 only where
    allowed)."""
    if row["error"]:
        return [f"does not compile: {row['error']}"]
    found = []
    if row["spill_stores"] or row["spill_loads"]:
        found.append(f"spills {row['spill_stores']} B stored / {row['spill_loads']} B loaded")
    if row["shared"] > SHARED_LIMIT[row["arch"]]:
        found.append(f"needs {row['shared']} B of shared memory, over the sm_{row['arch']} limit "
                     f"{SHARED_LIMIT[row['arch']]} B")
    if row["float64"] and row["kernel"] not in FLOAT64_ALLOWED:
        found.append("uses float64 instructions")
    return found


# ---------------------------------------------------------------------------------------------------
# Reporting.
def _range(values):
    return "-" if not values else str(min(values)) if min(values) == max(values) else f"{min(values)}–{max(values)}"


def kernel_name(row):
    """The kernel's name, with its mode where one kernel has several (`MODES`)."""
    return f"{row['kernel']} ({row['mode']})" if row.get("mode") else row["kernel"]


def summary(rows):
    """{(kernel, arch, dtype): dict(configs, compiles, registers, spills, shared, float64)} over the rows."""
    groups = collections.defaultdict(list)
    for row in rows:
        for dtype in {label["dtype"] for label in row["labels"]}:
            groups[kernel_name(row), row["arch"], dtype].append(row)
    out = {}
    for key, group in groups.items():
        ok = [r for r in group if not r["error"]]
        out[key] = dict(configs=len({r["config"] for r in group}), compiles=len(group),
                        registers=_range([r["registers"] for r in ok]),
                        spills=max((r["spill_stores"] + r["spill_loads"] for r in ok), default=0),
                        shared=max((r["shared"] for r in ok), default=0), float64=any(r["float64"] for r in ok))
    return out


def table(results):
    """Markdown table, one line per (kernel, arch, dtype), with registers / spill bytes / largest shared memory
    side by side for each result set: `results` is a list of {"triton": version, "rows": rows}."""
    sums = [summary(r["rows"]) for r in results]
    versions = [r["triton"] for r in results]
    keys = sorted(set().union(*sums), key=lambda k: (k[0], -k[1], k[2]))
    head = ["kernel", "arch", "dtype", "configs"] + [f"registers ({v})" for v in versions] + \
        ["spill B (" + " / ".join(versions) + ")", "max shared B (" + " / ".join(versions) + ")", "fp64"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        cells = [s.get(key) for s in sums]
        first = next(c for c in cells if c)
        line = [key[0], f"sm_{key[1]}", key[2], str(first["configs"])]
        line += [c["registers"] if c else "-" for c in cells]
        line += [" / ".join(str(c["spills"]) if c else "-" for c in cells),
                 " / ".join(str(c["shared"]) if c else "-" for c in cells),
                 "yes" if first["float64"] else "no"]
        out.append("| " + " | ".join(line) + " |")
    return "\n".join(out)


def problem_lines(rows):
    return [f"{kernel_name(r)} sm_{r['arch']} {r['config']} ({r['labels'][0]['shape']}, "
            f"{r['labels'][0]['dtype']}): {p}" for r in rows for p in problems(r)]


def run_in_subprocess(archs=ARCHS, workers=None, timeout=900):
    """compile_all in a fresh interpreter with TRITON_INTERPRET off (a test process has it on): result rows."""
    import subprocess
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # shortcut_kernels importable there
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "aot.json")
        cmd = [sys.executable, "-m", "shortcut_kernels.aot", "--json", path, "--arch", *map(str, archs)]
        if workers:
            cmd += ["--workers", str(workers)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if not os.path.exists(path):
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        with open(path) as f:
            return json.load(f)["rows"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: all CPUs)")
    parser.add_argument("--json", help="also write every result row here")
    parser.add_argument("--table", nargs="+", metavar="JSON",
                        help="compile nothing: print the table of these saved results side by side")
    args = parser.parse_args(argv)
    if args.table:
        results = []
        for path in args.table:
            with open(path) as f:
                results.append(json.load(f))
        print(table(results))
        return 0
    import triton
    start = time.perf_counter()
    rows = compile_all(tuple(args.arch), args.workers)
    seconds = time.perf_counter() - start
    result = dict(triton=triton.__version__, torch=torch.__version__, seconds=round(seconds, 1), rows=rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(table([result]))
    bad = problem_lines(rows)
    print("\n" + ("\n".join(["Problems:"] + bad) if bad else "No problems: every launch compiles, spills nothing, "
                                                             "fits in shared memory and uses fp64 only where allowed."))
    print(f"{len(rows)} compiles, {seconds:.0f} s (triton {triton.__version__})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
