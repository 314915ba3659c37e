"""Tree batching: one forward pass per preference tree, the node's prompt computed once for all its children.

A tree node is a prompt P with children C_1..C_k (that round's outputs of every agent). The paper's code flattens
each tree into independent (P, C_w, C_l) pairs, so P is recomputed 2 x (number of pairs) times. Here a tree is
packed into one row [P, C_1, ..., C_k] with a tree attention mask: P is causal, each child sees P and itself
(causally), never another child, and its position ids continue from len(P). The log-prob of every child token is
then exactly what the model gives it after [P, C_i] alone (checked against TRL in tests/ray_jobs).
Several trees make a batch of rows, right-padded; padding attends nowhere and is never scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Tree:
    prompt_ids: list[int]
    children: list[list[int]]  # completion token ids (each non-empty)
    pairs: list[tuple[int, int]]  # (chosen child, rejected child), indices into `children`
    weight: float = 1.0  # per-level weighting knob; 1.0 = the paper


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, 1, T, T] bool: True = may attend
    position_ids: torch.Tensor  # [B, T]
    # For every child of every tree, in order: (row, prompt_len, offset in the row, length).
    spans: list[tuple[int, int, int, int]]
    chosen_idx: torch.Tensor  # [n_pairs] into the flat list of children
    rejected_idx: torch.Tensor
    pair_weights: torch.Tensor  # [n_pairs]
    targets: torch.Tensor  # [n_child_tokens] the token ids scored, gathered with `score_index`
    score_index: torch.Tensor  # [n_child_tokens, 2] (row, position whose logits predict the token)
    child_of_token: torch.Tensor  # [n_child_tokens] which child each scored token belongs to

    @property
    def n_children(self) -> int:
        return len(self.spans)


def trees_from_pairs(pairs: Iterable[Mapping[str, Sequence[int]]]) -> list[Tree]:
    """Group flat tokenized pairs (`prompt_ids`, `chosen_ids`, `rejected_ids`, as TRL's DPO datasets hold them) into
    trees: one per distinct prompt, each distinct completion one child, each pair two indices into them."""
    by_prompt: dict[tuple[int, ...], Tree] = {}
    for ex in pairs:
        t = by_prompt.setdefault(tuple(ex["prompt_ids"]), Tree(list(ex["prompt_ids"]), [], []))
        ids = []
        for side in ("chosen_ids", "rejected_ids"):
            child = list(ex[side])
            if child not in t.children:
                t.children.append(child)
            ids.append(t.children.index(child))
        t.pairs.append((ids[0], ids[1]))
    return list(by_prompt.values())


def pack_rows(rows: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], pad_id: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[int]]]:
    """Rows [P, C_1, ..., C_k] from (P, [C_1..C_k]) pairs, right-padded: input_ids [B, T], the tree attention
    mask [B, 1, T, T] (True = may attend), position ids [B, T], and per row the offset of each branch C_i.
    P is causal; each branch sees P and itself (causally), never another branch; its positions continue from
    len(P). Shared by T-DPO (a branch is a child) and SFT packing (a branch is a prompt suffix + completion)."""
    flat = [list(prefix) + [tok for c in branches for tok in c] for prefix, branches in rows]
    T = max(len(r) for r in flat)
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, 1, T, T), dtype=torch.bool)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    offsets: list[list[int]] = []
    for b, ((prefix, branches), row) in enumerate(zip(rows, flat, strict=True)):
        input_ids[b, : len(row)] = torch.tensor(row)
        L = len(prefix)
        mask[b, 0, :L, :L] = torch.tril(torch.ones(L, L, dtype=torch.bool))
        position_ids[b, :L] = torch.arange(L)
        offsets.append([])
        off = L
        for c in branches:
            k = len(c)
            mask[b, 0, off : off + k, :L] = True
            mask[b, 0, off : off + k, off : off + k] = torch.tril(torch.ones(k, k, dtype=torch.bool))
            position_ids[b, off : off + k] = torch.arange(L, L + k)
            offsets[-1].append(off)
            off += k
        # Padding rows attend to themselves only (keeps softmax finite); they are never scored.
        for p in range(len(row), T):
            mask[b, 0, p, p] = True
    return input_ids, mask, position_ids, offsets


def predictor(prefix_len: int, offset: int, j: int) -> int:
    """Position whose logits predict token j of the branch at `offset`: the prefix's last token for j = 0, else
    the branch's own token j - 1."""
    return prefix_len - 1 if j == 0 else offset + j - 1


def pack(trees: list[Tree], pad_id: int) -> PackedBatch:
    input_ids, mask, position_ids, offsets = pack_rows([(t.prompt_ids, t.children) for t in trees], pad_id)
    spans: list[tuple[int, int, int, int]] = []
    chosen, rejected, weights, targets, where, owner = [], [], [], [], [], []
    for b, t in enumerate(trees):
        L = len(t.prompt_ids)
        base = len(spans)
        for c, off in zip(t.children, offsets[b], strict=True):
            child = len(spans)
            for j, tok in enumerate(c):
                targets.append(tok)
                where.append((b, predictor(L, off, j)))
                owner.append(child)
            spans.append((b, L, off, len(c)))
        for w, r in t.pairs:
            chosen.append(base + w)
            rejected.append(base + r)
            weights.append(t.weight)
    return PackedBatch(
        input_ids, mask, position_ids, spans, torch.tensor(chosen, dtype=torch.long),
        torch.tensor(rejected, dtype=torch.long), torch.tensor(weights, dtype=torch.float32),
        torch.tensor(targets, dtype=torch.long), torch.tensor(where, dtype=torch.long),
        torch.tensor(owner, dtype=torch.long),
    )


def scored_logps(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor, score_index: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-prob of each target token [n], predicted at its (row, position) in `score_index` [n, 2]."""
    device = next(model.parameters()).device
    # Run the decoder, then the LM head only at the scored positions: [B, T, vocab] logits never exist.
    hidden = model.get_decoder()(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        use_cache=False,
    ).last_hidden_state
    idx = score_index.to(device)
    picked = model.get_output_embeddings()(hidden[idx[:, 0], idx[:, 1]]).float().log_softmax(-1)
    return picked.gather(-1, targets.to(device)[:, None])[:, 0]


def child_logps(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Sequence log-prob of every child given its tree's prompt: [n_children]."""
    token_logps = scored_logps(model, batch.input_ids, batch.attention_mask, batch.position_ids,
                               batch.score_index, batch.targets)
    out = torch.zeros(batch.n_children, device=token_logps.device, dtype=token_logps.dtype)
    return out.index_add(0, batch.child_of_token.to(token_logps.device), token_logps)
