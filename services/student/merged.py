"""Serve the promoted LoRA adapter at base-model speed: merge it into the running engine's weights in place.

Math. PEFT's LoRA on a linear layer with weight W (out x in) adds ΔW = s · B @ A, with A (r x in), B (out x r)
and s = lora_alpha / r (lora_alpha / sqrt(r) with `use_rslora`). Merging adapter N makes the engine hold

    W' = bf16(W + ΔW_N)          computed in float32 from the ORIGINAL checkpoint weights, never from W'.

Every other model stays reachable as a LoRA *relative to W'*: serving target T needs ΔW_T - ΔW_N, which is
itself a LoRA of rank r_T + r_N (r_N alone for the base model, T = None):

    A' = concat([s_T · A_T, s_N · A_N], dim 0)     B' = concat([B_T, -B_N], dim 1)     s' = 1 (alpha = r')

because B' @ A' = s_T B_T A_T - s_N B_N A_N. A module that only one of the two adapters targets gets zero rows /
columns in the other's slot, so one rank fits every module. The engine needs max_lora_rank >= r_T + r_N
(16 for two r=8 adapters). The result differs from the exact model only by W's bf16 rounding in W'.

Mechanism (vLLM 0.32, CPU build). The engine's worker gets `MergeWorkerExtension` mixed in through the
`worker_extension_cls` engine argument; `AsyncLLM.collective_rpc` calls its method with the path of a
safetensors file of HF-named weights (tensors cannot travel as RPC arguments: the engine core decodes utility
arguments without type hints, and pickling needs VLLM_ALLOW_INSECURE_SERIALIZATION). The worker fuses q/k/v and
gate/up per the model's `packed_modules_mapping` and writes each layer: in place (`copy_`) when the layer keeps
its weight, else (the CPU build repacks weights for oneDNN / the SGL kernel and empties `layer.weight`) by
setting the weight and re-running the layer's `process_weights_after_loading`. LoRA-wrapped layers are unwrapped
to their `base_layer`. The RPC runs between engine steps; afterwards the prefix cache is reset (running requests
preempted), so no KV computed under the old weights is reused. The service merges only once no request runs
(`adapters.StudentAdapters.merge_promoted` drains first): a request never sees its weights change.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

WORKER_EXTENSION = "services.student.merged.MergeWorkerExtension"
# Checkpoint modules vLLM fuses into one layer: a merge must send every member of a group it touches.
FUSED_GROUPS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraTerm:
    """One adapter's factors per module (HF module name -> (s·A, B)), float32."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rank: int


def read_adapter(adapter_dir: str | Path) -> LoraTerm:
    """PEFT adapter folder -> per-module (s·A, B) in float32, with PEFT's scaling folded into A."""
    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("use_dora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("modules_to_save"):
        raise ValueError(f"{adapter_dir}: only plain LoRA (no DoRA, rank/alpha patterns, modules_to_save) merges")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in tensors.items():
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                raise ValueError(f"{adapter_dir}: unexpected tensor {key}")
            continue
        module = key.removeprefix(_PEFT_PREFIX).removesuffix(".lora_A.weight")
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        factors[module] = (a.float() * scale, b.float())
    return LoraTerm(factors, r)


def relative_lora(plus: LoraTerm | None, minus: LoraTerm | None) -> LoraTerm:
    """The rank-(r+ + r-) LoRA whose delta is Δplus - Δminus (scaling already folded in: s' = 1)."""
    terms = [(t, sign) for t, sign in ((plus, 1.0), (minus, -1.0)) if t is not None]
    if not terms:
        raise ValueError("no delta: neither a target nor a merged adapter")
    rank = sum(t.rank for t, _ in terms)
    modules = sorted({m for t, _ in terms for m in t.factors})
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module in modules:
        some_a, some_b = next(t.factors[module] for t, _ in terms if module in t.factors)
        a_parts, b_parts = [], []
        for t, sign in terms:
            a, b = t.factors.get(module, (None, None))
            a_parts.append(a if a is not None else some_a.new_zeros(t.rank, some_a.shape[1]))
            b_parts.append(sign * b if b is not None else some_b.new_zeros(some_b.shape[0], t.rank))
        factors[module] = (torch.cat(a_parts, 0), torch.cat(b_parts, 1))
    return LoraTerm(factors, rank)


def write_peft_adapter(term: LoraTerm, out_dir: Path, base_model: str) -> Path:
    """Save `term` as a PEFT folder vLLM's `add_lora` loads (alpha = r, so PEFT's scaling is 1)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for module, (a, b) in term.factors.items():
        tensors[f"{_PEFT_PREFIX}{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{_PEFT_PREFIX}{module}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": term.rank, "lora_alpha": term.rank, "use_rslora": False, "lora_dropout": 0.0, "bias": "none",
        "target_modules": sorted({m.rsplit(".", 1)[1] for m in term.factors}), "fan_in_fan_out": False,
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=1))
    return out_dir


class MergedWeights:
    """Which adapter the engine's weights hold, how to change it, and the adapters relative to it."""

    def __init__(self, model_dir: str | Path, work_dir: str | Path) -> None:
        self.model_dir = Path(model_dir)
        self.work_dir = Path(work_dir)
        self.merged: str | None = None
        self._merged_term: LoraTerm | None = None
        self._lock = asyncio.Lock()  # one merge at a time

    def _base_weights(self, modules: set[str]) -> dict[str, torch.Tensor]:
        """The original checkpoint weights of `modules` (HF names without `.weight`), every fused sibling included."""
        names = set()
        for module in modules:
            prefix, leaf = module.rsplit(".", 1)
            group = next((g for g in FUSED_GROUPS if leaf in g), (leaf,))
            names.update(f"{prefix}.{member}.weight" for member in group)
        out: dict[str, torch.Tensor] = {}
        for file in sorted(self.model_dir.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as f:
                for name in names & set(f.keys()):
                    out[name] = f.get_tensor(name)
        if missing := names - out.keys():
            raise ValueError(f"{self.model_dir} lacks {sorted(missing)[:3]}")
        return out

    def merged_weights(self, term: LoraTerm | None, touched: set[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """HF-named weights W + s·B@A (float32, then `dtype`) for every module in `touched`; W alone elsewhere."""
        weights = self._base_weights(touched)
        for name, w in weights.items():
            factors = term.factors.get(name.removesuffix(".weight")) if term else None
            if factors is not None:
                a, b = factors
                w = w.float() + b @ a
            weights[name] = w.to(dtype).contiguous()
        return weights

    def _write_merged(self, adapter_dir: str | None, dtype: torch.dtype) -> tuple[LoraTerm | None, Path | None]:
        """Read the adapter and write the weights the merge changes (None: nothing to change)."""
        term = read_adapter(adapter_dir) if adapter_dir is not None else None
        touched = set(term.factors if term else ()) | set(self._merged_term.factors if self._merged_term else ())
        if not touched:
            return term, None
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / f"merge-{os.getpid()}-{time.monotonic_ns()}.safetensors"
        save_file(self.merged_weights(term, touched, dtype), str(path))
        return term, path

    async def merge(self, engine: Any, adapter_dir: str | None) -> float:
        """Make `engine` (an AsyncLLM built with WORKER_EXTENSION) hold base + `adapter_dir` (None: the base).

        Returns the seconds taken. The float32 arithmetic runs in a thread, off the serving event loop.
        """
        async with self._lock:
            t0 = time.monotonic()
            term, path = await asyncio.to_thread(self._write_merged, adapter_dir, engine.model_config.dtype)
            if path is not None:
                try:
                    await engine.collective_rpc("distillery_load_weights", args=(str(path),))
                finally:
                    path.unlink(missing_ok=True)
                # KV computed under the old weights must not be reused: running requests are preempted, recompute.
                await engine.reset_prefix_cache(reset_running_requests=True)
            self.merged, self._merged_term = adapter_dir, term
            return time.monotonic() - t0

    def relative_adapter(self, target_dir: str | None, out_dir: Path) -> Path:
        """A PEFT adapter whose delta on the merged weights is Δtarget - Δmerged (target None: the base model).

        Raises ValueError when the delta is empty (target is what is merged): serve without LoRA then.
        """
        if target_dir == self.merged:
            raise ValueError("the target is the merged model itself: serve it without a LoRA")
        target = read_adapter(target_dir) if target_dir is not None else None
        return write_peft_adapter(relative_lora(target, self._merged_term), out_dir, str(self.model_dir))


class MergeWorkerExtension:
    """Mixed into vLLM's worker via `worker_extension_cls=WORKER_EXTENSION`; runs in the worker process."""

    model_runner: Any

    def distillery_load_weights(self, path: str) -> int:
        """Load HF-named linear weights from a safetensors file into the running model; returns layers written."""
        from vllm.lora.layers import BaseLayerWithLoRA

        model = self.model_runner.get_model()
        packed: dict[str, list[str]] = getattr(model, "packed_modules_mapping", {})
        member_of = {m: (fused, i) for fused, members in packed.items() for i, m in enumerate(members)}
        layers: dict[str, list[torch.Tensor | None]] = {}
        for name, w in load_file(path).items():
            prefix, leaf = name.removesuffix(".weight").rsplit(".", 1)
            fused, index = member_of.get(leaf, (leaf, 0))
            parts = layers.setdefault(f"{prefix}.{fused}", [None] * len(packed.get(fused, [leaf])))
            parts[index] = w
        for module, parts in layers.items():
            if any(p is None for p in parts):
                raise ValueError(f"{module}: a fused layer needs all its members")
            layer = model.get_submodule(module)
            if isinstance(layer, BaseLayerWithLoRA):
                layer = layer.base_layer
            _set_linear_weight(layer, torch.cat([p for p in parts if p is not None], 0))
        return len(layers)


@torch.no_grad()
def _set_linear_weight(layer: Any, weight: torch.Tensor) -> None:
    """Replace an unquantized linear layer's weight (single worker: the full, unsharded matrix)."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    if not isinstance(layer.quant_method, UnquantizedLinearMethod):
        raise TypeError(f"cannot merge into {type(layer.quant_method).__name__} layers")
    current = layer.weight
    weight = weight.to(device=current.device, dtype=current.dtype)
    if current.shape == weight.shape:  # the kernel reads this tensor (GPU, CPU fallback): in place keeps pointers
        current.copy_(weight)
        return
    # The CPU build packed the weight into its GEMM kernel and emptied `layer.weight`: set it and repack.
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    layer.quant_method.process_weights_after_loading(layer)
