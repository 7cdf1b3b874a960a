"""Setup for the benchmark suite (`pytest bench/`).

- makes the repository importable and `common` importable as a top-level module (the benchmark files
  do `from common import measure`), whichever way pytest was started;
- on machines without CUDA, sets TRITON_INTERPRET=1 before triton is imported (SPEC §3), so the Triton
  providers run through the interpreter at the tiny CPU shapes;
- options: --bench-mode quick|default|full (sets `common.MODE`: which shapes and compile variants run),
  --bench-budget-s S (tests that would start after S seconds are skipped, so a whole GPU run fits one
  time-limited call), --bench-outcomes PATH (one JSON line per test as it finishes: outcome, skip or
  failure reason, and the benchmark's extra_info; the report is built from it when a run is cut off);
- files that set `RUN_LAST = True` run after the others; a file's `BUDGET_WEIGHT` (default 1) sets its
  share of --bench-budget-s;
- records the GPU, clocks and versions in pytest-benchmark's machine_info (the SDPA backend that ran is
  in each attention row's extra_info and in bench/peaks.py's environment);
- a `device` fixture ("cuda" when available, else "cpu") for files that want one.
"""
import json
import os
import sys
import time

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("triton was imported before bench/conftest.py could set TRITON_INTERPRET=1; "
                           "without CUDA the Triton providers need the interpreter")
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:
    # One pytest process compiles the same functions (the model forward, the adaLN references) at many
    # shapes; past Dynamo's recompile limit (default 8) it silently runs eagerly, turning compiled rows
    # into eager ones. Raised once here for every benchmark file.
    for _name in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, _name):
            setattr(torch._dynamo.config, _name, 64)

import common  # noqa: E402

MODES = ("quick", "default", "full")


def pytest_addoption(parser):
    group = parser.getgroup("shortcut benchmarks")
    group.addoption("--bench-mode", choices=MODES, default=None,
                    help="quick: the SPEC §6 rows at few shapes; default: + more shapes; full: every shape "
                         "and compile variant (env SHORTCUT_BENCH_MODE; default 'default')")
    group.addoption("--bench-budget-s", type=float, default=0.0,
                    help="skip benchmarks that would start after this many seconds (0: no limit)")
    group.addoption("--bench-outcomes", default=None,
                    help="append one JSON line per finished test (outcome, reason, extra_info) to this file")


def pytest_configure(config):
    mode = config.getoption("--bench-mode", default=None)
    if mode:
        common.MODE = mode
        os.environ["SHORTCUT_BENCH_MODE"] = mode
    config._bench_t0 = time.perf_counter()


def _module_attr(item, name, default):
    return getattr(getattr(item, "module", None), name, default)


def pytest_collection_modifyitems(config, items):
    # Files that set RUN_LAST = True (the full-model file: its compiles take minutes) run after the rest,
    # so a run stopped by --bench-budget-s loses the most expensive cases first. The sort is stable.
    items.sort(key=lambda item: bool(_module_attr(item, "RUN_LAST", False)))
    # Each benchmark file gets a share of the budget (BUDGET_WEIGHT, default 1), as a cumulative deadline:
    # file i's tests may start until (weights of files 1..i) / (all weights) × budget. A slow file cannot
    # starve the files after it, and time a file leaves unused passes on to the next.
    weights = {}
    for item in items:
        path = str(getattr(item, "path", item.fspath))
        if path.startswith(HERE + os.sep):
            weights.setdefault(path, float(_module_attr(item, "BUDGET_WEIGHT", 1.0)))
    total, running = sum(weights.values()) or 1.0, 0.0
    config._bench_share = {}
    for path, weight in weights.items():
        running += weight
        config._bench_share[path] = running / total


def pytest_runtest_setup(item):
    budget = item.config.getoption("--bench-budget-s", default=0.0)
    share = getattr(item.config, "_bench_share", {}).get(str(getattr(item, "path", item.fspath)), 1.0)
    if budget and time.perf_counter() - item.config._bench_t0 > budget * share:
        pytest.skip(f"time budget spent: this file's share ends {budget * share:.0f} s into the suite's "
                    f"{budget:.0f} s (--bench-budget-s)")


def _reason(rep):
    if rep.skipped and isinstance(rep.longrepr, tuple):
        return str(rep.longrepr[2]).removeprefix("Skipped: ")
    text = rep.longreprtext.strip().splitlines()
    errors = [line for line in text if line.startswith("E ")]
    return (errors[0][1:].strip() if errors else (text[-1] if text else ""))[:300]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    path = item.config.getoption("--bench-outcomes", default=None)
    if not path:
        return
    final = rep.when == "call" or (rep.when == "setup" and not rep.passed) or (rep.when == "teardown" and rep.failed)
    if not final:
        return
    record = {"test": item.nodeid, "outcome": rep.outcome, "when": rep.when}
    if not rep.passed:
        record["reason"] = _reason(rep)
    bench = item.funcargs.get("benchmark") if hasattr(item, "funcargs") else None
    if bench is not None and rep.when == "call" and bench.extra_info:
        record["extra_info"] = bench.extra_info
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    device = "cuda" if HAS_CUDA else "cpu"
    info = dict(common.device_info(device), mode=common.MODE)
    if HAS_CUDA:
        info["clocks"] = common.gpu_clocks()
    machine_info["shortcut"] = info


@pytest.fixture
def device():
    return "cuda" if HAS_CUDA else "cpu"
