"""Grouped LoRA matmuls for vLLM's CPU build, installed as a vLLM general plugin (`vllm.general_plugins`).

vLLM's CPU build applies LoRA with its PyTorch reference ops (`vllm.lora.ops.torch_ops`): for every token they
gather that token's whole adapter matrix (`weights[indices]`) and multiply one row at a time. A prefill of 1,600
tokens copies 1,600 rank-32 x 1,536 matrices per projection, 30 layers deep: measured here (2 cores), 633 ms per
shrink+expand pair against 10 ms for one matmul per adapter, so a batch of evaluation prompts on a LoRA adapter
took minutes on a 135M model (`bench/cpu_lora.py`). The ops below compute the same products grouped by adapter:
the tokens of one adapter in one matmul against its matrix, once.

A token whose index is -1 (no adapter: the base model, in a batch that mixes it with adapters) gets no LoRA
term, as vLLM's GPU kernels do; the reference ops index the last slot with -1 instead (`weights[-1]`), which adds
that slot's adapter to the base model's tokens when every slot is in use.

Installed in every vLLM process (the engine core and its workers load general plugins) through the entry point
in pyproject.toml; only on the CPU platform, and the patched names are those `PunicaWrapperCPU` calls.
"""

from __future__ import annotations

import torch

_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "sgmv_shrink", "sgmv_expand", "sgmv_expand_slice")


def lora_products(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
                  ) -> torch.Tensor:
    """Row i of the result is `inputs[i] @ weights[indices[i]].T` (zeros where the index is -1), computed as one
    matmul per adapter present. `weights`: [slots, out, in] or [slots, 1, out, in]."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    inputs = inputs.to(dtype)
    first = int(indices[0]) if indices.numel() else -1
    if first >= 0 and bool((indices == first).all()):  # one adapter for the whole batch: the common case
        return inputs @ weights[first].to(dtype).T
    out = torch.zeros(inputs.shape[0], weights.shape[1], dtype=dtype, device=inputs.device)
    for slot in indices.unique().tolist():
        if slot < 0:
            continue
        rows = (indices == slot).nonzero(as_tuple=True)[0]
        out[rows] = inputs[rows] @ weights[slot].to(dtype).T
    return out


def bgmv_shrink(inputs: torch.Tensor, lora_a_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, scaling: float = 1.0) -> None:
    outputs = lora_products(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, add_inputs: bool = True) -> None:
    outputs = lora_products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = 1 if outputs.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    common = min(outputs.shape[1], output_tensor.shape[1])  # adapter and model may pad differently
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                      lora_indices_tensor: torch.Tensor, slice_offset: int, slice_size: int,
                      add_inputs: bool = True) -> None:
    outputs = lora_products(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset: slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset: slice_offset + slice_size] = outputs


def sgmv_shrink(inputs: torch.Tensor, lora_a_weights: torch.Tensor, output_tensor: torch.Tensor,
                b_seq_start_loc: torch.Tensor, seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                batches: int, max_seq_length: int, token_nums: int, scaling: float) -> None:
    tokens = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)  # each sequence's adapter per token
    bgmv_shrink(inputs, lora_a_weights, output_tensor, tokens, scaling)


def sgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                b_seq_start_loc: torch.Tensor, seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                batches: int, max_seq_length: int, token_nums: int, add_inputs: bool = False) -> None:
    tokens = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
    bgmv_expand(inputs, lora_b_weights, output_tensor, tokens, add_inputs)


def sgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                      b_seq_start_loc: torch.Tensor, seq_len_tensor: torch.Tensor,
                      lora_indices_tensor: torch.Tensor, batches: int, max_seq_length: int, token_nums: int,
                      slice_offset: int, slice_size: int, add_inputs: bool = False) -> None:
    tokens = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, tokens, slice_offset, slice_size, add_inputs)


def register() -> None:
    """vLLM general plugin entry point: on the CPU platform, `PunicaWrapperCPU` calls the grouped ops. Loaded
    more than once per process at most harmlessly (it sets the same names)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.punica_wrapper import punica_cpu

    for name in _OPS:
        setattr(punica_cpu, name, globals()[name])
