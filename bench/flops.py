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

The guided (bootstrap_cfg) target forwards are not counted.
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
