"""Shared-prefix SFT packing computes the plain SFT loss and gradients exactly, with fewer tokens.

A tiny Llama built from a transformers config (random weights, no download) with a LoRA adapter whose B matrices are
randomised (peft starts them at zero, which would make every A gradient zero on both paths and the comparison
empty). Token ids are random: a shared "system prompt" prefix, per-example suffixes and completions of different
lengths, different weights.
"""

from __future__ import annotations

import random

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from ray_jobs.sft.packing import MIN_SHARED_TOKENS, group, pack_sft, packed_loss, row_length
from ray_jobs.sft.trainer import batch_loss, collate, train_sft, weighted_loss
from ray_jobs.trees.encode import SftExample

VOCAB, PAD = 101, 0
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_model(seed: int = 0):  # type: ignore[no-untyped-def]
    # sdpa, as the trainer loads the student (`load_model`): eager attention adds a boolean 4D mask as numbers.
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, attn_implementation="sdpa")
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                             target_modules=TARGETS, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model.float()


def toks(rng: random.Random, n: int) -> list[int]:
    return [rng.randint(1, VOCAB - 1) for _ in range(n)]


def shared_batch(seed: int = 0, prefix_len: int = 40) -> list[SftExample]:
    """Six examples on one prefix (suffixes of 0..11 tokens, completions of 1..9), and one on its own prompt."""
    rng = random.Random(seed)
    prefix = toks(rng, prefix_len)
    out = [SftExample(prefix + toks(rng, s), toks(rng, c), w)
           for s, c, w in [(3, 5, 1.0), (11, 2, 0.5), (0, 4, 2.0), (7, 9, 1.5), (1, 1, 0.25), (5, 6, 0.75)]]
    out.insert(3, SftExample(toks(rng, 25), toks(rng, 7), 1.2))  # no shared prefix: a plain row in the pack
    return out


def plain_loss(model, batch: list[SftExample]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    inputs = collate(batch, PAD)
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    return weighted_loss(logits, inputs["labels"], inputs["weights"])


def grads(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    model.zero_grad(set_to_none=True)
    loss.backward()
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out


def test_packed_loss_and_lora_gradients_equal_the_plain_ones() -> None:
    model = tiny_model()
    batch = shared_batch()
    plain = plain_loss(model, batch)
    g_plain = grads(model, plain)
    packed, work = batch_loss(model, batch, PAD)
    g_packed = grads(model, packed)

    assert work["rows"] == 2  # the six sharing the prefix in one row, the odd one in its own
    assert work["tokens"] == work["example_tokens"] - 5 * 40  # the prefix computed once instead of six times
    assert packed.item() == pytest.approx(plain.item(), rel=1e-6, abs=1e-7)
    assert len(g_plain) == 2 * len(TARGETS) * 2  # A and B of every targeted projection in both layers
    for name, g in g_plain.items():
        assert g.abs().max() > 1e-6, f"{name}: zero gradient, the comparison would be empty"
        torch.testing.assert_close(g_packed[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_the_loss_is_weighted_per_example_and_normalised_by_the_batch() -> None:
    """The equality above is not a coincidence of the weights: reweighting one example changes both alike."""
    model = tiny_model()
    batch = shared_batch()
    groups = group(batch)
    with torch.no_grad():
        base = packed_loss(model, pack_sft(batch, groups, PAD)).item()
        batch[0].weight += 1.0
        moved = packed_loss(model, pack_sft(batch, groups, PAD)).item()
        assert moved != pytest.approx(base, rel=1e-4)
        assert moved == pytest.approx(plain_loss(model, batch).item(), rel=1e-6)


def test_the_tree_mask_is_what_makes_them_equal() -> None:
    """Control: let the branches see each other (a plain causal mask over the row) and the loss moves."""
    model = tiny_model()
    batch = shared_batch()
    packed = pack_sft(batch, group(batch), PAD)
    with torch.no_grad():
        exact = packed_loss(model, packed).item()
        T = packed.input_ids.shape[1]
        packed.attention_mask[:] = torch.tril(torch.ones(T, T, dtype=torch.bool))
        leaky = packed_loss(model, packed).item()
        assert exact == pytest.approx(plain_loss(model, batch).item(), rel=1e-6)
    assert abs(leaky - exact) > 1e-4


def test_groups_split_at_the_row_budget_and_still_give_the_plain_loss() -> None:
    rng = random.Random(1)
    prefix = toks(rng, 30)
    batch = [SftExample(prefix + toks(rng, 4), toks(rng, 6), 1.0 + i / 10) for i in range(7)]  # 10-token branches
    budget = 30 + 3 * 10
    groups = group(batch, row_tokens=budget)
    assert sorted(len(g.members) for g in groups) == [1, 3, 3]
    assert sorted(i for g in groups for i in g.members) == list(range(7))
    assert all(row_length(batch, g) <= budget for g in groups)
    assert all(g.prefix_len >= 30 for g in groups)
    assert [len(g.members) for g in group(batch, row_tokens=budget + 9)] == [3, 3, 1]  # one token short of 4
    assert [len(g.members) for g in group(batch, row_tokens=budget + 10)] == [4, 3]

    model = tiny_model()
    with torch.no_grad():
        packed, work = batch_loss(model, batch, PAD, row_tokens=budget)  # rows of unequal length: padding
        assert work["rows"] == 3
        assert packed.item() == pytest.approx(plain_loss(model, batch).item(), rel=1e-6)


def test_a_newcomer_that_would_shorten_the_prefix_too_much_starts_a_new_row() -> None:
    rng = random.Random(2)
    head, long_tail = toks(rng, 20), toks(rng, 60)
    a = SftExample(head + long_tail + [1], [5, 6])
    b = SftExample(head + long_tail + [2], [7])
    c = SftExample([*head, VOCAB - 1, *toks(rng, 5)], [8])  # shares 20 with a and b, who share 80 with each other
    groups = group([a, b, c])
    assert [(g.prefix_len, sorted(g.members)) for g in groups] == [(80, [0, 1]), (26, [2])]
    # Shares of 20 with c alone, or among equals, are worth packing: the prefix is long enough.
    assert [g.prefix_len for g in group([a, c])] == [20]


def test_examples_without_a_shared_prefix_train_plain() -> None:
    rng = random.Random(3)
    distinct = [SftExample([k, *toks(rng, 30)], toks(rng, 4), 1.0) for k in range(1, 7)]  # first tokens differ
    short = [SftExample([9] * (MIN_SHARED_TOKENS - 1) + toks(rng, 20), toks(rng, 3)) for _ in range(3)]
    assert all(len(g.members) == 1 for g in group(distinct))
    assert all(len(g.members) == 1 for g in group(short))  # a prefix under MIN_SHARED_TOKENS is not shared

    model = tiny_model()
    with torch.no_grad():
        loss, work = batch_loss(model, distinct, PAD)
        assert work == {"rows": 6, "tokens": work["example_tokens"], "example_tokens": 6 * 35}
        assert torch.equal(loss, plain_loss(model, distinct))  # the very same computation, bit for bit

    log: list[dict] = []
    out = train_sft(model, distinct, lr=1e-2, steps=8, batch_size=6, pad_id=PAD, seed=0, log=log.append)
    assert out["sft_steps"] == 8 and out["sft_packed_token_share"] == 1.0
    assert all(m["rows"] == 6 for m in log)
    assert log[-1]["loss"] < log[0]["loss"] - 0.2


def test_packed_training_follows_the_plain_trajectory() -> None:
    """Several optimizer steps (AdamW, clipping, schedule) on shuffled batches: the same losses step by step and
    the same adapter at the end."""
    data = shared_batch(4) + shared_batch(5)
    init = {n: p.detach().clone() for n, p in tiny_model().named_parameters() if p.requires_grad}
    runs = {}
    for pack in (False, True):
        model, log = tiny_model(), []
        out = train_sft(model, data, lr=1e-2, steps=7, batch_size=4, pad_id=PAD, seed=0, log=log.append,
                        pack=pack)
        runs[pack] = (out, log, {n: p.detach() for n, p in model.named_parameters() if p.requires_grad})
    (plain, plain_log, plain_w), (packed, packed_log, packed_w) = runs[False], runs[True]
    assert plain["sft_packed_token_share"] == 1.0 and packed["sft_packed_token_share"] < 0.7
    assert any(m["rows"] < 4 for m in packed_log)
    assert [m["loss"] for m in packed_log] == pytest.approx([m["loss"] for m in plain_log], abs=2e-4)
    for name, w in plain_w.items():
        assert (w - init[name]).abs().max() > 1e-3, f"{name} did not move"
        torch.testing.assert_close(packed_w[name], w, rtol=1e-4, atol=1e-5, msg=name)


def test_the_plain_loss_is_exact_on_a_real_vocabulary_size() -> None:
    """Both paths must be the loss, not a 1e-4 approximation of it: logits over a 49k vocabulary (SmolLM2's),
    against the same loss in float64."""
    torch.manual_seed(0)
    logits = torch.randn(3, 40, 49152) * 3 + 20
    labels = torch.randint(0, 49152, (3, 40))
    labels[:, :25] = -100  # the prompts
    labels[:, 25::2] = logits[:, 24:-1:2].argmax(-1)  # some confident predictions too
    weights = torch.tensor([1.0, 0.5, 2.0])
    tok = -logits[:, :-1].double().log_softmax(-1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    scored = labels[:, 1:] != -100
    direct = (weights.double() * (tok * scored).sum(1) / scored.sum(1)).mean()
    assert abs(weighted_loss(logits, labels, weights).item() - direct.item()) < 1e-5
