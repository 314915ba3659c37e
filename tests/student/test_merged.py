"""Merging the promoted adapter into a running vLLM engine: the real model, real AsyncLLM, real PEFT adapters.

One scenario runs once per module (the engine takes most of the time); each test checks one of its claims.
"""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.lora_factory import make_random_adapter

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Write a haiku about the sea.",
    "Q: What is 17 times 3?\nA:",
    "The three primary colors are",
    "Once upon a time, in a small village,",
    "To make a cup of tea, first",
    "import numpy as np\nx =",
]
NEW_TOKENS = 16


def engine_args(model_dir: str, dtype: str = "bfloat16", max_lora_rank: int = 16, max_num_seqs: int = 16) -> Any:
    from vllm import AsyncEngineArgs

    from services.student.merged import WORKER_EXTENSION

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    return AsyncEngineArgs(
        model=model_dir, tokenizer=model_dir, dtype=dtype, max_model_len=512, enable_lora=True,
        max_lora_rank=max_lora_rank, max_loras=2, max_num_seqs=max_num_seqs, disable_log_stats=True,
        worker_extension_cls=WORKER_EXTENSION,
    )


async def generate(engine: Any, prompt: str, lora: Any = None, max_tokens: int = NEW_TOKENS) -> tuple[list[int], float]:
    """Greedy token ids and the first token's logprob."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=1, ignore_eos=True)
    final = None
    async for out in engine.generate(prompt, params, request_id=uuid.uuid4().hex, lora_request=lora):
        final = out
    assert final is not None
    completion = final.outputs[0]
    first = completion.token_ids[0]
    return list(completion.token_ids), completion.logprobs[0][first].logprob


async def generate_all(engine: Any, lora: Any = None) -> list[tuple[list[int], float]]:
    return list(await asyncio.gather(*(generate(engine, p, lora) for p in PROMPTS)))


async def scenario(model_dir: str, root: Path, dtype: str = "bfloat16") -> dict[str, Any]:
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.async_llm import AsyncLLM

    from services.student.merged import MergedWeights

    v1 = str(make_random_adapter(model_dir, root / "v1", 1, ["q_proj", "k_proj", "v_proj", "o_proj"]))
    # v2 targets other modules (MLP included) so relative adapters need the zero padding and merges the gate/up fusion.
    v2 = str(make_random_adapter(model_dir, root / "v2", 2, ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]))
    engine = AsyncLLM.from_engine_args(engine_args(model_dir, dtype))
    try:
        merged = MergedWeights(model_dir, root / "work")
        out: dict[str, Any] = {
            "base": await generate_all(engine),
            "lora_v1": await generate_all(engine, LoRARequest("v1", 1, v1)),
            "lora_v2": await generate_all(engine, LoRARequest("v2", 2, v2)),
        }
        out["merge_v1_s"] = await merged.merge(engine, v1)
        for lora_id in (1, 2):  # deltas relative to the old weights are wrong now
            await engine.remove_lora(lora_id)
        out["merged_v1"] = await generate_all(engine)
        rel_base = merged.relative_adapter(None, root / "rel-base")
        rel_v2 = merged.relative_adapter(v2, root / "rel-v2")
        out["rel_base"] = await generate_all(engine, LoRARequest("rel-base", 11, str(rel_base)))
        out["rel_v2"] = await generate_all(engine, LoRARequest("rel-v2", 12, str(rel_v2)))
        await merged.merge(engine, v2)
        out["merged_v2"] = await generate_all(engine)
        await merged.merge(engine, None)
        out["restored"] = await generate_all(engine)
        return out
    finally:
        engine.shutdown()
        del engine
        gc.collect()  # now, not at interpreter exit, where AsyncLLM.__del__ finds vLLM's modules torn down


@pytest.fixture(scope="module")
def runs(model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The scenario in float32, where merged and LoRA paths compute the same sums: results must agree exactly."""
    return asyncio.run(scenario(model_dir, tmp_path_factory.mktemp("merged-fp32"), "float32"))


def tokens(run: list[tuple[list[int], float]]) -> list[list[int]]:
    return [ids for ids, _ in run]


def assert_same(got: list[tuple[list[int], float]], want: list[tuple[list[int], float]]) -> None:
    """Identical greedy completions and first-token logprobs equal up to float32 summation order."""
    assert tokens(got) == tokens(want)
    for (_, g), (_, w) in zip(got, want, strict=True):
        assert abs(g - w) < 1e-3


def mean_logprob_gap(a: list[tuple[list[int], float]], b: list[tuple[list[int], float]]) -> float:
    return sum(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True)) / len(a)


def test_adapters_change_outputs(runs: dict[str, Any]) -> None:
    assert tokens(runs["lora_v1"]) != tokens(runs["base"])
    assert tokens(runs["lora_v2"]) != tokens(runs["base"])


def test_merged_weights_serve_the_adapter_without_lora(runs: dict[str, Any]) -> None:
    assert_same(runs["merged_v1"], runs["lora_v1"])
    assert_same(runs["merged_v2"], runs["lora_v2"])  # v2 also merges the fused gate/up and restores v1's k_proj
    assert runs["merge_v1_s"] < 30


def test_relative_adapters_serve_base_and_other_versions(runs: dict[str, Any]) -> None:
    assert_same(runs["rel_base"], runs["base"])
    assert_same(runs["rel_v2"], runs["lora_v2"])


def test_merging_none_restores_the_base_exactly(runs: dict[str, Any]) -> None:
    assert runs["restored"] == runs["base"]


@pytest.mark.e2e
def test_bf16_merge_matches_the_lora_path_up_to_rounding(model_dir: str, tmp_path: Path) -> None:
    """bfloat16, the service's dtype on a GPU or a CPU with native bf16. W' = bf16(W + ΔW) rounds once where the
    LoRA path rounds W and adds the delta in bf16 activations, so completions may part after a near-tie (measured:
    first-token logprob gaps up to 0.15 against 0.3-0.5 for the adapters' own effect); the merged model must still
    sit much closer to its adapter than to the base, and restoring must be bit-exact.
    """
    runs = asyncio.run(scenario(model_dir, tmp_path, "bfloat16"))
    assert runs["restored"] == runs["base"]
    for merged, lora, other in (("merged_v1", "lora_v1", "base"), ("merged_v2", "lora_v2", "base"),
                                ("rel_base", "base", "lora_v1"), ("rel_v2", "lora_v2", "lora_v1")):
        assert mean_logprob_gap(runs[merged], runs[lora]) < 0.5 * mean_logprob_gap(runs[lora], runs[other]), merged
