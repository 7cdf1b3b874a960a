"""`shortcut compare`: the paper's Table 1 on the scikit-learn digits. Every method trains the same network
(the digits DiT) with the same batch, optimizer and number of optimizer steps, then samples at 1 … 128 steps
with its own sampler (the one its checkpoint records); the table gives the Fréchet distance and class accuracy
of the samples per method and step count, and the wall-clock time of each method.

Budgets. `budget` optimizer steps per method. The distillation methods (progressive, consistency distillation,
reflow) and the fine-tuned shortcut model spend `teacher_fraction` of it on the flow-matching teacher they
share and the rest on their own phase, so every row has had the same number of optimizer steps of the same
network. The teacher is the flow-matching run at that step (its checkpoint copied before the flow run goes on
to the full budget: the loop has no learning-rate schedule and resumes exactly, so the flow row is one
uninterrupted run). Reflow's teacher sampling is extra compute, counted in its time.

Settings are the demo's (`shortcut.demo`: batch 128, lr 1e-3, EMA 0.99); the shortcut model keeps the demo's
measured choices (a 1/4 bootstrap share, bootstrap targets from the live weights), live reflow takes the same
1/4 share of self-generated items, the consistency objectives the official EMA targets, MeanFlow its own
defaults (docs/meanflow.md). Everything is sampled from the EMA weights.
"""
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass

import torch

from .baselines import OBJECTIVES
from .config import ObjectiveConfig, TrainConfig
from .eval import evaluate_digits, format_value

COMPARE_STEPS = (1, 2, 3, 4, 6, 8, 16, 32, 64, 128)
COMPARE_BUDGET = 2000        # optimizer steps per method: the demo's
TEACHER_FRACTION = 0.5       # of the budget, spent on the shared flow-matching teacher by the two-phase rows


@dataclass(frozen=True)
class Method:
    name: str           # the row's key (and its run directory)
    label: str          # the row's name in the table
    objective: str      # ObjectiveConfig.objective
    phases: str         # "one": trained from scratch; "two": a flow teacher first (distillation, fine-tuning)
    settings: tuple = ()   # (field, value) pairs for ObjectiveConfig
    targets: str = "ema"   # TrainConfig.targets
    init_from_teacher: bool = False   # --init-from the teacher (the objectives that need one take --teacher)


# In the paper's order: the two-phase methods, then the one-phase ones; then what the paper does not have.
METHODS = (
    Method("progressive", "Progressive distillation", "progressive", "two"),
    Method("consistency_distillation", "Consistency distillation", "consistency_distillation", "two"),
    Method("reflow", "Reflow", "reflow", "two"),
    Method("flow", "Flow matching", "flow", "one"),
    Method("consistency_training", "Consistency training", "consistency_training", "one"),
    Method("live_reflow", "Live reflow", "live_reflow", "one", (("bootstrap_fraction", 0.25),)),
    Method("shortcut", "Shortcut model", "shortcut", "one", (("bootstrap_fraction", 0.25),), targets="live"),
    Method("meanflow", "MeanFlow", "meanflow", "one"),
    Method("shortcut_from_flow", "Shortcut, fine-tuned from flow", "shortcut", "two",
           (("bootstrap_fraction", 0.25),), targets="live", init_from_teacher=True),
)
METHOD_NAMES = tuple(m.name for m in METHODS)


@dataclass
class CompareSettings:
    budget: int = COMPARE_BUDGET
    teacher_fraction: float = TEACHER_FRACTION
    batch_size: int = 128
    lr: float = 1e-3
    ema_decay: float = 0.99
    per_class: int = 100               # evaluation samples per class
    steps: tuple = COMPARE_STEPS       # sampling step counts
    reflow_pairs: int = 0              # 0: the data's size (1,797)
    reflow_teacher_steps: int = 0      # 0: M = 128
    grid_steps: tuple = (1, 2, 4, 8, 16, 32, 64, 128)
    seed: int = 0

    @classmethod
    def quick(cls):
        """The whole pipeline at a toy budget (CI): 16 optimizer steps (8 + 8 for the two-phase rows; the staged
        objectives need one per level, 7), batch 32, 10 samples per class, 64 reflow pairs in 8 teacher steps."""
        return cls(budget=16, batch_size=32, per_class=10, reflow_pairs=64, reflow_teacher_steps=8, grid_steps=(1,))

    def check(self):
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 2:
            raise ValueError(f"--budget must be an int >= 2, got {self.budget!r}")
        if not 0 < self.teacher_fraction < 1:
            raise ValueError(f"--teacher-fraction must be in (0, 1), got {self.teacher_fraction!r}")
        teacher, student = self.teacher_steps, self.budget - self.teacher_steps
        if min(teacher, student) < 7:
            raise ValueError(f"--budget {self.budget} with --teacher-fraction {self.teacher_fraction} leaves "
                             f"{teacher} teacher and {student} student steps; progressive distillation and "
                             f"consistency training need at least 7 (one per level of M = 128)")
        if self.per_class < 1:
            raise ValueError(f"--per-class must be >= 1, got {self.per_class}")
        bad = [s for s in self.steps if not 1 <= s <= 128]
        if not self.steps or bad:
            raise ValueError(f"--sample-steps must be step counts in 1 … 128, got {list(self.steps)}")

    @property
    def teacher_steps(self):
        return int(round(self.budget * self.teacher_fraction))


def _train_config(s: CompareSettings, out_dir, objective, steps, device, progress, objective_settings=(), **extra):
    """The TrainConfig of one compare run: the digits DiT at the settings' batch, optimizer and EMA."""
    obj = dict(objective_settings)
    if objective == "reflow":
        obj.update(reflow_pairs=s.reflow_pairs, reflow_teacher_steps=s.reflow_teacher_steps)
    common = dict(data="digits", preset="auto", steps=steps, batch_size=s.batch_size, lr=s.lr,
                  ema_decay=s.ema_decay, seed=s.seed, device=device, out_dir=out_dir,
                  log_every=max(1, min(50, steps // 4)), ckpt_every=steps, grid_steps=tuple(s.grid_steps),
                  progress=progress)
    return TrainConfig(objective=ObjectiveConfig(objective=objective, **obj), **{**common, **extra})


def run_compare(out_dir="runs/compare", settings=None, methods=METHOD_NAMES, device="auto", progress=True,
                log=print):
    """Train and evaluate `methods` (names from METHOD_NAMES); writes compare.json and compare.md to out_dir and
    returns the JSON's dict."""
    from .train import CHECKPOINT, resolve_device, train
    s = settings or CompareSettings()
    s.check()
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown or not methods:
        raise ValueError(f"--methods: expected names from {', '.join(METHOD_NAMES)}, got {list(methods)}")
    chosen = [m for m in METHODS if m.name in methods]
    dev = resolve_device(device)
    os.makedirs(out_dir, exist_ok=True)
    results = {}
    teacher_path = os.path.join(out_dir, "teacher", CHECKPOINT)
    times = {}

    if any(m.phases == "two" or m.name == "flow" for m in chosen):   # the flow run: its checkpoint at the teacher's step is the teacher, then on to the budget
        flow_dir = os.path.join(out_dir, "flow")
        _fresh(flow_dir)
        log(f"compare: flow matching, {s.teacher_steps} steps (the teacher) ...")
        t0 = time.perf_counter()
        train(_train_config(s, flow_dir, "flow", s.teacher_steps, device, progress, grid_steps=(1,)))
        times["teacher"] = time.perf_counter() - t0
        os.makedirs(os.path.dirname(teacher_path), exist_ok=True)
        shutil.copyfile(os.path.join(flow_dir, CHECKPOINT), teacher_path)
        if any(m.name == "flow" for m in chosen):
            log(f"compare: flow matching, on to {s.budget} steps ...")
            t0 = time.perf_counter()
            run = train(_train_config(s, flow_dir, "flow", s.budget, device, progress, resume=True))
            results["flow"] = _evaluate(run, s, dev, times["teacher"] + time.perf_counter() - t0, 0.0, s.budget, log)

    for m in chosen:
        if m.name == "flow":
            continue
        steps = s.budget - s.teacher_steps if m.phases == "two" else s.budget
        extra = {"targets": m.targets, "objective_settings": m.settings}
        if m.init_from_teacher:
            extra["init_from"] = teacher_path
        elif OBJECTIVES.get(m.objective, {}).get("needs_teacher"):
            extra["teacher"] = teacher_path
        log(f"compare: {m.label}, {steps} steps{' after the teacher' if m.phases == 'two' else ''} ...")
        run_dir = os.path.join(out_dir, m.name)
        _fresh(run_dir)
        t0 = time.perf_counter()
        run = train(_train_config(s, run_dir, m.objective, steps, device, progress, **extra))
        own = time.perf_counter() - t0
        results[m.name] = _evaluate(run, s, dev, own, times["teacher"] if m.phases == "two" else 0.0, steps, log)

    report = {"settings": {**asdict(s), "teacher_steps": s.teacher_steps, "device": str(dev),
                           "threads": torch.get_num_threads()},
              "methods": {m.name: {"label": m.label, "objective": m.objective, "phases": m.phases,
                                   **results[m.name]} for m in chosen}}
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump(report, f, indent=1)
    md = markdown(report)
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write(md + "\n")
    log(md)
    return report


def _fresh(run_dir):
    """Every method starts from scratch: a run directory left by an earlier compare is removed."""
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)


def _evaluate(run, s, device, train_s, teacher_s, own_steps, log):
    """evaluate_digits of the run's EMA at the settings' step counts, with the run's times."""
    t0 = time.perf_counter()
    rows = evaluate_digits(run.ema, s.steps, per_class=s.per_class, seed=s.seed, device=device)
    eval_s = time.perf_counter() - t0
    first = rows[0]
    log(f"  {first['steps']} step(s): FD {first['fd']:.3f}, accuracy {first['accuracy']:.3f} "
        f"(train {train_s:.0f} s, eval {eval_s:.0f} s)")
    return {"rows": rows, "own_steps": own_steps, "train_s": train_s, "teacher_s": teacher_s, "eval_s": eval_s}


def _duration(seconds):
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def markdown(report):
    """The tables of a compare report: FD, then accuracy, one row per method, one column per step count."""
    methods = report["methods"]
    steps = [r["steps"] for r in next(iter(methods.values()))["rows"]]
    teacher = report["settings"]["teacher_steps"]
    budget = report["settings"]["budget"]
    out = []
    for metric, title in (("fd", "Fréchet distance (classifier features; lower is better)"),
                          ("accuracy", "Class accuracy of the samples (higher is better)")):
        out += [f"**{title}**", "",
                "| method | training | " + " | ".join(f"{n} step{'s' * (n > 1)}" for n in steps) + " | train time |",
                "|---|---|" + "---:|" * (len(steps) + 1)]
        for name, m in methods.items():
            phases = (f"teacher {teacher} + {m['own_steps']}" if m["phases"] == "two" else f"{m['own_steps']}")
            cells = [format_value(r[metric]) for r in m["rows"]]
            out.append(f"| {m['label']} | {phases} | " + " | ".join(cells) + f" | "
                       f"{_duration(m['train_s'] + m['teacher_s'])} |")
        out.append("")
    if "meanflow" in methods:
        fd = {r["steps"]: r["fd"] for r in methods["meanflow"]["rows"]}
        if 1 in fd and max(steps) in fd:
            ratio = fd[1] / fd[max(steps)]
            out.append(f"MeanFlow 1-step FD / {max(steps)}-step FD: {ratio:.2f} (goal ≤ 1.25: "
                       f"{'met' if ratio <= 1.25 else 'missed'}).")
    if "shortcut" in methods:
        fd = {r["steps"]: r["fd"] for r in methods["shortcut"]["rows"]}
        if 1 in fd and max(steps) in fd:
            out.append(f"Shortcut 1-step FD / {max(steps)}-step FD: {fd[1] / fd[max(steps)]:.2f}.")
    out.append(f"Budget: {budget} optimizer steps per method (two-phase rows: the flow teacher's {teacher} "
               f"included); train time includes the teacher's and, for reflow, its pair generation.")
    return "\n".join(out).rstrip()
