"""Tree-batched T-DPO equals TRL's DPOTrainer loss on identical pairs (the issue's 1e-4 bound).

A small Llama built from config (random weights, the embedded model's tokenizer) and a perturbed copy as the frozen
reference. TRL tokenizes the pairs; the same token ids are grouped into trees by prompt and scored with one
forward per tree.
"""

from __future__ import annotations

import copy
import itertools
import math

import datasets
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from trl import DPOConfig, DPOTrainer

from ray_jobs.tdpo.loss import TreeDPOLoss, dpo_sigmoid_loss
from ray_jobs.tdpo.packing import child_logps, pack, trees_from_pairs

# Two tree nodes: 2 chosen x 2 rejected, and 1 chosen x 3 rejected outputs (all agents, one round each).
NODES = {
    "Question: Mia has 5 apples. She buys 3 more. How many apples does Mia have now?\n": (
        [" Start 5. 5 + 3 = 8.\nFinal answer: 8", " 8 apples.\nFinal answer: 8"],
        [" 5 - 3 = 2.\nFinal answer: 2", " I guess.\nFinal answer: 7"],
    ),
    "Question: What is 6 * 7?\n": (
        [" 6 * 7 = 42.\nFinal answer: 42"],
        [" 6 + 7 = 13.\nFinal answer: 13", " Final answer: 41", " It is 36.\nFinal answer: 36"],
    ),
}


@pytest.fixture(scope="module")
def models(model_dir: str):
    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, attn_implementation="sdpa")
    policy = LlamaForCausalLM(cfg)
    ref = copy.deepcopy(policy)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))  # policy != reference, so log-ratios are not zero
    return tok, policy, ref


def trl_loss_and_data(tok, policy, ref, beta: float, tmp_path):
    rows = [{"prompt": p, "chosen": c, "rejected": r}
            for p, (chosen, rejected) in NODES.items() for c, r in itertools.product(chosen, rejected)]
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(rows), beta=beta, report_to="none",
                     use_cpu=True, max_length=None, bf16=False, loss_type=["sigmoid"])
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()  # no dropout, same as ours below
    return trainer.compute_loss(trainer.model, batch), trainer.train_dataset


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_tree_batched_loss_equals_trl_dpo_on_identical_pairs(models, tmp_path, beta):
    tok, policy, ref = models
    expected, tokenized = trl_loss_and_data(tok, policy, ref, beta, tmp_path)
    trees = trees_from_pairs(tokenized)
    assert [len(t.children) for t in trees] == [4, 4] and sum(len(t.pairs) for t in trees) == 7
    batch = pack(trees, tok.pad_token_id)
    policy.eval()
    with torch.no_grad():
        ref_logps = child_logps(ref, batch)
    loss = TreeDPOLoss(beta)(child_logps(policy, batch), ref_logps, batch.chosen_idx, batch.rejected_idx)
    assert abs(loss.item() - expected.item()) < 1e-4, (loss.item(), expected.item())
    assert abs(expected.item() - 0.6931) > 1e-3  # not the trivial log(2) of a policy equal to its reference
    loss.backward()  # gradients flow through the shared prompt into the policy
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())


def test_weights_default_to_the_plain_mean_and_reweight_when_given():
    pc, pr, rc, rr = (torch.tensor(v) for v in ([1.0, 2.0], [0.5, 2.5], [0.8, 2.2], [0.4, 2.0]))
    # Eq. 7 by hand: logits = (pc - rc) - (pr - rr) = [0.2 - 0.1, -0.2 - 0.5] = [0.1, -0.7]; loss = -log sigmoid(b*z).
    per_pair = [math.log1p(math.exp(-0.1 * z)) for z in (0.1, -0.7)]
    plain = dpo_sigmoid_loss(pc, pr, rc, rr, 0.1)
    assert plain.item() == pytest.approx(sum(per_pair) / 2, abs=1e-6)
    assert torch.isclose(plain, dpo_sigmoid_loss(pc, pr, rc, rr, 0.1, torch.ones(2)))
    skewed = dpo_sigmoid_loss(pc, pr, rc, rr, 0.1, torch.tensor([1.0, 3.0]))
    assert skewed.item() == pytest.approx((per_pair[0] + 3 * per_pair[1]) / 4, abs=1e-6)  # the weighted mean
    # A normalizer replaces the weights' sum: one tree of a batch whose total weight is 10.
    part = dpo_sigmoid_loss(pc, pr, rc, rr, 0.1, torch.tensor([1.0, 3.0]), normalizer=10.0)
    assert part.item() == pytest.approx((per_pair[0] + 3 * per_pair[1]) / 10, abs=1e-6)
    assert dpo_sigmoid_loss(pc, pr, rc, rr, 0.1, normalizer=4.0).item() == pytest.approx(sum(per_pair) / 4, abs=1e-6)
    # beta scales the log-ratio margin; a policy equal to its reference scores log 2 whatever beta is.
    assert dpo_sigmoid_loss(pc, pr, rc, rr, 0.5).item() == pytest.approx(
        sum(math.log1p(math.exp(-0.5 * z)) for z in (0.1, -0.7)) / 2, abs=1e-6)
    assert dpo_sigmoid_loss(pc, pr, pc, pr, 0.5).item() == pytest.approx(math.log(2), abs=1e-6)


def test_tree_loss_scores_each_pair_from_the_children_it_indexes():
    policy = torch.tensor([-1.0, -2.0, -4.0, -3.0])  # children 0, 1 chosen; 2, 3 rejected
    ref = torch.tensor([-1.5, -2.0, -3.0, -3.5])
    chosen, rejected = torch.tensor([0, 0, 1]), torch.tensor([2, 3, 3])
    loss = TreeDPOLoss(0.5)(policy, ref, chosen, rejected)
    expected = dpo_sigmoid_loss(policy[chosen], policy[rejected], ref[chosen], ref[rejected], 0.5)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    z = [(0.5 - (-1.0)), (0.5 - 0.5), (0.0 - 0.5)]  # per pair: chosen log-ratio - rejected log-ratio
    assert loss.item() == pytest.approx(sum(math.log1p(math.exp(-0.5 * v)) for v in z) / 3, abs=1e-6)
    weighted = TreeDPOLoss(0.5)(policy, ref, chosen, rejected, torch.tensor([2.0, 1.0, 1.0]), 8.0)
    assert weighted.item() == pytest.approx(
        sum(w * math.log1p(math.exp(-0.5 * v)) for w, v in zip((2, 1, 1), z, strict=True)) / 8, abs=1e-6)
    # Swapping chosen and rejected is a different (worse) loss: the direction matters.
    assert TreeDPOLoss(0.5)(policy, ref, rejected, chosen).item() > loss.item()
    assert TreeDPOLoss().beta == 0.1 and TreeDPOLoss(2.0).beta == 2.0  # D&R's default; any positive beta
    for bad in (0, -0.1):
        with pytest.raises(ValueError, match="beta must be positive"):
            TreeDPOLoss(bad)
