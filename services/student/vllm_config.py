"""The student's vLLM configuration, written as vLLM's own OpenAI-server command line.

One list of arguments serves three readers: the replica parses it with vLLM's parser (so every default is vLLM's),
builds its engine and OpenAI serving classes from the result, and the benchmark starts bare vLLM with the very same
list, so the two are compared on the same configuration.
"""

from __future__ import annotations

import os
from argparse import Namespace
from pathlib import Path

from services.config import Settings
from services.student.merged import WORKER_EXTENSION


def vllm_argv(settings: Settings, model_path: str, base_id: str) -> list[str]:
    """`vllm serve`'s arguments for the student (model, context, LoRA, tools, structured outputs, logprobs)."""
    cfg = settings.student
    argv = [
        "--model", model_path, "--tokenizer", model_path, "--served-model-name", base_id,
        "--dtype", engine_dtype(cfg.dtype), "--max-model-len", str(cfg.max_model_len),
        "--max-num-seqs", str(cfg.max_seqs),
        "--gpu-memory-utilization", str(cfg.gpu_memory_utilization), "--max-logprobs", str(cfg.max_logprobs),
        "--disable-log-stats", "--structured-outputs-config.backend", cfg.structured_outputs_backend,
    ]
    if cfg.enable_lora:
        # Beside a merged version, another version is served as the difference of the two adapters: rank r + r.
        rank = cfg.max_lora_rank * (2 if cfg.merge_promoted else 1)
        argv += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(cfg.max_loras),
                 "--max-cpu-loras", str(cfg.max_cpu_loras)]
        if cfg.merge_promoted:  # the worker method that writes merged weights in place (services/student/merged.py)
            argv += ["--worker-extension-cls", WORKER_EXTENSION]
    if cfg.tool_call_parser:
        argv += ["--tool-call-parser", cfg.tool_call_parser, "--tool-strict-level", cfg.tool_strict_level]
        if cfg.enable_auto_tool_choice:
            argv.append("--enable-auto-tool-choice")
    if cfg.chat_template:
        argv += ["--chat-template", cfg.chat_template]
    return argv + list(cfg.vllm_args)


def engine_dtype(dtype: str) -> str:
    """`student.dtype` as vLLM gets it. `auto` is vLLM's auto (the checkpoint's dtype), except on a CPU build whose
    CPU has no native bfloat16: vLLM's CPU platform declares bf16 supported on every x86 CPU, but without
    AVX512-BF16 or AMX its matmuls fall back to a slow path (oneDNN refuses the primitive). float32 there: 3.6x the
    requests/s of bfloat16 on the 2-core development machine (AMD EPYC, AVX2; bench/cpu_lora.py)."""
    if dtype != "auto":
        return dtype
    from vllm.platforms import current_platform

    return "float32" if current_platform.is_cpu() and not cpu_has_bf16() else "auto"


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU computes bfloat16 natively: x86's AVX512-BF16 or AMX-BF16, aarch64's BF16 (Linux's
    /proc/cpuinfo flags). Elsewhere (no /proc/cpuinfo) vLLM's own platform check stands."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return True
    flags = {f for line in text.splitlines() if line.startswith(("flags", "Features"))
             for f in line.split(":", 1)[-1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def vllm_env(settings: Settings) -> dict[str, str]:
    """Environment the CPU build reads when its engine starts: KV cache size and the cores its OpenMP threads take."""
    cfg = settings.student
    env = {"VLLM_CPU_KVCACHE_SPACE": str(cfg.kv_cache_gb)}
    if cfg.cpu_threads_bind != "auto":
        cores = f"0-{(os.cpu_count() or 1) - 1}" if cfg.cpu_threads_bind == "all" else cfg.cpu_threads_bind
        env["VLLM_CPU_OMP_THREADS_BIND"] = cores
    return env


def vllm_namespace(settings: Settings, model_path: str, base_id: str) -> Namespace:
    """`vllm_argv` parsed by vLLM's own OpenAI-server parser: engine and frontend arguments, vLLM's defaults."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    for key, value in vllm_env(settings).items():
        os.environ.setdefault(key, value)
    return make_arg_parser(FlexibleArgumentParser()).parse_args(vllm_argv(settings, model_path, base_id))
