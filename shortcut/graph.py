"""CUDA-graph samplers: the whole Euler loop of `shortcut.sample` captured once, replayed per call.

At batch 1 eager sampling is launch-bound: a DiT-B/2 step is a few hundred small kernels whose launches
cost milliseconds of host time, while the GPU work is ~0.1 ms (262 MB of bf16 weights at ~3 TB/s).
`GraphSampler` captures the `steps`-step loop (CFG included) into one CUDA graph and replays it:

    gs = GraphSampler(model, batch_size=1, steps=1)        # warm-up + capture happen here
    x1 = gs(noise, y)                                       # copy in, replay, clone out
    gs = GraphSampler(model, batch_size=16, steps=4, cfg_scale=1.5, seeded=True)
    x1 = gs(seed=0, y=y)                                    # noise drawn inside the graph

Conditioning cache. With `steps` fixed, step i sees the same (t_i, k_i) of `step_schedule` for every
sample, so c and every block's adaLN vectors depend only on (i, y). `ConditioningCache` computes them once
for every label (or a subset) into one table; the sampler gathers its rows once per call and skips the
embedders and the adaLN projections at every step. Those projections are a third of a DiT's weights
(6D² of each block's 18D²: 87 of DiT-B/2's 262 MB in bf16), which every step must read from memory
whatever the batch. Launches (TorchDispatchMode on CPU, DiT-B/2, batch 1, kernels="torch"): 261 aten
ops per eager step (4 of them the CPU-only label check), 226 through the cache, plus 7 once per call
for the label -> row gather; the fused path (one sinusoid kernel, one adaLN GEMM) saves fewer launches,
the weight traffic is the same. The table holds (labels + 1) · steps · (6·depth + 2)·D elements:
114 MB per step for DiT-B/2 with 1000 classes in bf16, 394 MB for DiT-XL/2; `cond_cache="auto"` builds
it up to 1 GiB, `labels=` restricts it to the labels in use.

Weights. The graph reads the parameters in place, so in-place updates (`load_state_dict`, optimiser
steps, EMA) are seen by the next replay; the conditioning table is recomputed when a parameter's
version counter moved. The per-call check (pointers and versions of DiT-B/2's 136 tensors) took ~12 µs
on a busy 2-core CPU. Weights that were *replaced* (`model.to(...)`, `.half()`, `param.data = ...`,
`load_state_dict(assign=True)`) raise an error on the next call: `gs.refresh()` captures again.
Writes through `param.data` (`p.data.copy_(w)`, `p.data.mul_(s)`) bypass the version counter and go
unseen by the table: call `gs.refresh()` after them. `check_weights=False` skips the check; call
`refresh()` yourself after changing the weights.

RNG (`seeded=True`). Noise is a pure function of (seed, element index): a counter-based integer hash
(lowbias32) turned into normals by Box-Muller, see `seeded_noise`. No generator state is read or
advanced, so a replay with seed s gives the same noise as `seeded_noise(s, shape)` on any device (up to
the last-bit rounding of log/cos), the same seed always gives the same images, and the first b samples
of a batch do not depend on the batch size.

Captured loops live in a small per-model cache (`MAX_GRAPHS` entries, least recently used dropped)
keyed by batch size, steps, per-step CFG scales, dtype, kernels / attention backend and options, all
sharing one memory pool: building a GraphSampler twice with the same arguments captures once. Sharing
is safe in any replay order: static inputs are allocated outside the pool, and each replay's output is
cloned before another graph can run, so a graph never needs pool memory to survive someone else's
replay. Not thread-safe (one stream). On a CPU model nothing is captured: the same static-buffer loop
runs eagerly (`gs.graphed` is False).
"""
import collections
import contextlib
import math
import numbers
import operator
import weakref

import torch

from .profiling import nvtx_range
from .sampler import check_cfg_scale, check_labels, check_steps, guidance_scales, guided_velocity, schedule_for

MAX_GRAPHS = 8                    # captured loops kept per model
COND_CACHE_AUTO_BYTES = 1 << 30   # cond_cache="auto" builds tables up to this size
WARMUP_RUNS = 3                   # eager runs on a side stream before capture (Triton JIT, autotune, compile)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_M32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------
# Seeded noise: a counter-based generator that a CUDA graph can replay with a new seed.

def _mul32(x, c):
    """x·c mod 2^32 for int64 x in [0, 2^32) and a 32-bit constant c; split in 16-bit halves so no
    product leaves int64 (x·c itself can reach 2^64)."""
    return (x * (c & 0xFFFF) + ((x * (c >> 16)) & 0xFFFF) * 65536) & _M32


def _hash32(x):
    """lowbias32 (C. Wellons' integer hash): a bijection of [0, 2^32) with near-ideal avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _counter_hashes(numel, device):
    """Hashes of the counters 0 .. 2·numel − 1 (two uniforms per normal): seed-independent, precomputed."""
    return _hash32(torch.arange(2 * numel, dtype=torch.int64, device=device))


def _seeded_normal(counter_hashes, seed, shape, dtype):
    """N(0, 1) noise of `shape` from precomputed counter hashes and an int64 seed tensor (1,)."""
    key = _hash32(_hash32(seed >> 32) ^ (seed & _M32))                      # (1,) 64-bit seed -> 32 bits
    bits = _hash32(counter_hashes ^ key) >> 8                               # (2n,) 24 random bits each
    u = (bits.to(torch.float32) + 0.5) * 2.0 ** -24                         # uniform in (0, 1), exact
    u1, u2 = u.view(-1, 2).unbind(1)                                        # (n,), (n,)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)  # Box-Muller, |z| < 5.9
    return z.view(shape).to(dtype)


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return int(seed)


def seeded_noise(seed, shape, device="cpu", dtype=torch.float32):
    """Standard-normal noise that is a pure function of (seed, element index): what `GraphSampler(...,
    seeded=True)` draws inside its graph. Element j of the flattened tensor uses counters 2j and 2j + 1,
    so a prefix of the batch does not depend on the batch size. Not torch.randn's stream."""
    seed = _check_seed(seed)
    shape = tuple(shape)
    s = torch.full((1,), seed, dtype=torch.int64, device=device)
    return _seeded_normal(_counter_hashes(math.prod(shape), s.device), s, shape, dtype)


# ---------------------------------------------------------------------------------------------------
# Conditioning cache.

def _unwrap(model):
    """The module behind a torch.compile wrapper (OptimizedModule keeps it in _orig_mod)."""
    return getattr(model, "_orig_mod", model)


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
    step of `schedule_for(net, steps)`; M = sum of the modulation widths ((6·depth + 2)·D for a
    ShortcutDiT). The extra last row is NaN: labels outside `labels` or outside [0, num_classes] gather
    it, so a bad label on the GPU yields a NaN image instead of a device-side assert that would end the
    CUDA context.
    Build it under the autocast a sampler runs in; call `refresh(net)` after the weights change.
    """

    def __init__(self, net, steps, labels=None, dtype=None):
        if not _supports_cache(net):
            raise TypeError(f"{type(net).__name__} has no embed / modulations / forward_with_modulations: "
                            "the conditioning cache needs a ShortcutDiT")
        self.steps, self.schedule = check_steps(steps), schedule_for(net, steps)
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
                k = torch.full((n,), k_i, dtype=torch.long, device=device)
                mods = net.modulations(net.embed(t, k, self.labels))                # depth × (n, 6D), (n, 2D)
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


def _euler_eager(model, x, y, ks, ts, ds, scales, null):
    """shortcut.sample's loop with precomputed t and k tensors (no allocation of inputs, no checks)."""
    for t, k, d, w in zip(ts, ks, ds, scales):
        x = x + d * guided_velocity(model, x, t, k, y, w, null).to(x.dtype)
    return x


def _euler_cached(net, x, mods_all, cache, ds, scales):
    """The same loop through precomputed adaLN vectors. mods_all (B', steps, M) with B' = 2B when any step
    is guided (conditional rows first, then null rows, as guided_velocity's concatenated batch)."""
    B = x.shape[0]
    for i, (d, w) in enumerate(zip(ds, scales)):
        if w == 1.0:
            v = net.forward_with_modulations(x, cache.split(mods_all[:B, i]))      # depth × (B, 6D), (B, 2D)
        else:
            v_c, v_u = net.forward_with_modulations(torch.cat([x, x]), cache.split(mods_all[:, i])).chunk(2)
            v = v_u + w * (v_c - v_u)
        x = x + d * v.to(x.dtype)
    return x


@torch.no_grad()
def sample_cached(model, noise, steps=1, y=None, cfg_scale=None, cache=None, *, force_cfg=False):
    """`shortcut.sample` through a ConditioningCache (eager): same maths, no embedders or adaLN
    projections per step. Builds the cache unless one for `steps` is given."""
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or noise.dim() < 2:
        raise ValueError("noise must be a floating-point tensor of shape (B, ...)")
    check_steps(steps)
    net = _unwrap(model)
    schedule = schedule_for(net, steps)
    scales = guidance_scales(net, schedule, cfg_scale, force_cfg)
    B = noise.shape[0]
    y = check_labels(net, y, B, noise.device)
    if cache is None:
        cache = ConditioningCache(net, steps)
    elif not isinstance(cache, ConditioningCache) or cache.steps != steps:
        raise ValueError(f"cache must be a ConditioningCache built for steps={steps}, got "
                         f"{getattr(cache, 'steps', type(cache).__name__)}")
    if any(w != 1.0 for w in scales):
        y = torch.cat([y, torch.full_like(y, net.null_label)])
    return _euler_cached(net, noise, cache.gather(y), cache, [d for _, d, _ in schedule], scales)


# ---------------------------------------------------------------------------------------------------
# Captured loops and their per-model cache.

_version = operator.attrgetter("_version")
_data_ptr = torch.Tensor.data_ptr


def _weights(net):
    return list(net.parameters()) + list(net.buffers())


def _snapshot(tensors):
    return tuple(map(_data_ptr, tensors)), tuple(map(_version, tensors))


class _Captured:
    """One captured Euler loop: static buffers, the graph, and the weights it was captured against.

    Holds no reference to the model (the per-model cache is weakly keyed by it): methods take it.
    """

    def __init__(self, net, batch_size, steps, cfg_scales, dtype, shape, device, seeded, use_cache, labels):
        self.batch_size, self.steps, self.cfg_scales, self.dtype = batch_size, steps, cfg_scales, dtype
        self.shape, self.device, self.seeded, self.use_cache, self.labels = shape, device, seeded, use_cache, labels
        self.null = net.null_label if hasattr(net, "null_label") else getattr(net, "num_classes", 0)
        self.graph, self.out, self.relist = None, None, False

    def allocate(self, net):
        """Static inputs (filled with valid values for warm-up) and the per-step constants."""
        B, dev = self.batch_size, self.device
        full = (B,) + self.shape
        if self.seeded:
            self.seed = torch.zeros(1, dtype=torch.int64, device=dev)
            self.counter_hashes = _counter_hashes(math.prod(full), dev)
        else:
            self.noise = torch.zeros(full, dtype=self.dtype, device=dev)
        # Labels, with the null half of a guided batch written once: the cached path gathers 2B rows.
        guided_cache = self.use_cache and any(w != 1.0 for w in self.cfg_scales)
        self.y_all = torch.full((2 * B if guided_cache else B,), self.null, dtype=torch.long, device=dev)
        self.y = self.y_all[:B]
        schedule = schedule_for(net, self.steps)
        self.ts = [torch.full((B,), t, dtype=torch.float32, device=dev) for t, _, _ in schedule]
        self.ks = [torch.full((B,), k, dtype=torch.long, device=dev) for _, _, k in schedule]
        self.ds = [d for _, d, _ in schedule]
        self.param_dtype = _first_param(net).dtype
        self.cache = ConditioningCache(net, self.steps, self.labels,
                                       self.dtype if self.dtype != self.param_dtype else None) \
            if self.use_cache else None
        self.tensors = _weights(net)
        self.snapshot = _snapshot(self.tensors)

    def run(self, model):
        """The sampler from the static inputs: the region a graph captures (no sync, no host reads)."""
        net = _unwrap(model)
        with torch.no_grad(), _autocast(self.device, self.dtype, self.param_dtype):
            if self.seeded:
                x = _seeded_normal(self.counter_hashes, self.seed, (self.batch_size,) + self.shape, self.dtype)
            else:
                x = self.noise
            if self.cache is not None:
                return _euler_cached(net, x, self.cache.gather(self.y_all), self.cache, self.ds, self.cfg_scales)
            return _euler_eager(model, x, self.y, self.ks, self.ts, self.ds, self.cfg_scales, self.null)

    def capture(self, model, pool):
        """Warm up on a side stream (Triton JIT, autotune and torch.compile finish there), then capture."""
        if self.device.type != "cuda":
            return
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream()
            side = torch.cuda.Stream()
            side.wait_stream(current)
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self.run(model)
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=pool):
                    self.out = self.run(model)
            except RuntimeError as err:
                raise RuntimeError(
                    "capturing the sampler into a CUDA graph failed. Something in the model's forward "
                    "synchronises with the host (.item(), .cpu(), int(tensor), printing a CUDA tensor) or "
                    "uses CUDA graphs itself (torch.compile mode='reduce-overhead'; use the default mode)"
                ) from err
            self.graph = graph

    def replay(self, model):
        """The sampled x: a fresh tensor (the static output is cloned; an eager run allocates anyway)."""
        if self.graph is not None:
            with nvtx_range("graph_sampler.replay"):
                self.graph.replay()
                return self.out.clone()
        return self.run(model)

    def release(self):
        self.graph = self.out = self.cache = None


class _ModelGraphs:
    """The captured loops of one model: an LRU of `_Captured`, one CUDA memory pool shared by all."""

    def __init__(self):
        self.entries = collections.OrderedDict()
        self.pools = {}        # device -> graph pool handle
        self.hook = None       # the model's load_state_dict post-hook

    def get(self, key, make):
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
            return entry
        entry = make(self)
        self.entries[key] = entry
        while len(self.entries) > MAX_GRAPHS:
            self.entries.popitem(last=False)   # a GraphSampler still holding it keeps it alive
        return entry

    def pool_for(self, device):
        if device.type != "cuda":
            return None
        if device not in self.pools:
            with torch.cuda.device(device):
                self.pools[device] = torch.cuda.graph_pool_handle()
        return self.pools[device]


_GRAPHS = weakref.WeakKeyDictionary()   # model -> _ModelGraphs; dies with the model


def _graphs_of(model):
    graphs = _GRAPHS.get(model)
    if graphs is None:
        graphs = _GRAPHS[model] = _ModelGraphs()
        # load_state_dict(assign=True) swaps Parameter objects: make the next call re-list them.
        graphs.hook = _unwrap(model).register_load_state_dict_post_hook(_on_load_state_dict)
    return graphs


def _on_load_state_dict(module, incompatible_keys):
    for model, graphs in list(_GRAPHS.items()):
        if _unwrap(model) is module:
            for entry in graphs.entries.values():
                entry.relist = True


def clear_graphs(model=None):
    """Forget the captured loops of `model` (all models when None). Live GraphSamplers keep theirs."""
    for key in list(_GRAPHS) if model is None else [model]:
        graphs = _GRAPHS.pop(key, None)
        if graphs is not None:
            graphs.hook.remove()


def _cached_graphs(model):
    """The keys of the loops cached for `model`, least recently used first (for tests and debugging)."""
    graphs = _GRAPHS.get(model)
    return list(graphs.entries) if graphs is not None else []


# ---------------------------------------------------------------------------------------------------

def _sample_shape(net, shape):
    if shape is not None:
        shape = tuple(shape)
        if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise ValueError(f"shape must be a tuple of positive ints (one sample's shape), got {shape!r}")
        return shape
    cfg = getattr(net, "cfg", None)
    if cfg is not None and hasattr(cfg, "in_channels"):
        return (cfg.in_channels, cfg.input_size, cfg.input_size)
    if hasattr(net, "cfg_dim"):   # ShortcutMLP
        return (net.cfg_dim,)
    raise ValueError(f"cannot infer one sample's shape from {type(net).__name__}: pass shape=(C, H, W)")


class GraphSampler:
    """`shortcut.sample` captured into a CUDA graph for one (batch size, steps, CFG scale, dtype).

    model: a ShortcutDiT (or any forward(x, t, k, y) module with `shape=`), possibly torch.compile'd
    (default mode; "reduce-overhead" uses CUDA graphs itself and cannot be captured again).
    steps: any int in 1 … 128 (`shortcut.sampler.step_schedule`). cfg_scale, force_cfg: as
    `shortcut.sample` (None: guidance where the official code applies it).
    dtype: dtype of the sampled x (and of the static noise buffer): None -> on CUDA the model's dtype if
    fp16/bf16, else bf16; on the CPU the model's own dtype. An fp32 model sampling in fp16/bf16 runs under
    autocast; a half model needs its own dtype.
    seeded: draw the noise inside the graph from `gs(seed=...)` (see `seeded_noise`) instead of copying
    it in. cond_cache: True / False / "auto" (on for uncompiled ShortcutDiTs when the table fits
    COND_CACHE_AUTO_BYTES); labels: restrict the table to these labels (others give NaN images; no
    effect without the cache).
    check_weights: per call, compare parameter pointers and versions with the capture's (see module doc).

    Writes through `param.data` are invisible to the weight check: call `refresh()` after them.

    gs(noise, y) -> x1 (a fresh tensor); noise (batch_size, *shape), any floating dtype (cast into the
    static buffer), on the model's device or the CPU; y (batch_size,) int64 on that device or the CPU (CPU
    labels are range-checked; device labels are not, to avoid a sync), or None for the null label.
    """

    def __init__(self, model, batch_size, steps=1, cfg_scale=None, dtype=None, *, seeded=False,
                 cond_cache="auto", labels=None, check_weights=True, shape=None, force_cfg=False):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        check_steps(steps)
        check_cfg_scale(cfg_scale)
        if cond_cache not in ("auto", True, False):
            raise ValueError(f"cond_cache must be 'auto', True or False, got {cond_cache!r}")
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype must be None or one of {DTYPES}, got {dtype!r}")
        net = _unwrap(model)
        param = _first_param(net)
        cfg_scales = tuple(guidance_scales(net, schedule_for(net, steps), cfg_scale, force_cfg))
        if dtype is None:   # CUDA: bf16 under autocast is the fast path; the CPU keeps the model's precision
            half = param.dtype in (torch.float16, torch.bfloat16) or param.device.type != "cuda"
            dtype = param.dtype if half else torch.bfloat16
        if dtype != param.dtype and param.dtype != torch.float32:
            raise ValueError(f"dtype {dtype} needs an fp32 model (run under autocast) or a {dtype} model; "
                             f"the model's parameters are {param.dtype}")
        shape = _sample_shape(net, shape)
        labels_key = None
        if labels is not None:
            if not _supports_cache(net):
                raise ValueError("labels= restricts the conditioning cache, which needs a ShortcutDiT")
            labels_key = tuple(_check_label_subset(labels, net.null_label).tolist())
        use_cache = self._resolve_cache(model, net, cond_cache, steps, dtype, labels_key)
        self.model, self.check_weights = model, bool(check_weights)
        # kernels / attention are plain attributes a user may switch between samplers: part of the key.
        backend = (getattr(net, "kernels", None), getattr(net, "attention", None))
        self.key = (batch_size, steps, cfg_scales, dtype, shape, param.device, seeded, use_cache, labels_key, backend)

        def make(graphs):
            entry = _Captured(net, batch_size, steps, cfg_scales, dtype, shape, param.device, bool(seeded),
                              use_cache, labels_key)
            entry.allocate(net)
            entry.capture(model, graphs.pool_for(param.device))
            return entry

        self._graphs = _graphs_of(model)
        self._entry = self._graphs.get(self.key, make)

    @staticmethod
    def _resolve_cache(model, net, cond_cache, steps, dtype, labels_key):
        if cond_cache is False:
            return False
        if not _supports_cache(net):
            if cond_cache is True:
                raise ValueError(f"cond_cache=True needs a ShortcutDiT (embed, modulations, "
                                 f"forward_with_modulations); {type(net).__name__} has none")
            return False
        if cond_cache is True:
            return True
        if model is not net:   # compiled: the cached block loop would bypass the compiled forward
            return False
        cfg = getattr(net, "cfg", None)
        if cfg is None:
            return True
        width = (6 * cfg.depth + 2) * cfg.hidden_size
        rows = len(labels_key) if labels_key is not None else net.null_label + 1
        elsize = torch.empty(0, dtype=dtype).element_size()
        return (rows + 1) * steps * width * elsize <= COND_CACHE_AUTO_BYTES

    # -----------------------------------------------------------------------------------------------
    batch_size = property(lambda self: self._entry.batch_size)
    steps = property(lambda self: self._entry.steps)
    cfg_scales = property(lambda self: self._entry.cfg_scales, doc="the guidance weight of each step")
    cfg_scale = property(lambda self: self._entry.cfg_scales[0] if len(set(self._entry.cfg_scales)) == 1
                         else self._entry.cfg_scales, doc="the guidance weight (a tuple when it varies by step)")
    dtype = property(lambda self: self._entry.dtype)
    device = property(lambda self: self._entry.device)
    seeded = property(lambda self: self._entry.seeded)
    graphed = property(lambda self: self._entry.graph is not None, doc="True when a CUDA graph replays")
    cond_cache = property(lambda self: self._entry.cache, doc="the ConditioningCache in use, or None")

    def __call__(self, noise=None, y=None, *, seed=None):
        e = self._entry
        if e.seeded:
            if noise is not None:
                raise ValueError("this GraphSampler draws its own noise (seeded=True): call gs(seed=..., y=...)")
            e.seed.fill_(_check_seed(seed))
        else:
            if seed is not None:
                raise ValueError("seed= needs GraphSampler(..., seeded=True); this one takes noise: gs(noise, y)")
            self._check_noise(noise)
            e.noise.copy_(noise)
        self._copy_labels(y)
        if self.check_weights:
            self._check_weights()
        return e.replay(self.model)

    def _check_noise(self, noise):
        e = self._entry
        want = (e.batch_size,) + e.shape
        if not isinstance(noise, torch.Tensor):
            raise TypeError(f"noise must be a tensor of shape {want}, got {type(noise).__name__}")
        if tuple(noise.shape) != want:
            raise ValueError(f"noise must have shape {want} (this sampler was captured for batch_size="
                             f"{e.batch_size}; build another GraphSampler for other sizes), got {tuple(noise.shape)}")
        if not noise.is_floating_point():
            raise ValueError(f"noise must be a floating-point tensor (cast to {e.dtype}), got {noise.dtype}")
        if noise.device != e.device and noise.device.type != "cpu":
            raise ValueError(f"noise must be on {e.device} (where the model is) or the CPU, got {noise.device}")

    def _copy_labels(self, y):
        e = self._entry
        if y is None:
            e.y.fill_(e.null)
            return
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != (e.batch_size,) or y.dtype != torch.long:
            got = (tuple(y.shape), y.dtype) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"y must be an int64 tensor of shape ({e.batch_size},), got {got}")
        if y.device.type == "cpu":   # free to check on the host; device labels are not read back (no sync)
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi > e.null:
                raise ValueError(f"y must hold labels in [0, {e.null}] ({e.null} = null), got [{lo}, {hi}]")
            if e.cache is not None and e.labels is not None:
                missing = sorted(set(y.tolist()) - set(e.labels))
                if missing:
                    raise ValueError(f"labels {missing} are not in this sampler's labels= subset {list(e.labels)}")
        elif y.device != e.device:
            raise ValueError(f"y must be on {e.device} or the CPU, got {y.device}")
        e.y.copy_(y)

    def _check_weights(self):
        e = self._entry
        net = _unwrap(self.model)
        if e.relist:
            current = _weights(net)
            if len(current) != len(e.tensors) or any(a is not b for a, b in zip(current, e.tensors)):
                raise RuntimeError("the model's parameters were replaced (load_state_dict(assign=True) or "
                                   "reassigned attributes) since capture: call gs.refresh() to capture again")
            e.relist = False
        ptrs, versions = _snapshot(e.tensors)
        if ptrs != e.snapshot[0]:
            raise RuntimeError("the model's weights moved in memory (model.to(), .half(), param.data = ...) since "
                               "capture; the graph would read stale memory: call gs.refresh() to capture again")
        if versions != e.snapshot[1]:   # updated in place: the graph sees them, the table must follow
            if e.cache is not None:
                e.cache.refresh(net)
            e.snapshot = (ptrs, versions)

    def refresh(self):
        """Capture again against the model's current weights (after they were moved, cast or replaced)."""
        e = self._entry
        net = _unwrap(self.model)
        param = _first_param(net)
        if param.device != e.device:
            raise ValueError(f"the model moved from {e.device} to {param.device}: build a new GraphSampler there")
        if e.dtype != param.dtype and param.dtype != torch.float32:
            raise ValueError(f"the model is now {param.dtype}, which cannot sample in the captured {e.dtype}: "
                             f"build a new GraphSampler")
        e.release()
        e.relist = False
        e.allocate(net)
        e.capture(self.model, self._graphs.pool_for(e.device))
        return self

    def __repr__(self):
        e = self._entry
        return (f"GraphSampler(batch_size={e.batch_size}, steps={e.steps}, cfg_scale={self.cfg_scale}, "
                f"dtype={e.dtype}, device={e.device}, seeded={e.seeded}, cond_cache={e.cache is not None}, "
                f"graphed={self.graphed})")
