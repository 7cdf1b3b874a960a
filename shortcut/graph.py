"""CUDA-graph samplers: the whole loop of `shortcut.sample` captured once, replayed per call.

At batch 1 eager sampling is launch-bound: a DiT-B/2 step is a few hundred small kernels whose launches
cost milliseconds of host time, while the GPU work is ~0.1 ms (262 MB of bf16 weights at ~3 TB/s).
`GraphSampler` captures the `steps`-step loop of the model's sampling plan (its objective's sampler, CFG
included; shortcut.sampler.sampling_plan) into one CUDA graph and replays it:

    gs = GraphSampler(model, batch_size=1, steps=1)        # warm-up + capture happen here
    x1 = gs(noise, y)                                       # copy in, replay, clone out
    gs = GraphSampler(model, batch_size=16, steps=4, cfg_scale=1.5, seeded=True)
    x1 = gs(seed=0, y=y)                                    # noise drawn inside the graph (shortcut.seeded)

Uncompiled ShortcutDiTs read their adaLN vectors from a ConditioningCache (shortcut.condcache). The notes on
weights are at `GraphSampler`, on the shared memory pool at `_ModelGraphs`, on consistency sampling at
`_Captured`. On a CPU model nothing is captured: the same static-buffer loop runs eagerly (`gs.graphed` is
False).
"""
import collections
import math
import operator
import weakref

import torch

from .condcache import (ConditioningCache, _autocast, _check_label_subset, _first_param, _supports_cache,
                        cached_velocity, sample_cached)
from .profiling import nvtx_range
from .sampler import (check_cfg_scale, check_steps, guided_velocity, integrate, null_label_of, objective_of,
                      sampling_plan, schedule_for, step_input, unwrap)
from .seeded import _counter_hashes, _hash32, _mul32, _seeded_normal, check_seed, seeded_noise

MAX_GRAPHS = 8                    # captured loops kept per model
COND_CACHE_AUTO_BYTES = 1 << 30   # cond_cache="auto" builds tables up to this size
WARMUP_RUNS = 3                   # eager runs on a side stream before capture (Triton JIT, autotune, compile)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

__all__ = ["GraphSampler", "ConditioningCache", "sample_cached", "seeded_noise", "clear_graphs", "MAX_GRAPHS",
           "COND_CACHE_AUTO_BYTES", "WARMUP_RUNS", "DTYPES", "_hash32", "_mul32"]


# ---------------------------------------------------------------------------------------------------
# Captured loops and their per-model cache.

_version = operator.attrgetter("_version")
_data_ptr = torch.Tensor.data_ptr


def _weights(net):
    return list(net.parameters()) + list(net.buffers())


def _snapshot(tensors):
    return tuple(map(_data_ptr, tensors)), tuple(map(_version, tensors))


class _Captured:
    """One captured sampling loop (a SamplingPlan at one batch size, dtype, shape and device): static buffers,
    the graph, and the weights it was captured against.

    A consistency plan (consistency-training models) re-noises between steps. Its fresh noise is drawn inside
    the graph from the seed buffer (shortcut.seeded: stream i + 1 after step i; stream 0 is the starting noise
    of a seeded sampler), so a replay never reads a generator's state and the same seed repeats. It is not
    torch.randn's stream: eager `shortcut.sample` of the same model and noise gives other (equally
    distributed) samples beyond one step.
    Holds no reference to the model (the per-model cache is weakly keyed by it): methods take it.
    """

    def __init__(self, net, batch_size, plan, dtype, shape, device, seeded, use_cache, labels):
        self.batch_size, self.plan, self.steps, self.cfg_scales = batch_size, plan, plan.steps, plan.scales
        self.dtype, self.shape, self.device, self.seeded = dtype, shape, device, seeded
        self.use_cache, self.labels = use_cache, labels
        self.null = null_label_of(net)
        self.renoises = plan.rule == "consistency" and plan.steps > 1
        self.graph, self.out, self.relist = None, None, False

    def allocate(self, net):
        """Static inputs (filled with valid values for warm-up) and the per-step constants."""
        B, dev = self.batch_size, self.device
        full = (B,) + self.shape
        if self.seeded or self.renoises:
            self.seed = torch.zeros(1, dtype=torch.int64, device=dev)
            self.counter_hashes = _counter_hashes(math.prod(full), dev)
        if not self.seeded:
            self.noise = torch.zeros(full, dtype=self.dtype, device=dev)
        # Labels, with the null half of a guided batch written once: the cached path gathers 2B rows.
        guided_cache = self.use_cache and self.plan.guided
        self.y_all = torch.full((2 * B if guided_cache else B,), self.null, dtype=torch.long, device=dev)
        self.y = self.y_all[:B]
        self.ts = [torch.full((B,), t, dtype=torch.float32, device=dev) for t, _, _ in self.plan.schedule]
        self.ks = [step_input(k, B, dev) for _, _, k in self.plan.schedule]
        self.param_dtype = _first_param(net).dtype
        self.cache = None
        if self.use_cache:
            self.cache = ConditioningCache(net, self.steps, self.labels,
                                           self.dtype if self.dtype != self.param_dtype else None)
        self.tensors = _weights(net)
        self.snapshot = _snapshot(self.tensors)

    def run(self, model):
        """The sampler from the static inputs: the region a graph captures (no sync, no host reads)."""
        net = unwrap(model)
        full = (self.batch_size,) + self.shape
        with torch.no_grad(), _autocast(self.device, self.dtype, self.param_dtype):
            x = _seeded_normal(self.counter_hashes, self.seed, full, self.dtype) if self.seeded else self.noise
            if self.cache is not None:
                velocity = cached_velocity(net, self.cache, self.cache.gather(self.y_all), self.cfg_scales)
            else:
                def velocity(i, x):
                    return guided_velocity(model, x, self.ts[i], self.ks[i], self.y, self.cfg_scales[i], self.null)

            def noise(i):
                return _seeded_normal(self.counter_hashes, self.seed, full, x.dtype, stream=i + 1)
            return integrate(self.plan, x, velocity, noise if self.renoises else None)

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
    """The captured loops of one model: an LRU of `_Captured` (MAX_GRAPHS entries, least recently used
    dropped) keyed by batch size, steps, per-step CFG scales, dtype, kernels / attention backend, options and
    the sampling plan's objective and schedule, all sharing one CUDA memory pool: building a GraphSampler twice
    with the same arguments captures once. Sharing is safe in any replay order: static inputs are allocated
    outside the pool, and each replay's output is cloned before another graph can run, so a graph never needs
    pool memory to survive someone else's replay. Not thread-safe (one stream)."""

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
        graphs.hook = unwrap(model).register_load_state_dict_post_hook(_on_load_state_dict)
    return graphs


def _on_load_state_dict(module, incompatible_keys):
    for model, graphs in list(_GRAPHS.items()):
        if unwrap(model) is module:
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
    """`shortcut.sample` captured into a CUDA graph for one (batch size, steps, CFG scale, dtype): the
    model's own sampler (shortcut.sampler.sampling_plan: the objective's schedule and update rule).

    model: a ShortcutDiT (or any forward(x, t, k, y) module with `shape=`), possibly torch.compile'd
    (default mode; "reduce-overhead" uses CUDA graphs itself and cannot be captured again).
    steps: any int in 1 … 128. cfg_scale, force_cfg: as `shortcut.sample` (None: the model's policy).
    dtype: dtype of the sampled x (and of the static noise buffer): None -> on CUDA the model's dtype if
    fp16/bf16, else bf16; on the CPU the model's own dtype. An fp32 model sampling in fp16/bf16 runs under
    autocast; a half model needs its own dtype.
    seeded: draw the noise inside the graph from `gs(seed=...)` (see `seeded_noise`) instead of copying
    it in. cond_cache: True / False / "auto" (on for uncompiled ShortcutDiTs when the table fits
    COND_CACHE_AUTO_BYTES); labels: restrict the table to these labels (others give NaN images; no
    effect without the cache).
    check_weights: per call, compare parameter pointers and versions with the capture's.

    Weights. The graph reads the parameters in place, so in-place updates (`load_state_dict`, optimiser
    steps, EMA) are seen by the next replay; the conditioning table is recomputed when a parameter's version
    counter moved. The per-call check (pointers and versions of DiT-B/2's 136 tensors) took ~12 µs on a busy
    2-core CPU. Weights that were *replaced* (`model.to(...)`, `.half()`, `param.data = ...`,
    `load_state_dict(assign=True)`) raise an error on the next call: `refresh()` captures again. Writes
    through `param.data` (`p.data.copy_(w)`, `p.data.mul_(s)`) bypass the version counter and go unseen by
    the table: call `refresh()` after them. `check_weights=False` skips the check.

    gs(noise, y) -> x1 (a fresh tensor); noise (batch_size, *shape), any floating dtype (cast into the
    static buffer), on the model's device or the CPU; y (batch_size,) int64 on that device or the CPU (CPU
    labels are range-checked; device labels are not, to avoid a sync), or None for the null label.
    Consistency-training models re-noise between steps with in-graph seeded noise (see `_Captured`): gs(noise,
    y, seed=s) picks it (default 0: the same samples every call); a seeded sampler uses its one seed for both.
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
        net = unwrap(model)
        param = _first_param(net)
        plan = sampling_plan(net, steps, cfg_scale, force_cfg)
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
        # The plan's objective and schedule too: the same steps sample differently for another objective.
        self.key = (batch_size, steps, plan.scales, dtype, shape, param.device, seeded, use_cache, labels_key, backend,
                    plan.objective, plan.rule, plan.schedule)

        def make(graphs):
            entry = _Captured(net, batch_size, plan, dtype, shape, param.device, bool(seeded), use_cache, labels_key)
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
    objective = property(lambda self: self._entry.plan.objective, doc="the objective whose sampler was captured")
    plan = property(lambda self: self._entry.plan, doc="the captured SamplingPlan")

    def __call__(self, noise=None, y=None, *, seed=None):
        e = self._entry
        if e.seeded:
            if noise is not None:
                raise ValueError("this GraphSampler draws its own noise (seeded=True): call gs(seed=..., y=...)")
            e.seed.fill_(check_seed(seed))
        else:
            if seed is not None and not e.renoises:
                raise ValueError("seed= needs GraphSampler(..., seeded=True) (or a consistency-training model, "
                                 "whose re-noising it seeds); this one takes noise: gs(noise, y)")
            self._check_noise(noise)
            e.noise.copy_(noise)
            if e.renoises:
                e.seed.fill_(check_seed(0 if seed is None else seed))
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
        net = unwrap(self.model)
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
        net = unwrap(self.model)
        param = _first_param(net)
        if param.device != e.device:
            raise ValueError(f"the model moved from {e.device} to {param.device}: build a new GraphSampler there")
        if e.dtype != param.dtype and param.dtype != torch.float32:
            raise ValueError(f"the model is now {param.dtype}, which cannot sample in the captured {e.dtype}: "
                             f"build a new GraphSampler")
        if (objective_of(net), tuple(schedule_for(net, e.steps))) != (e.plan.objective, e.plan.schedule):
            raise ValueError(f"the model now samples as a {objective_of(net)} model, not with the {e.plan.objective} "
                             f"sampler this GraphSampler captured: build a new GraphSampler")
        e.release()
        e.relist = False
        e.allocate(net)
        e.capture(self.model, self._graphs.pool_for(e.device))
        return self

    def __repr__(self):
        e = self._entry
        return (f"GraphSampler(batch_size={e.batch_size}, steps={e.steps}, objective={e.plan.objective!r}, "
                f"cfg_scale={self.cfg_scale}, "
                f"dtype={e.dtype}, device={e.device}, seeded={e.seeded}, cond_cache={e.cache is not None}, "
                f"graphed={self.graphed})")
