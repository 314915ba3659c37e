"""SFT step time and throughput: shared-prefix packing vs one padded row per example, on BANKING77 requests.

    python bench/sft_packing.py [--batch-size 8] [--steps 2] [--prompt system|bare] [--threads N]
                                [--variants plain,packed[,unshared]] [--no-checkpointing] [--model-dir DIR]

Production-shaped SFT data: each example is a BANKING77 request (the task's ~600-token system prompt and the
customer's message, rendered by the embedded model's chat template exactly as serving renders it), the completion
the intent label and the end-of-turn token (`--prompt bare`: the message alone, so only the template's default
system prompt is shared). The embedded model (SmolLM2-135M-Instruct, fp32, LoRA as `training.lora` with dropout 0,
gradient checkpointing as `training.gradient_checkpointing`) trains on the same seeded batches in every variant,
each in its own process (peak RSS): `plain` (`pack=False`), `packed` (`pack=True`, `ray_jobs.sft.packing`) and,
with `--variants`, `unshared`: the packed code path with one row per example (the LM head at the completion
positions only, no prefix shared), which tells apart the gain of sharing the prefix from that of the head.
A step is the trainer's: loss, backward, clipping, AdamW. Reports the mean step time after one warm-up step (wall,
and `cpu_s`, the process's CPU time over all its threads: steadier on a shared machine) and
tokens/s counted as the unpacked examples' tokens (prompt + completion, no padding) per second, so each variant
is credited the same work; `computed_tokens` is what each actually ran (padding aside). The per-step losses must
agree (the same loss, computed two ways). Prints a table; writes bench/results/sft_packing-<time>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"  # ../shared/data, as README


def examples(args: argparse.Namespace) -> tuple[list[Any], int]:
    from ray_jobs.trees.encode import Encoder, SftExample
    from services.config import TrainingConfig
    from services.student.tokenizer import PromptTokenizer

    tok = PromptTokenizer(args.model_dir)
    cfg = TrainingConfig()
    enc = Encoder(tok, cfg.max_prompt_tokens, cfg.max_completion_tokens)
    system = (args.data / "system_prompt.txt").read_text().removesuffix("\n")  # as the dataset README says
    rows = [json.loads(line) for line in (args.data / "train.jsonl").read_text().splitlines() if line.strip()]
    picked = random.Random(args.seed).sample(rows, args.batch_size * (args.steps + 1))
    out = []
    for r in picked:
        messages = [{"role": "user", "content": r["text"]}]
        if args.prompt == "system":
            messages.insert(0, {"role": "system", "content": system})
        out.append(SftExample(tok.chat(messages), enc.completion(r["label"])[0], 1.0))
    return out, enc.pad_id


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ray_jobs.sft.packing import Group, pack_sft, packed_loss
    from ray_jobs.sft.trainer import batch_loss
    from ray_jobs.train.optim import optimizer
    from ray_jobs.train.optim import step as optim_step
    from ray_jobs.train.worker import load_model
    from services.config import LoraSettings, TrainingConfig

    torch.set_num_threads(args.threads)
    data, pad_id = examples(args)
    model = load_model(args.model_dir, LoraSettings(dropout=0.0).model_dump(), "cpu", seed=args.seed,
                       checkpointing=args.checkpointing)
    cfg = TrainingConfig()
    opt, sched = optimizer(model, cfg.sft.lr, args.steps + 1)
    model.train()
    times, cpu, losses, rows, computed, example_tokens = [], [], [], [], 0, 0
    for i in range(args.steps + 1):
        batch = data[i * args.batch_size : (i + 1) * args.batch_size]
        t0, c0 = time.perf_counter(), time.process_time()
        if args.variant == "unshared":
            packed = pack_sft(batch, [Group(len(e.prompt_ids), [i]) for i, e in enumerate(batch)], pad_id)
            loss, work = packed_loss(model, packed), {"rows": len(batch), "tokens": packed.tokens}
            work["example_tokens"] = packed.tokens
        else:
            loss, work = batch_loss(model, batch, pad_id, pack=args.variant == "packed",
                                    row_tokens=cfg.max_prompt_tokens + cfg.max_completion_tokens)
        loss.backward()
        optim_step(model, opt, sched)
        losses.append(loss.item())
        if i:  # the first step warms up kernels and allocators
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            rows.append(work["rows"])
            computed += work["tokens"]
            example_tokens += work["example_tokens"]
    step_s = sum(times) / len(times)
    return {"variant": args.variant, "batch_size": args.batch_size, "rows_per_step": sum(rows) / len(rows),
            "example_tokens_per_step": round(example_tokens / len(times)),
            "computed_tokens_per_step": round(computed / len(times)), "step_s": round(step_s, 3),
            "cpu_s": round(sum(cpu) / len(cpu), 3),
            "tokens_per_s": round(example_tokens / sum(times), 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "losses": [round(x, 5) for x in losses]}


def markdown(rows: list[dict[str, Any]], cols: list[str]) -> str:
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
                      *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=8, help="examples per step (`training.sft.batch_size`)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps, after one warm-up step")
    ap.add_argument("--variants", default="plain,packed", help="comma-separated: plain, packed, unshared")
    ap.add_argument("--prompt", choices=["system", "bare"], default="system")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--model-dir", help="model folder (default: the embedded model, converted if needed)")
    ap.add_argument("--variant", choices=["plain", "packed", "unshared"], help=argparse.SUPPRESS)  # one measurement
    args = ap.parse_args()
    if args.model_dir is None:
        from services.config import Settings
        from services.student.model_prep import resolve_base_model

        args.model_dir = resolve_base_model(Settings(), lambda _m: None)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    from bench.common import machine, table, write_json

    rows = []
    variants = args.variants.split(",")
    if variants[:2] != ["plain", "packed"]:
        ap.error("--variants starts with plain,packed")
    for variant in variants:
        cmd = [sys.executable, __file__, "--variant", variant, *sys.argv[1:]]
        if "--model-dir" not in sys.argv:
            cmd += ["--model-dir", args.model_dir]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {variant}: {rows[-1]}", flush=True)
    plain, packed = rows[:2]
    speedup = plain["step_s"] / packed["step_s"]
    loss_diff = max(abs(a - b) for r in rows[1:] for a, b in zip(plain["losses"], r["losses"], strict=True))
    cpu_speedup = plain["cpu_s"] / packed["cpu_s"]
    cols = ["variant", "batch_size", "rows_per_step", "example_tokens_per_step", "computed_tokens_per_step",
            "step_s", "cpu_s", "tokens_per_s", "peak_rss_mb"]
    summary = (f"packed / plain step time: {packed['step_s'] / plain['step_s']:.2f}x ({speedup:.2f}x faster; "
               f"{cpu_speedup:.2f}x in CPU time); largest per-step loss difference {loss_diff:.1e}")
    print()
    print(table(rows, cols))
    print(f"\n{summary}")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                if k not in ("variant", "data")}
    path = write_json("sft_packing", {"machine": machine(), "args": settings, "rows": rows,
                                      "speedup": round(speedup, 3), "cpu_speedup": round(cpu_speedup, 3),
                                      "max_loss_diff": loss_diff})
    md = path.with_suffix(".md")
    md.write_text(f"# SFT shared-prefix packing ({args.prompt} prompts, {time.strftime('%Y-%m-%d')})\n\n"
                  f"{machine()}; args {settings}\n\n{markdown(rows, cols)}\n\n{summary}\n")
    print(f"wrote {path} and {md.name}")


if __name__ == "__main__":
    main()
