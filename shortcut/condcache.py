"""The conditioning cache: every adaLN vector a fixed-step sampler needs, computed once per label.

With the steps fixed, step i sees the same (t_i, k_i) of the model's sampling plan for every sample, so c and
every block's adaLN vectors depend only on (i, y). `ConditioningCache` computes them once for every label (or
a subset) into one table; a sampler gathers its rows once per call and skips the embedders and the adaLN
projections at every step. Those projections are a third of a DiT's weights (6D² of each block's 18D²: 87 of
DiT-B/2's 262 MB in bf16), which every step must read from memory whatever the batch. Launches
(TorchDispatchMode on CPU, DiT-B/2, batch 1, kernels="torch"): 261 aten ops per eager step (4 of them the
CPU-only label check), 226 through the cache, plus 7 once per call for the label -> row gather; the fused path
(one sinusoid kernel, one adaLN GEMM) saves fewer launches, the weight traffic is the same. The table holds
(labels + 1) · steps · (6·depth + 2)·D elements: 114 MB per step for DiT-B/2 with 1000 classes in bf16, 394 MB
for DiT-XL/2.
"""
import contextlib
import numbers

import torch

from .sampler import (check_generator, check_labels, check_noise, generator_noise, integrate, sampling_plan,
                      step_input, unwrap)


def _supports_cache(net):
    return all(callable(getattr(net, name, None)) for name in ("embed", "modulations", "forward_with_modulations"))


def _first_param(net):
    p = next((p for p in net.parameters() if p.is_floating_point()), None)
    if p is None:
        raise ValueError("model has no floating-point parameters to sample with")
    return p


def _autocast(device, dtype, param_dtype):
    """Autocast when an fp32 model samples in fp16/bf16; nothing when the dtypes agree. Autocast's weight
    cache must be off under graph capture (it would keep casts made during capture)."""
    if dtype == param_dtype:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=False)


def _check_label_subset(labels, null):
    """Sorted unique labels with the null label added (unconditional and CFG rows need it)."""
    if isinstance(labels, torch.Tensor):
        if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} of shape {tuple(labels.shape)}")
        values = labels.tolist()
    else:
        values = list(labels)
    if not values or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        raise ValueError(f"labels must be a non-empty sequence of ints, got {labels!r}")
    if min(values) < 0 or max(values) > null:
        raise ValueError(f"labels must lie in [0, {null}] ({null} = null), got [{min(values)}, {max(values)}]")
    return torch.tensor(sorted(set(int(v) for v in values) | {null}), dtype=torch.long)


class ConditioningCache:
    """Every adaLN vector a `steps`-step sampler needs, per label: `table` (labels + 1, steps, M).

    Row r, step i holds cat(net.modulations(net.embed(t_i, k_i, label_r))) with (t_i, d_i, k_i) the i-th
    step of the model's sampling plan (`shortcut.sampler.schedule_for`: k a level, or MeanFlow's float
    interval); M = sum of the modulation widths ((6·depth + 2)·D for a ShortcutDiT). The extra last row is
    NaN: labels outside `labels` or outside [0, num_classes] gather it, so a bad label on the GPU yields a NaN
    image instead of a device-side assert that would end the CUDA context.
    Build it under the autocast a sampler runs in; call `refresh(net)` after the weights change.
    """

    def __init__(self, net, steps, labels=None, dtype=None):
        if not _supports_cache(net):
            raise TypeError(f"{type(net).__name__} has no embed / modulations / forward_with_modulations: "
                            "the conditioning cache needs a ShortcutDiT")
        plan = sampling_plan(net, steps)
        self.steps, self.objective, self.schedule = plan.steps, plan.objective, plan.schedule
        null = net.null_label
        device = _first_param(net).device
        self.dtype = dtype                   # autocast dtype the table is computed under (None: none)
        self.labels = (torch.arange(null + 1) if labels is None else _check_label_subset(labels, null)).to(device)
        n = len(self.labels)
        self.row_of = torch.full((null + 1,), n, dtype=torch.long, device=device)   # label -> table row
        self.row_of[self.labels] = torch.arange(n, device=device)
        self.table, self.sizes = None, None
        self.refresh(net)

    @property
    def nbytes(self):
        return self.table.numel() * self.table.element_size()

    @torch.no_grad()
    def refresh(self, net):
        """(Re)compute the table in place: a captured graph holding it sees the new values."""
        n = len(self.labels)
        device = self.labels.device
        param_dtype = _first_param(net).dtype
        ctx = _autocast(device, self.dtype, param_dtype) if self.dtype is not None else contextlib.nullcontext()
        with ctx:
            for i, (t_i, _, k_i) in enumerate(self.schedule):
                t = torch.full((n,), t_i, dtype=torch.float32, device=device)      # as shortcut.sample
                mods = net.modulations(net.embed(t, step_input(k_i, n, device), self.labels))   # depth × (n, 6D), (n, 2D)
                if self.table is None:
                    self.sizes = [m.shape[1] for m in mods]
                    self.table = torch.full((n + 1, self.steps, sum(self.sizes)), float("nan"),
                                            dtype=mods[0].dtype, device=device)
                self.table[:n, i].copy_(torch.cat(mods, dim=1))
        return self

    def rows(self, y):
        """Table rows of labels y (B,): in-graph, no host sync; unknown labels -> the NaN row."""
        null = self.row_of.shape[0] - 1
        valid = (y >= 0) & (y <= null)
        return torch.where(valid, self.row_of[y.clamp(0, null)], len(self.labels))   # scalar: no H2D copy

    def gather(self, y):
        """(B, steps, M): every step's adaLN vectors of each sample, one gather."""
        return self.table.index_select(0, self.rows(y))

    def split(self, flat):
        """(B, M) -> the list `net.modulations` returns: depth × (B, 6D) then (B, 2D), as views."""
        return list(flat.split(self.sizes, dim=1))


def cached_velocity(net, cache, mods_all, scales):
    """velocity(i, x) for `integrate` through precomputed adaLN vectors. mods_all (B', steps, M) with B' = 2B
    when any step is guided (conditional rows first, then null rows, as guided_velocity's concatenated batch)."""
    def velocity(i, x):
        w = scales[i]
        if w == 1.0:
            return net.forward_with_modulations(x, cache.split(mods_all[:x.shape[0], i]))   # depth × (B, 6D), (B, 2D)
        v_c, v_u = net.forward_with_modulations(torch.cat([x, x]), cache.split(mods_all[:, i])).chunk(2)
        return v_u + w * (v_c - v_u)
    return velocity


@torch.no_grad()
def sample_cached(model, noise, steps=1, y=None, cfg_scale=None, cache=None, *, force_cfg=False, generator=None):
    """`shortcut.sample` through a ConditioningCache (eager): same plan, same maths (the same generator draws
    for a consistency sampler), no embedders or adaLN projections per step. Builds the cache unless one for
    this plan is given."""
    check_noise(noise)
    net = unwrap(model)
    plan = sampling_plan(net, steps, cfg_scale, force_cfg)
    B = noise.shape[0]
    y = check_labels(net, y, B, noise.device)
    if cache is None:
        cache = ConditioningCache(net, steps)
    elif not isinstance(cache, ConditioningCache) or cache.schedule != plan.schedule:
        got = (f"steps={cache.steps} of a {cache.objective} model" if isinstance(cache, ConditioningCache)
               else type(cache).__name__)
        raise ValueError(f"cache must be a ConditioningCache built for this model's {plan.objective} sampler at "
                         f"steps={plan.steps}, got {got}")
    if plan.guided:
        y = torch.cat([y, torch.full_like(y, net.null_label)])
    noise_of = generator_noise(check_generator(generator), noise) if plan.rule == "consistency" else None
    return integrate(plan, noise, cached_velocity(net, cache, cache.gather(y), plan.scales), noise_of)
