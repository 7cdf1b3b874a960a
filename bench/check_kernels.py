"""Stage 1 of bench/gpu_check.py: every Triton kernel against its reference on this device, forward and backward,
and the production model path.

Rule (STYLE habit 2, `assert_close_rel` in tests/conftest.py): |kernel − ref| ≤ 2·|torch_same_dtype − ref| + atol
for every output and every gradient, `ref` computed in float64 from the same inputs, `torch_same_dtype` being
PyTorch's own result in the kernel's dtype. Each op runs inside `shortcut_kernels.strict()`, so a quiet fallback
to the reference is an error, not a pass. Inputs are fresh random values (never zeros).

GPU: DiT-B/2 and DiT-XL/2 widths (D 768 / 1152, head_dim 64 / 72, T 256), fp16 and bf16 (adaLN also "mixed",
the model under autocast: x fp32, the rest bf16, h written in bf16); the model path is ShortcutDiT(kernels=
"triton", attention="triton") against kernels="torch", attention="torch" under bf16 autocast, depth 2, every
parameter gradient. CPU (the dry run): tiny shapes in fp32 / fp16 through the Triton interpreter, whose bf16
is wrong (SPEC §3). Each job writes one record per compared tensor: {kind: "check", op, case, tensor, err,
base, tol, ok}; an exception in a case is one record with ok false and the error.
"""
import copy

import torch

# The per-dtype absolute slack of tests/conftest.py (tests/test_gpu_check.py asserts the two tables agree).
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-10}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def compare(out, ref, same, factor=2.0, atol=None):
    """(err, base, tol, ok) of the 2× rule: err = max|out − ref|, base = max|same − ref|."""
    ref = ref.double()
    err = (out.double() - ref).abs().max().item() if out.numel() else 0.0
    base = (same.double() - ref).abs().max().item() if out.numel() else 0.0
    tol = factor * base + (ATOL[out.dtype] if atol is None else atol)
    ok = err <= tol and out.shape == ref.shape and bool(torch.isfinite(out).all())
    return err, base, tol, ok


class Checker:
    """Runs cases and records each compared tensor."""

    def __init__(self, records, device):
        self.records, self.device = records, torch.device(device)
        self.cuda = self.device.type == "cuda"

    def check(self, op, case, names, outs, refs, sames):
        for name, o, r, s in zip(names, outs, refs, sames):
            if o is None or r is None:
                self.records.add("check", op=op, case=case, tensor=name, ok=False,
                                 error=f"missing gradient (kernel {o is None}, reference {r is None})")
                continue
            err, base, tol, ok = compare(o, r, s)
            self.records.add("check", op=op, case=case, tensor=name, dtype=str(o.dtype).removeprefix("torch."),
                             err=err, base=base, tol=tol, ok=ok)

    def run(self, op, case, fn):
        """fn() does the comparisons; any exception becomes a failed record and the next case runs."""
        import shortcut_kernels
        try:
            with shortcut_kernels.strict():
                fn()
        except Exception as e:   # noqa: BLE001 - a failing case must not stop the stage
            self.records.error("check", e, op=op, case=case, tensor="*", ok=False)

    def randn(self, *shape, dtype=torch.float32, std=1.0, gen):
        return (torch.randn(shape, generator=gen) * std).to(self.device, dtype)


def _shard(cases, shard):
    """The cases of shard (i, n): every n-th from the i-th, so n processes split a job's Triton compiles."""
    i, n = shard
    return cases[i::n]


def _grads(fn, inputs, cotangents):
    """fn(*leaves) and the gradients of every leaf for the given cotangents; leaves are fresh copies of inputs."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = torch.autograd.grad(outs, leaves, [c.to(o.dtype) for o, c in zip(outs, cotangents)], allow_unused=True)
    return [o.detach() for o in outs], list(grads)


# ------------------------------------------------------------------------------------------------ adaLN
def check_adaln(records, device, dry, shard=(0, 1)):
    from shortcut_kernels import adaln_modulate, adaln_modulate_ref, gated_adaln, gated_adaln_ref
    c = Checker(records, device)
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, 8, 40)] if dry else [(4, 256, 1152), (3, 256, 768)]
    # (x dtype, branch/modulation dtype, out_dtype): "mixed" is the model under bf16 autocast.
    variants = {"fp32": ("fp32", "fp32", None), "fp16": ("fp16", "fp16", None)} if dry else \
        {"fp16": ("fp16", "fp16", None), "bf16": ("bf16", "bf16", None), "mixed": ("fp32", "bf16", "bf16")}
    for (B, T, D), (name, (xd, md, od)) in _shard([(s, v) for s in shapes for v in variants.items()], shard):
        x_dt, m_dt, o_dt = DTYPES[xd], DTYPES[md], DTYPES.get(od)
        case = f"{name} {B}×{T}×{D}"
        x, branch = c.randn(B, T, D, dtype=x_dt, gen=gen), c.randn(B, T, D, dtype=m_dt, gen=gen)
        gate, shift, scale = (c.randn(B, D, dtype=m_dt, std=0.5, gen=gen) for _ in range(3))
        g_h = c.randn(B, T, D, gen=gen)
        g_x2 = c.randn(B, T, D, gen=gen)

        def modulate(x=x, shift=shift, scale=scale, g_h=g_h, o_dt=o_dt, case=case):
            def kernel(*a):
                return adaln_modulate(*a, out_dtype=o_dt)

            def torch_same(*a):
                h = adaln_modulate_ref(*a)
                return h if o_dt is None else h.to(o_dt)
            inputs = (x, shift, scale)
            out = _grads(kernel, inputs, [g_h])
            same = _grads(torch_same, inputs, [g_h])
            ref = _grads(adaln_modulate_ref, [v.double() for v in inputs], [g_h])
            c.check("adaln_modulate", case, ("h", "dx", "dshift", "dscale"), out[0] + out[1], ref[0] + ref[1],
                    same[0] + same[1])

        def gated(x=x, branch=branch, gate=gate, shift=shift, scale=scale, g=(g_x2, g_h), o_dt=o_dt, case=case):
            def kernel(*a):
                return gated_adaln(*a, out_dtype=o_dt)

            def torch_same(*a):
                x2, h = gated_adaln_ref(*a)
                return x2, (h if o_dt is None else h.to(o_dt))
            inputs = (x, branch, gate, shift, scale)
            out = _grads(kernel, inputs, g)
            same = _grads(torch_same, inputs, g)
            ref = _grads(gated_adaln_ref, [v.double() for v in inputs], g)
            names = ("x2", "h", "dx", "dbranch", "dgate", "dshift", "dscale")
            c.check("gated_adaln", case, names, out[0] + out[1], ref[0] + ref[1], same[0] + same[1])

        c.run("adaln_modulate", case, modulate)
        c.run("gated_adaln", case, gated)


# ------------------------------------------------------------------------------------------------ conditioning
def check_conditioning(records, device, dry, shard=(0, 1)):
    from shortcut_kernels import embed_conditioning, embed_conditioning_ref
    c = Checker(records, device)
    gen = torch.Generator().manual_seed(1)
    # (D, F, V): DiT widths with 256 sinusoid features and 1000 classes + null; tiny on CPU.
    shapes = [(32, 32, 11)] if dry else [(768, 256, 1001), (1152, 256, 1001)]
    variants = ["fp32", "fp16"] if dry else ["fp16", "bf16", "autocast"]   # autocast: fp32 weights, bf16 autocast
    B = 3
    for (D, F_dim, V), name in _shard([(s, v) for s in shapes for v in variants], shard):
        w_dt = torch.float32 if name == "autocast" else DTYPES[name]
        case = f"{name} D={D} F={F_dim} V={V} B={B}"
        t = torch.rand(B, generator=gen).to(c.device)
        k = torch.randint(0, 8, (B,), generator=gen).to(c.device)
        y = torch.randint(0, V, (B,), generator=gen).to(c.device)
        weights = []
        for _ in range(2):   # t_mlp, k_mlp: (w1 (D, F), b1, w2 (D, D), b2)
            weights += [c.randn(D, F_dim, std=0.02, dtype=w_dt, gen=gen), c.randn(D, std=0.02, dtype=w_dt, gen=gen),
                        c.randn(D, D, std=0.02, dtype=w_dt, gen=gen), c.randn(D, std=0.02, dtype=w_dt, gen=gen)]
        weights.append(c.randn(V, D, std=0.02, dtype=w_dt, gen=gen))   # label table
        cot = [c.randn(B, D, gen=gen), c.randn(B, D, gen=gen)]

        def run(weights=weights, t=t, k=k, y=y, cot=cot, name=name, case=case):
            def call(fn):
                def f(*w):
                    return fn(t, k, y, tuple(w[:4]), tuple(w[4:8]), w[8])
                return f
            autocast = (torch.autocast(c.device.type, dtype=torch.bfloat16) if name == "autocast"
                        else torch.autocast(c.device.type, enabled=False))
            with autocast:
                out = _grads(call(embed_conditioning), weights, cot)
                same = _grads(call(embed_conditioning_ref), weights, cot)
            ref = _grads(call(embed_conditioning_ref), [w.double() for w in weights], cot)
            names = ["c", "silu_c"] + [f"d{m}.{p}" for m in ("t_mlp", "k_mlp") for p in ("w1", "b1", "w2", "b2")]
            c.check("embed_conditioning", case, names + ["dtable"], out[0] + out[1], ref[0] + ref[1],
                    same[0] + same[1])

        c.run("embed_conditioning", case, run)


# ------------------------------------------------------------------------------------------------ attention
def check_attention(records, device, dry, shard=(0, 1)):
    from shortcut_kernels import attention, attention_qkvpacked, attention_ref
    c = Checker(records, device)
    gen = torch.Generator().manual_seed(2)
    # (B, H, T, head_dim): DiT-B/2 and DiT-XL/2 heads at 256 tokens; B·H a multiple of 16, as at B ≥ 64, so
    # the kernels compiled here are the ones the timed stage reuses from Triton's cache.
    shapes = [(1, 2, 16, 64), (1, 2, 16, 72)] if dry else [(4, 12, 256, 64), (4, 16, 256, 72)]
    dtypes = ["fp32", "fp16"] if dry else ["fp16", "bf16"]
    for (B, H, T, Dh), name in _shard([(s, d) for s in shapes for d in dtypes], shard):
        dt = DTYPES[name]
        case = f"{name} B={B} H={H} T={T} hd={Dh}"
        qkv = c.randn(B, T, 3, H, Dh, dtype=dt, gen=gen)
        do = c.randn(B, T, H, Dh, gen=gen)

        def packed_ref(qkv):   # (B, T, 3, H, Dh) -> (B, T, H, Dh), softmax attention in qkv's dtype
            q, k, v = (qkv.select(2, i).transpose(1, 2) for i in range(3))
            return attention_ref(q, k, v, upcast=False).transpose(1, 2)

        def packed(qkv=qkv, do=do, case=case):
            out = _grads(attention_qkvpacked, [qkv], [do])
            same = _grads(packed_ref, [qkv], [do])
            ref = _grads(packed_ref, [qkv.double()], [do])
            c.check("attention_qkvpacked", case, ("o", "dqkv"), out[0] + out[1], ref[0] + ref[1], same[0] + same[1])

        def unpacked(qkv=qkv, do=do, case=case):
            q, k, v = (qkv.select(2, i).transpose(1, 2).contiguous() for i in range(3))
            cot = [do.transpose(1, 2)]
            out = _grads(attention, [q, k, v], cot)
            same = _grads(lambda *a: attention_ref(*a, upcast=False), [q, k, v], cot)
            ref = _grads(lambda *a: attention_ref(*a, upcast=False), [q.double(), k.double(), v.double()], cot)
            c.check("attention", case, ("o", "dq", "dk", "dv"), out[0] + out[1], ref[0] + ref[1], same[0] + same[1])

        c.run("attention", case, unpacked)
        c.run("attention_qkvpacked", case, packed)


# ------------------------------------------------------------------------------------------------ model
def check_model(records, device, dry, shard=(0, 1)):
    """The production path: ShortcutDiT(kernels="triton", attention="triton") vs the reference model."""
    from shortcut import ModelConfig, ShortcutDiT
    c = Checker(records, device)
    gen = torch.Generator().manual_seed(3)
    if dry:
        presets = [("tiny", dict(input_size=8, in_channels=4, num_classes=10))]
    else:
        dims = dict(input_size=32, in_channels=4, num_classes=1000, depth=2)
        presets = [("DiT-B/2", dims), ("DiT-XL/2", dims)]
    B = 2 if dry else 4
    for preset, dims in _shard(presets, shard):
        cfg = ModelConfig.preset(preset, **dims)
        case = f"{preset} depth {cfg.depth} B={B} " + ("fp32" if dry else "bf16 autocast")

        def run(cfg=cfg, case=case):
            fused = ShortcutDiT(cfg, kernels="triton", attention="triton")
            with torch.no_grad():   # on top of adaLN-Zero / the zero final layer: every path carries signal
                for p in fused.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * 0.02)
            fused = fused.to(c.device)
            ref = ShortcutDiT(cfg, kernels="torch", attention="torch").to(c.device)
            ref.load_state_dict(fused.state_dict())
            ref64 = copy.deepcopy(ref).double()
            s = cfg.input_size
            x = c.randn(B, cfg.in_channels, s, s, gen=gen)
            t = torch.rand(B, generator=gen).to(c.device)
            k = torch.randint(0, 8, (B,), generator=gen).to(c.device)
            y = torch.randint(0, cfg.num_classes + 1, (B,), generator=gen).to(c.device)
            g = c.randn(B, cfg.in_channels, s, s, gen=gen)

            def forward_backward(model, x, t):
                model.zero_grad(set_to_none=True)
                out = model(x, t, k, y)
                (out * g.to(out.dtype)).sum().backward()
                return out.detach(), [p.grad for _, p in model.named_parameters()]

            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if c.cuda else torch.autocast("cpu", enabled=False)
            with autocast:
                out_f, grads_f = forward_backward(fused, x, t)
                out_s, grads_s = forward_backward(ref, x, t)
            out_r, grads_r = forward_backward(ref64, x.double(), t.double())
            names = ["output"] + [f"d{n}" for n, _ in fused.named_parameters()]
            c.check("model", case, names, [out_f] + grads_f, [out_r] + grads_r, [out_s] + grads_s)

        c.run("model", case, run)


JOBS = {"check_adaln": check_adaln, "check_conditioning": check_conditioning, "check_attention": check_attention,
        "check_model": check_model}
