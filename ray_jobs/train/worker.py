"""What each Ray Train worker runs: load the base model, add a LoRA adapter, SFT, then T-DPO, report.

Runs inside `TorchTrainer` (see `job.py`), on CPU or one GPU per worker. Data comes as a file written by the
driver (shared storage in a cluster), so nothing large travels through Ray's object store. Rank 0 saves the
adapter and reports it as a checkpoint after each stage: a cycle killed during T-DPO still has its SFT adapter
on disk for inspection, but only a finished cycle is ever published.

Data parallel without a join: every step all-reduces the gradients (`optim.average_gradients`), so every worker
must take the same steps. A stage's `batch_size` (`trees_per_step`) is the global batch, split among the workers:
every worker draws the same seeded batches from the whole set, as one worker would, and computes its
`optim.shard` of each (a batch smaller than the workers is shared by wrapping around, so every worker computes a
gradient), with its loss scaled so that the averaged gradient and loss are one worker's of the whole batch. So the
step count (`steps_for`: `epochs` passes over the set, capped by `max_steps`), the schedule and the loss trajectory
do not depend on `num_workers` (up to float rounding); more workers only take less time per step. T-DPO runs on
every worker or on none (T-DPO off, or no tree at all). Rank 0 reports each stage's per-step losses averaged over
the workers (`sft_losses`, `tdpo_losses`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from typing import Any

log = logging.getLogger("distillery.train")


def steps_for(n_items: int, per_step: int, epochs: float, max_steps: int | None) -> int:
    """A stage's optimizer steps, the same on every worker and for any number of workers: `epochs` passes over
    `n_items`, `per_step` items a step (the global batch), capped by `max_steps`; 0 with no items."""
    if not n_items:
        return 0
    steps = max(1, math.ceil(n_items * epochs / per_step))
    return min(steps, max_steps) if max_steps else steps


def load_model(model_path: str, lora: dict[str, Any], device: str, seed: int, checkpointing: bool = False) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    # fp32 on CPU (bf16 matmuls are slow or emulated on most CPUs); bf16 on GPU, as D&R trains.
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation="sdpa")
    cfg = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                     target_modules=list(lora["target_modules"]), task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg).to(device)
    if checkpointing:  # non-reentrant: works with frozen embeddings (no input grads needed) and custom masks
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def train_loop(config: dict[str, Any]) -> None:
    import ray.train
    import torch

    from ray_jobs.sft.trainer import train_sft
    from ray_jobs.tdpo.trainer import train_tdpo
    from ray_jobs.train.data_file import load_training_data

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(config["threads"])  # the worker's Ray CPU reservation, not every core of the host
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = "cuda" if torch.cuda.is_available() and config["use_gpu"] else "cpu"
    all_sft, all_trees = load_training_data(config["data_path"])
    model = load_model(config["model_path"], config["lora"], device, config["seed"], config["checkpointing"])
    metrics: dict[str, Any] = {"sft_examples": len(all_sft), "trees": len(all_trees),
                               "pairs": sum(len(t.pairs) for t in all_trees), "workers": world,
                               "device": device, "threads": config["threads"]}
    t0 = time.monotonic()

    def progress(m: dict[str, Any]) -> None:
        if rank == 0 and (m["step"] == 1 or m["step"] == m["steps"] or m["step"] % config["log_every"] == 0):
            print(f"[train] {m}", flush=True)

    def checkpoint(stage: str) -> None:
        metrics["stage"] = stage
        metrics["train_seconds"] = round(time.monotonic() - t0, 1)
        if rank != 0:
            ray.train.report(dict(metrics))
            return
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            ray.train.report(dict(metrics), checkpoint=ray.train.Checkpoint.from_directory(tmp))

    s = config["sft"]
    steps = steps_for(len(all_sft), s["batch_size"], s["epochs"], s["max_steps"])
    metrics.update(train_sft(model, all_sft, lr=s["lr"], steps=steps, batch_size=s["batch_size"],
                             pad_id=config["pad_id"], seed=config["seed"], log=progress,
                             pack=s["pack_shared_prefix"], row_tokens=config["row_tokens"]))
    checkpoint("sft")
    d = config["tdpo"]
    if d["enabled"] and all_trees:  # the global list: every worker or none, as every step all-reduces
        steps = steps_for(len(all_trees), d["trees_per_step"], d["epochs"], d["max_steps"])
        metrics.update(train_tdpo(model, all_trees, beta=d["beta"], lr=d["lr"], steps=steps,
                                  trees_per_step=d["trees_per_step"], pad_id=config["pad_id"], seed=config["seed"],
                                  log=progress))
        checkpoint("tdpo")
