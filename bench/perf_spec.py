"""The timed stages of bench/gpu_check.py: the SPEC §6 rows, ours → eager → torch.compile within each case.

Each job is one SPEC §6 row group and writes one record per (case, provider) as it finishes ({kind: "perf",
case, provider, shape, dtype, per_call_s, ..., spec_row}), or {kind: "perf_error", case, provider, error}; the
rows that the scorecard judges carry spec_row true, the extra ones of `--full` false. Ours runs first in every
case, so a stage cut off at its time limit loses the compile baselines (the slowest to build) first. The
forward-mode AD jobs of stage perf_jvp (--full and the dry run only; no SPEC §6 target), perf_attention_jvp and
perf_meanflow_train, are in bench/perf_jvp.py, on this file's Job and helpers.

How each row is taken (common.time_per_call, common.transient_memory):
- single ops (adaLN, conditioning, attention): back-to-back calls queued behind a spin kernel, per call, so
  launch latency is hidden; inputs rotate over enough copies to exceed 3× the L2; backward rows time the
  backward alone (`autograd.grad(..., retain_graph=True)` on a saved forward);
- model forward and training step: the same timer (each call is 10-300 ms, launch overhead is noise);
- sampling: wall-clock latency to completion per call (what a caller waits for); every path pays the same
  label check (`shortcut.sampler.check_labels`, two device reads): `sample()` runs it inside, the
  GraphSampler row runs it before `gs(noise, y)`; "graph_nocheck" is the sampler alone, for reference;
- eager and compile baselines of model rows use the reference model (kernels="torch", SDPA attention),
  torch.compile with dynamic=False (the sampler's in mode "reduce-overhead"); ours is kernels="triton",
  attention="triton" with the same weights, run under shortcut_kernels.strict() (no quiet fallback);
- transient memory (training): peak allocated during one step beyond what was allocated before it.
Dry run (CPU): tiny shapes through the interpreter, torch.compile with backend="eager" (Dynamo traces, no
Inductor: a CPU Inductor compile takes ~20 s), 3 wall-clock calls per row.
"""
import contextlib
import copy
import functools
import math

import torch
import torch.nn.functional as F

from common import sdpa_backend_of, time_per_call, transient_memory


class Job:
    """What every row of a job shares: device, dtype, dry/full flags, the record sink."""

    def __init__(self, records, device, dry, full):
        self.records, self.device, self.dry, self.full = records, torch.device(device), dry, full
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.float32 if dry else torch.bfloat16
        self.dtype_name = "fp32" if dry else "bf16"
        self.l2 = (getattr(torch.cuda.get_device_properties(self.device), "L2_cache_size", 0) or 50 * 2 ** 20) \
            if self.cuda else 2 ** 20
        if self.cuda:
            # One process compiles the same code at several shapes: past Dynamo's recompile limit (default 8)
            # it would silently run eagerly, turning compiled rows into eager ones.
            for name in ("cache_size_limit", "recompile_limit"):
                if hasattr(torch._dynamo.config, name):
                    setattr(torch._dynamo.config, name, 64)

    def compile(self, fn, mode=None, fullgraph=False):
        """torch.compile(fn, dynamic=False) on the GPU; Dynamo alone (backend "eager") in the dry run."""
        if self.dry:
            return torch.compile(fn, backend="eager", dynamic=False, fullgraph=fullgraph)
        return torch.compile(fn, mode=mode, dynamic=False, fullgraph=fullgraph)

    def copies(self, nbytes):
        """Input sets to rotate over so one pass reads more than 3× the L2 (at most 8)."""
        return int(min(8, max(1, math.ceil(3 * self.l2 / max(nbytes, 1)))))

    def row(self, case, provider, fn, *, spec, shape, dtype=None, bytes_moved=None, flops=None, timing=None,
            ours=False, **extra):
        """Time fn() -> timing dict (or take `timing` as given), record it; a failure is recorded and swallowed."""
        import shortcut_kernels
        fields = dict(case=case, provider=provider, shape=list(shape) if isinstance(shape, tuple) else shape,
                      dtype=dtype or self.dtype_name, spec_row=spec)
        try:
            with shortcut_kernels.strict() if ours else contextlib.nullcontext():
                t = timing if timing is not None else fn()
        except Exception as e:   # noqa: BLE001 - one provider failing must not cost the others their rows
            self.records.error("perf_error", e, **fields, **extra)
            return None
        if bytes_moved:
            t["gbps"] = bytes_moved / t["per_call_s"] / 1e9
        if flops:
            t["tflops"] = flops / t["per_call_s"] / 1e12
        return self.records.add("perf", **fields, **t, **extra)

    def time(self, fns, **kw):
        if self.dry:   # one warm-up call and one timed call: interpreted kernels take up to seconds a call
            kw.update(warmup=1, reps=1)
        return time_per_call(fns if isinstance(fns, (list, tuple)) else [fns], self.device, **kw)

    def time_backward(self, forward, input_sets, cotangent_sets):
        """Seconds per backward alone: one saved forward per input set, then autograd.grad(retain_graph=True).
        Where a backward cannot run twice on one graph, (forward + backward) − forward instead."""
        def grad(outs, inputs, cots, retain):
            outs = outs if isinstance(outs, tuple) else (outs,)
            return torch.autograd.grad(outs, inputs, [c.to(o.dtype) for o, c in zip(outs, cots)], retain_graph=retain)

        try:
            fns = [functools.partial(grad, forward(*inputs), inputs, cots, True)
                   for inputs, cots in zip(input_sets, cotangent_sets)]
            return dict(self.time(fns), bwd_method="backward alone (retain_graph)")
        except RuntimeError as e:
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        both = self.time([functools.partial(lambda i, c: grad(forward(*i), i, c, False), inputs, cots)
                          for inputs, cots in zip(input_sets, cotangent_sets)])
        fwd = self.time([functools.partial(forward, *inputs) for inputs in input_sets])
        both.update(per_call_s=max(both["per_call_s"] - fwd["per_call_s"], 1e-9), min_s=None,
                    fwd_per_call_s=fwd["per_call_s"], bwd_method=f"(fwd+bwd) − fwd; retain_graph failed: {reason}")
        return both


# ------------------------------------------------------------------------------------------------ adaLN
def _adaln_dtypes(name):
    """(x, modulation/branch, h) dtypes: bf16 everywhere, or "mixed" (the model under bf16 autocast)."""
    return {"mixed": (torch.float32, torch.bfloat16, torch.bfloat16), "bf16": (torch.bfloat16,) * 3,
            "fp32": (torch.float32,) * 3}[name]


def perf_adaln(job):
    from shortcut_kernels import adaln_modulate, adaln_modulate_ref, gated_adaln, gated_adaln_ref
    if job.dry:
        shapes, dtypes = [(2, 16, 40)], ["fp32"]
    else:   # 64 × 256 = 16,384 rows of DiT-XL/2's 1152: the SPEC §6 regime (B·T ≥ 16k)
        shapes, dtypes = [(64, 256, 1152)], ["bf16"]
        if job.full:
            shapes += [(256, 256, 1152), (64, 256, 768)]
            dtypes += ["mixed"]

    def modulate_ref(x, shift, scale, out_dtype):
        return adaln_modulate_ref(x, shift, scale).to(out_dtype)

    def gated_ref(x, branch, gate, shift, scale, out_dtype):
        x2, h = gated_adaln_ref(x, branch, gate, shift, scale)
        return x2, h.to(out_dtype)

    fused = {"adaln_modulate": lambda *a, out_dtype: adaln_modulate(*a, out_dtype=out_dtype),
             "gated_adaln": lambda *a, out_dtype: gated_adaln(*a, out_dtype=out_dtype)}
    refs = {"adaln_modulate": modulate_ref, "gated_adaln": gated_ref}
    gen = torch.Generator().manual_seed(0)
    for (B, T, D) in shapes:
        for dname in dtypes:
            spec = (B, T, D) == shapes[0] and dname == dtypes[0]
            x_dt, m_dt, h_dt = _adaln_dtypes(dname)
            for op in ("adaln_modulate", "gated_adaln"):
                gated = op == "gated_adaln"
                sx, sm, sh = (torch.empty((), dtype=d).element_size() for d in (x_dt, m_dt, h_dt))
                N, vec = B * T, B * D * sm * (3 if gated else 2)
                # Bytes a fused kernel must move: rows read / written once, per-sample vectors, fp32 mean/rstd.
                fwd_bytes = N * D * (sx + sh + (sm + sx if gated else 0)) + vec + 8 * N
                bwd_bytes = N * D * (sh + sx + sx + (sx + sm + sm if gated else 0)) + vec + 8 * N

                def inputs(grad):
                    x = torch.randn(B, T, D, generator=gen).to(job.device, x_dt)
                    mods = (torch.randn(B, 6 * D, generator=gen) * 0.5).to(job.device, m_dt)
                    _, _, gate, shift, scale, _ = mods.chunk(6, dim=1)   # strided views, as in ShortcutDiT
                    if gated:
                        branch = torch.randn(B, T, D, generator=gen).to(job.device, m_dt)
                        tensors = [x, branch, gate, shift, scale]
                    else:
                        tensors = [x, shift, scale]
                    if grad:   # leaves for autograd (the views become leaves of their own)
                        tensors = [v.detach().requires_grad_() for v in tensors]
                    return tensors

                sets = [inputs(False) for _ in range(job.copies(fwd_bytes))]
                calls = {"triton": fused[op], "eager": refs[op]}
                for provider in ("triton", "eager", "compile"):   # ours → eager → compile
                    if provider == "compile":
                        calls["compile"] = job.compile(refs[op], fullgraph=True)
                    call = calls[provider]

                    def timed(call=call):
                        with torch.no_grad():
                            return job.time([functools.partial(call, *s, out_dtype=h_dt) for s in sets])
                    job.row(f"{op}_fwd", provider, timed, spec=spec, shape=(B, T, D), dtype=dname,
                            bytes_moved=fwd_bytes, ours=provider == "triton")
                grad_sets = [inputs(True) for _ in range(job.copies(fwd_bytes + bwd_bytes))]
                cots = [[torch.randn(B, T, D, generator=gen).to(job.device, dt) for dt in ((x_dt, h_dt) if gated
                                                                                            else (h_dt,))]
                        for _ in grad_sets]
                for provider in ("triton", "eager", "compile"):
                    call = functools.partial(calls[provider], out_dtype=h_dt)
                    job.row(f"{op}_bwd", provider, lambda call=call: job.time_backward(call, grad_sets, cots),
                            spec=spec, shape=(B, T, D), dtype=dname, bytes_moved=bwd_bytes, ours=provider == "triton")


# ------------------------------------------------------------------------------------------------ attention
def _sdpa_qkvpacked(qkv, scale):
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                               # 3 × (B, H, T, Dh) views
    return F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2)   # (B, T, H, Dh)


def perf_attention(job):
    from shortcut_kernels import attention_qkvpacked, flash_attn_available, flash_attn_qkvpacked
    if job.dry:
        shapes = [(1, 16, 2, 64), (1, 16, 2, 72)]
    else:   # (B, T, H, head_dim): DiT-B/2 (12 × 64) and DiT-XL/2 (16 × 72) heads at 256 tokens, B = 64
        shapes = [(64, 256, 12, 64), (64, 256, 16, 72)]
        if job.full:
            shapes += [(256, 256, 12, 64), (256, 256, 16, 72), (8, 1024, 12, 64), (8, 1024, 16, 72)]
    providers = ["triton", "sdpa"] + (["flash_attn"] if job.cuda and flash_attn_available() else [])
    gen = torch.Generator().manual_seed(0)
    for B, T, H, Dh in shapes:
        spec = (B, T, H, Dh) in shapes[:2]
        scale = Dh ** -0.5
        nbytes = 4 * B * T * H * Dh * job.dtype.itemsize   # qkv read, o written
        sets = [torch.randn(B, T, 3, H, Dh, generator=gen).to(job.device, job.dtype) for _ in range(job.copies(nbytes))]
        dos = [[torch.randn(B, T, H * Dh, generator=gen).to(job.device, job.dtype)] for _ in sets]
        attend = {"triton": lambda x: attention_qkvpacked(x, scale=scale),
                  "flash_attn": lambda x: flash_attn_qkvpacked(x, scale=scale),
                  "sdpa": lambda x: _sdpa_qkvpacked(x, scale)}
        fwd_flops = 4 * B * H * T * T * Dh   # q·kᵀ and p·v; backward 2.5× (five matmuls, q·kᵀ recomputed)
        backend = sdpa_backend_of(lambda: _sdpa_qkvpacked(sets[0], scale))   # the one SDPA picks here
        for provider in providers:
            def proj_input(qkv, attend=attend[provider]):   # what the proj Linear reads: (B, T, H·Dh)
                return attend(qkv).reshape(B, T, H * Dh)

            def fwd(proj_input=proj_input):
                with torch.no_grad():
                    return job.time([functools.partial(proj_input, s) for s in sets])
            extra = {"sdpa_backend": backend} if provider == "sdpa" else {}
            job.row(f"attention_fwd_hd{Dh}", provider, fwd, spec=spec, shape=(B, H, T, Dh), flops=fwd_flops,
                    ours=provider == "triton", **extra)
            leaves = [[s.detach().clone().requires_grad_()] for s in sets]
            job.row(f"attention_bwd_hd{Dh}", provider,
                    lambda proj_input=proj_input, leaves=leaves: job.time_backward(proj_input, leaves, dos),
                    spec=spec, shape=(B, H, T, Dh), flops=2.5 * fwd_flops, ours=provider == "triton", **extra)
            del leaves


# ------------------------------------------------------------------------------------------------ conditioning
def count_launches(fn, device):
    """GPU operations (kernels, memcpy, memset) of one fn() call, from the PyTorch profiler; None on CPU."""
    if torch.device(device).type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    return sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)


def _dit(job, preset, kernels, attention, dtype=None, **overrides):
    """A ShortcutDiT on the job's device with every weight non-zero (adaLN-Zero and the zero final layer
    re-drawn: tensor cores run faster on zeros, and a zero output would hide a wrong kernel). overrides:
    ModelConfig fields (MeanFlow's step_input="interval", t_scale=1.0)."""
    from shortcut import ModelConfig, ShortcutDiT
    if preset == "tiny":
        cfg = ModelConfig.preset("tiny", input_size=8, in_channels=4, num_classes=10, **overrides)
    else:
        cfg = ModelConfig.preset(preset, input_size=32, in_channels=4, num_classes=1000, **overrides)
    torch.manual_seed(0)
    with torch.device(job.device):   # initialise on the GPU: XL/2's 675 M parameters take seconds on a CPU
        model = ShortcutDiT(cfg, kernels=kernels, attention=attention)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.02)
    return model.to(job.device, dtype) if dtype is not None else model


def _twin(job, model, kernels, attention):
    """The same weights in a model with other kernels / attention."""
    twin = copy.deepcopy(model)
    twin.kernels, twin.attention = kernels, attention
    return twin


def _inputs(cfg, batch, device, gen):
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen)
    t = torch.rand(batch, generator=gen)
    k = torch.randint(0, 8, (batch,), generator=gen)
    y = torch.randint(0, cfg.num_classes + 1, (batch,), generator=gen)
    return [v.to(device) for v in (x, t, k, y)]


def perf_conditioning(job):
    cases = [("tiny", 2)] if job.dry else [("DiT-XL/2", 1)] + ([("DiT-B/2", 1), ("DiT-XL/2", 256)] if job.full else [])
    for preset, B in cases:
        spec = (preset, B) == cases[0]
        model = _dit(job, preset, "triton", "triton", job.dtype).eval()
        cfg = model.cfg
        _, t, k, y = _inputs(cfg, B, job.device, torch.Generator().manual_seed(0))
        es = job.dtype.itemsize
        weights = sum(p.numel() for m in (model.adaLN, model.t_embedder, model.k_embedder) for p in m.parameters())
        outputs = B * model.adaLN.weight.shape[0] + B * cfg.hidden_size * 2   # every modulation, label rows, c
        nbytes = (weights + outputs) * es

        def ours():
            return model.modulations(*model.embed(t, k, y, silu=True))   # the path ShortcutDiT.forward takes

        def eager(t, k, y):   # DiT's formulation: the reference embedders, then one adaLN Linear per block
            c = model.t_embedder(t) + model.k_embedder(k) + model.y_embedder(y)
            return [m(c) for m in [b.adaLN_modulation for b in model.blocks] + [model.final_layer.adaLN_modulation]]

        fns = {"triton": ours, "eager": functools.partial(eager, t, k, y)}
        for provider in ("triton", "eager", "compile"):
            if provider == "compile":
                fns["compile"] = functools.partial(job.compile(eager, fullgraph=True), t, k, y)
            fn = fns[provider]

            def timed(fn=fn):
                with torch.no_grad():
                    result = job.time(fn)
                    try:
                        result["launches"] = count_launches(fn, job.device)
                    except Exception as e:   # noqa: BLE001 - the profiler (CUPTI) may be unavailable
                        result["launches_error"] = f"{type(e).__name__}: {e}"[:200]
                    return result
            job.row("conditioning", provider, timed, spec=spec, shape=(preset, B), bytes_moved=nbytes,
                    ours=provider == "triton")
        del model
        torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------ forward
def _autocast(job):
    return torch.autocast("cuda", dtype=torch.bfloat16) if job.cuda else contextlib.nullcontext()


def _rel_err(out, ref):
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12)).item()


def perf_forward(job):
    from flops import dit_forward_flops
    cases = [("tiny", 2)] if job.dry else [("DiT-XL/2", 256)] + ([("DiT-B/2", 256), ("DiT-XL/2", 64)] if job.full else [])
    for preset, B in cases:
        spec = (preset, B) == cases[0]
        ref = _dit(job, preset, "torch", "sdpa").eval()   # fp32 weights, bf16 autocast: as in training
        ours = _twin(job, ref, "triton", "triton")
        cfg = ref.cfg
        x, t, k, y = _inputs(cfg, B, job.device, torch.Generator().manual_seed(0))
        flops = dit_forward_flops(cfg, B)

        def run(model):
            with torch.no_grad(), _autocast(job):
                return model(x, t, k, y)

        expect = run(ref)
        providers = [("triton", ours), ("eager", ref), ("compile", None)]
        if job.full and not job.dry:
            providers.append(("compile_max_autotune", None))
        for provider, model in providers:
            if model is None:
                torch._dynamo.reset()
                model = job.compile(ref, mode="max-autotune-no-cudagraphs" if provider.endswith("autotune") else None)

            def timed(model=model):
                result = job.time(functools.partial(run, model), total_s=1.0)
                result["rel_err_vs_eager"] = _rel_err(run(model), expect)
                return result
            job.row("forward", provider, timed, spec=spec, shape=(preset, B), flops=flops, ours=provider == "triton")
        del ref, ours
        torch._dynamo.reset()
        if job.cuda:
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ sampler
def perf_sampler(job):
    from shortcut import GraphSampler, sample
    from shortcut.sampler import check_labels
    cases = [("tiny", 1, 1)] if job.dry else [("DiT-B/2", 1, 1)] + (
        [("DiT-B/2", 1, 4), ("DiT-B/2", 64, 1), ("DiT-XL/2", 1, 1)] if job.full else [])
    for preset, B, steps in cases:
        spec = (preset, B, steps) == cases[0]
        ref = _dit(job, preset, "torch", "sdpa", job.dtype).eval()   # bf16 weights: the sampling setup
        ours = _twin(job, ref, "triton", "triton")
        cfg = ref.cfg
        gen = torch.Generator().manual_seed(0)
        noise = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen).to(job.device, job.dtype)
        y = torch.randint(0, cfg.num_classes, (B,), generator=gen).to(job.device)
        weight_bytes = sum(p.numel() * p.element_size() for p in ref.parameters())
        shape = (preset, B, steps)
        reps = 50 if job.cuda else 3
        gs = {}

        def graph(check):
            if "gs" not in gs:
                gs["gs"] = GraphSampler(ours, batch_size=B, steps=steps, dtype=job.dtype)

            def fn():
                if check:   # the label check sample() does inside: the same cost on every path
                    check_labels(ours, y, B, noise.device)
                return gs["gs"](noise, y)
            return fn

        def timed_graph(check):
            result = job.time(graph(check), latency=True, reps=reps, warmup=3)
            result.update(graphed=gs["gs"].graphed, cond_cache=gs["gs"].cond_cache is not None)
            return result

        job.row("sample", "graph", lambda: timed_graph(True), spec=spec, shape=shape, ours=True,
                bytes_moved=steps * weight_bytes)
        job.row("sample", "graph_nocheck", lambda: timed_graph(False), spec=spec, shape=shape, ours=False)
        job.row("sample", "eager", lambda: job.time(lambda: sample(ref, noise, steps, y=y), latency=True, reps=reps),
                spec=spec, shape=shape, bytes_moved=steps * weight_bytes)

        def compiled():
            torch._dynamo.reset()
            model = job.compile(ref, mode="reduce-overhead")
            # reduce-overhead records its CUDA graph on the first calls: 5 warm-up calls before timing
            return job.time(lambda: sample(model, noise, steps, y=y), latency=True, reps=reps, warmup=5)
        job.row("sample", "compile", compiled, spec=spec, shape=shape, bytes_moved=steps * weight_bytes,
                compile_mode="reduce-overhead")
        gs.clear()
        del ref, ours
        torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------ training
def time_training_step(job, model, ema, loss_fn, what):
    """Seconds per optimizer step as shortcut.train's loop runs one: loss_fn() under autocast, backward, AdamW
    (lr 1e-4, weight decay 0.1), EMA update (0.999); with its transient memory and the last loss. Raises on a
    non-finite loss (named `what`)."""
    from shortcut.train import ema_update
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1)
    losses = []

    def step():
        with _autocast(job):
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, model, 0.999)
        losses[:] = [loss.detach()]
    result = job.time(step, total_s=1.0)
    result.update(transient_memory(step, job.device))
    if not torch.isfinite(losses[0]):
        raise FloatingPointError(f"non-finite {what} loss {losses[0].item()}")
    result["loss"] = losses[0].item()
    if job.cuda:
        torch.cuda.empty_cache()
    return result


def perf_train(job):
    from flops import train_step_flops
    from shortcut import ObjectiveConfig, shortcut_loss, shortcut_targets
    cases = [("tiny", 8)] if job.dry else [("DiT-B/2", 256)]
    objective = ObjectiveConfig()
    for preset, B in cases:
        spec = (preset, B) == cases[0]
        base = _dit(job, preset, "torch", "sdpa")
        cfg = base.cfg
        x1, _, _, y = _inputs(cfg, B, job.device, torch.Generator().manual_seed(0))
        y = y.clamp(max=cfg.num_classes - 1)   # data carry real labels; the objective drops some to null
        flops = train_step_flops(cfg, B, objective)
        for provider in ("triton", "eager", "compile"):
            def timed(provider=provider):
                model = _twin(job, base, "triton", "triton") if provider == "triton" else copy.deepcopy(base)
                model.train()
                ema = copy.deepcopy(model).requires_grad_(False).eval()
                net, target = model, ema
                if provider == "compile":
                    torch._dynamo.reset()
                    net, target = job.compile(model), job.compile(ema)
                gen = torch.Generator(job.device).manual_seed(0)

                def loss():
                    return shortcut_loss(net, shortcut_targets(target, x1, y, objective, generator=gen))[0]
                return time_training_step(job, model, ema, loss, "training")
            job.row("train", provider, timed, spec=spec, shape=(preset, B), flops=flops, ours=provider == "triton",
                    bootstrap_fraction=objective.bootstrap_fraction)
        del base
        torch._dynamo.reset()


JOBS = {"perf_adaln": perf_adaln, "perf_attention": perf_attention, "perf_conditioning": perf_conditioning,
        "perf_forward": perf_forward, "perf_sampler": perf_sampler, "perf_train": perf_train}
