"""Serving benchmark: Distillery vs vLLM's own OpenAI server, and latency during adapter swaps.

    python bench/serve.py [--quick] [--max-tokens 32]

1. Bare vLLM (`python -m vllm.entrypoints.openai.api_server` with the very arguments the student replica parses,
   `services/student/vllm_config.vllm_argv`) and Distillery (`distillery serve`), one after the other on the same
   machine, the same prompts, greedy, at concurrency 1, 4 and 16: requests/s, p50/p99 latency.
2. Distillery with a trained adapter promoted: the same sweep on `student`, now served by the adapter.
3. Distillery with two trained adapters: p99 latency at concurrency 4 in steady state on a promoted adapter
   vs while the `student` alias is swapped between the two every second, with the count of failed requests.
Prints a table; writes bench/results/serve-<time>.json. Targets: Distillery >= 0.95x vLLM requests/s at
concurrency 16; the promoted adapter >= 0.9x the base model's requests/s at concurrency 16; swaps add <= 20% to
p99 with 0 failed requests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench.common import machine, run_load, start, stop, table, wait_ready, write_json
from services.config import Settings
from services.student.model_prep import resolve_base_model
from services.student.vllm_config import vllm_argv

MAX_LEN = 2048


async def sweep(url: str, label: str, levels: list[tuple[int, int]], max_tokens: int) -> list:
    out = []
    await run_load(url, label="warmup", concurrency=2, requests=4, max_tokens=max_tokens)
    for conc, n in levels:
        res, _ = await run_load(url, label=label, concurrency=conc, requests=n, max_tokens=max_tokens,
                                fixed_length=True)
        print(f"  {label:10s} c={conc:<3d} {res.rps:6.2f} req/s  p50 {res.p50_s:6.2f}s  p99 {res.p99_s:6.2f}s"
              f"  failed {res.failed}", flush=True)
        out.append(res)
    return out


async def publish(url: str, adapters: list[Path]) -> list[str]:
    """Load each adapter (a new version), then promote the first."""
    versions = []
    async with httpx.AsyncClient(timeout=120) as c:
        for i, path in enumerate(adapters):
            r = await c.post(f"{url}/v1/load_lora_adapter", json={"lora_name": f"bench{i}", "lora_path": str(path)})
            r.raise_for_status()
            versions.append(r.json()["version"])
        (await c.post(f"{url}/admin/adapters/{versions[0]}/promote")).raise_for_status()
    return versions


def wait_merged(url: str, version: str, timeout_s: float = 120) -> None:
    """Until the replica serves `version` merged into its weights (`/ready` says so)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/ready", timeout=10).json().get("merged") == version:
            print(f"  {version} merged into the weights", flush=True)
            return
        time.sleep(0.5)
    print(f"  {version} not merged after {timeout_s}s: the promoted row measures the LoRA path", flush=True)


async def swap_phase(url: str, versions: list[str], seconds: float, max_tokens: int) -> dict:
    async with httpx.AsyncClient(timeout=120) as c:
        await run_load(url, label="warmup", concurrency=2, requests=4, max_tokens=max_tokens)
        steady, _ = await run_load(url, label="steady", concurrency=4, requests=0, duration_s=seconds,
                                   max_tokens=max_tokens)
        print(f"  steady     p99 {steady.p99_s:.2f}s  failed {steady.failed}", flush=True)
        swaps: list[float] = []

        async def swapper() -> None:
            i = 1
            while time.monotonic() - t0 < seconds:
                r = await c.post(f"{url}/admin/adapters/{versions[i % 2]}/promote")
                r.raise_for_status()
                swaps.append(r.json()["swap_seconds"])
                i += 1
                await asyncio.sleep(1.0)

        t0 = time.monotonic()
        (swapping, rows), _ = await asyncio.gather(
            run_load(url, label="swapping", concurrency=4, requests=0, duration_s=seconds, max_tokens=max_tokens),
            swapper(),
        )
    served = sorted({r[3] for r in rows})
    print(f"  swapping   p99 {swapping.p99_s:.2f}s  failed {swapping.failed}  swaps {len(swaps)}  "
          f"served by {served}", flush=True)
    return {"steady": steady, "swapping": swapping, "swaps": len(swaps),
            "swap_seconds_mean": round(sum(swaps) / max(1, len(swaps)), 4), "served_by": served,
            "p99_increase": round(swapping.p99_s / steady.p99_s - 1, 3)}


def train_adapters(model_dir: str, root: Path) -> list[Path]:
    from tests.lora_factory import train_codeword_adapter

    return [train_codeword_adapter(model_dir, root / w.lower(), w, seed=i, steps=20)
            for i, w in enumerate(["ALPHA-7", "BRAVO-3"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--swap-seconds", type=float, default=40)
    args = ap.parse_args()
    scale = 1 if args.quick else 2
    levels = [(1, 8 * scale), (4, 16 * scale), (16, 32 * scale)]

    model_dir = resolve_base_model(Settings(), print)
    work = Path(tempfile.mkdtemp(prefix="distillery-bench-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_NO_USAGE_STATS": "1"}
    print(f"machine: {machine()}\nmodel: {model_dir}\nwork dir: {work}", flush=True)

    print("[1/4] bare vLLM OpenAI server", flush=True)
    port = 8100
    student = Settings(student={"max_model_len": MAX_LEN, "kv_cache_gb": 2})
    vllm = start([sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                  *vllm_argv(student, model_dir, "student"), "--host", "127.0.0.1", "--port", str(port)],
                 env, work / "vllm.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}", "/v1/models", 300, vllm)
        bare = asyncio.run(sweep(f"http://127.0.0.1:{port}", "vllm", levels, args.max_tokens))
    finally:
        stop(vllm)

    print("[2/4] Distillery (Ray Serve gateway -> vLLM student)", flush=True)
    port = 8101
    denv = {**env, "DISTILLERY_DATA_DIR": str(work / "data"), "DISTILLERY_STUDENT__MODEL": model_dir,
            "DISTILLERY_SERVER__PORT": str(port), "DISTILLERY_STUDENT__KV_CACHE_GB": "2",
            "DISTILLERY_STUDENT__MAX_MODEL_LEN": str(MAX_LEN), "DISTILLERY_SERVER__MAX_CONCURRENT_REQUESTS": "256"}
    adapters = train_adapters(model_dir, work / "adapters")
    dist = start([sys.executable, "-m", "services.cli", "serve"], denv, work / "distillery.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, "/ready", 300, dist)
        ours = asyncio.run(sweep(url, "distillery", levels, args.max_tokens))
        print("[3/4] Distillery with an adapter promoted (`student` is the adapter)", flush=True)
        versions = asyncio.run(publish(url, adapters))
        wait_merged(url, versions[0])
        promoted = asyncio.run(sweep(url, "promoted", levels, args.max_tokens))
        print("[4/4] adapter swaps under load (Distillery, concurrency 4)", flush=True)
        swap = asyncio.run(swap_phase(url, versions, args.swap_seconds, args.max_tokens))
    finally:
        stop(dist)

    rows = []
    for b, d, p in zip(bare, ours, promoted, strict=True):
        rows.append({"concurrency": b.concurrency, "vllm req/s": b.rps, "distillery req/s": d.rps,
                     "ratio": round(d.rps / b.rps, 3), "promoted req/s": p.rps,
                     "promoted/base": round(p.rps / d.rps, 3), "vllm p50": b.p50_s, "dist p50": d.p50_s,
                     "promoted p50": p.p50_s, "vllm p99": b.p99_s, "dist p99": d.p99_s, "promoted p99": p.p99_s,
                     "failed": b.failed + d.failed + p.failed})
    print(f"\nThroughput and latency (chat, greedy, max_tokens={args.max_tokens})")
    print(table(rows, list(rows[0])))
    srows = [{"phase": k, "p99 s": swap[k].p99_s, "p50 s": swap[k].p50_s, "req/s": swap[k].rps,
              "failed": swap[k].failed, "requests": swap[k].requests} for k in ("steady", "swapping")]
    print(f"\nAdapter swaps: {swap['swaps']} promotions, mean swap {swap['swap_seconds_mean']}s, "
          f"p99 +{swap['p99_increase'] * 100:.1f}%")
    print(table(srows, list(srows[0])))
    c16, adapter_c16 = rows[-1]["ratio"], rows[-1]["promoted/base"]
    verdict = {"throughput_ratio_c16": c16, "throughput_target_met": c16 >= 0.95,
               "promoted_ratio_c16": adapter_c16, "promoted_target_met": adapter_c16 >= 0.9,
               "swap_p99_increase": swap["p99_increase"], "swap_target_met":
               swap["p99_increase"] <= 0.2 and swap["swapping"].failed == 0}
    print(f"\ntargets: c16 ratio {c16} (>= 0.95: {verdict['throughput_target_met']}), promoted/base at c16 "
          f"{adapter_c16} (>= 0.9: {verdict['promoted_target_met']}), swap p99 "
          f"+{swap['p99_increase'] * 100:.1f}% with {swap['swapping'].failed} failed "
          f"(<= 20%, 0 failed: {verdict['swap_target_met']})")
    path = write_json("serve", {"machine": machine(), "max_tokens": args.max_tokens, "vllm": bare,
                                "distillery": ours, "promoted": promoted, "comparison": rows, "swaps": swap,
                                "verdict": verdict})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
