"""LoRA serving on vLLM's CPU build: vLLM's reference LoRA ops vs the grouped ops (services/student/cpu_lora.py).

`python bench/cpu_lora.py [--requests 16] [--concurrency 16] [--tokens 32] [--prompt-words 80] [--dtype bfloat16]
[--variants reference,grouped]`

One AsyncLLM per variant, in its own process (vLLM loads general plugins once per process): `reference` with
VLLM_PLUGINS naming only vLLM's own plugins (ours not loaded), `grouped` with every plugin (ours included). Each
serves the same prompts (~`--prompt-words` words each, so prefill is part of the work, as in an evaluation) greedy
through a rank-16 adapter on every projection, and the base model for comparison: requests/s and the seconds to
the first token of one request alone. Prints a table; writes bench/results/cpu_lora-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, table, write_json

MODEL_DIR = os.path.expanduser("~/.local/share/distillery/models/smollm2-135m-instruct")
VLLM_OWN_PLUGINS = "lora_filesystem_resolver,lora_hf_hub_resolver"
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def prompts(words: int) -> list[str]:
    topics = ["the sea", "a small village", "prime numbers", "the moon", "a bakery", "trains", "rain", "chess"]
    filler = " ".join(["and then the story went on with more detail about it"] * (words // 11 + 1)).split()
    return [f"Tell me about {t}. {' '.join(filler[:words])}" for t in topics]


async def measure(args: argparse.Namespace, adapter: str) -> dict[str, Any]:
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.async_llm import AsyncLLM

    from bench.merged import load, one
    from tests.student.test_merged import engine_args

    engine = AsyncLLM.from_engine_args(engine_args(MODEL_DIR, args.dtype, 16, args.concurrency))
    lora = LoRARequest("bench", 1, adapter)
    ps = prompts(args.prompt_words)
    try:
        await load(engine, ps, 2, 2, 2, lora)  # warm-up: loads the adapter
        out: dict[str, Any] = {}
        for name, req in (("base", None), ("lora", lora)):
            t0 = time.monotonic()
            await one(engine, ps[0], 1, req)
            out[f"{name}_first_token_s"] = round(time.monotonic() - t0, 3)
            out[f"{name}_rps"] = round(await load(engine, ps, args.requests, args.concurrency, args.tokens, req), 3)
        return out
    finally:
        engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prompt-words", type=int, default=80)
    parser.add_argument("--dtype", default="bfloat16",
                        help="the engine's dtype (the student's `auto`: float32 on a CPU without native bf16)")
    parser.add_argument("--variants", default="reference,grouped")
    parser.add_argument("--variant", choices=["reference", "grouped"], help="(internal) run one variant here")
    parser.add_argument("--adapter", help="(internal) the adapter folder")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.variant:
        print(json.dumps(asyncio.run(measure(args, args.adapter))))
        return

    from tests.lora_factory import make_random_adapter

    adapter = make_random_adapter(MODEL_DIR, Path(tempfile.mkdtemp(prefix="bench-cpu-lora-")) / "a", 0, MODULES,
                                  rank=16)
    rows = []
    for variant in args.variants.split(","):
        env = {k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}  # every plugin: ours included
        if variant == "reference":
            env["VLLM_PLUGINS"] = VLLM_OWN_PLUGINS
        cmd = [sys.executable, __file__, "--variant", variant, "--adapter", str(adapter),
               *(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                 if k not in ("variant", "adapter", "variants"))]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        rows.append({"variant": variant, **json.loads(out.stdout.strip().splitlines()[-1])})
    cols = ["variant", "base_rps", "lora_rps", "base_first_token_s", "lora_first_token_s"]
    print(table(rows, cols))
    path = write_json("cpu_lora", {"machine": machine(), "args": vars(args), "rows": rows,
                                   "load_avg": os.getloadavg()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
