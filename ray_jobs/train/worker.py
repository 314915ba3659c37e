"""What each Ray Train worker runs: load the base model, add a LoRA adapter, SFT, then T-DPO, report.

Runs inside `TorchTrainer` (see `job.py`), on CPU or one GPU per worker. Data comes as a file written by the
driver (shared storage in a cluster), so nothing large travels through Ray's object store. Rank 0 saves the
adapter and reports it as a checkpoint after each stage: a cycle killed during T-DPO still has its SFT adapter
on disk for inspection, but only a finished cycle is ever published.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any

log = logging.getLogger("distillery.train")


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

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(config["threads"])  # the worker's Ray CPU reservation, not every core of the host
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = "cuda" if torch.cuda.is_available() and config["use_gpu"] else "cpu"
    data = torch.load(config["data_path"], weights_only=False)
    sft, trees = data["sft"][rank::world], data["trees"][rank::world]  # each worker its shard
    model = load_model(config["model_path"], config["lora"], device, config["seed"], config["checkpointing"])
    metrics: dict[str, Any] = {"sft_examples": len(data["sft"]), "trees": len(data["trees"]),
                               "pairs": sum(len(t.pairs) for t in data["trees"]), "workers": world,
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
    metrics.update(train_sft(model, sft, lr=s["lr"], epochs=s["epochs"], batch_size=s["batch_size"],
                             max_steps=s["max_steps"], pad_id=config["pad_id"], seed=config["seed"], log=progress,
                             pack=s["pack_shared_prefix"], row_tokens=config["row_tokens"]))
    checkpoint("sft")
    d = config["tdpo"]
    if d["enabled"] and trees:
        metrics.update(train_tdpo(model, trees, beta=d["beta"], lr=d["lr"], epochs=d["epochs"],
                                  trees_per_step=d["trees_per_step"], max_steps=d["max_steps"],
                                  pad_id=config["pad_id"], seed=config["seed"], log=progress))
        checkpoint("tdpo")
