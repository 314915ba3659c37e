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


def test_what_validation_reads_from_a_real_adapter(good, model_dir):
    cfg = json.loads((good / "adapter_config.json").read_text())
    info = validate_adapter(good, Path(model_dir), max_rank=8)  # a rank equal to the engine's limit is served
    assert info.alpha == float(cfg["lora_alpha"]) == 16.0
    assert info.base_model_name == cfg["base_model_name_or_path"] == model_dir  # PEFT records the base it trained on
    edit_config(good, target_modules=["v_proj", "q_proj"])
    assert validate_adapter(good, Path(model_dir), 16).target_modules == ["q_proj", "v_proj"]  # sorted
    cfg = json.loads((good / "adapter_config.json").read_text())
    del cfg["lora_alpha"]
    (good / "adapter_config.json").write_text(json.dumps(cfg))
    assert validate_adapter(good, Path(model_dir), 16).alpha == 8.0  # PEFT's default alpha: the rank


@pytest.mark.parametrize("rank", [0, -8, "8", 8.0, None])
def test_rank_must_be_a_positive_integer(good, model_dir, rank):
    edit_config(good, r=rank)
    with pytest.raises(AdapterInvalid, match="is not a positive integer"):
        validate_adapter(good, Path(model_dir), 16)


def test_rank_one_is_a_rank(good, model_dir):
    edit_config(good, r=1)  # a valid rank, which these rank-8 tensors do not have
    with pytest.raises(AdapterInvalid, match="inconsistent with r=1"):
        validate_adapter(good, Path(model_dir), 16)


def test_weights_must_match_the_config(good, model_dir, tmp_path):
    weights = good / "adapter_model.safetensors"
    tensors = load_file(weights)
    # The config says rank 4, the tensors are rank 8.
    edit_config(good, r=4)
    with pytest.raises(AdapterInvalid, match="inconsistent with r=4"):
        validate_adapter(good, Path(model_dir), 16)
    edit_config(good, r=8)
    # Tensors for a module the config does not target.
    edit_config(good, target_modules=["q_proj"])
    with pytest.raises(AdapterInvalid, match="targets a module not in target_modules"):
        validate_adapter(good, Path(model_dir), 16)
    edit_config(good, target_modules=["q_proj", "v_proj"])
    # A lora_B whose rank side is wrong, and one whose output side does not fit the base.
    b_key = next(k for k in tensors if k.endswith("v_proj.lora_B.weight"))
    for shape, message in (((192, 4), "inconsistent with r=8"), ((192, 8, 1), "inconsistent with r=8"),
                           ((576, 8), "trained for another base model")):
        save_file({**tensors, b_key: torch.zeros(*shape)}, weights)
        with pytest.raises(AdapterInvalid, match=message):
            validate_adapter(good, Path(model_dir), 16)
        # Without the base model's folder only the adapter's own consistency is checked.
        if message.startswith("trained"):
            assert validate_adapter(good, None, 16).rank == 8
    a_key = next(k for k in tensors if k.endswith("v_proj.lora_A.weight"))
    save_file({**tensors, a_key: torch.zeros(4, 576)}, weights)
    with pytest.raises(AdapterInvalid, match="inconsistent with r=8"):
        validate_adapter(good, Path(model_dir), 16)
    # Anything but LoRA A/B weights (an embedding, a bias) is refused.
    save_file({**tensors, "base_model.model.model.embed_tokens.weight": torch.zeros(2, 2)}, weights)
    with pytest.raises(AdapterInvalid, match="unexpected tensor"):
        validate_adapter(good, Path(model_dir), 16)
    save_file({}, weights)
    with pytest.raises(AdapterInvalid, match="holds no tensors"):
        validate_adapter(good, Path(model_dir), 16)
    save_file(tensors, weights)
    assert validate_adapter(good, Path(model_dir), 16).rank == 8  # the original passes again
    (good / "adapter_config.json").unlink()
    with pytest.raises(AdapterInvalid, match=r"adapter_config\.json is missing"):
        validate_adapter(good, Path(model_dir), 16)
