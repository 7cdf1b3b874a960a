"""pytest plugin for bench/gpu_check.py's pytest stage: one JSON line per finished test, written as it finishes,
so a run stopped at its time limit still tells which tests passed, failed or never ran.

    python -m pytest -p bench.pytest_outcomes --outcomes-jsonl=out.jsonl -m cuda tests

Works with pytest-xdist: only the controller writes (workers forward their reports to it).
"""
import json

_PATH = None


def pytest_addoption(parser):
    parser.addoption("--outcomes-jsonl", default=None, help="append one JSON line per finished test to this file")


def pytest_configure(config):
    global _PATH
    if not hasattr(config, "workerinput"):   # an xdist worker: its reports reach the controller's hook
        _PATH = config.getoption("--outcomes-jsonl")


def _reason(rep):
    if rep.skipped and isinstance(rep.longrepr, tuple):
        return str(rep.longrepr[2]).removeprefix("Skipped: ")
    text = rep.longreprtext.strip().splitlines()
    errors = [line for line in text if line.startswith("E ")]
    return (errors[0][1:].strip() if errors else (text[-1] if text else ""))[:300]


def pytest_runtest_logreport(report):
    final = report.when == "call" or (report.when == "setup" and not report.passed) or \
        (report.when == "teardown" and report.failed)
    if _PATH is None or not final:
        return
    record = {"kind": "pytest", "test": report.nodeid, "outcome": report.outcome, "when": report.when,
              "duration_s": round(report.duration, 3)}
    if not report.passed:
        record["reason"] = _reason(report)
    with open(_PATH, "a") as f:
        f.write(json.dumps(record) + "\n")
