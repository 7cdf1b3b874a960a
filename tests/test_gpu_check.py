"""bench/gpu_check.py, the one GPU command: its dry run end to end (CI runs it, so the command cannot rot between
GPU runs), stage timeouts and the budget, and the scorecard's verdicts against the SPEC §6 thresholds."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import ATOL, load_bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
SCRIPT = os.path.join(BENCH, "gpu_check.py")


scorecard = load_bench("scorecard")


def _run(args, timeout=300, no_gpu=False):
    """bench/gpu_check.py ARGS. no_gpu: as on a machine with neither a GPU nor the interpreter (the GPU plan
    with nothing to run it on)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    if no_gpu:
        env.pop("TRITON_INTERPRET", None)
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _doc(out_dir):
    files = sorted(os.listdir(out_dir))
    stem = [f for f in files if f.endswith(".json")][0][:-len(".json")]
    with open(os.path.join(out_dir, stem + ".json")) as f:
        return stem, files, json.load(f)


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = _run(["--dry-run", "--out", str(out)])
    stem, files, doc = _doc(out)
    return proc, out, stem, files, doc


# ------------------------------------------------------------------------------------------------ dry run
def test_dry_run_runs_every_stage(dry):
    proc, out, stem, files, doc = dry
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert files == [stem + ext for ext in (".json", ".log", ".md")] and stem.endswith("-cpu-dry-run-gpu_check")
    assert [s["name"] for s in doc["stages"]] == ["env", "correctness", "pytest", "perf_adaln", "perf_attention",
                                                  "perf_conditioning", "perf_forward", "perf_sampler", "perf_train",
                                                  "perf_jvp"]
    assert all(s["status"] == "ok" and s["duration_s"] > 0 for s in doc["stages"]), doc["stages"]
    assert doc["dry_run"] and doc["status"] == "complete" and doc["env"]["cuda_available"] is False
    assert doc["peaks"]["copy_gbps"] > 0 and doc["peaks"]["matmul_tflops"] > 0
    records = doc["records"]
    # perf_jvp's compile rows may fail to trace torch.func.jvp (recorded as a perf_error: see the next test).
    assert not [r for r in records if r["kind"] == "job_error" or r["kind"] == "perf_error" and r["spec_row"]]
    # Correctness: every op, every compared tensor within the 2x rule, through the interpreter.
    checks = [r for r in records if r["kind"] == "check"]
    assert {r["op"] for r in checks} == {"adaln_modulate", "gated_adaln", "embed_conditioning", "attention",
                                         "attention_qkvpacked", "model"}
    assert all(r["ok"] for r in checks) and all(r["err"] <= r["tol"] for r in checks)
    # pytest: the cuda tests were collected and skipped (the dry run hides any GPU).
    tests = [r for r in records if r["kind"] == "pytest"]
    assert tests and all(r["outcome"] == "skipped" for r in tests)
    # Every SPEC row was timed for ours and each baseline.
    rows = {(r["case"], r["provider"]) for r in records if r["kind"] == "perf" and r["spec_row"]}
    for target in scorecard.TARGETS:
        if target.baseline == "flash_attn":   # not installed here
            continue
        assert any((target.case, p) in rows for p in scorecard.OURS), target.id
        assert target.baseline is None or (target.case, target.baseline) in rows, target.id
    assert all(r["per_call_s"] > 0 for r in records if r["kind"] == "perf")
    with open(os.path.join(out, stem + ".md")) as f:
        assert f.read() == scorecard.render(doc) + "\n"


def _outcomes(records, case, provider, **fields):
    return [r for r in records if r["kind"] in ("perf", "perf_error") and r["case"] == case
            and r["provider"] == provider and all(r.get(k) == v for k, v in fields.items())]


def test_dry_run_times_the_jvp_rows(dry):
    # perf_jvp (--full on a GPU, always in the dry run): one record per row, timed or, for compile only, a
    # perf_error with its reason; none is a SPEC row, so the scorecard (29 targets) ignores them.
    records = dry[-1]["records"]
    rows = {(case, provider, None): _outcomes(records, case, provider)
            for case in ("attention_jvp_hd64", "attention_jvp_hd72")
            for provider in ("triton", "triton_rule", "sdpa_math", "compile", "triton_fwd")}
    rows.update({("meanflow_train", provider, jvp): _outcomes(records, "meanflow_train", provider, jvp=jvp)
                 for provider in ("triton", "eager", "compile") for jvp in ("joint", "separate")})
    for key, found in rows.items():
        assert len(found) == 1, (key, found)
        r = found[0]
        assert r["spec_row"] is False and r["dtype"] == "fp32", (key, r)
        if r["kind"] == "perf_error":
            assert key[1] == "compile" and r["error"], (key, r)
            continue
        assert r["per_call_s"] > 0 and r["tflops"] > 0, (key, r)
        if key[0] == "meanflow_train":
            assert r["shape"] == ["tiny", 4] and r["jvp_autocast"] is True and math.isfinite(r["loss"]), (key, r)
        else:   # checked against SDPA math in fp32 before it was timed
            assert r["shape"][3] == int(key[0][-2:]) and r["rel_err"] <= r["rel_tol"] == 1e-4, (key, r)
        if key[1] == "compile":
            assert r["graph_breaks"] >= 0, (key, r)
    stage = [s for s in dry[-1]["stages"] if s["name"] == "perf_jvp"][0]
    assert stage["status"] == "ok" and not stage.get("by_plan")


def test_the_default_gpu_plan_skips_the_jvp_stage(tmp_path, monkeypatch):
    # No --full, no --dry-run: perf_jvp is skipped before any process starts, the report says why, and the skip
    # does not fail the run. The default plan and its 7-minute budget are unchanged.
    monkeypatch.setattr(sys, "path", list(sys.path))   # gpu_check puts bench/ on the path: undo it afterwards
    gpu_check = load_bench("gpu_check")
    assert gpu_check.BUDGET_S["gpu"] == 400.0
    assert [s.name for s in gpu_check.STAGES if s.full_only] == ["perf_jvp"]
    proc = _run(["--stages", "perf_jvp", "--out", str(tmp_path)], timeout=120, no_gpu=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, _, doc = _doc(tmp_path)
    assert [(s["name"], s["status"], s["by_plan"]) for s in doc["stages"]] == [("perf_jvp", "skipped", True)]
    assert "--full" in doc["stages"][0]["reason"] and not doc["records"]
    assert "| perf_jvp | skipped |" in proc.stdout


def test_dry_run_prints_the_scorecard_with_nothing_measured(dry):
    proc, _, _, _, doc = dry
    lines = {line.split(" | ")[0].lstrip("| "): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    for target in scorecard.TARGETS:
        assert "not measured: no GPU (dry run on CPU)" in lines[target.id], target.id
    assert "0 met, 0 missed, 29 not measured." in proc.stdout
    assert [c["verdict"] for c in doc["scorecard"]] == [scorecard.NOT_MEASURED] * len(scorecard.TARGETS)


def test_a_stage_past_its_timeout_is_recorded_and_the_rest_run(tmp_path):
    # perf_conditioning is stopped at 1 s, env still runs, and perf_adaln finds too little budget to start.
    proc = _run(["--dry-run", "--out", str(tmp_path), "--stages", "perf_conditioning,env,perf_adaln",
                 "--timeout", "perf_conditioning=1", "--budget-s", "16"])
    assert proc.returncode == 1, proc.stderr[-2000:]
    _, _, doc = _doc(tmp_path)
    status = {s["name"]: s for s in doc["stages"]}
    assert status["perf_conditioning"]["status"] == "timeout" and status["perf_conditioning"]["timeout_s"] == 1
    assert status["env"]["status"] == "ok"
    assert status["perf_adaln"]["status"] == "skipped" and "budget" in status["perf_adaln"]["reason"]
    assert "| perf_conditioning | timeout |" in proc.stdout


def test_gpu_plan_splits_correctness_over_processes(tmp_path):
    # The GPU path of the correctness stage (one process per op, attention in 4 shards, the model in 2) on a
    # machine without one: no interpreter and no GPU, so every check fails fast, each with its reason; what
    # this proves is the plan: every process ran its share and came back.
    proc = _run(["--stages", "correctness", "--out", str(tmp_path)], no_gpu=True)
    assert proc.returncode == 1, proc.stderr[-2000:]
    stem, _, doc = _doc(tmp_path)
    assert [(s["name"], s["status"]) for s in doc["stages"]] == [("correctness", "ok")]
    with open(os.path.join(tmp_path, stem + ".log")) as f:
        log = f.read()
    labels = ["check_adaln", "check_conditioning"] + [f"check_attention shard {i}/4" for i in range(4)] + \
        [f"check_model shard {i}/2" for i in range(2)]
    assert all(f"===== correctness: {label} (exit code 0)" in log for label in labels), log[:2000]
    checks = [r for r in doc["records"] if r["kind"] == "check"]
    assert {r["op"] for r in checks} == {"adaln_modulate", "gated_adaln", "embed_conditioning", "attention",
                                         "attention_qkvpacked", "model"}
    assert len({r["case"] for r in checks if r["op"] == "attention"}) == 4   # hd 64 / 72 × fp16 / bf16
    assert not any(r["ok"] for r in checks)
    assert all("kernel cannot run" in r["error"] or "Triton kernels run on CUDA" in r["error"] for r in checks)


def test_bad_arguments_are_rejected(capsys, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))   # gpu_check puts bench/ on the path: undo it afterwards
    gpu_check = load_bench("gpu_check")
    for argv, message in ((["--stages", "env,bogus"], "unknown stage(s) ['bogus']"),
                          (["--timeout", "env=0"], "SECONDS > 0"), (["--timeout", "nope=3"], "unknown stage 'nope'"),
                          (["--budget-s", "-1", "--dry-run"], "--budget-s must be > 0")):
        with pytest.raises(SystemExit) as e:
            gpu_check.main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_atol_table_is_the_tests_one():
    check_kernels = load_bench("check_kernels")
    assert check_kernels.ATOL == ATOL


# ------------------------------------------------------------------------------------------------ scorecard
# SPEC §6, row by row: (metric, threshold, comparison, baseline) of every target.
SPEC = {
    "adaln_modulate fwd: % of copy bandwidth": ("pct_copy", 0.80, ">=", None),
    "adaln_modulate fwd vs eager": ("speedup", 2.5, ">=", "eager"),
    "adaln_modulate fwd vs compile": ("speedup", 1.0, ">=", "compile"),
    "gated_adaln fwd: % of copy bandwidth": ("pct_copy", 0.80, ">=", None),
    "gated_adaln fwd vs eager": ("speedup", 2.5, ">=", "eager"),
    "gated_adaln fwd vs compile": ("speedup", 1.0, ">=", "compile"),
    "adaln_modulate bwd vs eager": ("speedup", 1.5, ">=", "eager"),
    "adaln_modulate bwd vs compile": ("speedup", 1.0, ">=", "compile"),
    "gated_adaln bwd vs eager": ("speedup", 1.5, ">=", "eager"),
    "gated_adaln bwd vs compile": ("speedup", 1.0, ">=", "compile"),
    "conditioning: GPU launches": ("launches", 3, "<=", None),
    "conditioning: weights read, % of copy bandwidth": ("pct_copy", 0.80, ">=", None),
    **{f"attention fwd hd {hd} vs {name}": ("speedup", 1.0, ">=", base)
       for hd in (64, 72) for base, name in (("sdpa", "SDPA"), ("flash_attn", "flash-attn"))},
    **{f"attention bwd hd {hd} vs {name}": ("speedup", 0.8, ">=", base)
       for hd in (64, 72) for base, name in (("sdpa", "SDPA"), ("flash_attn", "flash-attn"))},
    "DiT-XL/2 forward vs eager": ("speedup", 1.3, ">=", "eager"),
    "DiT-XL/2 forward vs compile": ("speedup", 1.0, ">=", "compile"),
    "DiT-XL/2 forward: MFU (datasheet peak)": ("mfu_datasheet", 0.50, ">=", None),
    "DiT-XL/2 forward: MFU (measured GEMM peak)": ("mfu_measured", 0.50, ">=", None),
    "1-step sampling latency": ("latency", 0.3e-3, "<=", None),
    "1-step sampling vs eager": ("speedup", 10.0, ">=", "eager"),
    "DiT-B/2 training step vs eager": ("speedup", 1.2, ">=", "eager"),
    "DiT-B/2 training step vs compile": ("speedup", 1.0, ">=", "compile"),
    "DiT-B/2 training step: activation memory vs eager": ("memory_ratio", 1.0, "<", "eager"),
}


def test_targets_are_the_spec_table():
    got = {t.id: (t.metric, t.threshold, t.cmp, t.baseline) for t in scorecard.TARGETS}
    assert got == SPEC
    assert len(scorecard.TARGETS) == 29 and all(t.op for t in scorecard.TARGETS)


def test_verdict():
    v = scorecard.verdict
    assert v(2.6, 2.5, ">=") == v(2.5, 2.5, ">=") == scorecard.MET and v(2.49, 2.5, ">=") == scorecard.MISSED
    assert v(0.29e-3, 0.3e-3, "<=") == scorecard.MET and v(0.31e-3, 0.3e-3, "<=") == scorecard.MISSED
    assert v(0.9, 1.0, "<") == scorecard.MET and v(1.0, 1.0, "<") == scorecard.MISSED
    assert v(None, 1.0, ">=") == scorecard.NOT_MEASURED


def _perf(case, provider, per_call_s, **extra):
    return {"kind": "perf", "case": case, "provider": provider, "per_call_s": per_call_s, "spec_row": True, **extra}


def _gpu_doc(gpu="NVIDIA H200", records=(), stages=()):
    return {"date": "2026-12-01T10:00:00+00:00", "dry_run": False, "budget_s": 400, "total_s": 380,
            "status": "complete", "env": {"gpu": gpu, "cuda_available": True, "flash_attn": None},
            "peaks": {"copy_gbps": 4300.0, "matmul_tflops": 790.0, "matmul_n": 8192},
            "stages": [{"name": n, "status": s, "duration_s": 10.0, "timeout_s": 60.0, "reason": r}
                       for n, s, r in stages], "records": list(records)}


def test_score_of_a_gpu_run():
    records = [
        _perf("adaln_modulate_fwd", "triton", 100e-6, gbps=3500.0),          # 81 % of 4300 GB/s
        _perf("adaln_modulate_fwd", "eager", 300e-6), _perf("adaln_modulate_fwd", "compile", 90e-6),
        _perf("adaln_modulate_fwd", "triton", 1e-6, gbps=1.0, spec_row=False),   # a --full row: not judged
        _perf("conditioning", "triton", 120e-6, gbps=3000.0, launches=4),
        _perf("attention_fwd_hd64", "triton", 1e-3),
        {"kind": "perf_error", "case": "attention_fwd_hd64", "provider": "sdpa", "error": "RuntimeError: no kernel"},
        _perf("forward", "triton", 0.12, tflops=500.0), _perf("forward", "eager", 0.18),
        _perf("sample", "graph", 0.25e-3), _perf("sample", "eager", 3e-3),
        _perf("train", "triton", 0.1, transient_mem_gb=8.0), _perf("train", "eager", 0.15, transient_mem_gb=10.0),
        {"kind": "check", "op": "model", "case": "DiT-B/2", "tensor": "output", "ok": True, "err": 1, "tol": 2},
    ]
    stages = [("perf_adaln", "timeout", "stopped at its 60 s limit"), ("perf_attention", "ok", ""),
              ("perf_conditioning", "ok", ""), ("perf_forward", "ok", ""), ("perf_sampler", "ok", ""),
              ("perf_train", "skipped", "time budget spent")]
    card = {c["id"]: c for c in scorecard.score(_gpu_doc(records=records, stages=stages))}

    def verdict(target):
        return card[target]["verdict"], card[target]["reason"]

    assert card["adaln_modulate fwd: % of copy bandwidth"]["value"] == pytest.approx(3500 / 4300)
    assert verdict("adaln_modulate fwd: % of copy bandwidth") == (scorecard.MET, None)
    assert card["adaln_modulate fwd vs eager"]["value"] == pytest.approx(3.0)
    assert verdict("adaln_modulate fwd vs compile") == (scorecard.MISSED, None)
    assert verdict("gated_adaln fwd vs eager") == (scorecard.NOT_MEASURED,
                                                   "stage perf_adaln timed out after 10 s before this row")
    assert verdict("conditioning: GPU launches") == (scorecard.MISSED, None)
    assert verdict("attention fwd hd 64 vs SDPA") == (scorecard.NOT_MEASURED, "sdpa failed: RuntimeError: no kernel")
    assert verdict("attention fwd hd 64 vs flash-attn") == (scorecard.NOT_MEASURED, "flash-attn is not installed")
    assert verdict("DiT-XL/2 forward vs eager") == (scorecard.MET, None)
    assert card["DiT-XL/2 forward: MFU (datasheet peak)"]["value"] == pytest.approx(500 / 989)
    assert card["DiT-XL/2 forward: MFU (measured GEMM peak)"]["value"] == pytest.approx(500 / 790)
    assert verdict("DiT-XL/2 forward vs compile") == (scorecard.NOT_MEASURED, "no row recorded")
    assert verdict("1-step sampling latency") == (scorecard.MET, None)
    assert "on NVIDIA H200" in card["1-step sampling latency"]["shown"]
    assert card["1-step sampling vs eager"]["value"] == pytest.approx(12.0)
    assert verdict("DiT-B/2 training step: activation memory vs eager") == (scorecard.MET, None)
    assert verdict("DiT-B/2 training step vs compile") == (scorecard.NOT_MEASURED,
                                                           "stage perf_train skipped: time budget spent")
    text = scorecard.render(_gpu_doc(records=records, stages=stages))
    assert "this card is not an H100" in text and "| perf_adaln | timeout | 10.0 s | 60 s |" in text


def test_a_kernel_that_failed_correctness_misses_its_targets():
    records = [_perf("forward", "triton", 0.1, tflops=600.0), _perf("forward", "eager", 0.2),
               {"kind": "check", "op": "model", "case": "DiT-XL/2", "tensor": "dblocks.0.attn.qkv.weight",
                "ok": False, "err": 3.0, "tol": 1.0}]
    card = {c["id"]: c for c in scorecard.score(_gpu_doc("NVIDIA H100 80GB HBM3", records))}
    assert card["DiT-XL/2 forward vs eager"]["value"] == pytest.approx(2.0)
    assert (card["DiT-XL/2 forward vs eager"]["verdict"], card["DiT-XL/2 forward vs eager"]["reason"]) == \
        (scorecard.MISSED, "model failed the correctness stage")
    text = scorecard.render(_gpu_doc("NVIDIA H100 80GB HBM3", records))
    assert "not an H100" not in text and "| model | 0 | 1 | 3.00 |" in text


def test_mfu_needs_a_known_datasheet_and_no_gpu_is_not_measured():
    records = [_perf("forward", "triton", 0.1, tflops=100.0)]
    card = {c["id"]: c for c in scorecard.score(_gpu_doc("Some Future GPU", records))}
    assert card["DiT-XL/2 forward: MFU (datasheet peak)"]["reason"] == "no datasheet peak for this card"
    assert card["DiT-XL/2 forward: MFU (measured GEMM peak)"]["value"] == pytest.approx(100 / 790)
    assert scorecard.datasheet("NVIDIA H100 PCIe")["bf16_tflops"] == 756.0
    assert scorecard.datasheet("NVIDIA H200")["bf16_tflops"] == 989.0
    doc = _gpu_doc(records=records)
    doc["env"]["cuda_available"] = False
    assert {c["reason"] for c in scorecard.score(doc)} == {"no GPU (torch sees no CUDA device)"}


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture
def bench_path(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)   # perf_spec imports `common` as the benchmark files do


def test_backward_timing_falls_back_when_a_graph_cannot_be_replayed(bench_path, tmp_path):
    import common
    import perf_spec

    class Once(torch.autograd.Function):
        """A backward that refuses a second run on the same graph, like one that frees its buffers."""
        @staticmethod
        def forward(ctx, x):
            ctx.runs = 0
            return x * 2

        @staticmethod
        def backward(ctx, g):
            ctx.runs += 1
            if ctx.runs > 1:
                raise RuntimeError("Trying to backward through the graph a second time")
            return g * 2

    records = common.Records(str(tmp_path / "r.jsonl"))
    job = perf_spec.Job(records, "cpu", dry=True, full=False)
    x = [[torch.randn(8, requires_grad=True)]]
    cot = [[torch.randn(8)]]
    plain = job.time_backward(lambda v: v * 3, x, cot)
    assert plain["bwd_method"] == "backward alone (retain_graph)"
    fallback = job.time_backward(Once.apply, x, cot)
    assert fallback["bwd_method"].startswith("(fwd+bwd) − fwd; retain_graph failed: RuntimeError: Trying to")
    assert fallback["per_call_s"] > 0 and fallback["fwd_per_call_s"] > 0


def test_records_are_written_as_they_are_made(bench_path, tmp_path):
    import common
    path = tmp_path / "r.jsonl"
    records = common.Records(str(path), stage="s")
    records.add("perf", case="c", per_call_s=1.0)
    try:
        raise ValueError("bad shape\nsecond line")
    except ValueError as e:
        records.error("perf_error", e, case="c")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"kind": "perf", "stage": "s", "case": "c", "per_call_s": 1.0}
    assert lines[1]["error"].startswith("ValueError: bad shape (test_gpu_check.py:") and lines[1]["case"] == "c"
    timing = common.time_per_call([lambda: None], "cpu", reps=4)
    assert timing["reps"] == 4 and timing["timer"] == "perf_counter" and timing["min_s"] <= timing["per_call_s"]
    assert common.transient_memory(lambda: None, "cpu") == {}


def test_nvtx_range_without_the_nvtx_package(monkeypatch):
    import shortcut.profiling as prof
    monkeypatch.setitem(sys.modules, "nvtx", None)   # `import nvtx` raises ImportError, as on the GPU image
    prof._nvtx_package.cache_clear()
    previous = prof.enable_nvtx(True)
    try:
        with prof.nvtx_range("step"):   # torch's own NVTX on a CUDA build, a no-op on a CPU-only one
            pass
        if not torch.cuda.is_available():
            assert prof.nvtx_range("step") is prof._NULL
    finally:
        prof.enable_nvtx(previous)
        prof._nvtx_package.cache_clear()
