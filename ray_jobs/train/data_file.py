"""The training data a job hands its workers: plain lists, ints and floats in a torch file, read back with
`weights_only=True`, so a file planted in the job folder cannot run code (a pickled object is refused)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ray_jobs.tdpo.packing import Tree
from ray_jobs.trees.encode import SftExample


def save_training_data(path: Path, sft: list[SftExample], trees: list[Tree]) -> None:
    import torch

    torch.save({"sft": [asdict(e) for e in sft], "trees": [asdict(t) for t in trees]}, path)


def load_training_data(path: str | Path) -> tuple[list[SftExample], list[Tree]]:
    import torch

    data = torch.load(path, weights_only=True)
    return [SftExample(**e) for e in data["sft"]], [Tree(**t) for t in data["trees"]]
