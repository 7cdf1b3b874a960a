"""Model FLOPs of a ShortcutDiT, counted from its config: the GEMMs and the attention matmuls.

One multiply-add = 2 FLOPs. Elementwise work (norms, GELU, residuals, softmax) is left out, as in MFU
conventions (PaLM, nanoGPT): it is memory traffic, not tensor-core work. DiT-XL/2 at 256 px comes out at
2 × 118.6 GFLOPs per image, the DiT paper's 118.6 "Gflops" being multiply-adds.

    forward  = depth · [2·B·T·D·(3D + D + 2·mlp)          qkv, proj, fc1, fc2
                        + 4·B·T²·D]                       q·kᵀ and p·v over all heads (H·Dh = D)
             + 2·B·T·(p²·C)·D · 2                          patch embedding and final linear
             + 2·B·(freq·D + D·D) · 2                      t- and k-embedder MLPs
             + 2·B·D·(depth·6D + 2D)                       all adaLN projections (one GEMM)
    training = 3 · forward(B)                              forward + backward (2× forward)
             + 2 · forward(n_bootstrap)                    the two target-network half steps, no grad

The guided (bootstrap_cfg) target forwards are not counted. A MeanFlow step (shortcut.meanflow_loss, then
backward) runs the JVP pass: every GEMM on the primal and on the tangent (2× its forward), attention 3× its
forward (q·kᵀ, tq·kᵀ, q·tkᵀ, p·v, p·tv, tp·v: the one-pass JVP kernel's six matmuls), so with A the attention
matmuls of one forward (depth·4·B·T²·D):

    meanflow joint    = (2·forward + A) + 2·forward           the JVP pass (u with its graph), backward
    meanflow separate = forward + (2·forward + A) + 2·forward  u with grad, the JVP pass without, backward

Unguided (cfg_omega 1, cfg_kappa 0, the default): the guidance forwards are not counted. Nor is the GEMM that
PyTorch's forward-AD rules for mm / addmm / convolution spend on the weights' tangent, a tensor of zeros (one
per weight GEMM, forward − A in all; torch 2.13, tests/test_bench_report.py): work a JVP need not do.
"""


def dit_forward_flops(cfg, batch):
    """FLOPs of one ShortcutDiT forward over `batch` images (cfg: shortcut.ModelConfig)."""
    if batch < 0:
        raise ValueError(f"batch must be >= 0, got {batch}")
    B, T, D, L = batch, cfg.num_tokens, cfg.hidden_size, cfg.depth
    patch = cfg.patch_size ** 2 * cfg.in_channels
    mlp = int(D * cfg.mlp_ratio)
    blocks = L * (2 * B * T * D * (4 * D + 2 * mlp) + 4 * B * T * T * D)
    ends = 2 * (2 * B * T * patch * D)
    conditioning = 2 * (2 * B * (cfg.freq_dim * D + D * D)) + 2 * B * D * (L * 6 * D + 2 * D)
    return blocks + ends + conditioning


def train_step_flops(cfg, batch, objective=None):
    """FLOPs of one shortcut training step: forward + backward on the batch, and the bootstrap targets.

    objective: shortcut.ObjectiveConfig (default: the official one, 1/8 of the batch bootstrapped).
    """
    from shortcut import ObjectiveConfig
    objective = objective or ObjectiveConfig()
    nb = int(batch * objective.bootstrap_fraction) if objective.objective == "shortcut" else 0
    return 3 * dit_forward_flops(cfg, batch) + 2 * dit_forward_flops(cfg, nb)


def meanflow_step_flops(cfg, batch, jvp="joint"):
    """FLOPs of one MeanFlow training step: the JVP pass (and, with jvp="separate", a forward of u), backward."""
    if jvp not in ("joint", "separate"):
        raise ValueError(f"jvp must be 'joint' or 'separate', got {jvp!r}")
    forward = dit_forward_flops(cfg, batch)
    attention = cfg.depth * 4 * batch * cfg.num_tokens ** 2 * cfg.hidden_size
    return (2 * forward + attention) + 2 * forward + (forward if jvp == "separate" else 0)
