"""Requests/s of the promoted adapter served through vLLM's LoRA path vs merged into the weights (one AsyncLLM).

`python bench/merged.py [--requests 64] [--concurrency 16] [--tokens 32] [--rounds 2]`

(a) base without LoRA, (b) adapter v1 through the LoRA path, (c) v1 merged (services/student/merged.py) served
without LoRA; rounds interleave a/b/c so a load change on the shared machine hits all three. Also: the seconds one
`merge()` takes, the engine processes' RSS, and whether requests in flight during a merge complete.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL_DIR = os.path.expanduser("~/.local/share/distillery/models/smollm2-135m-instruct")


def rss_mb() -> float:
    """RSS of this process and its children (the engine core and its worker)."""
    import psutil

    me = psutil.Process()
    return sum(p.memory_info().rss for p in [me, *me.children(recursive=True)]) / 2**20


async def one(engine: Any, prompt: str, tokens: int, lora: Any) -> int:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    final = None
    async for out in engine.generate(prompt, params, request_id=uuid.uuid4().hex, lora_request=lora):
        final = out
    assert final is not None
    return len(final.outputs[0].token_ids)


async def load(engine: Any, prompts: list[str], n: int, concurrency: int, tokens: int, lora: Any) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def run(i: int) -> int:
        async with sem:
            return await one(engine, prompts[i % len(prompts)], tokens, lora)

    t0 = time.monotonic()
    done = await asyncio.gather(*(run(i) for i in range(n)))
    assert all(d == tokens for d in done)
    return n / (time.monotonic() - t0)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.async_llm import AsyncLLM

    from services.student.merged import MergedWeights
    from tests.student.test_merged import PROMPTS, engine_args, make_random_adapter

    root = Path(tempfile.mkdtemp(prefix="bench-merged-"))
    v1 = str(make_random_adapter(MODEL_DIR, root / "v1", 1, ["q_proj", "k_proj", "v_proj", "o_proj"]))
    engine = AsyncLLM.from_engine_args(engine_args(MODEL_DIR, "bfloat16", 16, args.concurrency))
    merged = MergedWeights(MODEL_DIR, root / "work")
    lora = LoRARequest("v1", 1, v1)
    rps: dict[str, list[float]] = {"a_base": [], "b_lora": [], "c_merged": []}
    merges: list[float] = []
    try:
        await load(engine, PROMPTS, args.concurrency, args.concurrency, 4, None)  # warm-up
        await load(engine, PROMPTS, args.concurrency, args.concurrency, 4, lora)
        rss_before = rss_mb()
        for _ in range(args.rounds):
            rps["a_base"].append(await load(engine, PROMPTS, args.requests, args.concurrency, args.tokens, None))
            rps["b_lora"].append(await load(engine, PROMPTS, args.requests, args.concurrency, args.tokens, lora))
            merges.append(await merged.merge(engine, v1))
            rps["c_merged"].append(await load(engine, PROMPTS, args.requests, args.concurrency, args.tokens, None))
            merges.append(await merged.merge(engine, None))
        rss_after = rss_mb()
        # Requests in flight while the weights change: they must all complete.
        flight = [asyncio.create_task(one(engine, p, 64, None)) for p in PROMPTS * 2]
        await asyncio.sleep(1.0)
        merge_in_flight_s = await merged.merge(engine, v1)
        results = await asyncio.gather(*flight, return_exceptions=True)
        failed = [repr(r) for r in results if isinstance(r, BaseException)]
        short = [r for r in results if isinstance(r, int) and r != 64]
    finally:
        engine.shutdown()
        del engine
        gc.collect()  # now, not at interpreter exit, where AsyncLLM.__del__ finds vLLM's modules torn down
    return {
        "concurrency": args.concurrency, "requests": args.requests, "new_tokens": args.tokens,
        "rps": rps, "rps_mean": {k: round(sum(v) / len(v), 2) for k, v in rps.items()},
        "merge_s": merges, "merge_in_flight_s": merge_in_flight_s,
        "in_flight": {"requests": len(results), "failed": failed, "short": short},
        "rss_mb": {"before": round(rss_before), "after": round(rss_after)},
        "load_avg": os.getloadavg(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cli = parser.parse_args()
    report = asyncio.run(main(cli))
    print(json.dumps(report, indent=1))
    if cli.out:
        cli.out.write_text(json.dumps(report, indent=1))
