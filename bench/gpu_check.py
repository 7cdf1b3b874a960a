"""One GPU call that proves the kernels right and measures every SPEC §6 target, with a scorecard.

    python bench/gpu_check.py --out bench/results     # on a GPU: ≤ 7 minutes on one H100/H200, compiles included
    python bench/gpu_check.py --dry-run               # on CPU: the same stages at tiny shapes, in 1-2 minutes
    python bench/gpu_check.py --out bench/results --stages perf_forward,perf_train --budget-s 300   # a re-plan

Stages, in this order, each in its own subprocess(es) with its own timeout, under one budget (--budget-s,
from the start of the command); a stage that fails or hangs is recorded and the next one runs, and a stage
that cannot start with its minimum time left is skipped and says so:
  env          the GPU, versions, clocks, the measured copy bandwidth and bf16 GEMM peak  (bench/peaks.py)
  correctness  every kernel fwd + bwd against its float64 reference (2× rule), fp16 / bf16, DiT shapes, and
               the production model path; one process per op on a GPU     (bench/check_kernels.py)
  pytest       pytest -m cuda tests  (per-test timeout and pytest-xdist when installed)
  perf_*       the SPEC §6 rows only, ours → eager → torch.compile within each case (bench/perf_spec.py):
               perf_adaln, perf_attention, perf_conditioning, perf_forward, perf_sampler, perf_train
  perf_jvp     --full and --dry-run only (skipped otherwise, and the report says so): forward-mode AD rows,
               no SPEC §6 target (bench/perf_jvp.py): perf_attention_jvp (the JVP attention kernel against
               torch.func.jvp through SDPA math), perf_meanflow_train (a MeanFlow step, DiT-B/2, B 256)
`--full` adds shapes, dtypes and compile modes to the perf stages and runs perf_jvp (give it a larger --budget-s).

Writes, into --out, as records arrive (a run cut off at any point leaves what had finished):
  <date>-<gpu>-gpu_check.json   environment, peaks, stages (status, duration, timeout), every record, scorecard
  <date>-<gpu>-gpu_check.md     the scorecard (one line per SPEC §6 target: measured, threshold, verdict), the
                                stages with their durations (to re-plan the next call), correctness, pytest, rows
  <date>-<gpu>-gpu_check.log    every stage's output
and prints the scorecard and the stages last. The dry run sets TRITON_INTERPRET=1 and hides any GPU from
its subprocesses (CUDA_VISIBLE_DEVICES=""), so it runs the same way everywhere; without --out it writes to a
temporary directory. This script imports no torch itself: the stages do.
Exit status: 0 when every stage finished (perf_jvp skipped without --full counts as finished) and every check
passed, 1 otherwise, 2 on bad arguments.
"""
import argparse
import datetime
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
import scorecard  # noqa: E402


@dataclass(frozen=True)
class Stage:
    name: str
    jobs: tuple             # job names (`--job`)
    timeout_s: float        # on a GPU
    min_s: float = 15.0     # not started with less of the budget left
    parallel: bool = False  # one subprocess per job (on a GPU: Triton compiles in parallel)
    shards: tuple = ()      # (job, n): on a GPU that job's cases are split over n subprocesses
    dry_timeout_s: float = 60.0
    full_only: bool = False  # skipped on a GPU without --full (the dry run runs it, so CI exercises it)


# Timeouts sized from estimates for one H100/H200 with 16 CPU cores (no GPU run yet): Triton compiles ~1-3 s
# per attention config (16 configs per head_dim and dtype), a cold Inductor compile of DiT-XL/2's forward
# 40-90 s, of the DiT-B/2 training step 60-120 s. Each stage's measured duration is in the report, so the
# next run can re-plan with --timeout STAGE=S and --stages.
STAGES = (
    Stage("env", ("env",), 60, min_s=10),
    # Attention autotunes 16 configs per kernel, head_dim and dtype: its 4 cases (hd 64 / 72 × fp16 / bf16) get a
    # process each, the model's 2 presets one each (8 processes on 16 cores).
    Stage("correctness", ("check_adaln", "check_conditioning", "check_attention", "check_model"), 90,
          parallel=True, shards=(("check_attention", 4), ("check_model", 2))),
    Stage("pytest", ("pytest",), 90, min_s=20),
    Stage("perf_adaln", ("perf_adaln",), 75),
    Stage("perf_attention", ("perf_attention",), 45),
    Stage("perf_conditioning", ("perf_conditioning",), 40),
    Stage("perf_forward", ("perf_forward",), 120, min_s=30),
    Stage("perf_sampler", ("perf_sampler",), 75, min_s=25),
    Stage("perf_train", ("perf_train",), 150, min_s=40),
    # Not in the default 7-minute plan. The JVP attention kernel's autotuning (4 "jvp" + 5 "tangent" configs per
    # head_dim, the forward's cached on disk by perf_attention) ~60 s, then the MeanFlow step: 2 × (fused, eager)
    # at seconds each and 2 cold Inductor compiles of a DiT-B/2 step with its JVP, 60-120 s each.
    Stage("perf_jvp", ("perf_attention_jvp", "perf_meanflow_train"), 420, min_s=60, full_only=True),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
# 400 s: 7 minutes with 20 s to spare. Dry: ~75 s on 2 idle cores, perf_jvp's ~26 s last; it starts ~50 s in
# and needs its min_s (60 s) left, hence 150 s.
BUDGET_S = {"gpu": 400.0, "full": 1800.0, "dry": 150.0}
POLL_S = 0.2   # how often a running stage is checked; the files are rewritten every 5 s


# ------------------------------------------------------------------------------------------------ jobs
def _env_job(records, device, dry):
    import torch

    from peaks import copy_bandwidth, environment, matmul_throughput
    env = environment(device)
    env["cuda_available"] = torch.cuda.is_available()
    env["python"] = sys.version.split()[0]
    for module in ("nvtx", "flash_attn", "xdist", "pytest_timeout", "diffusers"):
        env[f"has_{module}"] = importlib.util.find_spec(module) is not None
    # 4096 and 8192 only: the 8192³ product is the reference figure (770-800 TFLOP/s on an H200 here), and a
    # 16384² random input costs seconds of host-side randn.
    sizes = (4096, 8192) if device.type == "cuda" else (256,)
    peaks = {**copy_bandwidth(device), **matmul_throughput(device, sizes=sizes)}
    records.add("env", env=env, peaks=peaks)


def _pytest_job(records, dry):
    """pytest -m cuda tests, one JSON line per test into the records (bench/pytest_outcomes.py). Returns its exit
    code. Where `-m cuda` selects nothing (exit code 5), the tests named test_cuda_* run instead, and the
    record says so: the GPU minutes are too rare to come back with no test run."""
    cmd = [sys.executable, "-m", "pytest", "tests", "-q", "-rfE", "-p", "no:cacheprovider",
           "-p", "bench.pytest_outcomes", f"--outcomes-jsonl={records.path}"]
    if not dry and importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append("--timeout=60")
    if not dry and importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", str(min(8, os.cpu_count() or 1))]   # Triton compiles in parallel processes
    selector, note = ["-m", "cuda"], None
    code = subprocess.run(cmd + selector, cwd=ROOT).returncode
    if code == 5:
        note = ("pytest -m cuda selected no test (no test carries a mark named cuda: tests/conftest.py's `cuda` "
                "is a skipif mark); ran -k test_cuda instead")
        selector = ["-k", "test_cuda"]
        code = subprocess.run(cmd + selector, cwd=ROOT).returncode
    records.add("pytest_run", returncode=code, selector=" ".join(selector), note=note)
    return code


def job_main(args):
    """Run `--job` names in this process, appending records to --records. Exit 1 if any job raised or failed."""
    import torch

    from common import Records
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    records = Records(args.records)
    failed = False
    for name in args.job.split(","):
        t0 = time.perf_counter()
        try:
            if name == "env":
                _env_job(records, device, args.dry_run)
            elif name == "pytest":
                failed |= _pytest_job(records, args.dry_run) != 0
            elif name.startswith("check_"):
                import check_kernels
                check_kernels.JOBS[name](records, device, args.dry_run, shard=args.shard)
            else:
                import perf_jvp
                import perf_spec
                jobs = {**perf_spec.JOBS, **perf_jvp.JOBS}
                jobs[name](perf_spec.Job(records, device, args.dry_run, args.full))
        except Exception as e:   # noqa: BLE001 - record and go on to the next job
            records.error("job_error", e, job=name)
            failed = True
        records.add("job_done", job=name, duration_s=time.perf_counter() - t0)
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------------ orchestration
def _gpu_name():
    """The GPU's name from nvidia-smi (no torch import here), or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=15, check=True).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0].strip() if out else None


def _atomic_write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _tail(path, n=1500):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def _kill(proc):
    """Stop a stage subprocess and everything it started (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


class Run:
    """One gpu_check run: the document, its files, the stage subprocesses."""

    def __init__(self, args):
        self.args, self.t0 = args, time.monotonic()
        self.dry = args.dry_run
        kind = "dry" if self.dry else "full" if args.full else "gpu"
        self.budget = args.budget_s if args.budget_s is not None else BUDGET_S[kind]
        self.deadline = self.t0 + self.budget
        self.work = tempfile.mkdtemp(prefix="gpu-check-")
        self.out = os.path.abspath(args.out) if args.out else os.path.join(self.work, "out")
        os.makedirs(self.out, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        gpu = "cpu-dry-run" if self.dry else (_gpu_name() or "gpu")
        self.stem = os.path.join(self.out, f"{now:%Y-%m-%d-%H%M}-{scorecard.slug(gpu)}-gpu_check")
        self.doc = {"tool": "bench/gpu_check.py", "date": now.isoformat(timespec="seconds"), "argv": sys.argv[1:],
                    "dry_run": self.dry, "full": args.full, "budget_s": self.budget, "status": "running",
                    "env": {}, "peaks": {}, "stages": [], "records": [], "total_s": 0.0}
        self.record_files = []
        self.procs = []
        self.overrides = dict(args.timeout or [])

    # ------------------------------------------------------------------ files
    def merge(self):
        records = []
        for path in self.record_files:
            try:
                with open(path) as f:
                    lines = f.read().splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:   # a line being written right now
                    continue
        for r in records:
            if r.get("kind") == "env":
                self.doc["env"], self.doc["peaks"] = r["env"], r["peaks"]
        self.doc["records"] = [r for r in records if r.get("kind") != "env"]

    def write(self):
        self.merge()
        self.doc["total_s"] = time.monotonic() - self.t0
        self.doc["scorecard"] = scorecard.score(self.doc)
        _atomic_write(self.stem + ".json", json.dumps(self.doc, indent=1, default=str) + "\n")
        _atomic_write(self.stem + ".md", scorecard.render(self.doc) + "\n")

    def log(self, text):
        sys.stderr.write(f"[gpu_check {time.monotonic() - self.t0:5.0f} s] {text}\n")
        sys.stderr.flush()

    # ------------------------------------------------------------------ stages
    def _env(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The repository root only: bench/ is the job scripts' own directory, and on pytest's path its
        # conftest.py would shadow tests/conftest.py.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
        if self.dry:
            env["TRITON_INTERPRET"] = "1"      # before any triton import (SPEC §3)
            env["CUDA_VISIBLE_DEVICES"] = ""   # the dry run is a CPU run everywhere
        else:   # an inherited TRITON_INTERPRET would run the kernels through the interpreter, on the GPU too
            env.pop("TRITON_INTERPRET", None)
        return env

    def _commands(self, stage, index):
        """(argv, records path, label) per subprocess: one per job (and shard) when parallel on a GPU, else one."""
        if stage.parallel and not self.dry:
            shards = dict(stage.shards)
            groups = [((job,), (i, shards.get(job, 1))) for job in stage.jobs for i in range(shards.get(job, 1))]
        else:
            groups = [(stage.jobs, (0, 1))]
        commands = []
        for i, (jobs, (shard, n)) in enumerate(groups):
            path = os.path.join(self.work, f"{index:02d}-{stage.name}-{i}.jsonl")
            cmd = [sys.executable, os.path.join(HERE, "gpu_check.py"), "--job", ",".join(jobs), "--records", path]
            cmd += ["--shard", f"{shard}/{n}"] if n > 1 else []
            cmd += ["--dry-run"] if self.dry else []
            cmd += ["--full"] if self.args.full else []
            commands.append((cmd, path, ",".join(jobs) + (f" shard {shard}/{n}" if n > 1 else "")))
        return commands

    def run_stage(self, stage, index):
        entry = {"name": stage.name, "status": "running", "start_s": round(time.monotonic() - self.t0, 1)}
        self.doc["stages"].append(entry)
        left = self.deadline - time.monotonic()
        timeout = self.overrides.get(stage.name, stage.dry_timeout_s if self.dry else stage.timeout_s)
        if stage.full_only and not (self.args.full or self.dry):
            entry.update(status="skipped", duration_s=0.0, by_plan=True,
                         reason="runs with --full only (rows beyond the SPEC §6 targets; the dry run runs it too)")
            self.log(f"{stage.name}: skipped ({entry['reason']})")
            self.write()
            return entry
        if left < stage.min_s:
            entry.update(status="skipped", duration_s=0.0,
                         reason=f"time budget spent: {max(left, 0):.0f} s left, the stage needs at least "
                                f"{stage.min_s:.0f} s (--budget-s, --stages)")
            self.log(f"{stage.name}: skipped ({entry['reason']})")
            self.write()
            return entry
        timeout = min(timeout, left)
        entry["timeout_s"] = round(timeout, 1)
        self.log(f"{stage.name}: started, timeout {timeout:.0f} s")
        t0 = time.monotonic()
        self.procs = []
        for i, (cmd, path, label) in enumerate(self._commands(stage, index)):
            log_path = os.path.join(self.work, f"{index:02d}-{stage.name}-{i}.log")
            self.record_files.append(path)
            with open(log_path, "w") as log:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            self.procs.append((proc, log_path, label))
        last_write = 0.0
        while any(p.poll() is None for p, _, _ in self.procs) and time.monotonic() - t0 < timeout:
            time.sleep(POLL_S)
            if time.monotonic() - last_write > 5:
                self.write()
                last_write = time.monotonic()
        timed_out = [p for p, _, _ in self.procs if p.poll() is None]
        for proc in timed_out:
            _kill(proc)
        entry["duration_s"] = round(time.monotonic() - t0, 1)
        self._finish(stage, entry, timed_out)
        self._append_logs(stage)
        self.log(f"{stage.name}: {entry['status']} in {entry['duration_s']:.1f} s"
                 + (f" ({entry['reason']})" if entry.get("reason") else ""))
        self.procs = []
        self.write()
        return entry

    def _finish(self, stage, entry, timed_out):
        codes = [p.returncode for p, _, _ in self.procs]
        tails = "\n".join(_tail(log) for p, log, _ in self.procs if p.returncode != 0)
        if timed_out:
            entry.update(status="timeout", reason=f"stopped at its {entry['timeout_s']:.0f} s limit")
        elif stage.name == "pytest":
            entry.update(self._pytest_status(codes[0]))
        elif all(c == 0 for c in codes):
            entry["status"] = "ok"
        else:
            self.merge()
            errors = [r for r in self.doc["records"] if r.get("kind") == "job_error" and r.get("job") in stage.jobs]
            last = (tails.strip().splitlines() or [""])[-1]
            entry.update(status="failed", reason=errors[0]["error"] if errors else f"exit codes {codes}: {last}")
        if entry["status"] != "ok" and tails:
            entry["log_tail"] = tails[-3000:]

    def _pytest_status(self, code):
        self.merge()
        outcomes = [r["outcome"] for r in self.doc["records"] if r.get("kind") == "pytest"]
        counts = ", ".join(f"{outcomes.count(o)} {o}" for o in sorted(set(outcomes))) or "no test ran"
        runs = [r for r in self.doc["records"] if r.get("kind") == "pytest_run"]
        note = f" ({runs[-1]['note']})" if runs and runs[-1].get("note") else ""
        if code == 0:
            return {"status": "ok", "reason": counts + note}
        pytest_code = runs[-1]["returncode"] if runs else code
        return {"status": "failed", "reason": f"pytest exit code {pytest_code}: {counts}{note}"}

    def _append_logs(self, stage):
        with open(self.stem + ".log", "a") as out:
            for proc, log_path, what in self.procs:
                out.write(f"===== {stage.name}: {what} (exit code {proc.returncode})\n")
                with open(log_path, errors="replace") as f:
                    shutil.copyfileobj(f, out)

    def stop(self, signum, frame):
        """SIGTERM / SIGINT: stop the running stage, save what is there, exit."""
        for proc, _, _ in self.procs:
            _kill(proc)
        for entry in self.doc["stages"]:
            if entry["status"] == "running":
                entry.update(status="timeout", reason=f"the whole run was stopped (signal {signum})",
                             duration_s=round(time.monotonic() - self.t0 - entry["start_s"], 1))
        self.doc["status"] = "stopped"
        self.write()
        sys.exit(128 + signum)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="directory for the JSON, markdown and log files (default: bench/results on a "
                                      "GPU; a temporary directory for --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU through the Triton interpreter")
    parser.add_argument("--full", action="store_true", help="every shape, dtype and compile mode, not only the "
                                                            "SPEC §6 rows (needs a larger --budget-s)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"seconds for the whole run (default {BUDGET_S['gpu']:.0f}, --full "
                             f"{BUDGET_S['full']:.0f}, --dry-run {BUDGET_S['dry']:.0f})")
    parser.add_argument("--stages", default=",".join(STAGE_NAMES),
                        help=f"comma-separated stages to run, in this order (default: all: {','.join(STAGE_NAMES)})")
    parser.add_argument("--timeout", action="append", type=_stage_timeout, metavar="STAGE=S",
                        help="override one stage's timeout in seconds (repeatable)")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--records", help=argparse.SUPPRESS)
    parser.add_argument("--shard", type=_shard, default=(0, 1), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        return job_main(args)
    names = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(names) - set(STAGE_NAMES))
    if unknown or not names:
        parser.error(f"--stages: unknown stage(s) {unknown}; expected names from {', '.join(STAGE_NAMES)}")
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    if args.out is None and not args.dry_run:
        args.out = os.path.join(HERE, "results")

    run = Run(args)
    signal.signal(signal.SIGTERM, run.stop)
    signal.signal(signal.SIGINT, run.stop)
    stages = {s.name: s for s in STAGES}
    run.log(f"writing {run.stem}.json / .md / .log; budget {run.budget:.0f} s"
            + (" (dry run on CPU)" if run.dry else ""))
    try:
        for i, name in enumerate(names):
            entry = run.run_stage(stages[name], i)
            if name == "env" and entry["status"] == "ok" and not run.dry and not run.doc["env"].get("cuda_available"):
                run.log("torch sees no CUDA device: nothing to measure (use --dry-run on a machine without a GPU)")
                break
        run.doc["status"] = "complete"
        run.write()
    finally:   # the stage files were merged into the document; without --out the whole output goes too
        shutil.rmtree(run.work, ignore_errors=True)
    sys.stdout.write(scorecard.summary(run.doc) + "\n")
    if args.out:
        sys.stdout.write(f"written: {run.stem}.json, .md, .log\n")
    bad_checks = any(r.get("kind") == "check" and not r.get("ok") for r in run.doc["records"])
    finished = all(s["status"] == "ok" or s.get("by_plan") for s in run.doc["stages"])
    return 0 if finished and not bad_checks else 1


def _shard(text):
    i, _, n = text.partition("/")
    return int(i), int(n)


def _stage_timeout(text):
    name, _, seconds = text.partition("=")
    if name not in STAGE_NAMES:
        raise argparse.ArgumentTypeError(f"unknown stage {name!r}; expected one of {', '.join(STAGE_NAMES)}")
    try:
        value = float(seconds)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected STAGE=SECONDS with SECONDS > 0, got {text!r}")
    return name, value


if __name__ == "__main__":
    sys.exit(main())
