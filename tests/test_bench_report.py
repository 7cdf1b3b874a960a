"""The benchmark tooling: report tables, result loading, the timing helper, model FLOPs, the one command."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import load_bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


report = load_bench("report")
common = load_bench("common")
flops = load_bench("flops")

DOC = {
    "date": "2025-06-01T14:32:05+00:00",
    "env": {"gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0", "sm_count": 132, "memory_gb": 85.0,
            "torch": "2.11.0", "triton": "3.6.0", "cuda": "12.8", "flash_attn": None,
            "clocks": {"source": "nvidia-smi", "clocks_sm": "1980", "clocks_max_sm": "1980", "clocks_mem": "2619",
                       "power_draw": "120.5", "power_limit": "700.00", "driver_version": "570.1"},
            "sdpa_backend": {"shape": [64, 12, 256, 64], "dtype": "bfloat16", "backend": "flash"}},
    "peaks": {"copy_gbps": 3000.0, "matmul_tflops": 800.0, "matmul_dtype": "bfloat16"},
    "results": [
        {"test": "a1", "op": "adaln_modulate fwd", "provider": "eager", "shape": [64, 256, 1152],
         "median_s": 200e-6, "gbps": 600.0},
        {"test": "a2", "op": "adaln_modulate fwd", "provider": "compile", "shape": [64, 256, 1152],
         "median_s": 100e-6, "gbps": 1200.0},
        {"test": "a3", "op": "adaln_modulate fwd", "provider": "triton", "shape": [64, 256, 1152],
         "median_s": 80e-6, "gbps": 1500.0},
        {"test": "b1", "op": "attention_fwd", "provider": "sdpa", "shape": [64, 12, 256, 64], "median_s": 0.5e-3,
         "tflops": 400.0, "sdpa_backend": "flash"},
        {"test": "b2", "op": "attention_fwd", "provider": "triton", "shape": [64, 12, 256, 64], "median_s": 0.4e-3,
         "tflops": 500.0},
        {"test": "c1", "op": "DiT-B/2 train step", "provider": "eager", "shape": "B=256", "median_s": 0.25,
         "tflops": 200.0, "images_per_s": 1024.0, "peak_mem_gb": 40.0},
        {"test": "c2", "op": "DiT-B/2 train step", "provider": "fused", "ours": True, "shape": "B=256",
         "median_s": 0.2, "tflops": 250.0, "images_per_s": 1280.0, "peak_mem_gb": 30.0},
    ],
    "not_run": [
        {"test": "bench/test_bench_model.py::test_model[forward-DiT-B/2-b1-compile]", "outcome": "skipped",
         "reason": "runs with --bench-mode full (now default)"},
        {"test": "bench/test_bench_x.py::test_y[z]", "outcome": "failed", "reason": "AssertionError: boom"},
    ],
    "complete": True,
}

EXPECTED = """\
# Benchmarks: NVIDIA H100 80GB HBM3, 2025-06-01

| what | value |
|---|---|
| GPU | NVIDIA H100 80GB HBM3 (sm 9.0, 132 SMs, 85.0 GB) |
| clocks | SM 1980 / 1980 MHz, memory 2619 MHz, power 120.5 / 700.00 W (nvidia-smi, at the start of the run) |
| software | torch 2.11.0, triton 3.6.0, CUDA 12.8, driver 570.1, flash-attn not installed |
| SDPA backend | flash at (64, 12, 256, 64) bfloat16 |
| measured peaks | copy 3000 GB/s, bfloat16 matmul 800 TFLOP/s |

Median time per call (CUDA: events around one call with L2 flushed before it, or around a loop of calls \
for latency rows). % peak: the larger of GB/s ÷ measured copy bandwidth and TFLOP/s ÷ measured matmul peak \
(for model rows, MFU against the measured peak). vs X: X's median ÷ ours; above 1 means ours is faster.

## adaln_modulate fwd

| shape | provider | median | GB/s | % peak |
|---|---|---|---|---|
| 64×256×1152 | eager | 200.0 µs | 600 | 20 % |
| 64×256×1152 | compile | 100.0 µs | 1200 | 40 % |
| 64×256×1152 | **triton** | 80.0 µs | 1500 | 50 % |

| shape | ours | vs eager | vs compile |
|---|---|---|---|
| 64×256×1152 | triton | 2.50× | 1.25× |

## attention_fwd

| shape | provider | median | TFLOP/s | % peak | notes |
|---|---|---|---|---|---|
| 64×12×256×64 | sdpa | 500.0 µs | 400 | 50 % | sdpa: flash |
| 64×12×256×64 | **triton** | 400.0 µs | 500 | 62.5 % |  |

| shape | ours | vs sdpa |
|---|---|---|
| 64×12×256×64 | triton | 1.25× |

## DiT-B/2 train step

| shape | provider | median | TFLOP/s | % peak | img/s | peak mem |
|---|---|---|---|---|---|---|
| B=256 | eager | 250.00 ms | 200 | 25 % | 1024 | 40.00 GB |
| B=256 | **fused** | 200.00 ms | 250 | 31.2 % | 1280 | 30.00 GB |

| shape | ours | vs eager |
|---|---|---|
| B=256 | fused | 1.25× |

## Not measured

- failed: `bench/test_bench_x.py::test_y[z]`: AssertionError: boom
- skipped ×1: runs with --bench-mode full (now default): `test_model[forward-DiT-B/2-b1-compile]`
"""


def test_render_exact_markdown():
    assert report.render(DOC) == EXPECTED


def test_render_marks_a_cut_off_run_and_an_empty_one():
    doc = dict(DOC, results=[], not_run=[], complete=False, env={"torch": "2.13.0"}, peaks={})
    text = report.render(doc)
    assert text.startswith("# Benchmarks: CPU, 2025-06-01\n\n**The run was cut off")
    assert "No benchmark finished." in text
    assert "| device | CPU (a smoke run" in text and "measured peaks" not in text


def test_who_is_ours_and_peak_fraction():
    assert report.is_ours({"provider": "triton"}) and not report.is_ours({"provider": "triton_pad128"})
    assert report.is_ours({"provider": "graph", "ours": True})
    assert not report.is_ours({"provider": "triton", "ours": False})
    peaks = {"copy_gbps": 1000.0, "matmul_tflops": 100.0}
    assert report.peak_fraction({"gbps": 500.0, "tflops": 80.0}, peaks) == pytest.approx(0.8)   # the binding one
    assert report.peak_fraction({"gbps": 500.0}, {}) is None


def test_rows_of_different_presets_or_dtypes_are_not_compared():
    rows = [{"op": "sample", "preset": p, "dtype": "bf16", "provider": prov, "shape": [1, 1], "median_s": m}
            for p, prov, m in (("DiT-B/2", "eager", 4e-3), ("DiT-XL/2", "eager", 8e-3),
                               ("DiT-B/2", "graph", 1e-3), ("DiT-XL/2", "graph", 2e-3))]
    rows.append({"op": "DiT-B/2 forward", "preset": "DiT-B/2", "provider": "eager", "shape": "B=1", "median_s": 1.0})
    text = report.render(dict(DOC, results=rows, not_run=[]))
    assert "## sample · DiT-B/2 · bf16\n" in text and "## sample · DiT-XL/2 · bf16\n" in text
    assert "## DiT-B/2 forward\n" in text                            # the preset is in the op name already
    assert text.count("| 1×1 | graph | 4.00× |") == 2                # each preset against its own eager


def _bench_json():
    return {"datetime": "2025-06-01T14:32:05.123456+00:00", "machine_info": {"shortcut": {"torch": "2.11.0"}},
            "benchmarks": [
                {"fullname": "bench/a.py::test_a[1]", "stats": {"median": 9.0},
                 "extra_info": {"op": "x", "provider": "triton", "shape": [1], "median_s": 1e-3, "gpu": "GPU Z"}},
                {"fullname": "bench/a.py::test_b", "stats": {"median": 0.5}, "extra_info": {"op": "y", "provider": "p",
                                                                                         "shape": [2]}},
                {"fullname": "bench/a.py::test_c", "stats": {"median": 0.5}, "extra_info": {}}]}


def test_build_from_pytest_benchmark_json_and_outcome_lines(tmp_path):
    bench, outcomes = tmp_path / "bench.json", tmp_path / "outcomes.jsonl"
    lines = [{"test": "bench/a.py::test_a[1]", "outcome": "passed", "when": "call", "extra_info": {"op": "x"}},
             {"test": "bench/a.py::test_d", "outcome": "skipped", "when": "setup", "reason": "needs CUDA"}]
    failing = {"fullname": "bench/a.py::test_e", "stats": {"median": 1.0},
               "extra_info": {"op": "x", "provider": "triton", "shape": [1], "median_s": 1e-4}}
    bench.write_text(json.dumps(dict(_bench_json(), benchmarks=_bench_json()["benchmarks"] + [failing])))
    lines.append({"test": "bench/a.py::test_e", "outcome": "failed", "when": "call", "reason": "wrong output"})
    outcomes.write_text("".join(json.dumps(r) + "\n" for r in lines))
    doc = report.build([str(bench), str(outcomes)], peaks={"env": {"gpu": "GPU Y"}, "peaks": {"copy_gbps": 1.0}})
    # test_c has no op (not a measure() row); test_e failed after timing: neither is a result.
    assert [r["test"] for r in doc["results"]] == ["bench/a.py::test_a[1]", "bench/a.py::test_b"]
    assert doc["results"][0]["median_s"] == 1e-3                                   # measure's own median
    assert doc["results"][1]["median_s"] == 0.5 and doc["results"][1]["timer"] == "pytest-benchmark"
    assert doc["not_run"] == [{"test": "bench/a.py::test_d", "outcome": "skipped", "reason": "needs CUDA"},
                              {"test": "bench/a.py::test_e", "outcome": "failed", "reason": "wrong output"}]
    assert doc["env"] == {"gpu": "GPU Y"} and doc["peaks"] == {"copy_gbps": 1.0} and doc["complete"]
    assert report.stamp(doc) == "2025-06-01-1432-gpu-y"


def test_build_from_outcome_lines_alone_and_from_a_saved_doc(tmp_path):
    outcomes = tmp_path / "outcomes.jsonl"
    info = {"op": "x", "provider": "triton", "shape": [1], "median_s": 2e-3, "gpu": "GPU Z"}
    outcomes.write_text(json.dumps({"test": "t1", "outcome": "passed", "extra_info": info}) + "\n" +
                        json.dumps({"test": "t2", "outcome": "failed", "reason": "boom"}) + "\n")
    doc = report.build([str(outcomes)], complete=False)
    assert doc["results"] == [{"test": "t1", **info}] and doc["env"]["gpu"] == "GPU Z" and not doc["complete"]
    saved = tmp_path / "doc.json"
    saved.write_text(json.dumps(DOC))
    assert report.build([str(saved)]) == DOC
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"something": 1}))
    with pytest.raises(ValueError, match="pytest-benchmark JSON"):
        report.load(str(bad))


def test_update_readme_replaces_only_the_marked_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold\n{report.README_END}\noutro\n")
    report.update_readme(str(readme), "# Title\n\n## op\n\n| a |\n")
    start, end = report.README_START, report.README_END
    assert readme.read_text() == f"intro\n{start}\n## Title\n\n### op\n\n| a |\n{end}\noutro\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="results:start"):
        report.update_readme(str(readme), "x")


class _FakeBenchmark:
    """The parts of pytest-benchmark's fixture that measure() uses."""

    def __init__(self, disabled=False):
        self.disabled, self.extra_info, self.rounds_run = disabled, {}, 0

    def pedantic(self, target, setup=None, rounds=1, iterations=1, warmup_rounds=0):
        result = None
        for _ in range(rounds if not self.disabled else 1):
            if setup:
                setup()
            result = target()
            self.rounds_run += 1
        return result


def test_measure_records_median_and_physics_on_cpu():
    calls = []
    bench = _FakeBenchmark()
    out = common.measure(bench, lambda: calls.append(1) or len(calls), op="op", provider="p", shape=(2, 3),
                         device="cpu", bytes_moved=4e9, flops=6e12, warmup=2, note="x")
    info = bench.extra_info
    assert len(calls) == 2 + common.CPU_ROUNDS and out == len(calls)      # warm-up calls, then the timed rounds
    assert info["op"] == "op" and info["provider"] == "p" and info["shape"] == [2, 3] and info["note"] == "x"
    assert info["rounds"] == common.CPU_ROUNDS and info["timer"] == "perf_counter"
    assert info["torch"] == torch.__version__
    assert info["min_s"] <= info["median_s"]
    assert info["gbps"] == pytest.approx(4.0 / info["median_s"])
    assert info["tflops"] == pytest.approx(6.0 / info["median_s"])


def test_measure_disabled_runs_once_and_times_nothing():
    calls = []
    bench = _FakeBenchmark(disabled=True)
    common.measure(bench, lambda: calls.append(1), op="op", provider="p", shape=[1], device="cpu", flops=1.0)
    assert len(calls) == 1 and "median_s" not in bench.extra_info and bench.extra_info["op"] == "op"


def test_forward_flops_match_pytorchs_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from shortcut import ModelConfig, ShortcutDiT
    # Two shapes: the tiny preset, and odd sizes (3 channels, 6×6 input, MLP ratio 3, no classes).
    for cfg in (ModelConfig.preset("tiny", input_size=8, in_channels=4, num_classes=10),
                ModelConfig.preset("tiny", input_size=6, in_channels=3, num_classes=0, mlp_ratio=3.0)):
        model = ShortcutDiT(cfg, kernels="torch", attention="torch")   # plain matmuls: every FLOP is counted
        B, gen = 3, torch.Generator().manual_seed(0)
        x = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen)
        t, k = torch.rand(B, generator=gen), torch.randint(0, 8, (B,), generator=gen)
        y = torch.randint(0, cfg.num_classes + 1, (B,), generator=gen)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x, t, k, y)
        assert flops.dit_forward_flops(cfg, B) == counter.get_total_flops()


def test_meanflow_step_flops_match_pytorchs_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from shortcut import MeanFlowConfig, ModelConfig, ShortcutDiT
    from shortcut.meanflow import meanflow_loss
    # Plain matmuls (attention="torch"): the JVP's tangent matmuls are dispatched as aten mm / bmm / convolution,
    # so the counter sees them. Unguided, as the formula assumes. The loss (the JVP pass) is counted; the
    # backward is 2× the forward by the MFU convention, as in train_step_flops.
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=4, num_classes=10, step_input="interval", t_scale=1.0)
    model = ShortcutDiT(cfg, kernels="torch", attention="torch")
    gen = torch.Generator().manual_seed(0)
    B = 5
    x1 = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen)
    y = torch.randint(0, cfg.num_classes, (B,), generator=gen)
    forward = flops.dit_forward_flops(cfg, B)
    attention = cfg.depth * 4 * B * cfg.num_tokens ** 2 * cfg.hidden_size
    # PyTorch's forward-AD rules for mm / addmm / convolution multiply by the weights' tangent too, a tensor of
    # zeros (torch 2.13): one GEMM per weight GEMM that flops.py leaves out, as work a JVP need not do.
    zero_tangent_gemms = forward - attention
    for jvp in ("joint", "separate"):
        with FlopCounterMode(display=False) as counter:
            meanflow_loss(model, x1, y, MeanFlowConfig(jvp=jvp), torch.Generator().manual_seed(1))
        jvp_pass = flops.meanflow_step_flops(cfg, B, jvp) - 2 * forward
        assert counter.get_total_flops() == jvp_pass + zero_tangent_gemms, jvp
    assert flops.meanflow_step_flops(cfg, B, "separate") - flops.meanflow_step_flops(cfg, B) == forward
    with pytest.raises(ValueError, match="jvp must be"):
        flops.meanflow_step_flops(cfg, B, "fused")


def test_flops_of_the_dit_presets_and_the_training_step():
    from shortcut import ModelConfig, ObjectiveConfig
    # DiT paper, table 4: 118.6 (XL/2) and 23.01 (B/2) GFLOPs per 256 px image, counted as multiply-adds.
    xl, b = ModelConfig.preset("DiT-XL/2"), ModelConfig.preset("DiT-B/2")
    assert flops.dit_forward_flops(xl, 1) / 2e9 == pytest.approx(118.6, rel=1e-3)
    assert flops.dit_forward_flops(b, 1) / 2e9 == pytest.approx(23.01, rel=1e-3)
    assert flops.dit_forward_flops(b, 256) == 256 * flops.dit_forward_flops(b, 1)
    # 256 items, 1/8 bootstrapped: 3 passes over 256 plus two target forwards over 32.
    assert flops.train_step_flops(b, 256) == (3 * 256 + 2 * 32) * flops.dit_forward_flops(b, 1)
    assert flops.train_step_flops(b, 256, ObjectiveConfig(objective="flow")) == 3 * flops.dit_forward_flops(b, 256)
    with pytest.raises(ValueError, match="batch"):
        flops.dit_forward_flops(b, -1)


def test_one_command_writes_json_and_markdown(tmp_path):
    # The whole pipeline on CPU, on two cheap cases: peaks, pytest with outcome lines, the report files.
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "run.py"), "--out", str(out),
                           "--paths", "bench/test_bench_model.py", "--", "-k", "forward and eager or train and eager"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    md = [p for p in out.iterdir() if p.suffix == ".md"]
    assert len(md) == 1 and md[0].name.endswith("-cpu.md")
    doc = json.loads(md[0].with_suffix(".json").read_text())
    rows = {(r["op"], r["provider"]) for r in doc["results"]}
    assert rows == {("tiny forward", "eager"), ("tiny train step", "eager")}
    assert doc["peaks"]["copy_gbps"] > 0 and doc["complete"]
    assert md[0].read_text() == report.render(doc)
