"""Shared-prefix packing for SFT: examples whose prompts start with the same tokens (one task's system prompt)
share one row, and the prefix runs once.

T-DPO's tree packing (`ray_jobs.tdpo.packing.pack_rows`) applied to SFT: a row is [P, B_1, ..., B_k], P the
examples' longest common prompt prefix, each branch B_i = the rest of example i's prompt + its completion. Each
branch attends to P and to itself (causally), never to another branch, and its position ids continue from len(P),
so every completion token gets exactly the logits it gets in the example's own row [prompt_i, completion_i]. The
loss is then the plain trainer's (`trainer.weighted_loss`), exactly:

    L = 1/B * sum_b w_b * CE_b,    CE_b = mean over example b's completion tokens of -log p(token)

B being the step's batch size, whatever the number of packed rows.

Grouping rule (`group`), per optimizer step, so the batches, their order and the normalisation are the plain
trainer's: the batch's examples are sorted by prompt token ids, so prompts sharing a prefix are neighbours and the
common prefix of a run of neighbours is the minimum of their adjacent common prefixes (exact, no hashing, no fixed
K). Walking that order, an example joins the current row when

  * the row's common prefix stays at least `min_shared` tokens (a shorter one, such as the chat template's turn
    header, is not worth a longer row),
  * the row stays within `row_tokens` (default: the longest example the encoder lets through,
    `max_prompt_tokens + max_completion_tokens`, so a packed row is never longer than a plain row may be), and
  * joining costs fewer tokens than giving it a row of its own: k * p' > (k - 1) * p, with k members in the row,
    p its prefix before and p' after (a newcomer that shortens the shared prefix a lot lengthens every branch);

otherwise it starts the next row. A group of one is a plain example (one longer than `row_tokens` too, as the plain
path would run it); a batch where no two examples share a prefix trains exactly as without packing (`collate` +
`weighted_loss`). As T-DPO's, the rows need the model loaded with `attn_implementation="sdpa"` (`load_model` does):
eager attention would add the boolean mask to the scores as numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ray_jobs.tdpo.packing import pack_rows, predictor, scored_logps
from ray_jobs.trees.encode import SftExample
from services.config import TrainingConfig

MIN_SHARED_TOKENS = 16
DEFAULT_ROW_TOKENS = (TrainingConfig.model_fields["max_prompt_tokens"].default
                      + TrainingConfig.model_fields["max_completion_tokens"].default)


@dataclass
class Group:
    prefix_len: int  # tokens of the members' common prompt prefix (the row's shared part)
    members: list[int]  # indices into the batch


@dataclass
class PackedSft:
    input_ids: torch.Tensor  # [R, T]
    attention_mask: torch.Tensor  # [R, 1, T, T] bool: True = may attend
    position_ids: torch.Tensor  # [R, T]
    targets: torch.Tensor  # [n_completion_tokens] the token ids scored
    score_index: torch.Tensor  # [n_completion_tokens, 2] (row, position whose logits predict the token)
    example_of_token: torch.Tensor  # [n_completion_tokens] index of its example in the batch
    weights: torch.Tensor  # [n_examples] in batch order
    tokens: int  # real tokens in the rows (what the model computes, padding aside)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def row_length(batch: list[SftExample], g: Group) -> int:
    return g.prefix_len + sum(len(batch[i].prompt_ids) + len(batch[i].completion_ids) - g.prefix_len
                              for i in g.members)


def group(batch: list[SftExample], row_tokens: int = DEFAULT_ROW_TOKENS,
          min_shared: int = MIN_SHARED_TOKENS) -> list[Group]:
    """Rows for the batch by the rule in the module docstring; every example in exactly one group."""
    if min_shared < 1:
        raise ValueError("min_shared must be at least 1: a branch's first token is predicted by the prefix")
    order = sorted(range(len(batch)), key=lambda i: batch[i].prompt_ids)
    groups: list[Group] = []
    for i in order:
        e = batch[i]
        if groups:
            g = groups[-1]  # a group of one has its whole prompt as prefix
            k, p = len(g.members), g.prefix_len
            shared = min(p, common_prefix(batch[g.members[-1]].prompt_ids, e.prompt_ids))
            joined = Group(shared, [*g.members, i])
            if shared >= min_shared and k * shared > (k - 1) * p and row_length(batch, joined) <= row_tokens:
                groups[-1] = joined
                continue
        groups.append(Group(len(e.prompt_ids), [i]))
    return groups


def pack_sft(batch: list[SftExample], groups: list[Group], pad_id: int) -> PackedSft:
    rows = []
    for g in groups:
        prefix = batch[g.members[0]].prompt_ids[: g.prefix_len]
        rows.append((prefix, [batch[i].prompt_ids[g.prefix_len:] + batch[i].completion_ids for i in g.members]))
    input_ids, mask, position_ids, offsets = pack_rows(rows, pad_id)
    targets, where, owner = [], [], []
    for r, g in enumerate(groups):
        for i, off in zip(g.members, offsets[r], strict=True):
            e = batch[i]
            start = len(e.prompt_ids) - g.prefix_len  # the completion's first token within the branch
            for j, tok in enumerate(e.completion_ids, start):
                if g.prefix_len == 0 and j == 0:
                    continue  # an empty prompt's first completion token has no context (unscored unpacked too)
                targets.append(tok)
                where.append((r, predictor(g.prefix_len, off, j)))
                owner.append(i)
    return PackedSft(input_ids, mask, position_ids, torch.tensor(targets, dtype=torch.long),
                     torch.tensor(where, dtype=torch.long).reshape(-1, 2), torch.tensor(owner, dtype=torch.long),
                     torch.tensor([e.weight for e in batch], dtype=torch.float32),
                     sum(row_length(batch, g) for g in groups))


def packed_loss(model: Any, packed: PackedSft) -> torch.Tensor:
    """`trainer.weighted_loss` of the batch, computed from its packed rows."""
    logps = scored_logps(model, packed.input_ids, packed.attention_mask, packed.position_ids, packed.score_index,
                         packed.targets)
    owner = packed.example_of_token.to(logps.device)
    n = len(packed.weights)
    nll = torch.zeros(n, device=logps.device, dtype=logps.dtype).index_add(0, owner, -logps)
    count = torch.zeros(n, device=logps.device, dtype=logps.dtype).index_add(0, owner, torch.ones_like(logps))
    return (packed.weights.to(logps.device) * (nll / count.clamp(min=1))).mean()
