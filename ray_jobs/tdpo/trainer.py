"""T-DPO stage: continue the cycle's SFT adapter with the DPO loss over tree nodes, one forward per tree.

The reference policy is the SFT adapter as it stands when this stage starts (D&R: a frozen copy of the SFT
model). Its log-probs are computed once for every child before the first update (D&R precomputes them too), so
no second copy of the model is held.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import torch

from ray_jobs.tdpo.loss import TreeDPOLoss
from ray_jobs.tdpo.packing import Tree, child_logps, pack
from ray_jobs.train.optim import mean_over_workers, optimizer, rank_world, shard
from ray_jobs.train.optim import step as optim_step


@torch.no_grad()
def reference_logps(model: Any, trees: list[Tree], pad_id: int) -> list[torch.Tensor]:
    model.eval()
    return [child_logps(model, pack([t], pad_id)).float().cpu() for t in trees]


def train_tdpo(model: Any, trees: list[Tree], *, beta: float, lr: float, steps: int, trees_per_step: int,
               pad_id: int, seed: int, log: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """`steps` optimizer steps of `trees_per_step` trees, in reshuffled passes over `trees` (the whole list; the
    worker sets `steps`, see `ray_jobs.train.worker`).

    With several workers (a torch process group), each computes its `shard` of every step's trees (and their
    reference log-probs only), normalised by the whole step's pair weight over the workers, so the step's loss
    is the one a single worker computes (`ray_jobs.train.optim`): `tdpo_losses` and the reward accuracy are
    every worker's together; the `log` callback gets this worker's share."""
    if steps == 0:
        return {"tdpo_steps": 0, "tdpo_losses": []}
    t0 = time.monotonic()
    rank, world = rank_world()
    rng = random.Random(f"tdpo-{seed}")
    order: list[int] = []
    plan: list[list[list[int]]] = []  # per step, every worker's tree indices
    for _ in range(steps):
        if len(order) < trees_per_step:
            fresh = list(range(len(trees)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[:trees_per_step], order[trees_per_step:]
        plan.append([shard(idx, r, world) for r in range(world)])
    mine = sorted({i for shares in plan for i in shares[rank]})
    ref = dict(zip(mine, reference_logps(model, [trees[i] for i in mine], pad_id), strict=True))
    ref_seconds = time.monotonic() - t0
    loss_fn = TreeDPOLoss(beta)
    opt, sched = optimizer(model, lr, steps)
    losses, rights, counts = [], [], []
    model.train()
    for step, shares in enumerate(plan, 1):
        # One tree at a time, gradients accumulated: a tree's attention mask is [T, T] per head and layer, so
        # peak memory follows the largest tree, not the step. Each tree's share is normalised by the whole
        # step's pair weight (every worker's trees; over the workers, whose gradients are averaged), so the
        # accumulated loss is exactly the step's batch loss.
        total_weight = sum(trees[i].weight * len(trees[i].pairs) for s in shares for i in s) / world
        loss_sum, right, n_pairs = 0.0, 0.0, 0
        for i in shares[rank]:
            batch = pack([trees[i]], pad_id)
            policy = child_logps(model, batch)
            ref_i = ref[i].to(policy.device)
            chosen, rejected = batch.chosen_idx.to(policy.device), batch.rejected_idx.to(policy.device)
            loss = loss_fn(policy, ref_i, chosen, rejected, batch.pair_weights.to(policy.device), total_weight)
            loss.backward()
            loss_sum += loss.item()
            with torch.no_grad():
                margin = (policy - ref_i).detach()
                right += (margin[chosen] > margin[rejected]).float().sum().item()
                n_pairs += len(chosen)
        optim_step(model, opt, sched)
        losses.append(loss_sum)
        rights.append(right)
        counts.append(n_pairs)
        log({"phase": "tdpo", "step": step, "steps": steps, "loss": round(losses[-1], 4),
             "reward_accuracy": round(right / max(1, n_pairs), 3), "pairs": n_pairs,
             "elapsed_s": round(time.monotonic() - t0, 1)})
    device = next(model.parameters()).device
    losses, rights, counts = (mean_over_workers(v, device) for v in (losses, rights, counts))
    accs = [r / max(1e-9, c) for r, c in zip(rights, counts, strict=True)]  # means of sums: the same ratio
    tail = max(1, min(5, len(losses)))
    return {"tdpo_steps": steps, "tdpo_losses": losses, "tdpo_loss_first": losses[0],
            "tdpo_loss_last": sum(losses[-tail:]) / tail, "tdpo_reward_accuracy": sum(accs[-tail:]) / tail,
            "tdpo_ref_seconds": round(ref_seconds, 1), "tdpo_seconds": round(time.monotonic() - t0, 1)}
