"""`shortcut compare --quick`: the whole pipeline (a shared flow teacher, every method through the training loop,
each sampled with its own sampler at every step count) at a toy budget, and its bad-input errors."""
import json
import os

import pytest
import torch
from conftest import cli_error

from shortcut.cli import main
from shortcut.compare import METHOD_NAMES, METHODS, CompareSettings, markdown
from shortcut.eval import evaluate_digits
from shortcut.train import CHECKPOINT, load_checkpoint, model_from_checkpoint


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("compare"))
    main(["compare", "--quick", "--out-dir", out, "--device", "cpu"])
    with open(os.path.join(out, "compare.json")) as f:
        return out, json.load(f)


def test_every_method_at_every_step_count(quick):
    out, report = quick
    s = CompareSettings.quick()
    assert list(report["methods"]) == list(METHOD_NAMES)
    assert report["settings"]["budget"] == s.budget and report["settings"]["teacher_steps"] == s.budget // 2
    for m in METHODS:
        row = report["methods"][m.name]
        assert [r["steps"] for r in row["rows"]] == list(s.steps), m.name
        for r in row["rows"]:
            assert 0.0 <= r["accuracy"] <= 1.0 and r["fd"] > 0 and r["fd"] == r["fd"], (m.name, r)
        # The same optimizer-step budget: the two-phase rows spend half of it on the shared teacher.
        expected = s.budget - s.budget // 2 if m.phases == "two" else s.budget
        assert row["own_steps"] == expected, m.name
        assert (row["teacher_s"] > 0) == (m.phases == "two"), m.name
        assert row["train_s"] > 0 and row["eval_s"] > 0


def test_runs_record_their_objective_and_the_teacher_is_the_flow_run_at_its_step(quick):
    out, report = quick
    teacher = load_checkpoint(os.path.join(out, "teacher", CHECKPOINT))
    flow = load_checkpoint(os.path.join(out, "flow", CHECKPOINT))
    assert teacher["step"] == 8 and flow["step"] == 16
    assert teacher["objective"] == flow["objective"] == "flow"
    for m in METHODS:
        ckpt = load_checkpoint(os.path.join(out, m.name, CHECKPOINT))
        assert ckpt["objective"] == m.objective, m.name
    # The flow run went on from the teacher's checkpoint: it differs from it (it trained 8 more steps).
    diff = [(a - b).abs().max() for a, b in zip(teacher["ema"].values(), flow["ema"].values()) if a.is_floating_point()]
    assert max(diff) > 0


def test_table_numbers_are_the_checkpoints_samples(quick):
    """A row is evaluate_digits of that run's EMA with its own sampler (consistency training: the multistep
    sampler, which re-noises; MeanFlow: equal intervals), not of something else."""
    out, report = quick
    s = CompareSettings.quick()
    for name in ("consistency_training", "meanflow", "shortcut_from_flow"):
        model, _ = model_from_checkpoint(os.path.join(out, name, CHECKPOINT))
        rows = evaluate_digits(model, [1, 3], per_class=s.per_class, seed=s.seed, device=torch.device("cpu"))
        table = {r["steps"]: r for r in report["methods"][name]["rows"]}
        for r in rows:
            assert r["fd"] == pytest.approx(table[r["steps"]]["fd"], rel=1e-5), name
            assert r["accuracy"] == table[r["steps"]]["accuracy"], name


def test_markdown_has_both_tables_and_every_row(quick):
    out, report = quick
    with open(os.path.join(out, "compare.md")) as f:
        md = f.read()
    assert md.strip() == markdown(report)
    assert md.count("| method | training | 1 step | 2 steps | 3 steps |") == 2
    for m in METHODS:
        assert md.count(f"| {m.label} | ") == 2, m.label
    assert "teacher 8 + 8" in md and "MeanFlow 1-step FD / 128-step FD" in md


@pytest.mark.parametrize("argv,message", [
    (["--budget", "10"], "--budget 10 with --teacher-fraction 0.5 leaves 5 teacher and 5 student steps"),
    (["--methods", "flow", "dreams"], "--methods: expected names from"),
    (["--sample-steps", "0", "4"], "--sample-steps must be step counts in 1 … 128"),
    (["--teacher-fraction", "1.5"], "--teacher-fraction must be in (0, 1)"),
    (["--per-class", "0"], "--per-class must be >= 1"),
])
def test_bad_input_one_line_nothing_written(tmp_path, capsys, monkeypatch, argv, message):
    out = tmp_path / "c"
    assert message in cli_error(["compare", "--quick", "--out-dir", str(out), *argv], capsys, monkeypatch)
    assert not out.exists()
