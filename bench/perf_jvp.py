"""The forward-mode AD rows of bench/gpu_check.py (issue 14): stage perf_jvp, run with --full on a GPU and in the
dry run, never in the default 7-minute plan. Not SPEC §6 targets: every row has spec_row false, so the scorecard
lists it under the timed rows and judges none. Job, the timers and the model helpers are perf_spec.py's.

- perf_attention_jvp: attention's output o and its tangent t_o along (tq, tk, tv), q, k, v (B, H, T, Dh) at the
  DiT-B/2 (256 × 12 × 256 × 64) and DiT-XL/2 (64 × 16 × 256 × 72) shapes, bf16. "triton": attention_jvp, one pass
  over K/V; "triton_rule": torch.func.jvp through `attention` (the forward kernel, then the tangent pass);
  "sdpa_math": torch.func.jvp of SDPA's math backend (the one with a JVP rule); "compile": torch.compile
  (fullgraph) of that; "triton_fwd": the forward kernel alone, for what the tangent costs on top of it. Every
  provider's output is checked against SDPA math in fp32 before it is timed (rel_err: max |out − ref| over
  max |ref|, the worse of o and t_o); past 2× SDPA math's own bf16 error (with a floor) the row is a
  perf_error, so a wrong kernel cannot post a fast number. TFLOP/s of the JVP rows: 12·B·H·T²·Dh, the one-pass
  kernel's six tile matmuls (3× the forward's 4·B·H·T²·Dh), for every provider: the rule does seven (3.5×)
  and the math path keeps T × T scores, probabilities and their tangents in memory on top.
- perf_meanflow_train: one MeanFlow training step (shortcut.meanflow_loss, backward, AdamW, EMA) on DiT-B/2
  (step_input "interval", t_scale 1.0) at B 256, fp32 weights under bf16 autocast with the JVP inside it
  (MeanFlowConfig(jvp_autocast=True): the fused bf16 JVP path), for jvp "joint" and "separate". "triton": the
  fused model, under shortcut_kernels.strict(); "eager": the reference model (kernels="torch", SDPA, which
  takes its math backend under forward AD); "compile": the same, with meanflow_batch_loss (the model, its
  JVP, the loss) under torch.compile, fullgraph=False; (s, h), noise and label dropout are drawn eagerly
  (meanflow_inputs, as for every provider: generator draws and a host read break Dynamo's graph). The
  compile rows record Dynamo's graph_breaks and the first reason: with jvp "separate" (torch 2.13) Dynamo
  breaks at SDPA inside the JVP and runs that part eagerly (it reuses the forward_ad_active() it read for
  u's forward, so SDPA leaves its math backend, which alone has a JVP rule). TFLOP/s from
  flops.meanflow_step_flops. The loss must come out finite.
Dry run: tiny shapes in fp32 through the interpreter, torch.compile with backend "eager", as in perf_spec.py.
"""
import copy
import functools

import torch
import torch.nn.functional as F

from perf_spec import _dit, _inputs, _rel_err, _twin, time_training_step

# Floor of the accuracy check (max |out − ref| / max |ref|), below 2× SDPA math's own error in the same dtype:
# the interpreter's fp32 kernels agree with SDPA math to 3-5e-7 (dry run, T 16); bf16 has an 8-bit mantissa
# (2^-8 = 3.9e-3 per rounding), so 1e-2 is about three roundings.
REL_ERR_FLOOR = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


# ------------------------------------------------------------------------------------------------ attention JVP
def sdpa_math_jvp(q, k, v, tq, tk, tv):
    """(o, t_o) by torch.func.jvp of F.scaled_dot_product_attention on its math backend, (B, H, T, Dh)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def attend(q, k, v):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v)
    return torch.func.jvp(attend, (q, k, v), (tq, tk, tv))


def _counted_graph_breaks():
    """Dynamo's graph breaks so far (count, first reason)."""
    breaks = torch._dynamo.utils.counters["graph_break"]
    return sum(breaks.values()), next(iter(breaks), None)


def _compile_fields():
    n, reason = _counted_graph_breaks()
    return {"graph_breaks": n, **({"graph_break_reason": str(reason)[:200]} if reason else {})}


def perf_attention_jvp(job):
    from shortcut_kernels import attention, attention_jvp
    if job.dry:
        shapes = [(1, 2, 16, 64), (1, 2, 16, 72)]
    else:   # (B, H, T, Dh): DiT-B/2 at its training batch, DiT-XL/2 at batch 64; 256 tokens
        shapes = [(256, 12, 256, 64), (64, 16, 256, 72)]
    gen = torch.Generator(job.device).manual_seed(0)
    for B, H, T, Dh in shapes:
        nbytes = 8 * B * H * T * Dh * job.dtype.itemsize   # q, k, v and their tangents read, o and t_o written
        sets = [[torch.randn(B, H, T, Dh, generator=gen, device=job.device).to(job.dtype) for _ in range(6)]
                for _ in range(job.copies(nbytes))]
        with torch.no_grad():
            ref = sdpa_math_jvp(*(x.float() for x in sets[0]))
            same = sdpa_math_jvp(*sets[0])
        # 2× SDPA math's own error in this dtype, as the correctness stage's rule (exactly 0 in the fp32 dry run)
        tol = max(2 * max(_rel_err(o, r) for o, r in zip(same, ref)), REL_ERR_FLOOR[job.dtype])
        del same
        fwd_flops = 4 * B * H * T * T * Dh

        def jvp_rule(q, k, v, tq, tk, tv):
            return torch.func.jvp(attention, (q, k, v), (tq, tk, tv))

        calls = {"triton": attention_jvp, "triton_rule": jvp_rule, "sdpa_math": sdpa_math_jvp,
                 "triton_fwd": lambda q, k, v, *tangents: (attention(q, k, v),)}
        for provider in ("triton", "triton_rule", "sdpa_math", "compile", "triton_fwd"):   # ours first
            def timed(provider=provider):
                extra = {}
                if provider == "compile":
                    torch._dynamo.reset()
                    torch._dynamo.utils.counters.clear()
                    calls["compile"] = job.compile(sdpa_math_jvp, fullgraph=True)
                call = calls[provider]
                with torch.no_grad():
                    outs = call(*sets[0])
                    err = max(_rel_err(o, r) for o, r in zip(outs, ref))   # triton_fwd: o alone
                    if not err <= tol:   # also catches NaN
                        raise ArithmeticError(f"{provider}: rel_err {err:.3g} against SDPA math in fp32 exceeds "
                                              f"{tol:.3g}: not timed")
                    del outs
                    result = job.time([functools.partial(call, *s) for s in sets])
                if provider == "compile":
                    extra = _compile_fields()
                return dict(result, rel_err=err, rel_tol=tol, **extra)
            job.row(f"attention_jvp_hd{Dh}", provider, timed, spec=False, shape=(B, H, T, Dh),
                    flops=fwd_flops if provider == "triton_fwd" else 3 * fwd_flops,
                    ours=provider.startswith("triton"))
        del sets, ref
        torch._dynamo.reset()
        if job.cuda:
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ MeanFlow step
def perf_meanflow_train(job):
    from flops import meanflow_step_flops
    from shortcut import MeanFlowConfig
    from shortcut.meanflow import meanflow_batch_loss, meanflow_inputs
    # Dry run: batch 4 (3 items at h = 0, 1 with h > 0): the interpreted fused step takes seconds an item.
    cases = [("tiny", 4)] if job.dry else [("DiT-B/2", 256)]
    for preset, B in cases:
        # MeanFlow's network: the step input is the interval h, s and h enter the sinusoids raw
        # (shortcut.build.objective_model_settings("meanflow")).
        base = _dit(job, preset, "torch", "sdpa", step_input="interval", t_scale=1.0)
        cfg = base.cfg
        x1, _, _, y = _inputs(cfg, B, job.device, torch.Generator().manual_seed(0))
        y = y.clamp(max=cfg.num_classes - 1)   # data carry real labels; the objective drops some to null
        for jvp in ("joint", "separate"):
            objective = MeanFlowConfig(jvp=jvp, jvp_autocast=True)
            for provider in ("triton", "eager", "compile"):   # ours → eager → compile
                def timed(provider=provider, objective=objective):
                    model = _twin(job, base, "triton", "triton") if provider == "triton" else copy.deepcopy(base)
                    model.train()
                    ema = copy.deepcopy(model).requires_grad_(False).eval()
                    gen = torch.Generator(job.device).manual_seed(0)
                    batch_loss = meanflow_batch_loss
                    if provider == "compile":
                        torch._dynamo.reset()
                        torch._dynamo.utils.counters.clear()
                        batch_loss = job.compile(meanflow_batch_loss)

                    def loss():   # shortcut.meanflow_loss: the draws stay eager, the loss may be compiled
                        return batch_loss(model, meanflow_inputs(model, x1, y, objective, gen), objective)[0]
                    result = time_training_step(job, model, ema, loss, "MeanFlow")
                    if provider == "compile":
                        result.update(_compile_fields())
                    return result
                job.row("meanflow_train", provider, timed, spec=False, shape=(preset, B),
                        flops=meanflow_step_flops(cfg, B, jvp), ours=provider == "triton", jvp=jvp,
                        jvp_autocast=objective.jvp_autocast,
                        **({"compiled": "meanflow_batch_loss"} if provider == "compile" else {}))
        del base
        torch._dynamo.reset()


JOBS = {"perf_attention_jvp": perf_attention_jvp, "perf_meanflow_train": perf_meanflow_train}
