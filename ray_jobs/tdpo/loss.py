"""The DPO loss over preference pairs (Rafailov et al. 2023, Eq. 7), as T-DPO uses it on tree nodes.

    L = -E_(x, y_w, y_l) [ log sigmoid( beta * ( (log pi(y_w|x) - log ref(y_w|x))
                                                 - (log pi(y_l|x) - log ref(y_l|x)) ) ) ]

D&R's T-DPO is this loss with x = a tree node's prompt (instruction + question + the structured information of the
previous round) and (y_w, y_l) every (correct, incorrect) pair of that round's outputs. Here the sequence
log-probs come per *child* (computed once, see `packing.py`), and each pair indexes two children: a child in k pairs
is scored once, not k times. `weights` (per pair, e.g. by tree level) default to 1: the paper's plain mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def dpo_sigmoid_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    weights: torch.Tensor | None = None,
    normalizer: float | None = None,
) -> torch.Tensor:
    """Mean (or weighted mean) over pairs of -log sigmoid(beta * (chosen log-ratio - rejected log-ratio)).

    `normalizer`: divide the weighted sum by this instead of the weights' sum, so a batch processed one tree at
    a time (gradient accumulation) sums to exactly the batch's loss when it is the whole batch's weight."""
    logits = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(beta * logits)
    if weights is None:
        weights = torch.ones_like(losses)
    return (losses * weights).sum() / (weights.sum() if normalizer is None else normalizer)


class TreeDPOLoss(nn.Module):
    """DPO over pairs that index per-child log-probs: `chosen_idx[p]`, `rejected_idx[p]` for pair p."""

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.beta = beta

    def forward(
        self,
        policy_logps: torch.Tensor,  # [n_children]
        ref_logps: torch.Tensor,  # [n_children], no grad
        chosen_idx: torch.Tensor,  # [n_pairs]
        rejected_idx: torch.Tensor,  # [n_pairs]
        weights: torch.Tensor | None = None,  # [n_pairs]
        normalizer: float | None = None,
    ) -> torch.Tensor:
        return dpo_sigmoid_loss(policy_logps[chosen_idx], policy_logps[rejected_idx], ref_logps[chosen_idx],
                                ref_logps[rejected_idx], self.beta, weights, normalizer)
