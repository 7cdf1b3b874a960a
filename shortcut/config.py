"""Configuration dataclasses (model, objective, training), the model presets and the paper's training recipes."""
import copy
import dataclasses
import math
from dataclasses import dataclass, field

# Training objectives (ObjectiveConfig.objective, `shortcut train --objective`): the shortcut objective, plain
# flow matching, the paper's baselines (shortcut/baselines) and MeanFlow (shortcut/meanflow.py).
OBJECTIVE_NAMES = ("shortcut", "flow", "progressive", "consistency_distillation", "consistency_training",
                   "live_reflow", "reflow", "meanflow")
STEP_INPUTS = ("level", "interval")
TIME_DISTS = ("logit_normal", "uniform")
JVP_MODES = ("joint", "separate")

# name -> (hidden_size, depth, num_heads); patch size comes from the "/p" suffix (DiT naming).
PRESETS = {
    "DiT-S": (384, 12, 6),
    "DiT-B": (768, 12, 12),
    "DiT-L": (1024, 24, 16),
    "DiT-XL": (1152, 28, 16),    # head_dim 72
    # CPU sizes. "digits" is the SPEC §5 prototype (1.2 M parameters on 8×8 digits).
    "tiny": (32, 2, 2),
    "digits": (128, 4, 4),
}


@dataclass
class ModelConfig:
    """Shape and behaviour of a ShortcutDiT.

    Defaults follow DiT (Peebles & Xie): attention scale 1/√head_dim, adaLN-Zero, t fed to the sinusoids
    as 1000·t. They are the better-studied choices for a DiT backbone and what pretrained-DiT users
    expect. `ModelConfig.preset(..., official=True)` reproduces the official shortcut-models network:
    q scaled by 1/head_dim, xavier-initialised adaLN, raw t ∈ [0, 1] into the sinusoids, q/k/v initialised
    as three separate Dense layers. `ignore_k=True` zeroes the step input (official `ignore_dt`): the
    flow-matching baseline, trained at one level only, must not see the levels it never trained on.
    `step_input="interval"` (MeanFlow): the step input k is a float interval length h in [0, 1], embedded like
    t (sinusoids of h·t_scale) instead of an integer level.
    """
    input_size: int = 32          # latent / image side (H = W)
    in_channels: int = 4
    num_classes: int = 1000       # label table has num_classes + 1 rows; the last is the null label
    patch_size: int = 2
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    freq_dim: int = 256           # sinusoidal feature size of the t- and k-embedders
    attn_scale: str = "sqrt"      # "sqrt": q·k/√head_dim (DiT); "head_dim": q·k/head_dim (official)
    adaln_init: str = "zero"      # "zero": adaLN-Zero (DiT); "xavier": official
    t_scale: float = 1000.0       # sinusoids see t·t_scale; official 1.0, DiT 1000 (t in DDPM steps)
    eps: float = 1e-6             # LayerNorm epsilon (no affine), both DiT and official
    qkv_init: str = "fused"       # "fused": one xavier over the (3D, D) qkv weight (DiT); "separate": official
    ignore_k: bool = False        # replace the step level k by 0 everywhere (flow matching; official ignore_dt)
    step_input: str = "level"     # k is an int "level" (log2 steps) or a float "interval" h in [0, 1] (MeanFlow)

    def __post_init__(self):
        for name in ("input_size", "in_channels", "patch_size", "hidden_size", "depth", "num_heads", "freq_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {v!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"ModelConfig.num_classes must be an int >= 0, got {self.num_classes!r}")
        if self.input_size % self.patch_size:
            raise ValueError(f"ModelConfig.input_size ({self.input_size}) must be divisible by "
                             f"patch_size ({self.patch_size})")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"ModelConfig.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_heads ({self.num_heads})")
        if self.attn_scale not in ("sqrt", "head_dim"):
            raise ValueError(f"ModelConfig.attn_scale must be 'sqrt' or 'head_dim', got {self.attn_scale!r}")
        if self.adaln_init not in ("zero", "xavier"):
            raise ValueError(f"ModelConfig.adaln_init must be 'zero' or 'xavier', got {self.adaln_init!r}")
        if self.qkv_init not in ("fused", "separate"):
            raise ValueError(f"ModelConfig.qkv_init must be 'fused' or 'separate', got {self.qkv_init!r}")
        if not isinstance(self.ignore_k, bool):
            raise ValueError(f"ModelConfig.ignore_k must be True or False, got {self.ignore_k!r}")
        if self.step_input not in STEP_INPUTS:
            raise ValueError(f"ModelConfig.step_input must be one of {STEP_INPUTS}, got {self.step_input!r}")

    @property
    def head_dim(self):
        return self.hidden_size // self.num_heads

    @property
    def num_tokens(self):
        return (self.input_size // self.patch_size) ** 2

    @classmethod
    def preset(cls, name, official=False, **overrides):
        """`ModelConfig.preset("DiT-B/2", input_size=32, in_channels=4, num_classes=1000)`.

        Names: DiT-S, DiT-B, DiT-L, DiT-XL, tiny, digits, each optionally with "/p" for the patch size
        (default 2). `official=True` switches to the official shortcut-models network quirks.
        """
        base, _, patch = name.partition("/")
        if base not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of "
                             f"{sorted(PRESETS)} optionally followed by /2, /4 or /8")
        hidden, depth, heads = PRESETS[base]
        kw = dict(hidden_size=hidden, depth=depth, num_heads=heads, patch_size=int(patch) if patch else 2)
        if base == "digits":
            kw.update(input_size=8, in_channels=1, num_classes=10)
        if official:
            kw.update(attn_scale="head_dim", adaln_init="xavier", t_scale=1.0, qkv_init="separate")
        kw.update(overrides)
        return cls(**kw)

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclass
class MeanFlowConfig:
    """MeanFlow's settings. Defaults: the official ImageNet code (Gsunshine/meanflow, meanflow.py and
    configs/default.py) except guidance, which is off (ω = 1, κ = 0) until asked for.

    In training runs these are ObjectiveConfig's meanflow_* fields (`shortcut train --objective meanflow
    --meanflow-P-mean ...`); sigma_min and class_dropout_prob come from ObjectiveConfig's own fields.
    """
    flow_fraction: float = 0.75        # share of items with h = 0 (official data_proportion; paper: 25 % r ≠ t)
    time_dist: str = "logit_normal"    # how the two time points are drawn: "logit_normal" or "uniform"
    P_mean: float = -0.4               # logit-normal location in the PAPER's time t = 1 − s (in s it is +0.4)
    P_std: float = 1.0                 # logit-normal scale (same in both conventions)
    norm_p: float = 1.0                # adaptive weight w = 1/(‖Δ‖² + norm_eps)^norm_p, ‖Δ‖² summed over an item
    norm_eps: float = 0.01             # official code 0.01; the paper's text gives c = 1e-3 as an example
    cfg_omega: float = 1.0             # guidance folded into the target (paper's ω; 1.0 with κ = 0: none)
    cfg_kappa: float = 0.0             # paper's κ (official default 0.5); effective scale ω' = ω / (1 − κ)
    cfg_s_range: tuple = (0.0, 1.0)    # guided where s is in [lo, hi] (official t_start, t_end = 0, 1: everywhere)
    class_dropout_prob: float = 0.1    # labels dropped to the null label (unguided target there)
    sigma_min: float = 1e-5            # x_s = (1 − (1 − sigma_min)·s)·x0 + s·x1
    jvp: str = "joint"                 # "joint": u and du/ds from one torch.func.jvp; "separate": u with grad,
    #                                    the JVP without (py-meanflow's advice for eager runs: less memory)
    jvp_autocast: bool = False         # False: the JVP (with jvp="joint", u too) runs in fp32, autocast off

    def __post_init__(self):
        for name in ("flow_fraction", "class_dropout_prob"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"MeanFlowConfig.{name} must be in [0, 1], got {v!r}")
        if self.time_dist not in TIME_DISTS:
            raise ValueError(f"MeanFlowConfig.time_dist must be one of {TIME_DISTS}, got {self.time_dist!r}")
        for name, lo in (("P_std", 0.0), ("norm_eps", 0.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= lo:
                raise ValueError(f"MeanFlowConfig.{name} must be a finite number > {lo}, got {v!r}")
        for name in ("P_mean", "norm_p", "cfg_omega", "cfg_kappa", "sigma_min"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"MeanFlowConfig.{name} must be a finite number, got {v!r}")
        if self.norm_p < 0:
            raise ValueError(f"MeanFlowConfig.norm_p must be >= 0 (0: plain squared error), got {self.norm_p!r}")
        if not 0.0 <= self.cfg_kappa < 1.0:
            raise ValueError(f"MeanFlowConfig.cfg_kappa must be in [0, 1) (ω' = ω/(1 − κ)), got {self.cfg_kappa!r}")
        if self.cfg_omega <= 0:
            raise ValueError(f"MeanFlowConfig.cfg_omega must be > 0, got {self.cfg_omega!r}")
        rng = self.cfg_s_range
        if (not isinstance(rng, (tuple, list)) or len(rng) != 2 or not all(isinstance(v, (int, float)) for v in rng)
                or not 0.0 <= rng[0] <= rng[1] <= 1.0):
            raise ValueError(f"MeanFlowConfig.cfg_s_range must be (lo, hi) with 0 <= lo <= hi <= 1, got {rng!r}")
        if not 0.0 <= self.sigma_min < 1.0:
            raise ValueError(f"MeanFlowConfig.sigma_min must be in [0, 1), got {self.sigma_min!r}")
        if self.jvp not in JVP_MODES:
            raise ValueError(f"MeanFlowConfig.jvp must be one of {JVP_MODES}, got {self.jvp!r}")
        if not isinstance(self.jvp_autocast, bool):
            raise ValueError(f"MeanFlowConfig.jvp_autocast must be True or False, got {self.jvp_autocast!r}")

    @property
    def guided(self):
        return self.cfg_omega != 1.0 or self.cfg_kappa != 0.0

    @property
    def effective_guidance(self):
        """ω' = ω / (1 − κ): the classifier-free guidance scale the trained field carries (paper, appendix)."""
        return self.cfg_omega / (1.0 - self.cfg_kappa)


@dataclass
class ObjectiveConfig:
    """The training objective. Defaults are the official shortcut-models settings (SPEC §1).

    objective: one of OBJECTIVE_NAMES. The baselines (docs/baselines.md) reuse the shortcut fields where they mean
    the same thing (denoise_timesteps, class_dropout_prob, clip, sigma_min; bootstrap_fraction is live reflow's
    share of reflow items; bootstrap_cfg / bootstrap_cfg_scale the guidance progressive distillation and reflow
    distil from their teacher, and live reflow's generation scale). MeanFlow's settings are the meanflow_* fields
    (MeanFlowConfig's, with its class_dropout_prob and sigma_min taken from here): `meanflow_config()`.
    """
    objective: str = "shortcut"        # what the network learns (OBJECTIVE_NAMES; docs/baselines.md, docs/meanflow.md)
    denoise_timesteps: int = 128       # M, the finest step count; levels k = 0 .. log2 M
    bootstrap_fraction: float = 0.125  # share of each batch used for self-consistency targets (official 1/8)
    class_dropout_prob: float = 0.1    # flow items' labels replaced by the null label with this probability
    bootstrap_cfg: bool = False        # guided targets at the finest bootstrap level (official for ImageNet)
    bootstrap_cfg_scale: float = 1.5
    clip: float = 4.0                  # bootstrap x2 and targets clipped to ±clip
    sigma_min: float = 1e-5            # x_t = (1 - (1 - sigma_min)·t)·x0 + t·x1
    reflow_pairs: int = 0              # reflow: (noise, sample) pairs from the teacher (0: the data's size, 2-D: 10000)
    reflow_teacher_steps: int = 0      # reflow: the teacher's Euler steps per pair (0: denoise_timesteps)
    meanflow_flow_fraction: float = MeanFlowConfig.flow_fraction  # meanflow: share of items with h = 0
    meanflow_time_dist: str = MeanFlowConfig.time_dist  # meanflow: how (s, s + h) are drawn: logit_normal | uniform
    meanflow_P_mean: float = MeanFlowConfig.P_mean  # meanflow: logit-normal location in paper time t = 1 - s
    meanflow_P_std: float = MeanFlowConfig.P_std  # meanflow: logit-normal scale
    meanflow_norm_p: float = MeanFlowConfig.norm_p  # meanflow: adaptive weight 1/(|err|^2 + eps)^norm_p
    meanflow_norm_eps: float = MeanFlowConfig.norm_eps  # meanflow: adaptive weight's eps (official 0.01)
    meanflow_cfg_omega: float = MeanFlowConfig.cfg_omega  # meanflow: guidance folded into the target (omega)
    meanflow_cfg_kappa: float = MeanFlowConfig.cfg_kappa  # meanflow: paper's kappa; guidance omega / (1 - kappa)
    meanflow_cfg_s_range: tuple = MeanFlowConfig.cfg_s_range  # meanflow: guided where s is in [lo, hi]
    meanflow_jvp: str = MeanFlowConfig.jvp  # meanflow: joint (one torch.func.jvp) or separate
    meanflow_jvp_autocast: bool = MeanFlowConfig.jvp_autocast  # meanflow: false: the JVP runs in fp32

    def __post_init__(self):
        if self.objective not in OBJECTIVE_NAMES:
            raise ValueError(f"ObjectiveConfig.objective must be one of {', '.join(OBJECTIVE_NAMES)}, "
                             f"got {self.objective!r}")
        m = self.denoise_timesteps
        if not isinstance(m, int) or m < 2 or m & (m - 1):
            raise ValueError(f"ObjectiveConfig.denoise_timesteps must be a power of two >= 2, got {m!r}")
        if not 0.0 <= self.bootstrap_fraction < 1.0:
            raise ValueError(f"ObjectiveConfig.bootstrap_fraction must be in [0, 1), got {self.bootstrap_fraction!r}")
        if not 0.0 <= self.class_dropout_prob <= 1.0:
            raise ValueError(f"ObjectiveConfig.class_dropout_prob must be in [0, 1], got {self.class_dropout_prob!r}")
        if self.clip <= 0:
            raise ValueError(f"ObjectiveConfig.clip must be > 0, got {self.clip!r}")
        for name in ("reflow_pairs", "reflow_teacher_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"ObjectiveConfig.{name} must be an int >= 0 (0: the default), got {v!r}")
        if isinstance(self.meanflow_cfg_s_range, list):   # JSON (save_pretrained configs) has no tuples
            self.meanflow_cfg_s_range = tuple(self.meanflow_cfg_s_range)
        try:
            self.meanflow_config()
        except ValueError as e:   # MeanFlowConfig's own checks, under this class's field names
            raise ValueError(str(e).replace("MeanFlowConfig.", "ObjectiveConfig.meanflow_")) from None

    @property
    def max_level(self):
        """log2 M: the level of the finest step (flow items are conditioned on it)."""
        return int(math.log2(self.denoise_timesteps))

    def meanflow_config(self):
        """The MeanFlowConfig of these settings (meanflow_* fields, class_dropout_prob, sigma_min)."""
        mf = {f.name: getattr(self, "meanflow_" + f.name) for f in dataclasses.fields(MeanFlowConfig)
              if hasattr(self, "meanflow_" + f.name)}
        return MeanFlowConfig(**mf, class_dropout_prob=self.class_dropout_prob, sigma_min=self.sigma_min)

    def guidance(self, num_classes):
        """What a model trained with this objective knows about classifier-free guidance, as a plain dict
        (stored in checkpoints and save_pretrained folders; `shortcut.sample` reads it):

        distilled: the training targets were guided, so sampling at w = 1 already includes guidance with weight
            `scale` (None when not distilled): shortcut with bootstrap_cfg (levels < max_level), progressive and
            reflow with bootstrap_cfg (from the guided teacher), live reflow (its reflow items are the live model's
            guided samples, official), meanflow with guidance folded in (scale omega / (1 - kappa)).
        null_levels: the step levels at which the null label was trained, None for every level. Only flow
            items drop labels (bootstrap items keep their true labels, official too), so a class-conditional
            shortcut or live-reflow model knows its null label at max_level alone; flow matching and reflow
            ignore k (every level); progressive, consistency and meanflow students are never guided at sampling
            ([]: progressive and consistency never drop labels; meanflow, and reflow from guided pairs, have
            guidance trained in: guiding again would apply it twice). An unconditional model has only the null
            label.
        """
        name, conditional = self.objective, num_classes > 0
        if name == "meanflow":
            mf = self.meanflow_config()
            distilled, scale = mf.guided, mf.effective_guidance
        elif name == "live_reflow":
            distilled, scale = self.bootstrap_cfg_scale != 1.0, self.bootstrap_cfg_scale
        else:
            distilled = self.bootstrap_cfg and name in ("shortcut", "progressive", "reflow")
            scale = self.bootstrap_cfg_scale
        distilled = distilled and conditional
        if not conditional or self.class_dropout_prob == 1.0 and name not in ("shortcut", "live_reflow"):
            null_levels = None if self.class_dropout_prob > 0 or not conditional else []
        elif name == "flow" or name == "reflow" and not distilled:
            null_levels = None if self.class_dropout_prob > 0 else []
        elif name in ("shortcut", "live_reflow"):
            null_levels = [self.max_level] if self.class_dropout_prob > 0 else []
        else:
            null_levels = []
        return {"distilled": bool(distilled), "scale": float(scale) if distilled else None,
                "null_levels": null_levels}


@dataclass
class TrainConfig:
    """Everything `shortcut.train` needs; saved inside every checkpoint."""
    data: str = "digits"               # digits | checkerboard | moons | 8gaussians
    preset: str = "auto"               # ModelConfig preset, "mlp" (2-D data) or auto: digits / mlp by data
    official: bool = False             # official-network quirks (ModelConfig.preset(official=True))
    model_overrides: dict = field(default_factory=dict)   # ModelConfig fields, e.g. {"depth": 2}
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.1
    ema_decay: float = 0.999
    targets: str = "ema"               # bootstrap targets from "ema" weights (official) or the "live" model
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    precision: str = "auto"            # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    kernels: str = "auto"              # ShortcutDiT kernels switch
    out_dir: str = "runs/digits"
    log_every: int = 50
    sample_every: int = 0              # 0: a sample grid at the end only
    grid_steps: tuple = (1, 2, 4, 8, 16, 32, 64, 128)   # one grid row per step count
    ckpt_every: int = 500
    resume: bool = False               # continue from out_dir/checkpoint.pt
    init_from: str = ""                # start from the weights of a save_pretrained folder or checkpoint (fine-tune)
    teacher: str = ""                  # progressive, consistency_distillation, reflow: a flow model (checkpoint/folder)
    threads: int = 0                   # torch CPU threads; 0 leaves torch's default
    progress: bool = True
    # Scale-out (shortcut/distributed.py): batch_size is the global batch, split into
    # world_size × grad_accum equal shards; each shard has its own random stream.
    grad_accum: int = 1                # micro-batches per rank per optimizer step
    parallel: str = "ddp"              # under torchrun: "ddp" or "fsdp" (FSDP2 fully_shard, torch >= 2.6)
    # Image folders / latents (shortcut/data.py)
    image_size: int = 0                # image folders: center-crop + resize to this side (0: as stored)
    random_flip: bool = True           # image folders: random horizontal flips
    num_workers: int = 4               # DataLoader workers for image folders and latents

    def __post_init__(self):
        if isinstance(self.objective, dict):
            self.objective = ObjectiveConfig(**self.objective)
        self.betas, self.grid_steps = tuple(self.betas), tuple(self.grid_steps)
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {v!r}")
        if self.targets not in ("ema", "live"):
            raise ValueError(f"TrainConfig.targets must be 'ema' or 'live', got {self.targets!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"TrainConfig.precision must be 'auto', 'bf16' or 'fp32', got {self.precision!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if len(self.betas) != 2:
            raise ValueError(f"TrainConfig.betas must be two numbers (beta1, beta2), got {self.betas!r}")
        for name in ("grad_accum",):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {v!r}")
        for name in ("image_size", "num_workers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be an int >= 0, got {v!r}")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"TrainConfig.parallel must be 'ddp' or 'fsdp', got {self.parallel!r}")
        for name in ("init_from", "teacher"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"TrainConfig.{name} must be a path (str, '' for none), got {getattr(self, name)!r}")
        staged = self.objective.objective in ("progressive", "consistency_training")
        if staged and self.steps < self.objective.max_level:
            raise ValueError(f"TrainConfig.steps must be >= {self.objective.max_level} for objective "
                             f"{self.objective.objective!r} (one stage per step level, log2 denoise_timesteps), got "
                             f"{self.steps}")
        if self.init_from and self.resume:
            raise ValueError(f"init_from ({self.init_from!r}) and resume exclude each other: a resumed run keeps its "
                             f"own weights (drop --init-from to resume, or start a new --out-dir)")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**d)

    @classmethod
    def recipe(cls, name, data, **overrides):
        """A paper recipe from TRAIN_PRESETS on your data: `TrainConfig.recipe("imagenet256-dit-b2",
        data="latents:/data/in256")`; keyword overrides replace any field (objective: a dict or config)."""
        if name not in TRAIN_PRESETS:
            raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(TRAIN_PRESETS)}")
        kw = copy.deepcopy(TRAIN_PRESETS[name])
        obj = overrides.pop("objective", None)
        if isinstance(obj, ObjectiveConfig):
            obj = dataclasses.asdict(obj)
        kw["objective"] = ObjectiveConfig(**{**kw.get("objective", {}), **(obj or {})})
        kw.update(overrides)
        return cls(data=data, **kw)


# The paper's runs (official shortcut-models README commands; network with the official quirks), on
# SD-VAE latents of 256 px images (32×32×4): encode the images first (`shortcut encode`), then
# `shortcut train --recipe NAME --data latents:DIR`. Global batch sizes: split over GPUs by torchrun.
# Published FID-50k (128 / 4 / 1 steps): see docs/training.md.
_PAPER_COMMON = dict(official=True, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1, ema_decay=0.999,
                     targets="ema", precision="auto", log_every=100, ckpt_every=10_000, sample_every=20_000,
                     grid_steps=(1, 4, 128), num_workers=8)
TRAIN_PRESETS = {
    # Unconditional: one class, labels always dropped (official: num_classes 1, class_dropout_prob 1).
    "celebahq256-dit-b2": dict(_PAPER_COMMON, preset="DiT-B/2", batch_size=64, steps=410_000,
                               objective=dict(bootstrap_fraction=0.125, class_dropout_prob=1.0,
                                              bootstrap_cfg=False, denoise_timesteps=128)),
    # Class-conditional; guided (w = 1.5) bootstrap targets at the finest level; sample with --cfg-scale 1.5.
    "imagenet256-dit-b2": dict(_PAPER_COMMON, preset="DiT-B/2", batch_size=256, steps=810_000,
                               objective=dict(bootstrap_fraction=0.125, class_dropout_prob=0.1,
                                              bootstrap_cfg=True, bootstrap_cfg_scale=1.5, denoise_timesteps=128)),
    "imagenet256-dit-xl2": dict(_PAPER_COMMON, preset="DiT-XL/2", batch_size=256, steps=810_000,
                                objective=dict(bootstrap_fraction=0.125, class_dropout_prob=0.1,
                                               bootstrap_cfg=True, bootstrap_cfg_scale=1.5, denoise_timesteps=128)),
}

# `shortcut train --data checkerboard|moons|8gaussians` starts from these (any flag overrides them), so that a
# new user sees the structure in about a minute on 2 CPU cores. Share of samples in the checkerboard's filled
# cells (uniform noise: 0.48), 1 / 128 steps, 5,000 steps unless noted: these settings 0.70 / 0.91; with EMA
# targets 0.59 / 0.92; bootstrap share 0.25: 0.65 / 0.92; raw x (x_freqs 0): 0.61 / 0.76; the generic
# defaults (3,000 steps, lr 1e-3, bootstrap 0.25: issue 11's command before this) 0.20 / 0.44.
# Python: TrainConfig(data="checkerboard", **copy.deepcopy(TOY_2D_DEFAULTS)).
TOY_2D_DEFAULTS = dict(
    steps=5000, batch_size=1024, lr=3e-3, weight_decay=0.0, ema_decay=0.995,
    targets="live",                           # EMA targets lag the live weights in so short a run
    model_overrides=dict(hidden=128, depth=4, x_freqs=6),   # x_freqs: sin/cos features of x for sharp edges
    objective=dict(bootstrap_fraction=0.5),   # more self-consistency items: the coarse levels learn last
)
