"""Every objective through shortcut.train: end to end on the digits (tiny DiT), the networks and schedule each one's
targets read, teachers (errors: one line, exit 2, nothing written), progressive's teacher refresh and reflow's pairs
across a resume, exact resume, MeanFlow through the fused model and under DDP.

Training runs are pinned to the CPU (device="cpu"): resumes are compared bit for bit, and on CUDA the label table's
gradient is accumulated with float atomics (see tests/test_train.py)."""
import copy
import importlib

import pytest
import torch
from conftest import HAS_CUDA, assert_close_rel, cli_error, init_from, redraw_zero_init

from shortcut import ModelConfig, ObjectiveConfig, ShortcutDiT, TrainConfig, save_pretrained, train
from shortcut.baselines import (OBJECTIVES, ReflowPairs, consistency_distillation_targets, copy_teacher,
                                progressive_refresh_source, progressive_targets)
from shortcut.cli import build_parser, config_from_args
from shortcut.meanflow import MeanFlowConfig, meanflow_loss
from shortcut.train import CHECKPOINT, load_checkpoint, model_from_checkpoint

objectives_mod = importlib.import_module("shortcut.objectives")
teachers_mod = importlib.import_module("shortcut.teachers")
ALL = ("shortcut", "flow", "progressive", "consistency_distillation", "consistency_training", "live_reflow", "reflow",
       "meanflow")
TEACHER = ("progressive", "consistency_distillation", "reflow")


def _cfg(out, objective="shortcut", teacher="", **kw):
    obj = dict(objective=objective, bootstrap_fraction=0.25, reflow_pairs=48, reflow_teacher_steps=4)
    obj.update(kw.pop("obj", {}))
    base = dict(data="digits", preset="auto" if objective in TEACHER else "tiny", steps=6, batch_size=16, lr=2e-3,
                log_every=1, ckpt_every=100, out_dir=str(out), progress=False, grid_steps=(1, 2), device="cpu",
                teacher=teacher, objective=ObjectiveConfig(**obj))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A flow-matching run on the digits (tiny DiT), as a checkpoint and as a save_pretrained folder."""
    out = tmp_path_factory.mktemp("teacher")
    res = train(_cfg(out / "flow", "flow", steps=30))
    folder = str(out / "flow-folder")
    save_pretrained(str(out / "flow" / CHECKPOINT), folder)
    return {"ckpt": str(out / "flow" / CHECKPOINT), "folder": folder, "result": res}


def _teacher_for(name, teacher):
    return teacher["ckpt"] if name in TEACHER else ""


@pytest.mark.parametrize("name", ALL)
def test_each_objective_trains_and_records_itself(tmp_path, teacher, name):
    res = train(_cfg(tmp_path / name, name, _teacher_for(name, teacher), steps=7))
    ckpt = load_checkpoint(tmp_path / name / CHECKPOINT)
    assert ckpt["objective"] == name and ckpt["config"]["objective"]["objective"] == name
    assert res.model.objective == res.ema.objective == name
    model, _ = model_from_checkpoint(ckpt)
    assert model.objective == name
    ignore_k = name == "flow" or OBJECTIVES.get(name, {}).get("ignore_k", False)
    assert model.cfg.ignore_k is ignore_k
    assert model.cfg.step_input == ("interval" if name == "meanflow" else "level")
    if name == "meanflow":
        assert model.cfg.t_scale == 1.0, "MeanFlow feeds raw s and h to the sinusoids (docs/meanflow.md §3)"
    row = res.history[-1]
    assert row["time_s"] > 0 and res.history[0]["time_s"] <= row["time_s"]
    expected = {"meanflow": {"loss_flow", "loss_interval", "mse", "mse_flow", "mse_interval"},
                "reflow": {"loss_flow"}, "live_reflow": {"loss_flow", "loss_bootstrap"},
                "flow": {"loss_flow"}, "shortcut": {"loss_flow", "loss_bootstrap"}}.get(name, {"loss_bootstrap"})
    assert expected <= set(row) and not {"loss_flow", "loss_bootstrap", "loss_interval"} - expected & set(row)
    assert ("level" in row) == (name in ("progressive", "consistency_training"))
    assert (tmp_path / name / "samples.png").exists()


@pytest.mark.parametrize("name", ["shortcut", "flow", "consistency_training", "live_reflow", "meanflow"])
def test_loss_decreases(tmp_path, name):
    """From scratch the loss falls (MeanFlow: its raw error; its weighted loss is ‖Δ‖²/(‖Δ‖² + 0.01) ≈ 1)."""
    res = train(_cfg(tmp_path, name, steps=30, batch_size=32, log_every=1))
    key = "mse" if name == "meanflow" else "loss"
    losses = [r[key] for r in res.history]
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses


def _spy_targets(monkeypatch):
    calls = []
    real = objectives_mod.baseline_targets

    def spy(name, x1, y, **kw):
        state = kw["generator"].get_state()
        batch = real(name, x1, y, **kw)
        calls.append({"x1": x1.clone(), "y": y.clone(), "batch": batch, "generator_state": state, **kw})
        return batch

    monkeypatch.setattr(objectives_mod, "baseline_targets", spy)
    return calls


def _frozen_copy(ckpt, key):
    return copy_teacher(model_from_checkpoint(ckpt, use_ema=key == "ema", kernels="torch")[0])


def test_distillation_targets_read_the_teacher_and_the_student(tmp_path, teacher, monkeypatch):
    """progressive / consistency distillation: the teacher is the --teacher's EMA, frozen; the student starts from the
    teacher (live ← live, EMA ← EMA); consistency distillation reads the student's EMA; the schedules see 0-based
    steps; the first batch equals the objective module's own function on the same inputs and generator state."""
    src = load_checkpoint(teacher["ckpt"])
    for name in ("progressive", "consistency_distillation"):
        calls = _spy_targets(monkeypatch)
        res = train(_cfg(tmp_path / name, name, teacher["ckpt"], steps=7, lr=0.0, weight_decay=0.0))
        assert [c["step"] for c in calls] == list(range(7)) and all(c["total_steps"] == 7 for c in calls)
        t = calls[0]["teacher"]
        assert not t.training and not any(p.requires_grad for p in t.parameters())
        for k, v in res.model.state_dict().items():   # lr 0: still the teacher run's live weights
            assert torch.equal(v, src["model"][k]), k
        c = calls[0]
        g = torch.Generator()
        g.set_state(c["generator_state"])
        cfg = _cfg(tmp_path, name, steps=7).objective
        if name == "progressive":
            want = progressive_targets(_frozen_copy(src, "ema"), c["x1"], c["y"], 0, 7, cfg, g)
        else:
            assert all(c["teacher"] is t for c in calls) and all(c["ema"] is res.ema for c in calls)
            want = consistency_distillation_targets(_frozen_copy(src, "ema"), _frozen_copy(src, "ema"), c["x1"],
                                                    c["y"], cfg, g)   # the student's EMA starts as the teacher's
        for field in ("x_t", "t", "k", "y", "v"):
            assert torch.equal(getattr(c["batch"], field), getattr(want, field)), (name, field)


def test_reflow_items_come_from_the_pairs_and_unconditional_labels_are_null(tmp_path, teacher, monkeypatch):
    calls = _spy_targets(monkeypatch)
    train(_cfg(tmp_path, "reflow", teacher["ckpt"], steps=3, obj={"class_dropout_prob": 1.0}))
    saved = load_checkpoint(tmp_path / teachers_mod.PAIRS)
    assert saved["x0"].shape == (48, 1, 8, 8) and saved["settings"]["steps"] == 4
    for c in calls:
        rows = [(saved["x0"] == x0).flatten(1).all(1).nonzero().flatten() for x0 in c["x0"]]
        assert all(len(r) == 1 for r in rows), "every item's noise is a pair's noise"
        idx = torch.cat(rows)
        assert torch.equal(c["x1"], saved["x1"][idx])
        assert (c["y"] == 10).all(), "class_dropout_prob 1: every label null"
    # Labels of a conditional run: the classes in turn.
    assert torch.equal(teachers_mod.reflow_labels(_cfg(tmp_path, "reflow", "x"), _digits(), 12),
                       torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]))


def _digits():
    from shortcut.data import make_dataset
    return make_dataset("digits")


def test_live_reflow_deals_the_global_share_over_shards(tmp_path, monkeypatch):
    calls = _spy_targets(monkeypatch)
    train(_cfg(tmp_path, "live_reflow", steps=3, grad_accum=4, batch_size=16, obj={"bootstrap_fraction": 0.125}))
    counts = [c["num_reflow"] for c in calls]
    per_step = [counts[i:i + 4] for i in range(0, 12, 4)]
    assert all(sum(s) == 2 for s in per_step), "int(16 · 1/8) = 2 reflow items per step, as on one shard"
    assert [c["batch"].num_bootstrap for c in calls] == counts


def test_consistency_training_and_live_reflow_read_their_networks(tmp_path, monkeypatch):
    calls = _spy_targets(monkeypatch)
    res = train(_cfg(tmp_path / "ct", "consistency_training", steps=7))
    assert [c["step"] for c in calls] == list(range(7)) and all(c["ema"] is res.ema for c in calls)
    assert [r["level"] for r in res.history] == list(range(7)), "one curriculum level per step at 7 steps"
    calls.clear()
    res = train(_cfg(tmp_path / "lr", "live_reflow", steps=2))
    assert all(c["model"] is res.model for c in calls), "live reflow generates with the live (unwrapped) module"


def test_progressive_refresh_source_rule():
    assert progressive_refresh_source(1_000_000, 0.999) == "ema"     # official: 142,857-step stages
    assert progressive_refresh_source(2_000, 0.999) == "live"        # 285-step stages, EMA horizon 1000
    assert progressive_refresh_source(21_000, 0.999) == "ema"        # stages of exactly 3 horizons
    assert progressive_refresh_source(20_993, 0.999) == "live"
    assert progressive_refresh_source(14, 0.0) == "ema"              # no averaging: the EMA is the live model


def test_progressive_refreshes_at_stage_boundaries_and_across_resume(tmp_path, teacher, monkeypatch):
    events = []
    real_refresh = objectives_mod.refresh_teacher
    real_targets = objectives_mod.baseline_targets

    def refresh(t, source):
        events.append(("refresh", source))
        return real_refresh(t, source)

    def targets(name, x1, y, **kw):
        events.append(("targets", kw["step"]))
        return real_targets(name, x1, y, **kw)

    monkeypatch.setattr(objectives_mod, "refresh_teacher", refresh)
    monkeypatch.setattr(objectives_mod, "baseline_targets", targets)
    full = train(_cfg(tmp_path / "full", "progressive", teacher["ckpt"], steps=14))
    refreshed_before = [events[i + 1][1] for i, e in enumerate(events) if e[0] == "refresh"]
    assert refreshed_before == [2, 4, 6, 8, 10, 12], "stages of 14/7 = 2 updates; refreshed as each opens"
    assert all(e[1] is full.model for e in events if e[0] == "refresh"), "short stages: from the live weights"
    assert [r["level"] for r in full.history] == [6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0]

    events.clear()
    with monkeypatch.context() as m:
        _crash_after(m, 6)
        with pytest.raises(Crash):
            train(_cfg(tmp_path / "part", "progressive", teacher["ckpt"], steps=14, ckpt_every=6))
    assert "teacher" in load_checkpoint(tmp_path / "part" / CHECKPOINT)
    events.clear()
    # The teacher comes back from the checkpoint: the --teacher file is not read again.
    monkeypatch.setattr(teachers_mod, "read_weight_source", lambda *a: pytest.fail("teacher file read on resume"))
    resumed = train(_cfg(tmp_path / "part", "progressive", teacher["ckpt"], steps=14, resume=True))
    assert [events[i + 1][1] for i, e in enumerate(events) if e[0] == "refresh"] == [6, 8, 10, 12]
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history][6:]
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_reflow_pairs_are_made_once_and_reused_on_resume(tmp_path, teacher, monkeypatch):
    full = train(_cfg(tmp_path / "full", "reflow", teacher["ckpt"], steps=6))
    part = _cfg(tmp_path / "part", "reflow", teacher["ckpt"], steps=3)
    first = train(part)
    pairs_file = tmp_path / "part" / teachers_mod.PAIRS
    saved = load_checkpoint(pairs_file)
    assert first.history[0]["time_s"] >= saved["seconds"] > 0, "the pairs' time is in the run's clock"
    before = pairs_file.read_bytes()

    def no_pairs(*a, **kw):
        raise AssertionError("reflow pairs made again")

    monkeypatch.setattr(importlib.import_module("shortcut.train"), "make_reflow_pairs", no_pairs)
    # The teacher has moved since: a resumed run needs only its pairs.
    resumed = train(_cfg(tmp_path / "part", "reflow", str(tmp_path / "moved.pt"), steps=6, resume=True))
    assert pairs_file.read_bytes() == before
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history][3:]
    for a, b in zip(full.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(a, b)
    # Other settings in the same out_dir: new pairs.
    monkeypatch.undo()
    train(_cfg(tmp_path / "part", "reflow", teacher["ckpt"], steps=1, obj={"reflow_pairs": 20}))
    assert load_checkpoint(pairs_file)["x0"].shape[0] == 20


def test_reflow_pairs_split_over_parts_are_the_same(teacher):
    t = teachers_mod.teacher_module(teachers_mod.read_weight_source(teacher["ckpt"], "--teacher"), "torch", "cpu")
    from shortcut.baselines import reflow_pairs
    y = torch.arange(10) % 10
    whole = reflow_pairs(t, y, (1, 8, 8), steps=2, generator=torch.Generator().manual_seed(3))
    parts = [reflow_pairs(t, y, (1, 8, 8), steps=2, generator=torch.Generator().manual_seed(3), part=(i, 3))
             for i in range(3)]
    torch.testing.assert_close(torch.cat([p.x1 for p in parts]), whole.x1, rtol=1e-6, atol=1e-6)
    assert torch.equal(torch.cat([p.x0 for p in parts]), whole.x0) and isinstance(parts[0], ReflowPairs)


class Crash(Exception):
    pass


def _crash_after(monkeypatch, steps):
    """The run dies as it starts update `steps` (0-based), after the checkpoint of step `steps`."""
    real = objectives_mod.Objective.loss

    def loss(self, model, x1, y, generator, s, **kw):
        if s == steps:
            raise Crash
        return real(self, model, x1, y, generator, s, **kw)

    monkeypatch.setattr(objectives_mod.Objective, "loss", loss)


@pytest.mark.parametrize("name", ["meanflow", "consistency_training", "live_reflow"])
def test_exact_resume(tmp_path, monkeypatch, name):
    full = train(_cfg(tmp_path / "a", name, steps=8))
    with monkeypatch.context() as m:
        _crash_after(m, 4)
        with pytest.raises(Crash):
            train(_cfg(tmp_path / "b", name, steps=8, ckpt_every=4))
    resumed = train(_cfg(tmp_path / "b", name, steps=8, resume=True))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history][4:]
    for a, b in zip(full.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(a, b)
    if name == "consistency_training":   # its curriculum is a fraction of the run: the length cannot change
        with pytest.raises(ValueError, match="checkpoint was trained with steps=8, this run has steps=12"):
            train(_cfg(tmp_path / "b", name, steps=12, resume=True))


# ---------------------------------------------------------------------------------------------------------------
# Teacher errors: one line, exit status 2, nothing written



TRAIN = ["train", "--steps", "7", "--batch-size", "8", "--progress", "false", "--device", "cpu"]


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory, teacher):
    """Teachers that must be refused: another data shape, another number of classes, a shortcut model, a folder of a
    model without an objective record that reads k, and a pickle that runs code."""
    out = tmp_path_factory.mktemp("odd")
    train(TrainConfig(data="moons", steps=1, batch_size=8, out_dir=str(out / "moons"), progress=False,
                      grid_steps=(1,), device="cpu", objective=ObjectiveConfig(objective="flow"),
                      model_overrides={"hidden": 16, "depth": 1}))
    train(_cfg(out / "shortcut", "shortcut", steps=1))
    five = ShortcutDiT(ModelConfig.preset("tiny", input_size=8, in_channels=1, num_classes=5, ignore_k=True))
    save_pretrained(five, str(out / "five"), data_info={"shape": [1, 8, 8], "num_classes": 5})
    reads_k = ShortcutDiT(ModelConfig.preset("tiny", input_size=8, in_channels=1, num_classes=10))
    save_pretrained(reads_k, str(out / "reads-k"), data_info={"shape": [1, 8, 8], "num_classes": 10})
    with open(out / "evil.pt", "wb") as f:
        f.write(b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    return {k: str(out / v) for k, v in [("moons", "moons/" + CHECKPOINT), ("shortcut", "shortcut/" + CHECKPOINT),
                                         ("five", "five"), ("reads_k", "reads-k"), ("evil", "evil.pt")]}


@pytest.mark.parametrize("objective, which, said", [
    ("progressive", None, ["objective 'progressive' needs --teacher PATH"]),
    ("shortcut", "teacher", ["--teacher is used by progressive, consistency_distillation, reflow",
                             "objective 'shortcut' has no teacher"]),
    ("reflow", "missing", ["--teacher: no checkpoint file or save_pretrained folder at"]),
    ("progressive", "moons", ["was trained on data of shape (2,) with 0 classes",
                              "this run's data (digits) has shape (1, 8, 8) with 10 classes"]),
    ("consistency_distillation", "five", ["shape (1, 8, 8) with 5 classes", "(1, 8, 8) with 10 classes"]),
    ("reflow", "shortcut", ["is a 'shortcut' model", "reflow distils a flow-matching teacher", "--objective flow"]),
    ("progressive", "reads_k", ["is a 'shortcut' model"]),
    ("consistency_distillation", "evil", ["refusing to load", "could run code"]),
])
def test_teacher_errors(tmp_path, capsys, monkeypatch, teacher, odd_models, objective, which, said):
    paths = {"teacher": teacher["ckpt"], "missing": str(tmp_path / "nope.pt"), **odd_models}
    argv = [*TRAIN, "--objective", objective, "--out-dir", str(tmp_path / "run")]
    if which:
        argv += ["--teacher", paths[which]]
    err = cli_error(argv, capsys, monkeypatch)
    assert err.startswith("shortcut train: error: ") and all(s in err for s in said), err
    assert not (tmp_path / "run").exists(), "nothing written"


def test_teacher_from_a_pretrained_folder(tmp_path, teacher, monkeypatch):
    calls = _spy_targets(monkeypatch)
    res = train(_cfg(tmp_path, "consistency_distillation", teacher["folder"], steps=1, lr=0.0, weight_decay=0.0))
    src = load_checkpoint(teacher["ckpt"])
    for k, v in calls[0]["teacher"].state_dict().items():
        assert torch.equal(v, src["ema"][k]), k
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, src["model"][k]), k
    assert res.model.cfg.ignore_k


def test_cli_flags(tmp_path):
    args = build_parser().parse_args(["train", "--objective", "meanflow", "--meanflow-P-mean", "-0.2",
                                      "--meanflow-cfg-s-range", "0.1", "0.9", "--meanflow-jvp", "separate",
                                      "--teacher", "", "--reflow-pairs", "7"])
    cfg = config_from_args(args)
    mf = cfg.objective.meanflow_config()
    assert (mf.P_mean, mf.cfg_s_range, mf.jvp, cfg.objective.reflow_pairs) == (-0.2, (0.1, 0.9), "separate", 7)
    assert mf.class_dropout_prob == cfg.objective.class_dropout_prob
    with pytest.raises(ValueError, match="ObjectiveConfig.meanflow_P_std must be a finite number > 0"):
        ObjectiveConfig(meanflow_P_std=0.0)
    with pytest.raises(ValueError, match="must be one of shortcut, flow, progressive"):
        ObjectiveConfig(objective="naive")


def test_cli_bad_objective(tmp_path, capsys, monkeypatch):
    err = cli_error([*TRAIN, "--objective", "naive", "--out-dir", str(tmp_path / "r")], capsys, monkeypatch)
    assert "invalid choice: 'naive'" in err and "meanflow" in err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------------------------
# MeanFlow: the fused model's step against the reference path (under DDP: tests/test_distributed.py)

def _interval_dit(kernels, attention, gen):
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=1, num_classes=10, step_input="interval", t_scale=1.0,
                             depth=1)   # one block: the interpreter takes ~2.5 s per block for the loss and backward
    with init_from(gen):
        model = ShortcutDiT(cfg, kernels=kernels, attention=attention)
    return redraw_zero_init(model, gen)


@pytest.mark.skipif(HAS_CUDA, reason="the interpreter's kernels on CPU tensors (a GPU runs them in tests marked cuda)")
def test_meanflow_step_fused_equals_reference(strict_kernels):
    """One MeanFlow loss and its gradients through ShortcutDiT(kernels="triton", attention="triton") (JVP rules and the
    JVP attention kernel; the interpreter on CPU) against the readable path with the same weights, both judged
    against the readable path in float64 (the 2x rule of conftest.assert_close_rel)."""
    fused = _interval_dit("triton", "triton", torch.Generator().manual_seed(1))
    ref = _interval_dit("torch", "torch", torch.Generator().manual_seed(1))
    ref.load_state_dict(fused.state_dict())
    ref64 = copy.deepcopy(ref).double()
    x1 = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.arange(4)
    out = {}
    for name, model, x in (("fused", fused, x1), ("ref", ref, x1), ("ref64", ref64, x1.double())):
        cfg = MeanFlowConfig(flow_fraction=0.5)
        loss, parts = meanflow_loss(model, x, y, cfg, generator=torch.Generator().manual_seed(3))
        loss.backward()
        out[name] = (loss.detach(), parts["mse"], {k: p.grad for k, p in model.named_parameters()})
    assert out["ref"][1] > 1e-3
    for i, what in ((0, "loss"), (1, "mse")):
        assert_close_rel(out["fused"][i], out["ref64"][i], out["ref"][i], what)
    for k, g in out["ref"][2].items():
        assert g is not None and out["fused"][2][k] is not None, k
        assert_close_rel(out["fused"][2][k], out["ref64"][2][k], g, k)


def test_interval_model_inputs_and_embedding(gen, device, strict_kernels):
    """step_input="interval": float k only; h embedded on t's scale (= a level model fed h·t_scale); ignore_k zeroes
    it; the fused conditioning (GraphSampler's cache builds on it) takes the float h."""
    cfg = ModelConfig.preset("tiny", input_size=8, in_channels=1, num_classes=10, step_input="interval")
    net = redraw_zero_init(ShortcutDiT(cfg, kernels="torch"), gen).to(device)
    level = ShortcutDiT(ModelConfig.preset("tiny", input_size=8, in_channels=1, num_classes=10), kernels="torch")
    level.load_state_dict(net.state_dict())
    level.to(device)
    x = torch.randn(3, 1, 8, 8, generator=gen).to(device)
    t, h, y = (torch.tensor([0.1, 0.5, 0.9], device=device), torch.tensor([0.5, 0.25, 0.1], device=device),
               torch.tensor([1, 2, 10], device=device))
    with pytest.raises(TypeError, match="k must be a floating-point tensor .*step_input='interval'"):
        net(x, t, torch.tensor([0, 1, 2], device=device), y)
    with pytest.raises(TypeError, match="k must be an integer tensor"):
        level(x, t, h, y)
    assert torch.equal(net(x, t, h, y), level.forward_with_modulations(x, level.modulations(
        *level.embed(t, h * cfg.t_scale, y, silu=True))))
    fused = ShortcutDiT(cfg, kernels="triton").to(device)
    fused.load_state_dict(net.state_dict())
    for a, b in zip(fused.embed(t, h, y, silu=True), net.embed(t, h, y, silu=True)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    off = ShortcutDiT(ModelConfig.preset("tiny", input_size=8, in_channels=1, num_classes=10, step_input="interval",
                                         ignore_k=True), kernels="torch").to(device)
    assert torch.equal(off.embed(t, h, y), off.embed(t, torch.zeros_like(h), y))
    with pytest.raises(ValueError, match="step_input must be one of"):
        ModelConfig(step_input="levels")
