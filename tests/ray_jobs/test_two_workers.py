"""Data-parallel training: every Ray Train worker takes the same number of steps (each step all-reduces the
gradients, so a worker that stops early leaves the others waiting forever), two real workers finish, and they
follow one worker's loss trajectory (each step's batch split among them)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from ray_jobs.train.job import run_training
from ray_jobs.train.optim import shard, share_scale
from ray_jobs.train.worker import load_model, steps_for
from ray_jobs.trees.build import SftItem, TreeNode
from ray_jobs.trees.encode import Encoder
from services.config import LoraSettings, SftSettings, TdpoSettings, TrainingConfig
from services.student.tokenizer import PromptTokenizer

Q = "Mia has 12 apples. She buys 5 more apples. How many apples does Mia have now?"
RIGHT = "### Answer\nStart: 12.\nStep 1: She buys 5 more apples. So 12 + 5 = 17.\nFinal answer: 17"
WRONG = "### Answer\nStart: 12.\nStep 1: She buys 5 more apples. So 12 - 5 = 7.\nFinal answer: 7"


def test_every_worker_gets_a_share_of_each_batch_and_the_same_steps() -> None:
    assert [shard(list(range(5)), r, 2) for r in range(2)] == [[0, 2, 4], [1, 3]]
    assert [shard(["a", "b"], r, 3) for r in range(3)] == [["a"], ["b"], ["a"]]  # fewer items: wrap around
    assert shard([], 1, 2) == []
    assert steps_for(3, 1, 1.0, None) == 3  # one pass, one item a step, whatever the number of workers
    assert steps_for(5, 2, 3.0, None) == 8  # 5 items x 3 epochs / 2 a step = 7.5
    assert steps_for(5, 2, 3.0, 4) == 4 and steps_for(1, 4, 0.5, None) == 1 and steps_for(0, 1, 3, 9) == 0
    for n in range(1, 12):
        for world in range(1, 5):
            shards = [shard(list(range(n)), r, world) for r in range(world)]
            assert all(shards)  # a worker without items would compute no gradient
            if n >= world:  # every item on exactly one worker
                assert sorted(i for s in shards for i in s) == list(range(n))
            # The workers' mean of (scale x mean loss over their share) is the mean over every item computed.
            loss = [float(i * i + 1) for i in range(n)]
            got = sum(share_scale(n, r, world) * sum(loss[i] for i in s) / len(s) for r, s in enumerate(shards))
            computed = [loss[i] for s in shards for i in s]
            assert got / world == pytest.approx(sum(computed) / len(computed))


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
    assert len(sft) == 3 and len(trees) == 1  # each step's shares: 2 and 1 examples, 1 tree and none (borrowed)
    cfg = TrainingConfig(num_workers=2, cpus_per_worker=1, seed=0, lora=LoraSettings(dropout=0.0),
                         sft=SftSettings(lr=1e-3, epochs=2, batch_size=3),
                         tdpo=TdpoSettings(lr=1e-3, epochs=2, trees_per_step=1, max_steps=3))
    out = run_training(cfg, model_path=model_dir, sft=sft, trees=trees, pad_id=encoder.pad_id,
                       work_dir=tmp_path, name="two-workers")

    m = out.metrics
    assert m["workers"] == 2 and m["stage"] == "tdpo" and (m["sft_examples"], m["trees"]) == (3, 1)
    assert m["sft_steps"] == 2  # two passes over 3 examples, all 3 a step (2 on rank 0, 1 on rank 1)
    assert m["tdpo_steps"] == 2  # two passes over one tree, on both ranks (rank 1 borrows it): under max_steps
    assert len(m["sft_losses"]) == 2 and len(m["tdpo_losses"]) == 2
    assert set(out.stages) == {"sft", "tdpo"} and out.adapter_dir == out.stages["tdpo"]
    # The adapter every worker started from (same seed), then each stage's: every LoRA matrix moved in each.
    init = get_peft_model_state_dict(load_model(model_dir, cfg.lora.model_dump(), "cpu", seed=cfg.seed))
    after_sft, after_tdpo = (load_file(str(out.stages[s] / "adapter_model.safetensors")) for s in ("sft", "tdpo"))
    assert set(after_sft) == set(after_tdpo) == set(init) and len(init) > 0
    for name, w in init.items():
        assert not torch.equal(after_sft[name], w), f"{name} did not move in SFT"
        assert not torch.equal(after_tdpo[name], after_sft[name]), f"{name} did not move in T-DPO"


def arithmetic(i: int, wrong: bool = False) -> tuple[str, str]:
    """A question and its (right or wrong) answer, different per `i`, so the examples' losses differ."""
    a, b = 12 + 3 * i, 2 + i
    got, sign = (a - b, "-") if wrong else (a + b, "+")
    return (f"Mia has {a} apples. She buys {b} more apples. How many apples does Mia have now?",
            f"### Answer\nStart: {a}.\nStep 1: She buys {b} more apples. So {a} {sign} {b} = {got}.\n"
            f"Final answer: {got}")


# One worker's per-step losses against two workers'. Each step the two workers compute the same global batch one
# worker computes (halves of it), so the losses differ by float rounding only: a different summation order (the
# all-reduce, two rows instead of one packed row, one thread per worker), amplified by AdamW over the steps.
# Measured on CPU (2 cores): SFT 3.4e-7 relative on the first step, at most 7e-7 on the later ones; T-DPO exactly
# log 2 on the first (policy == reference on both) and at most 1.7e-5 on the later ones. The bounds leave 50x and
# more. A batch split differently (each worker taking `batch_size` of its own shard, the semantics before) fails
# already on the step count (2 steps of 8 examples here, not 4 of 4) and on the first step's batch.
FIRST_STEP_RTOL, LATER_RTOL = 1e-4, 1e-3


@pytest.mark.e2e
@pytest.mark.timeout(600, method="thread")
def test_two_workers_follow_one_workers_loss_trajectory(model_dir: str, tmp_path: Path, two_cpu_ray: None) -> None:
    encoder = Encoder(PromptTokenizer(model_dir), 512, 128)
    sft = encoder.sft([SftItem(i, "rationale", *arithmetic(i)) for i in range(8)], Counter())
    nodes = [TreeNode(i, 0, arithmetic(i)[0], [arithmetic(i)[1]], [arithmetic(i, wrong=True)[1]]
                      + ([f"### Answer\nIt is {40 + i}.\nFinal answer: {40 + i}"] if i % 2 else []),
                      [(0, 0)] + ([(0, 1)] if i % 2 else [])) for i in range(4)]
    trees = encoder.trees(nodes, 1.0, Counter())
    assert len(sft) == 8 and [len(t.pairs) for t in trees] == [1, 2, 1, 2]  # unequal pair weights per worker
    runs = {}
    for workers in (1, 2):
        # dropout 0: the only randomness left is the seeded data order and LoRA init, the same on every worker
        cfg = TrainingConfig(num_workers=workers, cpus_per_worker=1, seed=0, lora=LoraSettings(dropout=0.0),
                             sft=SftSettings(lr=1e-3, epochs=2, batch_size=4, max_steps=4),
                             tdpo=TdpoSettings(lr=1e-3, epochs=2, trees_per_step=2, max_steps=3))
        runs[workers] = run_training(cfg, model_path=model_dir, sft=sft, trees=trees, pad_id=encoder.pad_id,
                                     work_dir=tmp_path / str(workers), name=f"workers-{workers}")
    one, two = runs[1].metrics, runs[2].metrics
    print(f"losses, 1 worker: sft {one['sft_losses']} tdpo {one['tdpo_losses']}")
    print(f"losses, 2 workers: sft {two['sft_losses']} tdpo {two['tdpo_losses']}")
    assert (one["workers"], two["workers"]) == (1, 2)
    assert one["sft_steps"] == two["sft_steps"] == 4 and one["tdpo_steps"] == two["tdpo_steps"] == 3
    for stage in ("sft", "tdpo"):
        a, b = one[f"{stage}_losses"], two[f"{stage}_losses"]
        assert len(a) == len(b) == one[f"{stage}_steps"]
        assert max(a) - min(a) > 0.05 * max(a), f"{stage}: a flat trajectory would match trivially: {a}"
        assert b[0] == pytest.approx(a[0], rel=FIRST_STEP_RTOL), stage  # the same weights, the same batch
        assert b == pytest.approx(a, rel=LATER_RTOL), stage
    assert one["tdpo_reward_accuracy"] == pytest.approx(two["tdpo_reward_accuracy"])
    # Both runs published an adapter, and the two moved the same way from the adapter they started from: AdamW
    # divides each gradient element by its own magnitude, so a near-zero element's update is rounding-sensitive and
    # the weights compare as a whole: measured, their difference is 0.06% of how far training moved them.
    init = get_peft_model_state_dict(load_model(model_dir, cfg.lora.model_dump(), "cpu", seed=cfg.seed))
    weights = [load_file(str(runs[w].adapter_dir / "adapter_model.safetensors")) for w in (1, 2)]
    assert set(weights[0]) == set(weights[1]) == set(init) and len(init) > 0
    moved = torch.cat([(weights[0][k] - init[k]).flatten() for k in init]).norm()
    apart = torch.cat([(weights[1][k] - weights[0][k]).flatten() for k in init]).norm()
    print(f"adapters: moved {moved:.4g}, apart {apart:.4g} ({apart / moved:.3%})")
    assert moved > 0 and apart < 0.01 * moved
