"""The SFT and T-DPO stages on the real student (LoRA, CPU, a few steps on tiny data)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from ray_jobs.sft.trainer import collate, train_sft, weighted_loss
from ray_jobs.tdpo.packing import child_logps, pack
from ray_jobs.tdpo.trainer import reference_logps, train_tdpo
from ray_jobs.train.worker import load_model
from ray_jobs.trees.build import SftItem, TreeNode
from ray_jobs.trees.encode import Encoder
from services.config import LoraSettings
from services.student.tokenizer import PromptTokenizer

Q = "Mia has 12 apples. She buys 5 more apples. How many apples does Mia have now?"
RIGHT = "### Answer\nStart: 12.\nStep 1: She buys 5 more apples. So 12 + 5 = 17.\nFinal answer: 17"
WRONG = "### Answer\nStart: 12.\nStep 1: She buys 5 more apples. So 12 - 5 = 7.\nFinal answer: 7"


@pytest.fixture(scope="module")
def encoder(model_dir: str) -> Encoder:
    return Encoder(PromptTokenizer(model_dir), 512, 128)


def model(model_dir: str):  # type: ignore[no-untyped-def]
    torch.set_num_threads(2)
    return load_model(model_dir, LoraSettings(dropout=0.0).model_dump(), "cpu", seed=0)


def test_sft_masks_the_prompt_and_learns_the_completion(model_dir: str, encoder: Encoder) -> None:
    ex = encoder.sft([SftItem(0, "rationale", Q, RIGHT)], Counter())
    batch = collate(ex, encoder.pad_id)
    n_prompt = len(ex[0].prompt_ids)
    assert (batch["labels"][0, :n_prompt] == -100).all() and (batch["labels"][0, n_prompt:] != -100).all()
    m = model(model_dir)
    log: list[dict] = []
    out = train_sft(m, ex, lr=1e-3, steps=6, batch_size=1, pad_id=encoder.pad_id, seed=0, log=log.append)
    assert out["sft_steps"] == 6 == len(log)
    assert out["sft_loss_last"] < 0.5 * out["sft_loss_first"]


def test_sft_loss_weights_each_example_by_its_weight(model_dir: str, encoder: Encoder) -> None:
    """FAIR's mix: the batch loss is the weighted mean of per-example completion cross-entropies."""
    items = [SftItem(0, "rationale", Q, RIGHT, 1.5), SftItem(0, "explanation", Q, "The student subtracted.", 0.5)]
    ex = encoder.sft(items, Counter())
    batch = collate(ex, encoder.pad_id)
    assert batch["weights"].tolist() == [1.5, 0.5]
    m = model(model_dir)
    with torch.no_grad():
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        per = [m(input_ids=torch.tensor([e.prompt_ids + e.completion_ids]),
                 labels=torch.tensor([[-100] * len(e.prompt_ids) + e.completion_ids])).loss for e in ex]
        got = weighted_loss(logits, batch["labels"], batch["weights"])
    assert got.item() == pytest.approx((1.5 * per[0].item() + 0.5 * per[1].item()) / 2, rel=1e-4)
    assert got.item() != pytest.approx((per[0].item() + per[1].item()) / 2, rel=1e-3)


def test_tdpo_starts_at_the_reference_and_moves_toward_chosen(model_dir: str, encoder: Encoder) -> None:
    node = TreeNode(0, 0, Q, [RIGHT], [WRONG, "### Answer\nIt is 20.\nFinal answer: 20"], [(0, 0), (0, 1)])
    trees = encoder.trees([node], 1.0, Counter())
    m = model(model_dir)
    ref = reference_logps(m, trees, encoder.pad_id)
    with torch.no_grad():  # the reference is the adapter as it stands: the first policy equals it exactly
        assert torch.allclose(child_logps(m, pack(trees, encoder.pad_id)), ref[0], atol=1e-5)
    log: list[dict] = []
    out = train_tdpo(m, trees, beta=0.1, lr=5e-4, steps=8, trees_per_step=1, pad_id=encoder.pad_id, seed=0,
                     log=log.append)
    assert out["tdpo_steps"] == 8
    assert math.isclose(out["tdpo_loss_first"], math.log(2), abs_tol=1e-4)  # DPO's loss at policy == reference
    assert out["tdpo_loss_last"] < out["tdpo_loss_first"] and out["tdpo_reward_accuracy"] == 1.0
    with torch.no_grad():
        after = child_logps(m, pack(trees, encoder.pad_id))
    assert after[0] - ref[0][0] > after[1] - ref[0][1]  # chosen gained on rejected
