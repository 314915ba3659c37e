"""SFT stage: next-token cross-entropy on the completion only (prompt and padding masked out).

Used for D&R's SFT set (correct teacher answers to the plain question) and FAIR's fault-aware items; the two are
mixed in one shuffled set, which weights them by their counts (FAIR weights its two tasks 0.5/0.5).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ray_jobs.train.optim import optimizer, steps_for
from ray_jobs.train.optim import step as optim_step
from ray_jobs.trees.encode import SftExample


def collate(batch: list[SftExample], pad_id: int) -> dict[str, torch.Tensor]:
    seqs = [e.prompt_ids + e.completion_ids for e in batch]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), T), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for b, (e, s) in enumerate(zip(batch, seqs, strict=True)):
        ids[b, : len(s)] = torch.tensor(s)
        mask[b, : len(s)] = 1
        labels[b, len(e.prompt_ids) : len(s)] = torch.tensor(e.completion_ids)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(examples: list[SftExample], size: int, steps: int, seed: int) -> Iterator[list[SftExample]]:
    """`steps` batches: reshuffled passes over the data (a new seeded order each epoch)."""
    rng = random.Random(f"sft-{seed}")
    order: list[int] = []
    for _ in range(steps):
        if len(order) < size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        yield [examples[i] for i in order[:size]]
        order = order[size:]


def train_sft(model: Any, examples: list[SftExample], *, lr: float, epochs: float, batch_size: int,
              max_steps: int | None, pad_id: int, seed: int, log: Callable[[dict[str, Any]], None]
              ) -> dict[str, Any]:
    steps = steps_for(len(examples), batch_size, epochs, max_steps)
    if steps == 0:
        return {"sft_steps": 0}
    device = next(model.parameters()).device
    opt, sched = optimizer(model, lr, steps)
    model.train()
    losses, t0 = [], time.monotonic()
    for step, batch in enumerate(batches(examples, batch_size, steps, seed), 1):
        inputs = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
        loss = model(**inputs).loss
        loss.backward()
        optim_step(model, opt, sched)
        losses.append(loss.item())
        log({"phase": "sft", "step": step, "steps": steps, "loss": round(losses[-1], 4),
             "lr": sched.get_last_lr()[0], "elapsed_s": round(time.monotonic() - t0, 1)})
    return {"sft_steps": steps, "sft_loss_first": losses[0], "sft_loss_last": sum(losses[-5:]) / len(losses[-5:]),
            "sft_seconds": round(time.monotonic() - t0, 1)}
