"""Data-parallel training: every Ray Train worker takes the same number of steps (each step all-reduces the
gradients, so a worker that stops early leaves the others waiting forever), and two real workers finish."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from ray_jobs.train.job import run_training
from ray_jobs.train.worker import load_model, shard, steps_for
from ray_jobs.trees.build import SftItem, TreeNode
from ray_jobs.trees.encode import Encoder
from services.config import LoraSettings, SftSettings, TdpoSettings, TrainingConfig
from services.student.tokenizer import PromptTokenizer

Q = "Mia has 12 apples. She buys 5 more apples. How many apples does Mia have now?"
RIGHT = "### Answer\nStart: 12.\nStep 1: She buys 5 more apples. So 12 + 5 = 17.\nFinal answer: 17"
WRONG = "### Answer\nStart: 12.\nStep 1: She buys 5 more apples. So 12 - 5 = 7.\nFinal answer: 7"


def test_every_worker_gets_a_share_and_the_same_steps() -> None:
    assert [shard(list(range(5)), r, 2) for r in range(2)] == [[0, 2, 4], [1, 3]]
    assert [shard(["a", "b"], r, 3) for r in range(3)] == [["a"], ["b"], ["a"]]  # fewer items: wrap around
    assert shard([], 1, 2) == []
    assert steps_for(3, 1, 1, 1.0, None) == 3  # one worker: one pass over everything
    assert steps_for(3, 2, 1, 1.0, None) == 2  # two: one pass over the larger shard (2 items)
    assert steps_for(5, 2, 2, 3.0, None) == 5  # 3 items x 3 epochs / 2 a step = 4.5
    assert steps_for(5, 2, 2, 3.0, 4) == 4 and steps_for(1, 4, 4, 0.5, None) == 1 and steps_for(0, 2, 1, 3, 9) == 0
    for n in range(12):
        for world in range(1, 5):
            shards = [shard(list(range(n)), r, world) for r in range(world)]
            assert all(shards) == (n > 0)  # a worker without items would compute no gradient
            if n >= world:  # every item on exactly one worker
                assert sorted(i for s in shards for i in s) == list(range(n))
            for per_step in (1, 3):
                for epochs in (0.5, 1.0, 3.0):  # the common step count covers every shard's epochs, no more
                    steps = steps_for(n, world, per_step, epochs, None)
                    assert all(steps * per_step >= epochs * len(s) for s in shards)
                    assert n == 0 or (steps - 1) * per_step < epochs * max(len(s) for s in shards)


@pytest.fixture
def two_cpu_ray() -> Iterator[None]:
    """A private Ray with exactly the two 1-CPU workers' reservation."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield
    ray.shutdown()


@pytest.mark.e2e
@pytest.mark.timeout(600, method="thread")  # a hang blocks in ray.get, where the SIGALRM method never fires
def test_two_workers_with_unequal_shards_finish_both_stages(model_dir: str, tmp_path: Path,
                                                            two_cpu_ray: None) -> None:
    encoder = Encoder(PromptTokenizer(model_dir), 512, 128)
    sft = encoder.sft([SftItem(i, "rationale", Q.replace("12", str(12 + i)), RIGHT) for i in range(3)], Counter())
    trees = encoder.trees([TreeNode(0, 0, Q, [RIGHT], [WRONG], [(0, 0)])], 1.0, Counter())
    assert len(sft) == 3 and len(trees) == 1  # shards of 2 and 1 examples, of 1 tree and none
    cfg = TrainingConfig(num_workers=2, cpus_per_worker=1, seed=0, lora=LoraSettings(dropout=0.0),
                         sft=SftSettings(lr=1e-3, epochs=1, batch_size=1),
                         tdpo=TdpoSettings(lr=1e-3, epochs=2, trees_per_step=1, max_steps=3))
    out = run_training(cfg, model_path=model_dir, sft=sft, trees=trees, pad_id=encoder.pad_id,
                       work_dir=tmp_path, name="two-workers")

    m = out.metrics
    assert m["workers"] == 2 and m["stage"] == "tdpo" and (m["sft_examples"], m["trees"]) == (3, 1)
    assert m["sft_steps"] == 2  # one pass over the larger shard (2 examples), 1 per step; rank 1 cycles its one
    assert m["tdpo_steps"] == 2  # two passes over one tree, on both ranks (rank 1 borrows it): under max_steps
    assert set(out.stages) == {"sft", "tdpo"} and out.adapter_dir == out.stages["tdpo"]
    # The adapter every worker started from (same seed), then each stage's: every LoRA matrix moved in each.
    init = get_peft_model_state_dict(load_model(model_dir, cfg.lora.model_dump(), "cpu", seed=cfg.seed))
    after_sft, after_tdpo = (load_file(str(out.stages[s] / "adapter_model.safetensors")) for s in ("sft", "tdpo"))
    assert set(after_sft) == set(after_tdpo) == set(init) and len(init) > 0
    for name, w in init.items():
        assert not torch.equal(after_sft[name], w), f"{name} did not move in SFT"
        assert not torch.equal(after_tdpo[name], after_sft[name]), f"{name} did not move in T-DPO"
