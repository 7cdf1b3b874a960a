"""Full-model benchmarks: ShortcutDiT forward and the shortcut training step, providers side by side.

    pytest bench/test_bench_model.py --benchmark-json=model.json      # CUDA: bf16 autocast, DiT-B/2 and XL/2
    pytest bench/test_bench_model.py --benchmark-disable              # CPU: the tiny preset, one call each

Providers, on the same weights and inputs:
  eager                 ShortcutDiT(kernels="torch"): the reference ops, PyTorch SDPA attention
  compile               torch.compile(eager model), default mode: what users reach for first
  compile_max_autotune  torch.compile(eager model, mode="max-autotune-no-cudagraphs")
  triton                ShortcutDiT(kernels="triton"): fused adaLN / gated residual, our attention (ours)

Rows: forward at 256 px (32×32×4 latents, 256 tokens) for DiT-B/2 and DiT-XL/2 at batch 1, 64, 256, and
the training step for DiT-B/2 at batch 256 (shortcut_targets from an EMA copy, shortcut_loss, backward,
AdamW, EMA update: the body of shortcut.train's loop). Weights fp32, activations bf16 under autocast, as
in training. FLOPs come from bench/flops.py (model FLOPs: GEMMs and attention matmuls), so TFLOP/s over
the measured matmul peak is MFU. The training rows also record peak CUDA memory.

adaLN-Zero and the zero-initialised final layer make a fresh model output exactly 0, and tensor cores
run faster on zeros than on data (less power, higher clocks), so those weights are re-drawn as N(0, 0.02)
before timing; every other provider's output is compared with eager's (`rel_err_vs_eager`).

torch.compile costs 20 s to minutes per case, so which cases compile depends on --bench-mode
(bench/conftest.py): quick compiles only DiT-B/2 forward at batch 256, default adds the SPEC §6 rows
(XL/2 forward at batch 256 in both modes, the B/2 training step in default mode), full compiles every
case in both modes. Compiled cases run after all eager / triton cases, so a run cut short by
--bench-budget-s keeps the cheap rows.
On CPU: the tiny preset, and one compile (the forward); a CPU compile of a training step takes ~40 s.
"""
import contextlib
import copy
from dataclasses import dataclass

import pytest
import torch

import common
from common import measure, sdpa_backend
from flops import dit_forward_flops, train_step_flops
from shortcut import ModelConfig, ObjectiveConfig, ShortcutDiT, shortcut_loss, shortcut_targets
from shortcut.train import ema_update

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
ALL = ("quick", "default", "full")
RUN_LAST = True        # bench/conftest.py: minutes of compiles, after the other files' cheaper rows
BUDGET_WEIGHT = 2.0    # and twice a default file's share of --bench-budget-s
COMPILE_MODES = {"compile": "default", "compile_max_autotune": "max-autotune-no-cudagraphs"}


@dataclass(frozen=True)
class Case:
    kind: str            # "forward" or "train"
    preset: str
    batch: int
    provider: str
    modes: tuple         # bench modes in which this case runs

    @property
    def id(self):
        return f"{self.kind}-{self.preset}-b{self.batch}-{self.provider}"


def _cases():
    if not CUDA:
        return [Case("forward", "tiny", 2, p, ALL) for p in ("eager", "triton", "compile")] + \
               [Case("train", "tiny", 8, p, ALL) for p in ("eager", "triton")]
    default, full = ("default", "full"), ("full",)
    # (kind, preset, batch, modes the case runs in, modes it compiles in, modes for max-autotune).
    # Compiles dominate: estimated 40-90 s each cold on an H100 (XL/2 forward; B/2 fwd+bwd plus the EMA
    # target's inference graph), 2-3 min with max-autotune's GEMM tuning: max-autotune runs by default
    # only on the XL/2 forward row, and as the very last case, where the budget cuts it first.
    table = [("forward", "DiT-XL/2", 256, ALL, default, default),   # SPEC §6 row
             ("forward", "DiT-B/2", 256, ALL, ALL, full),
             ("train", "DiT-B/2", 256, ALL, default, full),         # SPEC §6 row
             ("forward", "DiT-B/2", 1, ALL, full, full),
             ("forward", "DiT-B/2", 64, default, full, full),
             ("forward", "DiT-XL/2", 64, default, full, full),
             ("forward", "DiT-XL/2", 1, default, full, full)]
    cheap = [Case(kind, preset, batch, p, runs) for kind, preset, batch, runs, _, _ in table
             for p in ("eager", "triton")]
    compiled = [Case(kind, preset, batch, "compile", comp) for kind, preset, batch, _, comp, _ in table]
    compiled += [Case(kind, preset, batch, "compile_max_autotune", auto) for kind, preset, batch, _, _, auto in table]
    order = {m: i for i, m in enumerate(ALL)}   # the compiles every mode runs first, the full-only ones last
    return cheap + sorted(compiled, key=lambda c: min(order[m] for m in c.modes))


def _config(preset):
    if preset == "tiny":   # T = 16 tokens, D = 32, 2 heads of 16: a few interpreter seconds per call
        return ModelConfig.preset("tiny", input_size=8, in_channels=4, num_classes=10)
    return ModelConfig.preset(preset, input_size=32, in_channels=4, num_classes=1000)


_MODELS = {}


def _model(preset, kernels):
    """One model per (preset, kernels), built on the device; the triton one has the eager one's weights."""
    key = (preset, kernels)
    if key not in _MODELS:
        if kernels == "triton":
            ref = _model(preset, "torch")
            with torch.device(DEVICE):
                model = ShortcutDiT(ref.cfg, kernels="triton")
            model = model.to(DEVICE)
            model.load_state_dict(ref.state_dict())
        else:
            torch.manual_seed(0)
            with torch.device(DEVICE):   # initialise on the GPU: XL/2's 675 M parameters take seconds on CPU
                model = ShortcutDiT(_config(preset), kernels="torch")
            model = model.to(DEVICE)
            with torch.no_grad():
                for p in model.parameters():
                    if p.dim() >= 2 and not p.any():   # adaLN-Zero and final layer: give them data
                        p.normal_(0.0, 0.02)
        _MODELS[key] = model.eval()
    return _MODELS[key]


@pytest.fixture(scope="module", autouse=True)
def _release_models():
    yield
    _MODELS.clear()
    torch._dynamo.reset()
    if CUDA:
        torch.cuda.empty_cache()


def _inputs(cfg, batch, gen):
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen)
    t = torch.rand(batch, generator=gen)
    k = torch.randint(0, 8, (batch,), generator=gen)
    y = torch.randint(0, cfg.num_classes + 1, (batch,), generator=gen)
    return [v.to(DEVICE) for v in (x, t, k, y)]


def _autocast():
    return torch.autocast("cuda", dtype=torch.bfloat16) if CUDA else contextlib.nullcontext()


def _compiled(module, provider):
    # A fresh Dynamo state per case: otherwise a second batch size on ShortcutDiT.forward's code object
    # triggers automatic dynamic shapes and the timed graph is no longer the static one.
    torch._dynamo.reset()
    return torch.compile(module, mode=COMPILE_MODES[provider], dynamic=False)


def _sdpa_backend_of(cfg, batch):
    """The backend SDPA picks for the model's attention: q, k, v as strided views of one fused qkv."""
    dtype = torch.bfloat16 if CUDA else torch.float32
    qkv = torch.randn(batch, cfg.num_tokens, 3, cfg.num_heads, cfg.head_dim, device=DEVICE, dtype=dtype)
    return sdpa_backend(*qkv.permute(2, 0, 3, 1, 4).unbind(0))


def _extra(case, cfg):
    extra = {"preset": case.preset, "batch": case.batch, "tokens": cfg.num_tokens,
             "precision": "bf16 autocast, fp32 params" if CUDA else "fp32"}
    if case.provider in COMPILE_MODES:
        extra["compile_mode"] = COMPILE_MODES[case.provider]
    extra["attention"] = "triton" if case.provider == "triton" else "sdpa"
    if case.provider != "triton":
        extra["sdpa_backend"] = _sdpa_backend_of(cfg, case.batch)
    return extra


def _forward(benchmark, case):
    ref = _model(case.preset, "torch")
    cfg = ref.cfg
    x, t, k, y = _inputs(cfg, case.batch, torch.Generator().manual_seed(0))
    model = {"eager": ref, "triton": _model(case.preset, "triton")}.get(case.provider)
    model = model or _compiled(ref, case.provider)

    def forward():
        with torch.no_grad(), _autocast():
            return model(x, t, k, y)

    flops = dit_forward_flops(cfg, case.batch)
    out = measure(benchmark, forward, op=f"{case.preset} forward", provider=case.provider, shape=f"B={case.batch}",
                  device=DEVICE, flops=flops, ours=case.provider == "triton", **_extra(case, cfg))
    if "median_s" in benchmark.extra_info:
        benchmark.extra_info["images_per_s"] = case.batch / benchmark.extra_info["median_s"]
    assert out.shape == x.shape and torch.isfinite(out).all()
    if case.provider != "eager":
        with torch.no_grad(), _autocast():
            expect = ref(x, t, k, y).float()
        err = ((out.float() - expect).abs().max() / expect.abs().max()).item()
        benchmark.extra_info["rel_err_vs_eager"] = err
        # bf16 through 28 blocks stays near 1e-2; a wrong kernel lands at O(1).
        assert err < 0.1, f"{case.provider} output differs from eager: max error {err:.3g} of max |v|"


def _train(benchmark, case):
    ref = _model(case.preset, "torch")
    cfg, objective = ref.cfg, ObjectiveConfig()
    model = copy.deepcopy(_model(case.preset, "triton" if case.provider == "triton" else "torch")).train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1)
    net, target = model, ema
    if case.provider in COMPILE_MODES:
        net = _compiled(model, case.provider)
        target = torch.compile(ema, mode=COMPILE_MODES[case.provider], dynamic=False)
    gen = torch.Generator(DEVICE).manual_seed(0)
    x1, _, _, y = _inputs(cfg, case.batch, torch.Generator().manual_seed(0))
    y = y.clamp(max=cfg.num_classes - 1)   # data carry real labels; the objective drops some to null

    def step():
        with _autocast():
            batch = shortcut_targets(target, x1, y, objective, generator=gen)
            loss, _ = shortcut_loss(net, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, model, 0.999)
        return loss.detach()

    loss = measure(benchmark, step, op=f"{case.preset} train step", provider=case.provider, shape=f"B={case.batch}",
                   device=DEVICE, flops=train_step_flops(cfg, case.batch, objective), peak_memory=CUDA,
                   ours=case.provider == "triton", bootstrap_fraction=objective.bootstrap_fraction,
                   **_extra(case, cfg))
    if "median_s" in benchmark.extra_info:
        benchmark.extra_info["images_per_s"] = case.batch / benchmark.extra_info["median_s"]
    assert torch.isfinite(loss), f"{case.provider}: non-finite training loss {loss.item()}"


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_model(benchmark, case):
    if common.MODE not in case.modes:
        pytest.skip(f"runs with --bench-mode {' or '.join(case.modes)} (now {common.MODE})")
    if case.kind == "forward":
        _forward(benchmark, case)
    else:
        _train(benchmark, case)
