"""The job's training data file is read with `weights_only=True`: plain data round-trips, a planted file holding a
pickled object (one that would run code when unpickled) is refused, and a good file still loads afterwards."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from ray_jobs.tdpo.packing import Tree
from ray_jobs.train.data_file import load_training_data, save_training_data
from ray_jobs.trees.encode import SftExample


class Payload:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch /tmp/distillery-pwned-by-pickle",))


def test_training_data_round_trips_as_plain_data(tmp_path):
    sft = [SftExample([1, 2], [3, 4], 0.5)]
    trees = [Tree([1], [[2], [3, 4]], [(0, 1)], 2.0)]
    save_training_data(tmp_path / "data.pt", sft, trees)
    assert load_training_data(tmp_path / "data.pt") == (sft, trees)


def test_a_pickled_object_in_the_data_file_is_refused(tmp_path):
    planted = tmp_path / "data.pt"
    torch.save({"sft": [Payload()], "trees": []}, planted)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_training_data(planted)
    assert not os.path.exists("/tmp/distillery-pwned-by-pickle")
    save_training_data(planted, [SftExample([1], [2])], [])
    assert load_training_data(planted) == ([SftExample([1], [2])], [])
