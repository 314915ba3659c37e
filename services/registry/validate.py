"""Checks an adapter folder before anything loads it: files, LoRA config, rank, targets, and shapes
against the base model's own weights (the real meaning of "trained for this base").

Only safetensors headers are read, so validating a 100 MB adapter costs milliseconds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from safetensors import safe_open

# Modules vLLM can apply LoRA to in decoder-only models (embeddings and lm_head need extra vLLM flags).
SUPPORTED_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


class AdapterInvalid(ValueError):
    """An adapter that must not be loaded; the message says why and what to fix."""


@dataclass(frozen=True)
class AdapterInfo:
    rank: int
    alpha: float
    target_modules: list[str]
    base_model_name: str | None


def _adapter_weights(path: Path) -> Path:
    for name in ("adapter_model.safetensors",):
        if (path / name).is_file():
            return path / name
    raise AdapterInvalid(f"{path}: no adapter_model.safetensors (a PEFT LoRA adapter folder is expected)")


@lru_cache(maxsize=4)
def base_weight_shapes(model_dir: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a local base model folder, read from its safetensors headers."""
    folder = Path(model_dir)
    files = sorted(folder.glob("*.safetensors"))
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open has no __iter__
                shapes[key] = tuple(st.get_slice(key).get_shape())
    return shapes


def validate_adapter(path: Path, base_model_dir: Path | None, max_rank: int) -> AdapterInfo:
    """Raise AdapterInvalid unless `path` is a LoRA adapter this base model and engine can serve."""
    if not path.is_dir():
        raise AdapterInvalid(f"adapter path {str(path)!r} is not a directory")
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise AdapterInvalid(f"{path}: adapter_config.json is missing")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterInvalid(f"{path}: adapter_config.json is not valid JSON ({e})") from e
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise AdapterInvalid(f"{path}: peft_type is {cfg.get('peft_type')!r}, only LORA adapters are served")
    rank = cfg.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise AdapterInvalid(f"{path}: LoRA rank r={rank!r} is not a positive integer")
    if rank > max_rank:
        raise AdapterInvalid(
            f"{path}: LoRA rank {rank} exceeds the engine's max_lora_rank {max_rank} "
            "(retrain with a smaller r or raise student.max_lora_rank and restart)"
        )
    targets = cfg.get("target_modules") or []
    if isinstance(targets, str):
        raise AdapterInvalid(f"{path}: target_modules is a regex ({targets!r}); list the module names")
    unsupported = sorted(set(targets) - SUPPORTED_TARGETS)
    if unsupported:
        raise AdapterInvalid(
            f"{path}: target modules {unsupported} cannot be served; supported: {sorted(SUPPORTED_TARGETS)}"
        )
    if cfg.get("modules_to_save"):
        raise AdapterInvalid(f"{path}: modules_to_save {cfg['modules_to_save']} is not supported by vLLM LoRA")

    weights = _adapter_weights(path)
    try:
        with safe_open(str(weights), framework="pt") as st:
            shapes = {k: tuple(st.get_slice(k).get_shape()) for k in st.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises several types for truncated/corrupt files
        raise AdapterInvalid(f"{weights}: unreadable safetensors file ({e})") from e
    if not shapes:
        raise AdapterInvalid(f"{weights}: holds no tensors")

    base_shapes = base_weight_shapes(str(base_model_dir)) if base_model_dir else {}
    for key, shape in shapes.items():
        m = _LORA_KEY.match(key)
        if m is None:
            raise AdapterInvalid(f"{weights}: unexpected tensor {key!r} (only lora_A/lora_B weights are served)")
        module, ab = m.group("module"), m.group("ab")
        if module.rsplit(".", 1)[-1] not in set(targets):
            raise AdapterInvalid(f"{weights}: tensor {key!r} targets a module not in target_modules")
        if len(shape) != 2 or (ab == "A" and shape[0] != rank) or (ab == "B" and shape[1] != rank):
            raise AdapterInvalid(f"{weights}: tensor {key!r} has shape {list(shape)}, inconsistent with r={rank}")
        if base_shapes:
            base = base_shapes.get(f"{module}.weight")
            if base is None:
                raise AdapterInvalid(
                    f"{weights}: {module} does not exist in the base model {base_model_dir}: "
                    "the adapter was trained for another base model"
                )
            out_f, in_f = base
            if (ab == "A" and shape[1] != in_f) or (ab == "B" and shape[0] != out_f):
                raise AdapterInvalid(
                    f"{weights}: {key!r} has shape {list(shape)} but the base model's {module} is "
                    f"{out_f}x{in_f}: the adapter was trained for another base model"
                )
    return AdapterInfo(
        rank=rank,
        alpha=float(cfg.get("lora_alpha", rank)),
        target_modules=sorted(targets),
        base_model_name=cfg.get("base_model_name_or_path"),
    )
