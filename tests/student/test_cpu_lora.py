"""The grouped CPU LoRA ops give vLLM's reference ops' results, and vLLM loads them as a general plugin."""

from __future__ import annotations

import pytest
import torch
from vllm.lora.ops import torch_ops as reference

from services.student import cpu_lora

SLOTS, RANK, HIDDEN, OUT = 4, 8, 24, 40


@pytest.fixture
def weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g),  # lora_a: [slots, 1, rank, in]
            "b": torch.randn(SLOTS, 1, OUT, RANK, generator=g)}  # lora_b: [slots, 1, out, rank]


INDICES = [[2] * 6, [0, 3, 3, 1, 0, 2], [1]]


@pytest.mark.parametrize("indices", INDICES)
def test_shrink_and_expand_match_the_reference_ops(weights: dict[str, torch.Tensor], indices: list[int]) -> None:
    idx = torch.tensor(indices)
    x = torch.randn(len(indices), HIDDEN)
    mine, ref = torch.zeros(len(indices), RANK), torch.zeros(len(indices), RANK)
    cpu_lora.bgmv_shrink(x, weights["a"], mine, idx, 0.5)
    reference.bgmv_shrink(x, weights["a"], ref, idx, 0.5)
    torch.testing.assert_close(mine, ref)
    start = torch.randn(len(indices), OUT + 4)
    for add in (True, False):
        mine_y, ref_y = start.clone(), start.clone()
        cpu_lora.bgmv_expand(mine, weights["b"], mine_y, idx, add)
        reference.bgmv_expand(ref, weights["b"], ref_y, idx, add)
        torch.testing.assert_close(mine_y, ref_y)
        mine_y, ref_y = start.clone(), start.clone()
        cpu_lora.bgmv_expand_slice(mine, weights["b"], mine_y, idx, 3, OUT, add)
        reference.bgmv_expand_slice(ref, weights["b"], ref_y, idx, 3, OUT, add)
        torch.testing.assert_close(mine_y, ref_y)


def test_prefill_ops_apply_each_sequences_adapter_to_its_tokens(weights: dict[str, torch.Tensor]) -> None:
    seq_lens, seq_loras = torch.tensor([3, 1, 4]), torch.tensor([2, 0, 2])
    n = int(seq_lens.sum())
    meta = (torch.tensor([0, 3, 4]), seq_lens, seq_loras, 3, 4, n)
    x = torch.randn(n, HIDDEN)
    mine, ref = torch.zeros(n, RANK), torch.zeros(n, RANK)
    cpu_lora.sgmv_shrink(x, weights["a"], mine, *meta, 2.0)
    reference.sgmv_shrink(x, weights["a"], ref, *meta, 2.0)
    torch.testing.assert_close(mine, ref)
    mine_y, ref_y = torch.ones(n, OUT), torch.ones(n, OUT)
    cpu_lora.sgmv_expand(mine, weights["b"], mine_y, *meta, True)
    reference.sgmv_expand(ref, weights["b"], ref_y, *meta, True)
    torch.testing.assert_close(mine_y, ref_y)
    mine_y, ref_y = torch.ones(n, OUT * 2), torch.ones(n, OUT * 2)
    cpu_lora.sgmv_expand_slice(mine, weights["b"], mine_y, *meta, OUT, OUT, False)
    reference.sgmv_expand_slice(ref, weights["b"], ref_y, *meta, OUT, OUT, False)
    torch.testing.assert_close(mine_y, ref_y)


def test_a_token_without_an_adapter_gets_no_lora_term(weights: dict[str, torch.Tensor]) -> None:
    """-1 (the base model beside adapters in one batch) adds nothing, whatever the last slot holds."""
    idx = torch.tensor([1, -1, 1])
    x = torch.randn(3, HIDDEN)
    y = torch.zeros(3, RANK)
    cpu_lora.bgmv_shrink(x, weights["a"], y, idx, 1.0)
    assert torch.count_nonzero(y[1]) == 0
    torch.testing.assert_close(y[[0, 2]], x[[0, 2]] @ weights["a"][1, 0].T)
    out = torch.full((3, OUT), 7.0)
    cpu_lora.bgmv_expand(y, weights["b"], out, idx, True)
    torch.testing.assert_close(out[1], torch.full((OUT,), 7.0))
    assert not torch.allclose(out[0], torch.full((OUT,), 7.0))


def test_vllm_loads_the_plugin_into_the_cpu_punica_wrapper() -> None:
    from vllm.lora.punica_wrapper import punica_cpu
    from vllm.plugins import DEFAULT_PLUGINS_GROUP, load_plugins_by_group

    plugins = load_plugins_by_group(DEFAULT_PLUGINS_GROUP)  # what load_general_plugins runs in each vLLM process
    plugins["distillery_cpu_lora"]()
    for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "sgmv_shrink", "sgmv_expand", "sgmv_expand_slice"):
        assert getattr(punica_cpu, name) is getattr(cpu_lora, name), name
