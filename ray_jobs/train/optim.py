"""AdamW over the trainable (LoRA) parameters with linear warm-up then linear decay, as TRL's trainers default."""

from __future__ import annotations

import math

import torch


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


def average_gradients(model: torch.nn.Module) -> None:
    """Data parallelism without DDP wrappers: mean the LoRA gradients over workers (no-op on one worker)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
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
