"""Every training objective behind one interface for the training loop: the loss of one micro-batch.

shortcut and flow: `shortcut_targets` + `shortcut_loss` (objective.py); progressive, consistency distillation,
consistency training, live reflow, reflow: `baseline_targets` + `shortcut_loss` (baselines/); meanflow:
`meanflow_loss` on the unwrapped module (meanflow.py). What each reads is in docs/baselines.md and docs/meanflow.md.
"""
import torch

from .baselines import baseline_targets, consistency_level, progressive_stage, refresh_teacher
from .checkpoint import gathered_state_dict
from .meanflow import meanflow_loss
from .objective import shortcut_loss, shortcut_targets


class Objective:
    """The loss of one micro-batch under the run's objective, with what it reads: the target network (shortcut,
    consistency), the teacher (progressive, consistency distillation), the live module (live reflow, MeanFlow)
    and reflow's pairs. `keys`: the loss parts logged beside the loss (item-weighted over shards and ranks)."""

    def __init__(self, cfg, raw, target_net, teacher, pairs, shard_size, device):
        self.cfg, self.obj, self.name = cfg, cfg.objective, cfg.objective.objective
        self.raw, self.target_net, self.teacher, self.pairs = raw, target_net, teacher, pairs
        self.shard_size, self.device, self.null = shard_size, device, raw.null_label
        self.keys = (("loss_flow", "loss_interval", "mse", "mse_flow", "mse_interval") if self.name == "meanflow"
                     else ("loss_flow", "loss_bootstrap"))
        self.meanflow = self.obj.meanflow_config() if self.name == "meanflow" else None

    def loss(self, model, x1, y, generator, s, levels=None, num_reflow=None):
        """(loss, parts, counts): counts[key] is the number of items parts[key] (or the loss) averages over."""
        name, obj = self.name, self.obj
        if name in ("shortcut", "flow"):
            batch = shortcut_targets(self.target_net, x1, y, obj, generator=generator, levels=levels)
            return self._counted(*shortcut_loss(model, batch), batch)
        if name == "reflow":
            idx = torch.randint(len(self.pairs), (self.shard_size,), generator=generator)
            x0, x1, y = (v[idx].to(self.device, non_blocking=True) for v in (self.pairs.x0, self.pairs.x1,
                                                                             self.pairs.y))
        # Unconditional runs (class_dropout_prob 1): every label null (official train.py, cfg_scale == 0), as the
        # baselines other than (live) reflow never drop labels themselves.
        if obj.class_dropout_prob == 1.0:
            y = torch.full_like(y, self.null)
        if name == "meanflow":
            n, nf = x1.shape[0], int(x1.shape[0] * self.meanflow.flow_fraction)
            loss, parts = meanflow_loss(self.raw, x1, y, self.meanflow, generator=generator, null_label=self.null)
            counts = {"loss": n, "mse": n, "loss_flow": nf, "mse_flow": nf, "loss_interval": n - nf,
                      "mse_interval": n - nf}
            return loss, parts, counts
        batch = baseline_targets(name, x1, y, model=self.raw, ema=self.target_net, teacher=self.teacher, step=s,
                                 total_steps=self.cfg.steps, x0=x0 if name == "reflow" else None, cfg=obj,
                                 generator=generator, null_label=self.null, num_reflow=num_reflow)
        return self._counted(*shortcut_loss(model, batch), batch)

    @staticmethod
    def _counted(loss, parts, batch):
        n, nb = batch.t.shape[0], batch.num_bootstrap
        return loss, parts, {"loss": n, "loss_flow": n - nb, "loss_bootstrap": nb}

    def schedule(self, s):
        """The step level the staged objectives train at update s (logged as "level")."""
        M = self.obj.denoise_timesteps
        if self.name == "progressive":
            return {"level": progressive_stage(s, self.cfg.steps, M)[1]}
        if self.name == "consistency_training":
            return {"level": consistency_level(s, self.cfg.steps, M)}
        return {}


def check_parallel(cfg, env, num_shards):
    """What FSDP2 cannot run: a JVP through sharded modules (MeanFlow), and a shard without the target-network
    forward the others make (FSDP's all-gathers would wait for it forever)."""
    if not (env.distributed and cfg.parallel == "fsdp"):
        return
    name = cfg.objective.objective
    if name == "meanflow":
        raise ValueError("objective 'meanflow' runs with parallel='ddp' (torch.func.jvp does not trace FSDP2's "
                         "sharded modules)")
    n = int(cfg.batch_size * cfg.objective.bootstrap_fraction)
    if name in ("shortcut", "live_reflow") and 0 < n < num_shards:
        raise ValueError(f"parallel='fsdp' needs every shard to call the sharded target network: "
                         f"int(batch_size × bootstrap_fraction) = {n} items for {num_shards} shards; raise "
                         f"batch_size or bootstrap_fraction, or use parallel='ddp'")


def refresh_progressive_teacher(teacher, source, fsdp, shadow):
    """Progressive distillation's stage boundary: the teacher becomes a copy of the student (its EMA or live weights,
    progressive_refresh_source). FSDP: the sharded source gathered first (every rank takes part)."""
    if fsdp:
        with torch.no_grad():
            teacher.load_state_dict(gathered_state_dict(source, shadow))
        return
    refresh_teacher(teacher, source)
