"""Multi-process training helpers on top of torch.distributed (DDP, optional FSDP2).

    torchrun --nproc-per-node 8 -m shortcut train --recipe imagenet256-dit-b2 --data latents:/data/in256

`shortcut train` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK): with WORLD_SIZE > 1 it joins
the process group (NCCL on CUDA, gloo on CPU), puts rank r on cuda:LOCAL_RANK and wraps the model in DDP
(or shards it with FSDP2 `fully_shard` when `TrainConfig.parallel == "fsdp"`). A plain `python -m shortcut
train` is world size 1 and never touches torch.distributed.

Randomness is organised in *shards*: every optimizer step consumes `batch_size` items, split into
`world_size × grad_accum` equal shards; shard j draws its noise, t, levels and label dropout from its own
torch.Generator (shard 0 is seeded with `seed`, the others from (seed, j)). Rank r owns shards
r·grad_accum … (r+1)·grad_accum − 1. So 2 processes × 1 micro-batch and 1 process × 2 micro-batches run
the same computation, and a checkpoint resumes exactly on any world size with the same shard count.
"""
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    """Where this process sits: rank r of world_size, on `device`."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False      # True when this process created the process group (and must destroy it)

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def env_world_size():
    """WORLD_SIZE set by torchrun (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device):
    """Join torchrun's process group when WORLD_SIZE > 1 (or reuse an initialised one); returns DistEnv.

    `device` is the resolved torch.device the user asked for; on CUDA each rank takes cuda:LOCAL_RANK.
    """
    if dist.is_available() and dist.is_initialized():
        world, rank, owns = dist.get_world_size(), dist.get_rank(), False
    elif env_world_size() > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {var} is not set: launch with "
                                   f"torchrun --nproc-per-node N -m shortcut train ...")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        world, rank, owns = dist.get_world_size(), dist.get_rank(), True
    else:
        return DistEnv(device=device)
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    return DistEnv(rank, world, local, device, owns)


def teardown(env):
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard_seed(seed, j):
    """Seed of shard j: `seed` itself for shard 0 (so one process is unchanged), a mixed 63-bit seed otherwise."""
    if j == 0:
        return seed
    return int(np.random.SeedSequence([seed, j]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def shard_generators(seed, shards):
    return [torch.Generator().manual_seed(shard_seed(seed, j)) for j in shards]


def bootstrap_counts(batch_size, fraction, num_shards, step):
    """Bootstrap items per shard so that the global count is int(batch_size · fraction), as one process has.

    Shards hold batch_size / num_shards items each; the remainder of the global count goes to different
    shards on different steps (rotating with `step`), so no shard is favoured.
    """
    total = int(batch_size * fraction)
    base, extra = divmod(total, num_shards)
    return [base + (1 if (j - step) % num_shards < extra else 0) for j in range(num_shards)]


def level_generator(seed, step):
    """The generator of step `step`'s random bootstrap levels: a function of (seed, step) alone, so every rank
    draws the same levels without communication and a resumed run draws what the uninterrupted one did."""
    entropy = np.random.SeedSequence([seed, step], spawn_key=(LEVEL_STREAM,)).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(entropy >> np.uint64(1)))


LEVEL_STREAM = 1   # spawn key of the level generators (shard seeds use none)


def deal_levels(batch_size, objective, num_shards, step, seed):
    """The step levels of every shard's bootstrap items: the global batch's levels, dealt out.

    The global batch has n = int(batch_size · bootstrap_fraction) bootstrap items with the levels one
    process gives them (objective.bootstrap_levels over levels 0 .. log2 M − 1: the official spread, finest
    first, leftovers at level 0; with n below the number of levels, n distinct levels drawn by
    `level_generator(seed, step)`). Global item i goes to shard (i + step) mod num_shards, so shard j holds
    bootstrap_counts(...)[j] items, and the finest-level items (guided under bootstrap_cfg) spread over the
    shards. So W ranks × A micro-batches train exactly the levels of one process at the same global batch
    (in the random branch: n distinct levels, drawn from the same distribution as one process draws them).
    Returns num_shards int64 CPU tensors.
    """
    from .objective import bootstrap_levels
    n, S = int(batch_size * objective.bootstrap_fraction), num_shards
    g = level_generator(seed, step) if n < objective.max_level else None
    levels = bootstrap_levels(n, objective.max_level, g, "cpu")
    dealt = [levels[(j - step) % S::S] for j in range(S)]
    b = batch_size // S
    if any(len(d) >= b for d in dealt):
        raise ValueError(f"a shard of {b} items would hold {max(len(d) for d in dealt)} bootstrap items and no "
                         f"flow item: raise batch_size or lower world_size × grad_accum")
    return dealt


def all_reduce_sum(t, env):
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def average_gradients(params, env):
    """Every gradient replaced by its mean over the ranks, in one all-reduce (a missing gradient counts as zeros).

    For losses computed on the unwrapped module: MeanFlow's torch.func.jvp does not trace through DDP's forward, so
    DDP's reducer never arms and its hooks reduce nothing (the gradients would silently stay per-rank, as the
    py-meanflow README warns). With equal shards the mean of the ranks' mean losses is the global mean, as DDP.
    """
    if not env.distributed:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= env.world_size
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p.grad))


def gather_objects(obj, env):
    """A list with every rank's `obj` (rank order) on every rank; [obj] on one process."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, env):
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env):
    if env.distributed:
        dist.barrier()


def wrap_model(model, env, parallel):
    """DDP (default) or FSDP2 `fully_shard` around `model` for world size > 1; the model itself otherwise."""
    if not env.distributed:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [env.device.index] if env.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    if parallel == "fsdp":
        fully_shard = fsdp_fully_shard()
        for unit in _fsdp_units(model):
            fully_shard(unit)
        fully_shard(model)
        return model
    raise ValueError(f"TrainConfig.parallel must be 'ddp' or 'fsdp', got {parallel!r}")


def _fsdp_units(model):
    """Submodules to shard on their own: FSDP2 gathers a unit's weights in its forward pre-hook, so a unit
    must be a module whose forward is called. ShortcutDiT's fused forward calls each block's attn and mlp
    (not the block itself); everything else (embedders, adaLN projections, final layer) stays with the root."""
    units = []
    for block in getattr(model, "blocks", []):
        parts = [getattr(block, n) for n in ("attn", "mlp") if isinstance(getattr(block, n, None), torch.nn.Module)]
        units += parts or [block]
    return units


def fsdp_fully_shard():
    """torch.distributed.fsdp.fully_shard (FSDP2, torch >= 2.6), with a clear error on older builds."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError as e:
        raise RuntimeError(f"parallel='fsdp' needs FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.6); "
                           f"this is torch {torch.__version__}: use parallel='ddp'") from e
    return fully_shard


def local_shard(t):
    """The local shard of an FSDP2 DTensor parameter, the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def full_tensor(t):
    """The whole tensor behind an FSDP2 DTensor (a collective: every rank calls it in the same order)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def shard_like(full, param):
    """`full` laid out like `param`: the same DTensor sharding for FSDP2 parameters, `full` otherwise."""
    if not hasattr(param, "device_mesh"):
        return full
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(full.to(param.device), param.device_mesh, param.placements)


def unwrap(model):
    """The user's module inside a DDP wrapper (FSDP2 shards in place and keeps the class)."""
    return getattr(model, "module", model)
