"""The student's vLLM command line, read back by vLLM's own parser: what the config asks for is what vLLM gets."""

from __future__ import annotations

import pytest

from services.config import Settings
from services.student import vllm_config
from services.student.merged import WORKER_EXTENSION
from services.student.vllm_config import cpu_has_bf16, engine_dtype, vllm_argv, vllm_namespace

MODEL = "/models/student"


def parsed(**student: object) -> object:
    return vllm_namespace(Settings(student=student), MODEL, "base-id")


@pytest.fixture
def cpu_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU build of vLLM on a CPU without native bf16 (this development machine: AVX2 only)."""
    from vllm.platforms import current_platform

    monkeypatch.setattr(type(current_platform), "is_cpu", lambda self: True)
    monkeypatch.setattr(vllm_config, "cpu_has_bf16", lambda: False)


def test_the_defaults_reach_vllm_as_vllm_reads_them(cpu_without_bf16: None) -> None:
    ns = parsed()
    assert (ns.model, ns.tokenizer, ns.served_model_name) == (MODEL, MODEL, ["base-id"])
    assert (ns.max_model_len, ns.dtype, ns.max_num_seqs, ns.max_logprobs) == (2048, "float32", 64, 20)
    assert ns.enable_lora and (ns.max_loras, ns.max_cpu_loras) == (4, 8)
    assert (ns.tool_call_parser, ns.enable_auto_tool_choice, ns.tool_strict_level) == ("hermes", True, "parameter")
    assert ns.structured_outputs_config.backend == "auto"
    assert ns.chat_template is None


def test_a_merged_promotion_gives_the_engine_twice_the_adapter_rank_and_the_merge_method() -> None:
    merged, plain = parsed(max_lora_rank=16), parsed(max_lora_rank=16, merge_promoted=False)
    assert (merged.max_lora_rank, plain.max_lora_rank) == (32, 16)
    assert merged.worker_extension_cls == WORKER_EXTENSION
    assert plain.worker_extension_cls != WORKER_EXTENSION


def test_tools_off_and_a_chat_template_of_ones_own() -> None:
    ns = parsed(tool_call_parser=None, chat_template="{{ messages }}")
    assert ns.tool_call_parser is None and not ns.enable_auto_tool_choice
    assert ns.chat_template == "{{ messages }}"


def test_extra_vllm_arguments_come_last_and_win() -> None:
    argv = vllm_argv(Settings(student={"vllm_args": ["--max-num-seqs", "7", "--seed", "3"]}), MODEL, "b")
    assert argv[-4:] == ["--max-num-seqs", "7", "--seed", "3"]
    ns = parsed(vllm_args=["--max-num-seqs", "7"])
    assert ns.max_num_seqs == 7


def test_an_unknown_strict_level_is_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match="tool_strict_level"):
        Settings(student={"tool_strict_level": "sometimes"})


def test_the_cpu_flags_that_mean_native_bf16(tmp_path) -> None:
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    sapphire = tmp_path / "amx"
    sapphire.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    graviton = tmp_path / "arm"
    graviton.write_text("Features\t: fp asimd bf16 i8mm\n")
    assert not cpu_has_bf16(avx2) and cpu_has_bf16(sapphire) and cpu_has_bf16(graviton)
    assert cpu_has_bf16(tmp_path / "absent")  # no /proc/cpuinfo: vLLM's platform check stands


def test_auto_is_float32_only_on_a_cpu_build_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.platforms import current_platform

    for is_cpu, bf16, expected in [(True, False, "float32"), (True, True, "auto"), (False, False, "auto")]:
        monkeypatch.setattr(type(current_platform), "is_cpu", lambda self, v=is_cpu: v)
        monkeypatch.setattr(vllm_config, "cpu_has_bf16", lambda v=bf16: v)
        assert engine_dtype("auto") == expected, (is_cpu, bf16)
        assert [engine_dtype(d) for d in ("bfloat16", "float16", "float32")] == ["bfloat16", "float16", "float32"]


def test_a_set_dtype_reaches_vllm_unchanged(cpu_without_bf16: None) -> None:
    assert parsed(dtype="bfloat16").dtype == "bfloat16" and parsed(dtype="float16").dtype == "float16"
