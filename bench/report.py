"""Turn a benchmark run into one JSON document and a markdown report: per-op tables and speed-ups.

    python bench/report.py bench.json --peaks peaks.json --outcomes outcomes.jsonl --out bench/results
    python bench/report.py bench/results/<stamp>.json --readme bench/README.md   # re-render, update README

Inputs: pytest-benchmark's `--benchmark-json` file, or the `--bench-outcomes` JSON lines that
bench/conftest.py writes as tests finish (enough on its own when a run was cut off), or a document this
script wrote before. `--peaks`: bench/peaks.py's output (environment and measured peaks).

Rows are grouped by `op` (and `preset` / `dtype` when rows carry them), then by `shape`. Within a shape,
"ours" is every row with extra_info["ours"] true (or, when a row does not say, provider "triton", "ours"
or "graph"); every other provider is a baseline, and
the speed-up over it is baseline median / ours median (> 1: ours is faster). "% peak" is the larger of
GB/s over the measured copy bandwidth and TFLOP/s over the measured matmul peak: the resource that binds.
"""
import argparse
import datetime
import json
import os
import re
import sys

# Providers that are ours when a row does not say (extra_info["ours"]): the Triton kernels, GraphSampler.
OURS_PROVIDERS = ("triton", "ours", "graph")
# Rows are compared only within one op and one value of each of these keys (one table per combination):
# two presets or dtypes at the same shape are different cases, not providers of one.
CASE_KEYS = ("preset", "dtype")
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


# ------------------------------------------------------------------------------------------------ input
def load(path):
    """('bench' | 'outcomes' | 'doc', data) from a pytest-benchmark JSON, outcome JSON lines or a report doc."""
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return "outcomes", [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict) and "benchmarks" in data:
        return "bench", data
    if isinstance(data, dict) and "results" in data:
        return "doc", data
    if isinstance(data, dict) and "test" in data:   # a single outcome line
        return "outcomes", [data]
    keys = sorted(data)[:5] if isinstance(data, dict) else "-"
    raise ValueError(f"{path}: expected pytest-benchmark JSON, --bench-outcomes JSON lines or a report "
                     f"document, got a {type(data).__name__} with keys {keys}")


def normalize(bench=None, outcomes=None, peaks=None, date=None, complete=True):
    """One document: env, peaks, result rows (extra_info + test id), tests that did not run, completeness."""
    # A row whose test then failed (e.g. its output disagreed with the reference) is not a result.
    failed = {r.get("test") for r in outcomes or [] if r.get("outcome") == "failed"}
    results = []
    if bench is not None:
        for b in bench.get("benchmarks", []):
            row = {"test": b.get("fullname", b.get("name")), **b.get("extra_info", {})}
            if "median_s" not in row and b.get("stats"):   # a benchmark that did not use common.measure
                row.update(median_s=b["stats"]["median"], timer="pytest-benchmark")
            if "op" in row and "median_s" in row and row["test"] not in failed:
                results.append(row)
    elif outcomes:
        for r in outcomes:
            info = r.get("extra_info") or {}
            if r.get("outcome") == "passed" and "op" in info and "median_s" in info:
                results.append({"test": r["test"], **info})
    not_run = [{k: r.get(k) for k in ("test", "outcome", "reason")}
               for r in outcomes or [] if r.get("outcome") != "passed"]
    env = dict((peaks or {}).get("env") or (bench or {}).get("machine_info", {}).get("shortcut") or {})
    if not env.get("gpu"):
        gpus = [r["gpu"] for r in results if r.get("gpu")]
        if gpus:
            env["gpu"] = gpus[0]
    date = date or (bench or {}).get("datetime") or datetime.datetime.now(datetime.timezone.utc).isoformat()
    return {"date": date, "env": env, "peaks": (peaks or {}).get("peaks") or {}, "results": results,
            "not_run": not_run, "complete": complete}


# ------------------------------------------------------------------------------------------------ format
def _sig(v):
    """3 significant digits, no exponent above 1e-3, no trailing zeros lost on integers >= 100."""
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def _ratio(r):
    return f"{r:.2f}×" if r >= 0.01 else f"{r:.2g}×"


def _time(s):
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _shape(shape):
    if isinstance(shape, (list, tuple)):
        return "×".join(str(v) for v in shape)
    return str(shape)


def is_ours(row):
    if "ours" in row:
        return bool(row["ours"])
    return row.get("provider") in OURS_PROVIDERS


def peak_fraction(row, peaks):
    """The larger of achieved/peak bandwidth and achieved/peak FLOP rate; None without a peak to divide by."""
    fractions = []
    if row.get("gbps") and peaks.get("copy_gbps"):
        fractions.append(row["gbps"] / peaks["copy_gbps"])
    if row.get("tflops") and peaks.get("matmul_tflops"):
        fractions.append(row["tflops"] / peaks["matmul_tflops"])
    return max(fractions) if fractions else None


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _env_lines(doc):
    env, peaks = doc["env"], doc["peaks"]
    rows = []
    gpu = env.get("gpu")
    if gpu:
        detail = ", ".join(x for x in (f"sm {env['capability']}" if env.get("capability") else "",
                                       f"{env['sm_count']} SMs" if env.get("sm_count") else "",
                                       f"{env['memory_gb']} GB" if env.get("memory_gb") else "") if x)
        rows.append(["GPU", f"{gpu} ({detail})" if detail else gpu])
    else:
        rows.append(["device", "CPU (a smoke run of the suite; these numbers are not performance claims)"])
    clocks = env.get("clocks") or {}
    if clocks.get("clocks_sm"):
        text = f"SM {clocks['clocks_sm']} / {clocks.get('clocks_max_sm', '?')} MHz"
        if clocks.get("clocks_mem"):
            text += f", memory {clocks['clocks_mem']} MHz"
        if clocks.get("power_draw") and clocks.get("power_limit"):
            text += f", power {clocks['power_draw']} / {clocks['power_limit']} W"
        rows.append(["clocks", f"{text} ({clocks.get('source', '?')}, at the start of the run)"])
    software = [f"torch {env.get('torch', '?')}", f"triton {env.get('triton') or 'not installed'}"]
    if env.get("cuda"):
        software.append(f"CUDA {env['cuda']}")
    if env.get("driver") or clocks.get("driver_version"):
        software.append(f"driver {env.get('driver') or clocks['driver_version']}")
    software.append(f"flash-attn {env.get('flash_attn') or 'not installed'}")
    rows.append(["software", ", ".join(software)])
    sdpa = env.get("sdpa_backend")
    if isinstance(sdpa, dict):
        rows.append(["SDPA backend", f"{sdpa['backend']} at {tuple(sdpa['shape'])} {sdpa['dtype']}"])
    if peaks:
        rows.append(["measured peaks", f"copy {_sig(peaks['copy_gbps'])} GB/s, {peaks.get('matmul_dtype', '')} "
                                       f"matmul {_sig(peaks['matmul_tflops'])} TFLOP/s".replace("  ", " ")])
    if env.get("mode"):
        rows.append(["mode", env["mode"]])
    return _table(["what", "value"], rows)


def section(row):
    """The table a row belongs to: its op, plus the case keys that the op name does not already say."""
    parts = [str(row["op"])]
    parts += [str(row[k]) for k in CASE_KEYS if row.get(k) is not None and str(row[k]) not in parts[0]]
    return " · ".join(parts)


def _op_tables(op, rows, peaks):
    shapes = list(dict.fromkeys(_shape(r["shape"]) for r in rows))
    has = {key: any(r.get(key) for r in rows) for key in ("gbps", "tflops", "images_per_s", "peak_mem_gb")}
    has_peak = any(peak_fraction(r, peaks) is not None for r in rows)
    has_notes = any(r.get("sdpa_backend") for r in rows)
    header = ["shape", "provider", "median"]
    header += [name for key, name in (("gbps", "GB/s"), ("tflops", "TFLOP/s")) if has[key]]
    header += ["% peak"] if has_peak else []
    header += [name for key, name in (("images_per_s", "img/s"), ("peak_mem_gb", "peak mem")) if has[key]]
    header += ["notes"] if has_notes else []
    body = []
    for shape in shapes:
        for r in (r for r in rows if _shape(r["shape"]) == shape):
            provider = f"**{r['provider']}**" if is_ours(r) else r["provider"]
            line = [shape, provider, _time(r["median_s"])]
            line += [_sig(r[key]) if r.get(key) else "" for key in ("gbps", "tflops") if has[key]]
            if has_peak:
                frac = peak_fraction(r, peaks)
                line.append(f"{_sig(100 * frac)} %" if frac is not None else "")
            if has["images_per_s"]:
                line.append(_sig(r["images_per_s"]) if r.get("images_per_s") else "")
            if has["peak_mem_gb"]:
                line.append(f"{r['peak_mem_gb']:.2f} GB" if r.get("peak_mem_gb") else "")
            if has_notes:
                line.append(f"sdpa: {r['sdpa_backend']}" if r.get("sdpa_backend") else "")
            body.append(line)
    lines = [f"## {op}", ""] + _table(header, body)

    baselines = list(dict.fromkeys(r["provider"] for r in rows if not is_ours(r)))
    ours = [r for r in rows if is_ours(r)]
    if ours and baselines:
        ratio_rows = []
        for r in ours:
            shape = _shape(r["shape"])
            line = [shape, r["provider"]]
            for b in baselines:
                base = [x for x in rows if x["provider"] == b and _shape(x["shape"]) == shape]
                line.append(_ratio(base[0]["median_s"] / r["median_s"]) if base else "—")
            ratio_rows.append(line)
        lines += ["", *_table(["shape", "ours", *[f"vs {b}" for b in baselines]], ratio_rows)]
    return lines


def _not_run_lines(not_run):
    lines = []
    for r in not_run:
        if r["outcome"] != "skipped":
            lines.append(f"- {r['outcome']}: `{r['test']}`: {r.get('reason') or ''}".rstrip(": "))
    by_reason = {}
    for r in not_run:
        if r["outcome"] == "skipped":
            by_reason.setdefault(r.get("reason") or "", []).append(r["test"])
    for reason, tests in by_reason.items():
        ids = [re.sub(r"^.*::", "", t) for t in tests]
        shown = ", ".join(f"`{i}`" for i in ids[:6]) + (", …" if len(ids) > 6 else "")
        lines.append(f"- skipped ×{len(tests)}: {reason}: {shown}")
    return lines


def render(doc):
    """The markdown report of a normalized document."""
    gpu = doc["env"].get("gpu") or "CPU"
    lines = [f"# Benchmarks: {gpu}, {doc['date'][:10]}", ""]
    if not doc.get("complete", True):
        lines += ["**The run was cut off at its time limit: the tables hold the rows that finished.**", ""]
    lines += _env_lines(doc)
    lines += ["", "Median time per call (CUDA: events around one call with L2 flushed before it, or around "
                  "a loop of calls for latency rows). % peak: the larger of GB/s ÷ measured copy bandwidth "
                  "and TFLOP/s ÷ measured matmul peak (for model rows, MFU against the measured peak). "
                  "vs X: X's median ÷ ours; above 1 means ours is faster.", ""]
    ops = list(dict.fromkeys(section(r) for r in doc["results"]))
    for op in ops:
        lines += _op_tables(op, [r for r in doc["results"] if section(r) == op], doc["peaks"])
        lines.append("")
    if not ops:
        lines += ["No benchmark finished.", ""]
    if doc["not_run"]:
        lines += ["## Not measured", ""] + _not_run_lines(doc["not_run"]) + [""]
    return "\n".join(lines)


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def stamp(doc):
    """'<date>-<gpu>' file stem, e.g. 2025-06-01-1432-nvidia-h100-80gb-hbm3."""
    date = re.sub(r"[^0-9]", "", doc["date"])[:12]
    return f"{date[:4]}-{date[4:6]}-{date[6:8]}-{date[8:12]}-{slug(doc['env'].get('gpu') or 'cpu')}"


def update_readme(path, markdown):
    """Replace the text between the results markers of `path` with `markdown` (headings pushed down one level)."""
    with open(path) as f:
        text = f.read()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{path} has no {README_START} ... {README_END} section to fill")
    body = re.sub(r"^(#+) ", r"#\1 ", markdown.strip(), flags=re.M)
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    with open(path, "w") as f:
        f.write(f"{head}{README_START}\n{body}\n{README_END}{tail}")


def build(inputs, peaks=None, complete=True):
    """Load input files (any of the three kinds) and return the normalized document."""
    bench, outcomes, doc = None, [], None
    for path in inputs:
        kind, data = load(path)
        if kind == "bench":
            bench = data
        elif kind == "outcomes":
            outcomes += data
        else:
            doc = data
    if doc is not None and bench is None and not outcomes:
        return doc
    return normalize(bench, outcomes, peaks, complete=complete)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+",
                        help="pytest-benchmark JSON, --bench-outcomes JSON lines, or a report JSON")
    parser.add_argument("--peaks", help="bench/peaks.py output")
    parser.add_argument("--out", default=None, help="directory for <date>-<gpu>.json and .md")
    parser.add_argument("--readme", help="also put the report between the results markers of this file")
    parser.add_argument("--incomplete", action="store_true", help="mark the run as cut off at its time limit")
    args = parser.parse_args(argv)
    peaks = None
    if args.peaks:
        with open(args.peaks) as f:
            peaks = json.load(f)
    doc = build(args.inputs, peaks, complete=not args.incomplete)
    markdown = render(doc)
    written = []
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.join(args.out, stamp(doc))
        with open(stem + ".json", "w") as f:
            json.dump(doc, f, indent=1, default=str)
        with open(stem + ".md", "w") as f:
            f.write(markdown)
        written += [stem + ".json", stem + ".md"]
    if args.readme:
        update_readme(args.readme, markdown)
        written.append(args.readme)
    sys.stdout.write(("\n".join(written) if written else markdown) + "\n")
    return doc


if __name__ == "__main__":
    main()
