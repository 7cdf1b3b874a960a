"""The SPEC §6 scorecard of a bench/gpu_check.py run: one line per target, its measured value, the threshold
and a verdict (met / missed / not measured, with the reason); then the stages, correctness, pytest and
the timed rows. Pure Python (no torch): the orchestrator renders it after every record it receives.

    python bench/scorecard.py bench/results/<date>-<gpu>-gpu_check.json     # re-render a saved run

A target reads the perf records (`kind: "perf"`) of one case's SPEC row (`spec_row: true`): a ratio of a
baseline's time per call over ours (> 1: ours is faster), a fraction of a measured or datasheet peak, a
launch count, an absolute time or a memory ratio. A target whose kernel failed the correctness stage is
"missed" whatever its speed: a wrong kernel meets nothing.
"""
import json
import re
import sys
from dataclasses import dataclass

MET, MISSED, NOT_MEASURED = "met", "missed", "not measured"

# Dense bf16 tensor-core TFLOP/s and HBM GB/s from the vendors' datasheets (SXM parts unless named), matched in
# this order against the GPU's name ("H200" before "H20", "H100 PCIe" before "H100"). SPEC §6 asks for MFU
# against the datasheet (989 TFLOP/s for the H100/H200 SXM) as well as against the measured GEMM peak.
DATASHEET = (("H200", {"bf16_tflops": 989.0, "hbm_gbps": 4800.0}),
             ("H100 PCIe", {"bf16_tflops": 756.0, "hbm_gbps": 2000.0}),
             ("H100", {"bf16_tflops": 989.0, "hbm_gbps": 3350.0}),
             ("A100", {"bf16_tflops": 312.0, "hbm_gbps": 2039.0}))
TARGET_CARD = "H100"   # SPEC §6 figures are H100 ones


def datasheet(gpu):
    """Datasheet peaks of the card named `gpu`, or {} when it is not in DATASHEET."""
    for key, values in DATASHEET:
        if gpu and key.lower() in gpu.lower():
            return dict(values, card=key)
    return {}


@dataclass(frozen=True)
class Target:
    """One SPEC §6 target. metric: "speedup" (baseline time / ours), "pct_copy" (ours GB/s over the measured
    copy bandwidth), "mfu_datasheet" / "mfu_measured" (ours TFLOP/s over the datasheet / measured bf16 peak),
    "launches" (GPU launches of one ours call), "latency" (ours seconds per call), "memory_ratio" (ours
    transient memory / the baseline's). cmp: ">=", "<=" or "<"."""
    id: str
    row: str            # the SPEC §6 row it belongs to
    case: str           # perf record case
    metric: str
    threshold: float
    cmp: str = ">="
    baseline: str = None
    op: str = None      # correctness op that must have passed


def _speed(id, row, case, baseline, threshold, op):
    return Target(id, row, case, "speedup", threshold, ">=", baseline, op)


def _targets():
    t = []
    for op in ("adaln_modulate", "gated_adaln"):
        row = "adaln_modulate / gated_adaln fwd, B·T ≥ 16k rows"
        t += [Target(f"{op} fwd: % of copy bandwidth", row, f"{op}_fwd", "pct_copy", 0.80, op=op),
              _speed(f"{op} fwd vs eager", row, f"{op}_fwd", "eager", 2.5, op),
              _speed(f"{op} fwd vs compile", row, f"{op}_fwd", "compile", 1.0, op)]
    for op in ("adaln_modulate", "gated_adaln"):
        row = "adaln_modulate / gated_adaln bwd"
        t += [_speed(f"{op} bwd vs eager", row, f"{op}_bwd", "eager", 1.5, op),
              _speed(f"{op} bwd vs compile", row, f"{op}_bwd", "compile", 1.0, op)]
    row = "conditioning (both embedders + all blocks' adaLN)"
    t += [Target("conditioning: GPU launches", row, "conditioning", "launches", 3, "<=", op="embed_conditioning"),
          Target("conditioning: weights read, % of copy bandwidth", row, "conditioning", "pct_copy", 0.80,
                 op="embed_conditioning")]
    for mode, threshold in (("fwd", 1.0), ("bwd", 0.8)):
        row = f"attention {mode}, DiT shapes (T 256, hd 64 and 72), B ≥ 64"
        for hd in (64, 72):
            for base, name in (("sdpa", "SDPA"), ("flash_attn", "flash-attn")):
                t.append(_speed(f"attention {mode} hd {hd} vs {name}", row, f"attention_{mode}_hd{hd}", base,
                                threshold, "attention_qkvpacked"))
    row = "full DiT-XL/2 forward, B = 256"
    t += [_speed("DiT-XL/2 forward vs eager", row, "forward", "eager", 1.3, "model"),
          _speed("DiT-XL/2 forward vs compile", row, "forward", "compile", 1.0, "model"),
          Target("DiT-XL/2 forward: MFU (datasheet peak)", row, "forward", "mfu_datasheet", 0.50, op="model"),
          Target("DiT-XL/2 forward: MFU (measured GEMM peak)", row, "forward", "mfu_measured", 0.50, op="model")]
    row = "1-step sampling, DiT-B/2, batch 1"
    t += [Target("1-step sampling latency", row, "sample", "latency", 0.3e-3, "<=", op="model"),
          _speed("1-step sampling vs eager", row, "sample", "eager", 10.0, "model")]
    row = "DiT-B/2 training step, B = 256"
    t += [_speed("DiT-B/2 training step vs eager", row, "train", "eager", 1.2, "model"),
          _speed("DiT-B/2 training step vs compile", row, "train", "compile", 1.0, "model"),
          Target("DiT-B/2 training step: activation memory vs eager", row, "train", "memory_ratio", 1.0, "<",
                 "eager", "model")]
    return tuple(t)


TARGETS = _targets()
OURS = ("triton", "graph")   # the provider that is ours in each case


def verdict(value, threshold, cmp):
    """MET / MISSED for a measured value against its threshold; NOT_MEASURED when value is None."""
    if value is None:
        return NOT_MEASURED
    ok = {">=": value >= threshold, "<=": value <= threshold, "<": value < threshold}[cmp]
    return MET if ok else MISSED


# ------------------------------------------------------------------------------------------------ values
def _rows(doc, case):
    return [r for r in doc.get("records", []) if r.get("kind") == "perf" and r.get("case") == case
            and r.get("spec_row")]


def _row(rows, provider):
    found = [r for r in rows if r.get("provider") == provider and r.get("per_call_s")]
    return found[0] if found else None


def _errors(doc, case, providers):
    return [r for r in doc.get("records", []) if r.get("kind") == "perf_error" and r.get("case") == case
            and r.get("provider") in providers]


def _stage_of(doc, case):
    stages = {s["name"]: s for s in doc.get("stages", [])}
    group = {"conditioning": "perf_conditioning", "forward": "perf_forward", "sample": "perf_sampler",
             "train": "perf_train"}.get(case) or ("perf_attention" if case.startswith("attention") else "perf_adaln")
    return group, stages.get(group)


def _why_missing(doc, target, providers):
    """The reason a target has no value: no GPU, an error in one of its providers, or its stage's fate."""
    errors = _errors(doc, target.case, providers)
    if errors:
        e = errors[0]
        return f"{e['provider']} failed: {e.get('error', '?')}"
    if target.baseline == "flash_attn" and not doc.get("env", {}).get("flash_attn"):
        return "flash-attn is not installed"
    group, stage = _stage_of(doc, target.case)
    if stage is None:
        return f"stage {group} was not run"
    if stage["status"] == "skipped":
        return f"stage {group} skipped: {stage.get('reason', '')}".rstrip(": ")
    if stage["status"] == "timeout":
        return f"stage {group} timed out after {stage.get('duration_s', 0):.0f} s before this row"
    if stage["status"] in ("failed", "crashed"):
        return f"stage {group} {stage['status']}: {stage.get('reason', '')}".rstrip(": ")
    if stage["status"] == "running":
        return f"stage {group} still running"
    return "no row recorded"


def measure(doc, target):
    """(value, shown text, reason) of one target; value None with a reason when not measured."""
    if doc.get("dry_run"):
        return None, "—", "no GPU (dry run on CPU)"
    if (doc.get("env") or {}).get("cuda_available") is False:
        return None, "—", "no GPU (torch sees no CUDA device)"
    rows = _rows(doc, target.case)
    ours = next((r for r in (_row(rows, p) for p in OURS) if r is not None), None)
    needed = list(OURS) + ([target.baseline] if target.baseline else [])
    if ours is None:
        return None, "—", _why_missing(doc, target, needed)
    peaks, env = doc.get("peaks") or {}, doc.get("env") or {}
    m = target.metric
    if m in ("speedup", "memory_ratio"):
        base = _row(rows, target.baseline)
        if base is None:
            return None, "—", _why_missing(doc, target, [target.baseline])
        if m == "speedup":
            value = base["per_call_s"] / ours["per_call_s"]
            return value, f"{value:.2f}× ({_time(ours['per_call_s'])} vs {_time(base['per_call_s'])})", None
        if not ours.get("transient_mem_gb") or not base.get("transient_mem_gb"):
            return None, "—", "transient memory was not recorded"
        value = ours["transient_mem_gb"] / base["transient_mem_gb"]
        return value, f"{value:.2f}× ({ours['transient_mem_gb']:.2f} vs {base['transient_mem_gb']:.2f} GB)", None
    if m == "pct_copy":
        if not ours.get("gbps") or not peaks.get("copy_gbps"):
            return None, "—", "no GB/s or no measured copy bandwidth"
        value = ours["gbps"] / peaks["copy_gbps"]
        return value, f"{100 * value:.0f} % ({ours['gbps']:.0f} of {peaks['copy_gbps']:.0f} GB/s)", None
    if m in ("mfu_datasheet", "mfu_measured"):
        peak = (datasheet(env.get("gpu")).get("bf16_tflops") if m == "mfu_datasheet"
                else peaks.get("matmul_tflops"))
        if not peak or not ours.get("tflops"):
            return None, "—", ("no datasheet peak for this card" if m == "mfu_datasheet" and not peak
                               else "no TFLOP/s or no measured GEMM peak")
        value = ours["tflops"] / peak
        return value, f"{100 * value:.0f} % ({ours['tflops']:.0f} of {peak:.0f} TFLOP/s)", None
    if m == "launches":
        if ours.get("launches") is None:
            return None, "—", ours.get("launches_error") or "launches were not counted"
        return ours["launches"], str(ours["launches"]), None
    if m == "latency":
        value = ours["per_call_s"]
        return value, f"{_time(value)} on {env.get('gpu', '?')}", None
    raise ValueError(f"unknown metric {m!r}")


def _correctness_failed(doc, op):
    return [r for r in doc.get("records", []) if r.get("kind") == "check" and r.get("op") == op and not r.get("ok")]


def score(doc):
    """One dict per target: id, row, value, shown, threshold text, verdict, reason."""
    lines = []
    for t in TARGETS:
        value, shown, reason = measure(doc, t)
        v = verdict(value, t.threshold, t.cmp)
        if t.op and value is not None and _correctness_failed(doc, t.op):
            v, reason = MISSED, f"{t.op} failed the correctness stage"
        lines.append({"id": t.id, "row": t.row, "value": value, "shown": shown, "threshold": threshold_text(t),
                      "verdict": v, "reason": reason})
    return lines


def threshold_text(t):
    if t.metric == "speedup":
        return f"≥ {t.threshold:g}× {t.baseline}"
    if t.metric == "memory_ratio":
        return f"< {t.threshold:g}× {t.baseline}"
    if t.metric in ("pct_copy", "mfu_datasheet", "mfu_measured"):
        return f"≥ {100 * t.threshold:.0f} %"
    if t.metric == "latency":
        return f"≤ {_time(t.threshold)} (SPEC: H100)"
    return f"≤ {t.threshold:g} launches"


# ------------------------------------------------------------------------------------------------ render
def _time(s):
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.1f} s"


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _card_lines(doc):
    env, peaks = doc.get("env") or {}, doc.get("peaks") or {}
    gpu = env.get("gpu")
    if doc.get("dry_run"):
        return ["Dry run on CPU (tiny shapes through the Triton interpreter): it proves the stages run; no "
                "number below is a measurement of anything."]
    if not gpu:
        return ["No GPU was found: nothing could be measured."]
    lines = [f"GPU: **{gpu}** (sm {env.get('capability', '?')}, {env.get('sm_count', '?')} SMs, "
             f"{env.get('memory_gb', '?')} GB); torch {env.get('torch', '?')}, triton {env.get('triton', '?')}, "
             f"CUDA {env.get('cuda', '?')}, flash-attn {env.get('flash_attn') or 'not installed'}."]
    if peaks:
        ds = datasheet(gpu)
        sheet = (f"; datasheet {ds['bf16_tflops']:.0f} TFLOP/s bf16, {ds['hbm_gbps']:.0f} GB/s HBM" if ds else
                 "; no datasheet peaks known for this card")
        lines.append(f"Measured here: device copy {peaks.get('copy_gbps', 0):.0f} GB/s (read + write), bf16 GEMM "
                     f"{peaks.get('matmul_tflops', 0):.0f} TFLOP/s at n = {peaks.get('matmul_n', '?')}{sheet}.")
    if TARGET_CARD.lower() not in gpu.lower():
        lines.append(f"The SPEC §6 targets are {TARGET_CARD} figures and this card is not an {TARGET_CARD}: "
                     f"bandwidth targets are judged against the copy rate measured on this card, MFU against "
                     f"this card's peaks, and the absolute time (0.3 ms) was measured on this card.")
    return lines


def _stage_rows(doc):
    rows = []
    for s in doc.get("stages", []):
        note = s.get("reason") or ""
        rows.append([s["name"], s["status"], f"{s.get('duration_s', 0):.1f} s",
                     f"{s['timeout_s']:.0f} s" if s.get("timeout_s") else "—", note.replace("|", "/")[:160]])
    return rows


def _check_lines(doc):
    checks = [r for r in doc.get("records", []) if r.get("kind") == "check"]
    if not checks:
        return ["No correctness records."]
    rows = []
    for op in dict.fromkeys(r["op"] for r in checks):
        mine = [r for r in checks if r["op"] == op]
        bad = [r for r in mine if not r.get("ok")]
        ratios = [r["err"] / r["tol"] for r in mine if r.get("tol")]
        worst = f"{max(ratios):.2f}" if ratios else "—"
        failing = "; ".join(f"{r.get('case', '')} {r.get('tensor', '')}: " +
                            (r["error"] if r.get("error") else f"err {r['err']:.2e} > tol {r['tol']:.2e}")
                            for r in bad[:3]).replace("|", "/")
        rows.append([op, len(mine) - len(bad), len(bad), worst, failing[:300]])
    return _table(["op", "passed", "failed", "worst err / tol", "failures"], rows)


def _pytest_lines(doc):
    res = [r for r in doc.get("records", []) if r.get("kind") == "pytest"]
    if not res:
        return ["No pytest results."]
    counts = {}
    for r in res:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    lines = [", ".join(f"{n} {k}" for k, n in sorted(counts.items()))]
    lines += [f"- {r['outcome']}: `{r['test']}`: {r.get('reason', '')}".rstrip(": ")
              for r in res if r["outcome"] not in ("passed", "skipped")][:30]
    return lines


def _perf_lines(doc):
    perf = [r for r in doc.get("records", []) if r.get("kind") == "perf"]
    peaks = doc.get("peaks") or {}
    sheet = datasheet((doc.get("env") or {}).get("gpu")).get("bf16_tflops")
    if not perf:
        return ["No timed rows."]
    rows = []
    for r in perf:
        pct = []
        if r.get("gbps") and peaks.get("copy_gbps"):
            pct.append(f"{100 * r['gbps'] / peaks['copy_gbps']:.0f} % copy")
        if r.get("tflops") and peaks.get("matmul_tflops"):
            pct.append(f"{100 * r['tflops'] / peaks['matmul_tflops']:.0f} % GEMM")
        if r.get("tflops") and sheet:
            pct.append(f"{100 * r['tflops'] / sheet:.0f} % datasheet")
        notes = [f"{k}={r[k]}" for k in ("jvp", "sdpa_backend", "launches", "bwd_method", "graph_breaks")
                 if r.get(k) is not None]
        if r.get("launch_bound"):
            notes.append("launch-bound without a graph")
        if r.get("transient_mem_gb") is not None:
            notes.append(f"transient {r['transient_mem_gb']:.2f} GB")
        if r.get("rel_err_vs_eager") is not None:
            notes.append(f"rel err {r['rel_err_vs_eager']:.1e}")
        if r.get("rel_err") is not None:   # perf_jvp: against SDPA math in fp32
            notes.append(f"rel err {r['rel_err']:.1e} vs SDPA math fp32")
        rows.append([r["case"] + ("" if r.get("spec_row") else " (extra)"), r["provider"], _shape(r.get("shape")),
                     r.get("dtype", ""), _time(r.get("per_call_s")), f"{r['gbps']:.0f}" if r.get("gbps") else "",
                     f"{r['tflops']:.0f}" if r.get("tflops") else "", ", ".join(pct),
                     f"{r.get('warmup_s', 0):.1f} s", "; ".join(notes)])
    errors = [r for r in doc.get("records", []) if r.get("kind") == "perf_error"]
    lines = _table(["case", "provider", "shape", "dtype", "per call", "GB/s", "TFLOP/s", "of peak", "warm-up",
                    "notes"], rows)
    lines += [f"- {r['case']} / {r['provider']}: {r.get('error', '')}" for r in errors]
    return lines


def _shape(shape):
    return "×".join(map(str, shape)) if isinstance(shape, (list, tuple)) else str(shape or "")


def summary(doc):
    """The title, the card, the scorecard and the stages: what the command prints last."""
    gpu = "CPU dry run" if doc.get("dry_run") else (doc.get("env") or {}).get("gpu") or "no GPU"
    lines = [f"# GPU check: {gpu}, {doc.get('date', '')[:16].replace('T', ' ')}", ""]
    if doc.get("status") != "complete":
        lines += ["**Run in progress or cut off: the tables hold what had finished.**", ""]
    lines += _card_lines(doc) + [""]
    lines += ["## Scorecard (SPEC §6)", ""]
    card = score(doc)
    counts = {k: sum(1 for c in card if c["verdict"] == k) for k in (MET, MISSED, NOT_MEASURED)}
    lines += [f"{counts[MET]} met, {counts[MISSED]} missed, {counts[NOT_MEASURED]} not measured.", ""]
    lines += _table(["target", "measured", "threshold", "verdict"],
                    [[c["id"], c["shown"], c["threshold"],
                      c["verdict"] + (f": {c['reason']}" if c["reason"] else "")] for c in card])
    lines += ["", "Speed-ups are a baseline's time per call over ours (above 1: ours is faster); single-kernel "
              "rows time back-to-back calls queued behind a spin kernel, so launch latency is hidden; backward "
              "rows time the backward alone; sampling rows are wall-clock latency to completion.", ""]
    lines += ["## Stages", ""] + _table(["stage", "status", "duration", "timeout", "note"], _stage_rows(doc))
    lines += ["", f"Total {doc.get('total_s', 0):.0f} s of a {doc.get('budget_s', 0):.0f} s budget."]
    return "\n".join(lines)


def render(doc):
    """The markdown report: the summary (scorecard, stages), then correctness, pytest and the timed rows."""
    lines = [summary(doc), ""]
    lines += ["## Correctness (2× rule against float64 references)", ""] + _check_lines(doc) + [""]
    lines += ["## pytest -m cuda", ""] + _pytest_lines(doc) + [""]
    lines += ["## Timed rows", ""] + _perf_lines(doc) + [""]
    return "\n".join(lines)


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python bench/scorecard.py RESULT.json\n")
        return 2
    with open(argv[0]) as f:
        sys.stdout.write(render(json.load(f)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
