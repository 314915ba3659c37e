"""AdamW over the trainable (LoRA) parameters with linear warm-up then linear decay, as TRL's trainers default;
and data parallelism without DDP wrappers (one worker when no process group is set up, as in a unit test).

Data parallel: every worker draws the same global batch of a step (the same seeded order over the whole set) and
computes its `shard` of it, its mean loss over the shard scaled by `share_scale`, so the mean of the workers'
gradients (`average_gradients`) is one worker's gradient of the whole batch, and the mean of their losses
(`mean_over_workers`) is its loss: two workers follow one worker's loss trajectory, up to float rounding.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch

T = TypeVar("T")


def optimizer(model: torch.nn.Module, lr: float, total_steps: int, warmup: float = 0.1
              ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, math.ceil(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def rank_world() -> tuple[int, int]:
    """This worker's rank and the number of workers: (0, 1) without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def shard(items: list[T], rank: int, world: int) -> list[T]:
    """Worker `rank`'s share of a step's batch: every `world`-th item from `rank`; with fewer items than workers,
    a worker left without one takes item `rank % len(items)`, so that it computes real gradients too."""
    if not items:
        return []
    return items[rank::world] or [items[rank % len(items)]]


def share_scale(n_items: int, rank: int, world: int) -> float:
    """The factor on worker `rank`'s mean loss over its `shard` of a batch of `n_items`, so that the workers'
    mean is the mean over every item they computed (all `n_items`; with fewer items than workers, each worker's
    one item, the borrowed ones included)."""
    mine = len(range(rank, n_items, world)) or 1
    return mine * world / max(n_items, world)


def mean_over_workers(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Every worker's per-step values, averaged over the workers element-wise (one all-reduce; `device`: the
    model's, as NCCL reduces CUDA tensors only). Called by every worker, the same number of values each."""
    import torch.distributed as dist

    _, world = rank_world()
    if world == 1 or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / world).tolist()


def average_gradients(model: torch.nn.Module) -> None:
    """Mean the LoRA gradients over workers (no-op on one worker)."""
    import torch.distributed as dist

    _, world = rank_world()
    if world == 1:
        return
    for p in model.parameters():
        if p.requires_grad and p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR,
         max_grad_norm: float = 1.0) -> None:
    """After the backward pass(es): average over workers, clip, update, advance the schedule."""
    average_gradients(model)
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
