"""One command for the whole pytest-benchmark suite: measured peaks, `pytest bench/`, then the report.

For one short GPU call use bench/gpu_check.py (correctness first, the SPEC §6 rows, a scorecard); this suite
is for wider tables and takes longer than its --deadline-s in default mode (the review estimated 25-35 min of
work), so --deadline-s cuts it.

    python bench/run.py --out bench/results            # default mode, stopped at --deadline-s (540 s)
    python bench/run.py --quick --out bench/results    # fewer shapes, fewer compiles
    python -m bench.run --full --deadline-s 3000       # every shape and compile variant: budget ~30+ min

Writes <out>/<date>-<gpu>.json (environment, peaks, every result row, what did not run) and .md (the
tables and speed-ups, also printed at the end), plus <date>-<gpu>.pytest-benchmark.json (pytest-benchmark's
raw output, when the run finished). Time limits: benchmarks that would start after --budget-s are
skipped (listed under "Not measured"), and pytest is stopped at --deadline-s after the start; the report
is then built from the per-test outcome lines written so far, and says the run was cut off.
Extra arguments after `--` go to pytest, e.g. `-- -k attention`.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)   # `python -m bench.run` and `python bench/run.py` both find report.py
import report  # noqa: E402

# The longest single case (DiT-XL/2 forward under max-autotune-no-cudagraphs: a cold Inductor compile with
# GEMM autotuning) is estimated at 2-3 minutes; no case may start later than this before the deadline.
LONGEST_CASE_S = 150


def _run_pytest(cmd, timeout, env):
    """Run pytest in its own process group; on timeout stop the whole group. Returns (returncode, cut_off)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        return proc.wait(timeout=max(timeout, 1)), False
    except subprocess.TimeoutExpired:
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                return proc.wait(timeout=wait), True
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        return proc.wait(), True


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="report directory (default bench/results)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="--bench-mode quick")
    mode.add_argument("--full", dest="mode", action="store_const", const="full", help="--bench-mode full")
    mode.add_argument("--mode", dest="mode", choices=("quick", "default", "full"))
    parser.add_argument("--deadline-s", type=float, default=540.0,
                        help="stop pytest this many seconds after the start (default 540: one 10-minute call "
                             "with time to spare for the report)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"no benchmark starts after this many seconds of pytest (default: deadline minus "
                             f"{LONGEST_CASE_S} s, the longest case, minus the time the peaks took)")
    parser.add_argument("--paths", nargs="+", default=["bench/"], help="what pytest runs (default bench/)")
    args = parser.parse_args(argv)
    args.mode = args.mode or "default"

    t0 = time.monotonic()
    work = tempfile.mkdtemp(prefix="shortcut-bench-")
    peaks_path, bench_path = os.path.join(work, "peaks.json"), os.path.join(work, "bench.json")
    outcomes_path = os.path.join(work, "outcomes.jsonl")
    env = dict(os.environ, SHORTCUT_BENCH_MODE=args.mode, PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))

    peaks = None
    try:
        subprocess.run([sys.executable, os.path.join(HERE, "peaks.py"), "--out", peaks_path], cwd=ROOT, env=env,
                       check=True, timeout=180)
        with open(peaks_path) as f:
            peaks = json.load(f)
    except (subprocess.SubprocessError, OSError, json.JSONDecodeError) as e:
        sys.stderr.write(f"bench/run.py: peak measurement failed ({e}); the report will have no % of peak\n")

    remaining = args.deadline_s - (time.monotonic() - t0)
    budget = args.budget_s if args.budget_s is not None else max(remaining - LONGEST_CASE_S, 30.0)
    cmd = [sys.executable, "-m", "pytest", *args.paths, "-q", "-p", "no:cacheprovider", "-p", "no:warnings",
           f"--benchmark-json={bench_path}", f"--bench-outcomes={outcomes_path}", f"--bench-mode={args.mode}",
           f"--bench-budget-s={budget:.0f}", "--benchmark-sort=fullname",
           "--benchmark-columns=median,min,rounds", *extra]
    sys.stderr.write(f"bench/run.py: {' '.join(cmd)}\n")
    rc, cut_off = _run_pytest(cmd, remaining, env)

    inputs = [p for p in (bench_path, outcomes_path) if os.path.exists(p)]
    if not inputs:
        sys.stderr.write(f"bench/run.py: pytest wrote no results (exit code {rc})\n")
        return rc or 1
    if not os.path.exists(bench_path) and not cut_off:
        cut_off = True   # pytest died without writing its JSON: only the outcome lines are left
    doc = report.build(inputs, peaks, complete=not cut_off)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, report.stamp(doc))
    markdown = report.render(doc)
    with open(stem + ".json", "w") as f:
        json.dump(doc, f, indent=1, default=str)
    with open(stem + ".md", "w") as f:
        f.write(markdown)
    if os.path.exists(bench_path):
        shutil.copy(bench_path, stem + ".pytest-benchmark.json")
    shutil.rmtree(work, ignore_errors=True)
    sys.stdout.write(f"\n{markdown}\nwritten: {stem}.json, {stem}.md ({time.monotonic() - t0:.0f} s)\n")
    return 2 if cut_off else rc


if __name__ == "__main__":
    sys.exit(main())
