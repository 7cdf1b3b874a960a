"""ShortcutDiT: a DiT conditioned on the noise level t, the step level k and the class label y.

`c = emb_t(t) + emb_k(k) + emb_y(y)` drives every block's adaLN (k replaced by 0 when `cfg.ignore_k`). The
forward pass is written so that each sub-block's gated residual is fused with the next sub-block's norm
(`gated_adaln`); `kernels="torch"` runs the readable references of those ops, `kernels="triton"` the fused
kernels, with the same weights.
"""
import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from shortcut_kernels import (adaln_modulate_ref, adaln_projections, forward_ad_active, gated_adaln_ref,
                              timestep_embedding_ref)

from .config import STEP_INPUTS, ModelConfig
from .profiling import nvtx_range

KERNELS = ("auto", "triton", "torch")
ATTENTION = ("auto", "sdpa", "triton", "flash_attn", "torch")


class TimestepEmbedder(nn.Module):
    """Scalar (t or the step level k) -> (B, D): sinusoidal features then a SiLU MLP."""

    def __init__(self, hidden_size, freq_dim=256, scale=1.0):
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t):
        f = timestep_embedding_ref(t.float() * self.scale, self.freq_dim)     # (B, freq_dim) fp32
        return self.mlp(f.to(self.mlp[0].weight.dtype))                       # (B, D)

    def linears(self):
        """(w1, b1, w2, b2) of the MLP, as shortcut_kernels.embed_conditioning takes them."""
        return self.mlp[0].weight, self.mlp[0].bias, self.mlp[2].weight, self.mlp[2].bias


class LabelEmbedder(nn.Module):
    """Class label -> (B, D). Row num_classes is the null label (classifier-free guidance)."""

    def __init__(self, num_classes, hidden_size):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y):
        return self.embedding_table(y)                                       # (B, D)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm/DiT layout)."""

    def __init__(self, dim, num_heads, scale):
        super().__init__()
        self.num_heads, self.scale = num_heads, scale
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, backend="sdpa"):
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, D // self.num_heads)   # (B, T, 3, H, Dh)
        o = _attention(qkv, self.scale, backend)                                  # (B, T, H, Dh)
        return self.proj(o.reshape(B, T, D))                                      # (B, T, D)


def _attention(qkv, scale, backend):
    """Self-attention on the fused projection: qkv (B, T, 3, H, Dh) -> o (B, T, H, Dh).

    "triton" and "flash_attn" read qkv in place and write o as (B, T, H, Dh), so the reshape for proj is
    free and the backward writes one (B, T, 3, H, Dh) gradient. "sdpa" / "torch" take strided views; the
    reshape copies only when the backend's o is not laid out as (B, T, H, Dh) (SDPA's flash backend is).
    """
    if backend == "triton":
        from shortcut_kernels import attention_qkvpacked
        return attention_qkvpacked(qkv, scale=scale)
    if backend == "flash_attn":
        from shortcut_kernels import flash_attn_qkvpacked
        return flash_attn_qkvpacked(qkv, scale=scale)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                                # 3 × (B, H, T, Dh)
    if backend == "torch":
        o = _attention_torch(q, k, v, scale)
    else:
        o = _sdpa(q, k, v, scale)
    return o.transpose(1, 2)                                                       # (B, T, H, Dh)


def _sdpa(q, k, v, scale):
    """F.scaled_dot_product_attention; under forward-mode AD its math backend, the one with a JVP rule (the
    fused CPU/flash/efficient kernels raise "not implemented" for forward AD)."""
    if forward_ad_active():
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def _attention_torch(q, k, v, scale):
    p = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)   # (B, H, T, T), same dtype as q
    return p @ v


class Mlp(nn.Module):
    """Linear -> GELU(tanh) -> Linear."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """Attention and MLP sub-blocks, each modulated (shift, scale) and gated by c.

    Maths (DiT): x += gate_msa·attn(mod(LN(x), shift_msa, scale_msa));
                 x += gate_mlp·mlp(mod(LN(x), shift_mlp, scale_mlp)).
    The norms and residuals are applied by ShortcutDiT.forward so they can fuse across blocks; the
    adaLN projection (c -> 6 vectors) lives in ShortcutDiT.adaLN, one GEMM for all blocks.
    """

    def __init__(self, dim, num_heads, mlp_ratio, attn_scale):
        super().__init__()
        self.attn = Attention(dim, num_heads, attn_scale)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))


class FinalLayer(nn.Module):
    """Modulated norm (shift, scale from ShortcutDiT.adaLN) then a linear map from tokens to patches."""

    def __init__(self, dim, patch_size, out_channels):
        super().__init__()
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)


class AdaLNProjections(nn.Module):
    """Every block's adaLN Linear (c -> 6D) and the final layer's (c -> 2D) as one (depth·6D + 2D, D) Linear.

    They all read the same c, so one GEMM replaces depth + 1 (O(1) launches instead of O(depth)).
    ShortcutDiT's state_dict hooks present the weight in DiT's per-block layout
    (blocks.{i}.adaLN_modulation.1.weight/bias, final_layer.adaLN_modulation.1.*), so checkpoints load
    into DiT code and back. One Parameter rather than per-block Linears plus a cached concatenation:
    the GEMM reads the live weights, so gradients, optimizers, EMA updates and load_state_dict need no
    invalidation rule (a cache keyed on version counters misses writes through `.data`), no second copy
    of the weights is held (0.9 GB at DiT-XL fp32), and kernels="torch" runs on the same storage.
    The price: named_parameters() shows `adaLN.weight` / `adaLN.bias` instead of the per-block names.
    """

    def __init__(self, dim, depth):
        super().__init__()
        self.sizes = (6 * dim,) * depth + (2 * dim,)
        self.names = tuple(f"blocks.{i}.adaLN_modulation.1" for i in range(depth)) + ("final_layer.adaLN_modulation.1",)
        self.weight = nn.Parameter(torch.empty(sum(self.sizes), dim))
        self.bias = nn.Parameter(torch.zeros(sum(self.sizes)))

    def forward(self, c, silu_c=None):
        return adaln_projections(c, self.weight, self.bias, self.sizes, silu_c)   # depth × (B, 6D), (B, 2D)

    def rows(self, index):
        """The rows of projection `index` (block index, or depth for the final layer)."""
        start = sum(self.sizes[:index])
        return slice(start, start + self.sizes[index])


class AdaLNView:
    """DiT's per-block `adaLN_modulation` (SiLU -> Linear) as a window onto AdaLNProjections.

    `view[1].weight` / `.bias` are views of the shared Parameter (in-place writes under no_grad land in
    it) and `view(c)` projects c with them, so DiT-style code (`block.adaLN_modulation(c)`) still runs.
    A plain object, not an nn.Module: it owns no parameters and adds nothing to state_dict.
    """

    def __init__(self, proj, index):
        self._proj, self._index = proj, index

    @property
    def weight(self):
        return self._proj.weight[self._proj.rows(self._index)]

    @property
    def bias(self):
        return self._proj.bias[self._proj.rows(self._index)]

    def __getitem__(self, i):
        if i in (1, -1):
            return self
        if i in (0, -2):
            return F.silu
        raise IndexError(f"adaLN_modulation has 2 entries (SiLU, Linear), got index {i}")

    def __call__(self, c):
        return F.linear(F.silu(c), self.weight, self.bias)


def _adaln_state_dict_hook(model, state_dict, prefix, local_metadata):
    """state_dict: replace adaLN.weight/bias by DiT's per-block keys (views, no copy)."""
    w, b = state_dict.pop(prefix + "adaLN.weight"), state_dict.pop(prefix + "adaLN.bias")
    for name, wi, bi in zip(model.adaLN.names, w.split(model.adaLN.sizes), b.split(model.adaLN.sizes)):
        state_dict[prefix + name + ".weight"], state_dict[prefix + name + ".bias"] = wi, bi


def _adaln_load_hook(model, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """load_state_dict: concatenate DiT's per-block adaLN keys into adaLN.weight/bias."""
    proj = model.adaLN
    keys = [(prefix + n + ".weight", prefix + n + ".bias") for n in proj.names]
    if not all(kw in state_dict and kb in state_dict for kw, kb in keys):
        return   # missing keys are reported by the loader (as adaLN.weight / adaLN.bias)
    D = proj.weight.shape[1]
    for (kw, kb), size in zip(keys, proj.sizes):
        if tuple(state_dict[kw].shape) != (size, D) or tuple(state_dict[kb].shape) != (size,):
            error_msgs.append(f"size mismatch for {kw} / {kb}: expected ({size}, {D}) / ({size},), got "
                              f"{tuple(state_dict[kw].shape)} / {tuple(state_dict[kb].shape)}")
            return
    state_dict[prefix + "adaLN.weight"] = torch.cat([state_dict.pop(kw) for kw, _ in keys])
    state_dict[prefix + "adaLN.bias"] = torch.cat([state_dict.pop(kb) for _, kb in keys])


class PretrainedMixin:
    """The Hugging Face habit: `model.save_pretrained(dir)` and `ShortcutDiT.from_pretrained(dir)`, the same
    folders as `shortcut.save_pretrained` / `shortcut.from_pretrained` (shortcut/pretrained.py)."""

    def save_pretrained(self, directory, weights="ema", data_info=None):
        """Write this model's weights (as the folder's "ema" weights unless weights="live") and config."""
        from .pretrained import save_pretrained
        return save_pretrained(self, directory, weights=weights, data_info=data_info)

    @classmethod
    def from_pretrained(cls, directory, weights="ema", kernels="auto", device="cpu"):
        """The model saved in `directory`, in eval mode; the folder must hold a model of this class."""
        from .pretrained import from_pretrained
        model = from_pretrained(directory, weights=weights, kernels=kernels, device=device)
        if not isinstance(model, cls):
            raise TypeError(f"{directory!r} holds a {type(model).__name__}, not a {cls.__name__}: "
                            f"use {type(model).__name__}.from_pretrained or shortcut.from_pretrained")
        return model


class ShortcutDiT(PretrainedMixin, nn.Module):
    """The shortcut model s(x_t, t, k, y) -> v̂.

    x (B, C, H, W); t (B,) float in [0, 1] (0 = noise, 1 = data); k (B,) int step level (steps = 2^k);
    y (B,) long in [0, num_classes], num_classes meaning "no label".
    kernels: "torch" (references), "triton" (fused kernels), "auto" (Triton on CUDA tensors).
    attention: "sdpa", "triton", "flash_attn", "torch", or "auto" (Triton when the kernels are and attention
    runs in 16-bit, else SDPA).
    `guidance`: what training taught the model about classifier-free guidance (ObjectiveConfig.guidance;
    set by shortcut.train, checkpoints and from_pretrained; None: unknown), read by shortcut.sample.
    `objective`: the training objective (ObjectiveConfig.objective; None for a model built here, read as
    "flow" when it ignores k, else "shortcut"); shortcut.sample picks the sampler from it.
    With cfg.step_input == "interval" (MeanFlow), k is a float interval length h in [0, 1] instead of a level.
    """

    def __init__(self, cfg: ModelConfig, kernels="auto", attention="auto"):
        super().__init__()
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
        self.cfg, self.kernels, self.attention = cfg, kernels, attention
        D, p = cfg.hidden_size, cfg.patch_size
        self.x_embedder = nn.Conv2d(cfg.in_channels, D, kernel_size=p, stride=p)
        self.t_embedder = TimestepEmbedder(D, cfg.freq_dim, cfg.t_scale)
        # k: the raw integer level, as the official code; an interval h (MeanFlow) on t's scale, as t.
        self.k_embedder = TimestepEmbedder(D, cfg.freq_dim, cfg.t_scale if cfg.step_input == "interval" else 1.0)
        self.y_embedder = LabelEmbedder(cfg.num_classes, D)
        pos = get_2d_sincos_pos_embed(D, cfg.input_size // p)
        self.register_buffer("pos_embed", torch.from_numpy(pos).float()[None], persistent=False)
        scale = cfg.head_dim ** -0.5 if cfg.attn_scale == "sqrt" else cfg.head_dim ** -1.0
        self.blocks = nn.ModuleList(DiTBlock(D, cfg.num_heads, cfg.mlp_ratio, scale) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(D, p, cfg.in_channels)
        self.adaLN = AdaLNProjections(D, cfg.depth)
        for i, block in enumerate(self.blocks):
            block.adaLN_modulation = AdaLNView(self.adaLN, i)
        self.final_layer.adaLN_modulation = AdaLNView(self.adaLN, cfg.depth)
        self.register_state_dict_post_hook(_adaln_state_dict_hook)
        self.register_load_state_dict_pre_hook(_adaln_load_hook)
        self.guidance = None
        self.objective = None
        self.initialize_weights()

    @property
    def num_classes(self):
        return self.cfg.num_classes

    @property
    def ignore_k(self):
        return self.cfg.ignore_k

    @property
    def null_label(self):
        return self.cfg.num_classes

    def initialize_weights(self):
        # Linear layers: xavier-uniform weights, zero biases (DiT, official).
        def _basic_init(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(_basic_init)
        # qkv: the official network has three Dense layers, each xavier over (D, D) (variance 1/D); one
        # xavier over the fused (3D, D) weight gives 1/(2D), DiT's (timm's fused qkv) choice.
        if self.cfg.qkv_init == "separate":
            for block in self.blocks:
                for w in block.attn.qkv.weight.data.chunk(3):                 # q, k, v rows: 3 × (D, D)
                    nn.init.xavier_uniform_(w)
        # Patch embedding: like a Linear over the flattened patch.
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        # Label table and the embedders' MLPs: N(0, 0.02).
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for emb in (self.t_embedder, self.k_embedder):
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        # adaLN projections, zero biases. Blocks: zero (adaLN-Zero: every block starts as the identity)
        # or xavier per block (official), with each block's own fans (D in, 6D out) as a separate Linear.
        # Final layer's rows: zero (both DiT and official).
        nn.init.zeros_(self.adaLN.bias)
        *block_ws, final_w = self.adaLN.weight.data.split(self.adaLN.sizes)
        for w in block_ws:
            if self.cfg.adaln_init == "zero":
                nn.init.zeros_(w)
            else:
                nn.init.xavier_uniform_(w)
        nn.init.zeros_(final_w)
        # Final linear: zero, so the initial prediction is v̂ = 0 (both DiT and official).
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # ------------------------------------------------------------------------------------------------
    def uses_triton(self, x):
        return self.kernels == "triton" or (self.kernels == "auto" and x.is_cuda)

    def attention_backend(self, x):
        if self.attention != "auto":
            return self.attention
        # fp32 attention (the EMA model sampled without autocast: FID, sample grids, eval) goes to SDPA. The
        # fp32 Triton kernel (IEEE fp32 dots, no tensor cores) has configs chosen to compile without spills,
        # not for speed; it runs when asked for by name (attention="triton").
        qkv_dtype = (torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type)
                     else self.blocks[0].attn.qkv.weight.dtype)
        return "triton" if self.uses_triton(x) and qkv_dtype != torch.float32 else "sdpa"

    def embed(self, t, k, y, silu=False):
        """c = emb_t(t) + emb_k(k) + emb_y(y): (B, D); with silu=True, (c, SiLU(c)) for `modulations`.

        The fused path is two launches (shortcut_kernels.embed_conditioning): both embedders' first Linears
        with the sinusoids computed in registers, then both second Linears, the label row and the sum,
        writing SiLU(c) as well. With cfg.ignore_k, k is replaced by 0 on both paths.
        """
        if self.cfg.ignore_k:
            k = torch.zeros_like(k)
        if not self.uses_triton(t):
            c = self.t_embedder(t) + self.k_embedder(k) + self.y_embedder(y)
            return (c, F.silu(c)) if silu else c
        from shortcut_kernels import embed_conditioning
        c, silu_c = embed_conditioning(t, k, y, self.t_embedder.linears(), self.k_embedder.linears(),
                                       self.y_embedder.embedding_table.weight, self.t_embedder.scale,
                                       self.k_embedder.scale)
        return (c, silu_c) if silu else c

    def modulations(self, c, silu_c=None):
        """All adaLN vectors from c in one GEMM: depth (B, 6D) views, then the final layer's (B, 2D).
        silu_c: SiLU(c) from `embed(..., silu=True)`, saving the SiLU launch."""
        return self.adaLN(c, silu_c)

    def forward(self, x, t, k, y):
        self.check_inputs(x, t, k, y)
        with nvtx_range("embed"):
            mods = self.modulations(*self.embed(t, k, y, silu=True))             # depth × (B, 6D), (B, 2D)
        return self.forward_with_modulations(x, mods)

    def forward_with_modulations(self, x, mods):
        """v̂ from x (B, C, H, W) and precomputed adaLN vectors `mods = modulations(embed(t, k, y))`, unchecked.
        GraphSampler feeds them from a table: with the steps fixed they depend only on (step, label)."""
        backend, eps = self.attention_backend(x), self.cfg.eps
        if self.uses_triton(x):
            from shortcut_kernels import adaln_modulate, gated_adaln
            # h only feeds Linear layers; under CUDA autocast they would cast it to the autocast dtype, so
            # the kernels write it in that dtype directly (same values, half the bytes, no cast kernel).
            cast = torch.get_autocast_dtype("cuda") if x.is_cuda and torch.is_autocast_enabled("cuda") else None
            modulate = functools.partial(adaln_modulate, out_dtype=cast)
            gated = functools.partial(gated_adaln, out_dtype=cast)
        else:
            modulate, gated = adaln_modulate_ref, gated_adaln_ref
        with nvtx_range("patch_embed"):
            # pos_embed first: the sum takes its contiguous layout (the kernels need contiguous rows);
            # .contiguous() is then free, and only a guard.
            x = (self.pos_embed + self.x_embedder(x).flatten(2).transpose(1, 2)).contiguous()   # (B, T, D)
            shift, scale = mods[0].chunk(6, dim=1)[:2]
            h = modulate(x, shift, scale, eps)                                   # (B, T, D) input to attn 0
        for i, block in enumerate(self.blocks):
            _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods[i].chunk(6, dim=1)   # 6 × (B, D)
            shift, scale = mods[i + 1].chunk(6 if i + 1 < len(self.blocks) else 2, dim=1)[:2]
            with nvtx_range(f"block{i}.attn"):
                x, h = gated(x, block.attn(h, backend), gate_msa, shift_mlp, scale_mlp, eps)
            with nvtx_range(f"block{i}.mlp"):
                x, h = gated(x, block.mlp(h), gate_mlp, shift, scale, eps)   # h: next block's attn input
        with nvtx_range("final_layer"):
            return self.unpatchify(self.final_layer.linear(h))                # (B, C, H, W)

    def unpatchify(self, x):
        """(B, T, p·p·C) -> (B, C, H, W)."""
        c, p = self.cfg.in_channels, self.cfg.patch_size
        h = w = int(math.isqrt(x.shape[1]))
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def check_inputs(self, x, t, k, y):
        cfg = self.cfg
        want = (cfg.in_channels, cfg.input_size, cfg.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must have shape (B, {want[0]}, {want[1]}, {want[2]}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        B = x.shape[0]
        for name, v in (("t", t), ("k", k), ("y", y)):
            if not isinstance(v, torch.Tensor) or v.shape != (B,):
                got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"{name} must be a tensor of shape ({B},) (one per sample), got {got}")
            if v.device != x.device:
                raise ValueError(f"{name} is on {v.device} but x is on {x.device}")
        if not t.is_floating_point():
            raise TypeError(f"t must be a floating-point tensor (noise level in [0, 1]), got {t.dtype}")
        if cfg.step_input == "interval":
            if not k.is_floating_point():
                raise TypeError(f"k must be a floating-point tensor (this model's step input is the interval "
                                f"length h in [0, 1]: step_input='interval'), got {k.dtype}")
        elif k.is_floating_point() or k.is_complex() or k.dtype == torch.bool:
            raise TypeError(f"k must be an integer tensor (step level log2(steps)), got {k.dtype}")
        if y.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"y must be an int64 tensor of class labels, got {y.dtype}")
        # Value checks need the data on the host: cheap on CPU; skipped on GPU (a sync per forward would
        # dominate batch-1 latency) and under compile/graph capture. sample() checks labels once instead.
        if y.device.type == "cpu" and not torch.compiler.is_compiling() and B:
            if int(y.min()) < 0 or int(y.max()) > cfg.num_classes:
                raise ValueError(f"y must hold labels in [0, {cfg.num_classes}] ({cfg.num_classes} = null), "
                                 f"got values in [{int(y.min())}, {int(y.max())}]")


def get_2d_sincos_pos_embed(dim, grid_size):
    """Fixed 2-D sin-cos position embedding (MAE/DiT): (grid_size², dim) float64 numpy array."""
    pos = np.arange(grid_size, dtype=np.float64)
    grid = np.meshgrid(pos, pos)   # grid[0][i, j] = j (column), grid[1][i, j] = i (row), as DiT

    def _1d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)                      # (M, d/2)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)               # (M, d)

    emb = np.concatenate([_1d(dim // 2, grid[0]), _1d(dim // 2, grid[1])], axis=1)
    if emb.shape[1] < dim:   # odd dims: pad
        emb = np.concatenate([emb, np.zeros((emb.shape[0], dim - emb.shape[1]))], axis=1)
    return emb


class ShortcutMLP(PretrainedMixin, nn.Module):
    """A small residual MLP s(x_t, t, k, y) for 2-D toy data (x (B, 2)); the objective is model-agnostic.

    ignore_k: replace k by 0 (flow matching), as ModelConfig.ignore_k. t_scale: the sinusoids see t·t_scale.
    step_input: "level" (k an int level, fed raw) or "interval" (k a float h in [0, 1], fed as h·t_scale: MeanFlow),
    as ModelConfig.step_input.
    x_freqs: octaves of sin/cos features of x (frequencies π/2·2^j, j < x_freqs) fed beside x. An MLP of raw
    x learns sharp edges slowly (spectral bias): checkerboard, config.TOY_2D_DEFAULTS, 128-step samples in
    the board's filled cells: 76 % with raw x, 91 % with 6 octaves (uniform noise: 48 %).
    """

    def __init__(self, dim=2, hidden=256, depth=3, num_classes=0, freq_dim=64, ignore_k=False, x_freqs=0,
                 t_scale=1000.0, step_input="level"):
        super().__init__()
        if not isinstance(ignore_k, bool):
            raise ValueError(f"ShortcutMLP ignore_k must be True or False, got {ignore_k!r}")
        if step_input not in STEP_INPUTS:
            raise ValueError(f"ShortcutMLP step_input must be one of {STEP_INPUTS}, got {step_input!r}")
        if isinstance(t_scale, bool) or not isinstance(t_scale, (int, float)) or not t_scale > 0:
            raise ValueError(f"ShortcutMLP t_scale must be a number > 0, got {t_scale!r}")
        self.cfg_dim, self.freq_dim, self._num_classes, self.ignore_k = dim, freq_dim, num_classes, ignore_k
        self.t_scale, self.step_input, self.x_freqs = float(t_scale), step_input, x_freqs
        self.guidance = None
        self.objective = None
        self.register_buffer("x_freq", math.pi / 2 * 2.0 ** torch.arange(x_freqs), persistent=False)
        self.inp = nn.Linear(dim * (1 + 2 * x_freqs) + 2 * freq_dim, hidden)
        self.y_embedder = nn.Embedding(num_classes + 1, hidden)
        self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(),
                                                  nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))

    @property
    def num_classes(self):
        return self._num_classes

    @property
    def null_label(self):
        return self._num_classes

    def forward(self, x, t, k, y):
        if self.ignore_k:
            k = torch.zeros_like(k)
        k = k * self.t_scale if self.step_input == "interval" else k
        xf = (x[:, :, None] * self.x_freq).flatten(1)                            # (B, dim·x_freqs)
        f = torch.cat([x, xf.sin(), xf.cos(), timestep_embedding_ref(t * self.t_scale, self.freq_dim),
                       timestep_embedding_ref(k, self.freq_dim)], dim=1)          # (B, dim·(1+2·x_freqs) + 2·freq)
        h = self.inp(f) + self.y_embedder(y)                                      # (B, hidden)
        for layer in self.layers:
            h = h + layer(h)
        return self.out(h)                                                        # (B, dim)


def architecture(model):
    """{"model_type", "model_config"}: what rebuilds `model` without its weights (JSON-able); checkpoints
    and save_pretrained folders store it."""
    if isinstance(model, ShortcutDiT):
        return {"model_type": "ShortcutDiT", "model_config": model.cfg.to_dict()}
    if isinstance(model, ShortcutMLP):
        return {"model_type": "ShortcutMLP",
                "model_config": {"dim": model.cfg_dim, "hidden": model.inp.out_features, "depth": len(model.layers),
                                 "num_classes": model.num_classes, "freq_dim": model.freq_dim,
                                 "ignore_k": model.ignore_k, "x_freqs": model.x_freqs, "t_scale": model.t_scale,
                                 "step_input": model.step_input}}
    raise TypeError(f"expected a ShortcutDiT or ShortcutMLP, got {type(model).__name__}")


def model_from_architecture(arch, kernels="auto"):
    """The (freshly initialised) model an `architecture()` record describes."""
    if arch.get("model_type") == "ShortcutDiT":
        return ShortcutDiT(ModelConfig(**arch["model_config"]), kernels=kernels)
    if arch.get("model_type") == "ShortcutMLP":
        return ShortcutMLP(**arch["model_config"])
    raise ValueError(f"unknown model_type {arch.get('model_type')!r}: expected 'ShortcutDiT' or 'ShortcutMLP'")
