"""SFT stage: next-token cross-entropy on the completion only (prompt and padding masked out).

Used for FAIR's two tasks, rationales (accepted teacher answers to the plain question, D&R's SFT set too) and
explanations of the student's mistakes, mixed in one shuffled set. Each example carries a weight (its gold
source's, times FAIR's mix share; mean 1 over the set), and the batch loss is

    L = 1/B * sum_b w_b * CE_b,    CE_b = mean over example b's completion tokens of -log p(token)

so FAIR's 0.5 * CE(explanations) + 0.5 * CE(rationales) holds in expectation whatever the two counts are.

With `pack` (the default, `training.sft.pack_shared_prefix`), the examples of a step that share a prompt prefix
(one task's system prompt) are packed into rows where the prefix runs once (`ray_jobs.sft.packing`); the loss is
the same L, exactly, so only the time per step changes. A batch where no two examples share a prefix runs as
before: one padded row per example.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ray_jobs.sft.packing import DEFAULT_ROW_TOKENS, group, pack_sft, packed_loss
from ray_jobs.train.optim import mean_over_workers, optimizer, rank_world, shard, share_scale
from ray_jobs.train.optim import step as optim_step
from ray_jobs.trees.encode import SftExample


def collate(batch: list[SftExample], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask, labels (-100 outside completions) and per-example weights."""
    seqs = [e.prompt_ids + e.completion_ids for e in batch]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), T), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for b, (e, s) in enumerate(zip(batch, seqs, strict=True)):
        ids[b, : len(s)] = torch.tensor(s)
        mask[b, : len(s)] = 1
        labels[b, len(e.prompt_ids) : len(s)] = torch.tensor(e.completion_ids)
    weights = torch.tensor([e.weight for e in batch], dtype=torch.float32)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}


def weighted_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-example mean cross-entropy on the completion, weighted, averaged over the batch (see the module)."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    # log_softmax over the last (vocabulary) dimension: torch's CPU cross_entropy over [B, vocab, T] (the class
    # dimension not last) sums the 49k exponentials less exactly, off by ~1e-4 on the real student's logits.
    tok = -logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    scored = (labels != -100).float()
    per_example = (tok * scored).sum(1) / scored.sum(1).clamp(min=1)
    return (weights * per_example).mean()


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


def batch_loss(model: Any, batch: list[SftExample], pad_id: int, *, pack: bool = True,
               row_tokens: int = DEFAULT_ROW_TOKENS) -> tuple[torch.Tensor, dict[str, int]]:
    """The step's loss L (see the module) and what was computed: `rows`, `tokens` (real tokens in them) and
    `example_tokens` (the batch's prompt + completion tokens, what the plain path computes besides padding)."""
    example_tokens = sum(len(e.prompt_ids) + len(e.completion_ids) for e in batch)
    groups = group(batch, row_tokens) if pack else []
    if groups and len(groups) < len(batch):
        packed = pack_sft(batch, groups, pad_id)
        return packed_loss(model, packed), {"rows": len(groups), "tokens": packed.tokens,
                                            "example_tokens": example_tokens}
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    loss = weighted_loss(logits, inputs["labels"], inputs["weights"])
    return loss, {"rows": len(batch), "tokens": example_tokens, "example_tokens": example_tokens}


def train_sft(model: Any, examples: list[SftExample], *, lr: float, steps: int, batch_size: int, pad_id: int,
              seed: int, log: Callable[[dict[str, Any]], None], pack: bool = True, row_tokens: int | None = None
              ) -> dict[str, Any]:
    """`steps` optimizer steps of `batch_size` examples, in reshuffled passes over `examples` (the whole set; the
    worker sets `steps`, see `ray_jobs.train.worker`); `pack`: shared-prefix packing (see the module);
    `row_tokens`: a packed row's budget (default: the default `max_prompt_tokens + max_completion_tokens`, the
    longest example the encoder lets through).

    With several workers (a torch process group), each computes its `shard` of every step's batch, and the
    step's loss is the batch's, as one worker computes it (`ray_jobs.train.optim`): `sft_losses` is every step's,
    averaged over the workers; the `log` callback gets this worker's share."""
    if steps == 0:
        return {"sft_steps": 0, "sft_losses": []}
    rank, world = rank_world()
    opt, sched = optimizer(model, lr, steps)
    model.train()
    losses, t0 = [], time.monotonic()
    computed = total = 0
    for step, batch in enumerate(batches(examples, batch_size, steps, seed), 1):
        mine = shard(batch, rank, world)
        loss, work = batch_loss(model, mine, pad_id, pack=pack, row_tokens=row_tokens or DEFAULT_ROW_TOKENS)
        loss = loss * share_scale(len(batch), rank, world)
        loss.backward()
        optim_step(model, opt, sched)
        losses.append(loss.item())
        computed, total = computed + work["tokens"], total + work["example_tokens"]
        log({"phase": "sft", "step": step, "steps": steps, "loss": round(losses[-1], 4), "rows": work["rows"],
             "lr": sched.get_last_lr()[0], "elapsed_s": round(time.monotonic() - t0, 1)})
    losses = mean_over_workers(losses, next(model.parameters()).device)
    return {"sft_steps": steps, "sft_losses": losses, "sft_loss_first": losses[0],
            "sft_loss_last": sum(losses[-5:]) / len(losses[-5:]),
            "sft_seconds": round(time.monotonic() - t0, 1),
            "sft_packed_token_share": round(computed / max(1, total), 3)}
