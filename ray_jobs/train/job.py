"""The training stage of a cycle as a Ray Train `TorchTrainer` job: data in, LoRA adapter folder out.

Resources are declared, not hoped for: each worker reserves `training.cpus_per_worker` Ray CPUs (and a GPU with
`use_gpu`) and sets its torch thread count to match, so on a shared node Ray schedules training next to the
student replica's reservation instead of oversubscribing the cores serving uses.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_jobs.tdpo.packing import Tree
from ray_jobs.trees.encode import SftExample
from services.config import TrainingConfig


@dataclass
class TrainOutput:
    adapter_dir: Path  # the final stage's adapter
    metrics: dict[str, Any]
    stages: dict[str, Path]  # every stage's adapter: `sft`, and `tdpo` when it ran


def run_training(cfg: TrainingConfig, *, model_path: str, sft: list[SftExample], trees: list[Tree], pad_id: int,
                 work_dir: Path, name: str, tdpo: bool | None = None, log_every: int = 10) -> TrainOutput:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ray_jobs.train.data_file import save_training_data
    from ray_jobs.train.worker import train_loop

    work_dir.mkdir(parents=True, exist_ok=True)
    data_path = work_dir / "data.pt"
    save_training_data(data_path, sft, trees)
    config = {
        "data_path": str(data_path), "model_path": model_path, "pad_id": pad_id, "seed": cfg.seed,
        "threads": cfg.threads(), "use_gpu": cfg.use_gpu, "log_every": log_every,
        "checkpointing": cfg.gradient_checkpointing,
        "lora": cfg.lora.model_dump(), "sft": cfg.sft.model_dump(),
        "row_tokens": cfg.max_prompt_tokens + cfg.max_completion_tokens,  # a packed SFT row's budget
        "tdpo": {**cfg.tdpo.model_dump(), **({"enabled": tdpo} if tdpo is not None else {})},
    }
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=str(work_dir / "ray"),
                             failure_config=FailureConfig(max_failures=0),
                             checkpoint_config=CheckpointConfig(num_to_keep=None)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    stages: dict[str, Path] = {}
    for ckpt, metrics in result.best_checkpoints:
        out = work_dir / f"adapter-{metrics['stage']}"
        if out.exists():
            shutil.rmtree(out)
        stages[metrics["stage"]] = Path(ckpt.to_directory(str(out)))
    final = stages["tdpo"] if "tdpo" in stages else stages["sft"]
    return TrainOutput(final, dict(result.metrics or {}), stages)
