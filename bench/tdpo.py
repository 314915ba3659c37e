"""T-DPO step time and peak memory: tree-batched (one forward per tree) vs TRL's DPOTrainer (one per pair).

    python bench/tdpo.py [--trees 4] [--children 4] [--prompt-tokens 400] [--child-tokens 64] [--steps 3]
                         [--model embedded|config] [--device cpu|cuda]

Same model (LoRA r=16 on the attention and MLP projections), same pairs, same batch (all pairs of `--trees`
trees, each node with `--children` outputs: half chosen, half rejected, full cross product), the reference being
the model with its adapter disabled, reference log-probs recomputed every step in both. Each variant runs in its
own process (peak RSS on CPU, peak allocated on CUDA). Reports the mean step time (forward + backward + AdamW
step) after one warm-up step, and the losses of the first and last step (the same trajectory on identical
pairs). Target: tree batching <= 0.6x TRL's step time. Prints a table; writes bench/results/tdpo-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(args.model_dir)
    torch.manual_seed(0)
    if args.model == "embedded":
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, attn_implementation="sdpa")
    else:  # the 135M architecture from config, random weights (for machines without the embedded model)
        cfg = LlamaConfig.from_pretrained(args.model_dir)
        cfg._attn_implementation = "sdpa"
        model = LlamaForCausalLM(cfg)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, lora_dropout=0.0,
                                             task_type="CAUSAL_LM"))
    return tok, model.to(args.device)


def synthetic_trees(tok: Any, args: argparse.Namespace) -> list[tuple[str, list[str], list[str]]]:
    """Debate-shaped nodes: a long prompt (question + structured information) and short answers."""
    rng = random.Random(0)
    words = ["the", "agent", "said", "step", "answer", "final", "apples", "box", "each", "more", "gives",
             "total", "because", "feedback"]

    def text(n_tokens: int) -> str:
        out = ""
        while len(tok(out, add_special_tokens=False).input_ids) < n_tokens:
            out += " " + rng.choice(words) + f" {rng.randint(1, 99)}"
        return out

    nodes = []
    for _ in range(args.trees):
        prompt = "Question:" + text(args.prompt_tokens) + "\nAnswer:"
        kids = [text(args.child_tokens) + f"\nFinal answer: {rng.randint(1, 99)}" for _ in range(args.children)]
        half = args.children // 2
        nodes.append((prompt, kids[:half], kids[half:]))
    return nodes


def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    import itertools

    import datasets
    import torch
    from trl import DPOConfig, DPOTrainer

    from ray_jobs.tdpo.loss import TreeDPOLoss
    from ray_jobs.tdpo.packing import child_logps, pack, trees_from_pairs

    torch.set_num_threads(os.cpu_count() or 1)
    tok, model = build(args)
    nodes = synthetic_trees(tok, args)
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, ch, rj in nodes for c, r in itertools.product(ch, rj)]
    with tempfile.TemporaryDirectory() as out:
        trainer = DPOTrainer(model=model, args=DPOConfig(
            output_dir=out, per_device_train_batch_size=len(rows), beta=0.1, report_to="none",
            use_cpu=args.device == "cpu", max_length=None, bf16=False, loss_type=["sigmoid"]),
            train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
        batch = {k: v.to(args.device) if hasattr(v, "to") else v
                 for k, v in next(iter(trainer.get_train_dataloader())).items()}
        tokenized = trainer.train_dataset
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)

    if args.variant == "trl":
        def step() -> float:
            loss = trainer.compute_loss(model, batch)
            loss.backward()
            return loss.item()
        tokens = int(batch["attention_mask"].sum())
    else:
        trees = trees_from_pairs(tokenized)  # the very token ids TRL trains on
        packed = pack(trees, tok.pad_token_id)
        loss_fn = TreeDPOLoss(0.1)

        def step() -> float:
            with torch.no_grad(), model.disable_adapter():
                ref = child_logps(model, packed)
            loss = loss_fn(child_logps(model, packed), ref, packed.chosen_idx.to(args.device),
                           packed.rejected_idx.to(args.device))
            loss.backward()
            return loss.item()
        tokens = int(sum(len(t.prompt_ids) + sum(map(len, t.children)) for t in trees))

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(args.steps + 1):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        losses.append(step())
        opt.step()
        opt.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up kernels and allocators
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"variant": args.variant, "pairs": len(rows), "tokens_per_step": tokens,
            "step_s": round(sum(times) / len(times), 4), "first_loss": round(losses[0], 6),
            "last_loss": round(losses[-1], 6),
            "peak_mb": round(peak, 1), "device": args.device}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trees", type=int, default=4)
    ap.add_argument("--children", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=400)
    ap.add_argument("--child-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-4, help="large enough that the loss moves: the losses of the "
                    "two variants must follow the same trajectory, not only start at log 2")
    ap.add_argument("--model", choices=["embedded", "config"], default="embedded")
    ap.add_argument("--model-dir", help="model folder (default: the embedded model, converted if needed)")
    ap.add_argument("--device", default="cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
    ap.add_argument("--variant", choices=["tree", "trl"], help=argparse.SUPPRESS)  # one measurement (subprocess)
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
    for variant in ("trl", "tree"):
        cmd = [sys.executable, __file__, "--variant", variant, *sys.argv[1:]]
        if "--model-dir" not in sys.argv:
            cmd += ["--model-dir", args.model_dir]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {variant}: {rows[-1]}", flush=True)
    ratio = rows[1]["step_s"] / rows[0]["step_s"]
    print()
    print(table(rows, ["variant", "device", "pairs", "tokens_per_step", "step_s", "peak_mb", "first_loss",
                       "last_loss"]))
    print(f"\ntree-batched / TRL step time: {ratio:.2f}x (target <= 0.6x); loss difference after "
          f"{args.steps + 1} steps {abs(rows[0]['last_loss'] - rows[1]['last_loss']):.2e}")
    path = write_json("tdpo", {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "variant"},
                               "rows": rows, "time_ratio": round(ratio, 3)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
