"""Adapter validation against the real base model's weight shapes, with real PEFT adapter files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.registry.validate import AdapterInvalid, validate_adapter


@pytest.fixture
def good(codeword_adapters, tmp_path) -> Path:
    dst = tmp_path / "good"
    shutil.copytree(codeword_adapters["ALPHA-7"], dst)
    return dst


def test_real_adapter_passes(good, model_dir):
    info = validate_adapter(good, Path(model_dir), max_rank=16)
    assert info.rank == 8 and info.target_modules == ["q_proj", "v_proj"]


def edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(("change", "message"), [
    ({"r": 32}, "exceeds the engine's max_lora_rank 16"),
    ({"peft_type": "PREFIX_TUNING"}, "only LORA"),
    ({"target_modules": ["q_proj", "v_proj", "lm_head"]}, "cannot be served"),
    ({"target_modules": "q_proj|v_proj"}, "regex"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
])
def test_bad_configs(good, model_dir, change, message):
    edit_config(good, **change)
    with pytest.raises(AdapterInvalid, match=message):
        validate_adapter(good, Path(model_dir), max_rank=16)


def test_missing_files_and_corrupt_weights(good, model_dir, tmp_path):
    with pytest.raises(AdapterInvalid, match="not a directory"):
        validate_adapter(tmp_path / "nope", Path(model_dir), 16)
    (good / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(AdapterInvalid, match="unreadable"):
        validate_adapter(good, Path(model_dir), 16)
    (good / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterInvalid, match=r"no adapter_model\.safetensors"):
        validate_adapter(good, Path(model_dir), 16)
    (good / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterInvalid, match="not valid JSON"):
        validate_adapter(good, Path(model_dir), 16)


def test_adapter_for_another_base_model_is_refused(good, model_dir):
    weights = good / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if k.endswith("q_proj.lora_A.weight"))
    tensors[key] = torch.zeros(8, 1024)  # this base's q_proj takes 576 inputs
    save_file(tensors, weights)
    with pytest.raises(AdapterInvalid, match="trained for another base model"):
        validate_adapter(good, Path(model_dir), 16)
    tensors = load_file(weights)
    tensors.pop(key)
    tensors[key.replace("layers.0.", "layers.99.")] = torch.zeros(8, 576)  # a layer this base lacks
    save_file(tensors, weights)
    with pytest.raises(AdapterInvalid, match="does not exist in the base model"):
        validate_adapter(good, Path(model_dir), 16)
