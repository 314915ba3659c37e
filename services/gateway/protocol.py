"""Request and response models of the OpenAI-compatible API (the subset Distillery serves).

Field names, defaults and ranges follow the OpenAI API reference, as vLLM's frontend does. Parameters the
student cannot honour (tools, logprobs, ...) are refused with a 400 naming the parameter rather than being
silently ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class StreamOptions(BaseModel):
    include_usage: bool = False


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


def _nullable(*schemas: dict[str, Any]) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [*schemas, {"type": "null"}]})


# The schemas of fields whose validators check more than their types say (the API's documented limits).
_STOP = _nullable({"type": "string", "minLength": 1},
                  {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4})
_METADATA = _nullable({"type": "object", "maxProperties": 16, "propertyNames": {"maxLength": 64},
                       "additionalProperties": {"type": "string", "maxLength": 512}})
_TOKEN_IDS = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
_PROMPT = WithJsonSchema({
    "anyOf": [{"type": "string", "minLength": 1},
              {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
              _TOKEN_IDS, {"type": "array", "minItems": 1, "items": _TOKEN_IDS}],
    "description": "Text, texts, or token ids of the model's vocabulary (one prompt or several).",
})


# Extra OpenAI fields we accept only at their no-op value (None: any value); anything else is refused with a 400.
_NOOP_EXTRAS: dict[str, tuple[Any, ...] | None] = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None, True, False),
    "response_format": (None, {"type": "text"}),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "store": None,
    "service_tier": None,
}


def _document_extras(schema: dict[str, Any]) -> None:
    """The JSON Schema of the extra fields as `unsupported_param` takes them: each at its no-op values, no other."""
    for key, allowed in _NOOP_EXTRAS.items():
        schema["properties"][key] = {} if allowed is None else {"enum": list(allowed)}
    schema["additionalProperties"] = False


class SamplingFields(BaseModel):
    """Fields shared by both generation endpoints."""

    model_config = ConfigDict(extra="allow", json_schema_extra=_document_extras)

    model: str = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: Annotated[str | list[str] | None, _STOP] = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    def unsupported_param(self) -> str | None:
        for key, value in (self.model_extra or {}).items():
            if key not in _NOOP_EXTRAS:
                return key
            allowed = _NOOP_EXTRAS[key]
            if allowed is not None and value not in allowed:
                return key
        return None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    metadata: Annotated[dict[str, str] | None, _METADATA] = Field(
        None, description="OpenAI's request metadata (at most 16 pairs, keys <= 64 and values <= 512 characters); "
        "`task` names the request's task profile.",
    )

    @field_validator("metadata")
    @classmethod
    def _openai_metadata_limits(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > 16:
            raise ValueError(f"metadata may hold at most 16 key-value pairs, got {len(v)}")
        for key, value in v.items():
            if len(key) > 64:
                raise ValueError(f"metadata keys may be at most 64 characters, got one of {len(key)}")
            if len(value) > 512:
                raise ValueError(f"metadata values may be at most 512 characters, got one of {len(value)} ({key!r})")
        return v

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: Annotated[str | list[str] | list[int] | list[list[int]], _PROMPT]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for /v1/completions

    def token_limit(self) -> int | None:
        return self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


# ---- chat responses ------------------------------------------------------------------------------------
class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: _id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


# ---- completions responses -----------------------------------------------------------------------------
class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: _id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# ---- models and adapters -------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "distillery"
    root: str
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LoadLoRARequest(BaseModel):
    lora_name: str = Field(min_length=1, max_length=128)
    lora_path: str | None = None


class UnloadLoRARequest(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None


class PromoteRequest(BaseModel):
    """Body of the admin actions that are recorded with a reason (promote, rollback, pause, resume)."""

    reason: str | None = None


class FeedbackRequest(BaseModel):
    """POST /v1/feedback: the correct answer to an earlier request, for its debate (Distillery extension)."""

    # One of the two keys, not empty, names the request (checked by the service, said here for the schema).
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"required": [key], "properties": {key: {"type": "string", "minLength": 1}}} for key in ("request_id", "id")]})
    request_id: str | None = Field(None, max_length=160, description="The `x-request-id` of the response.")
    id: str | None = Field(None, max_length=160, description="Or the completion's `id` (chatcmpl-...).")
    answer: str = Field(min_length=1, max_length=2000, description="The correct final answer.")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error the API answers, as OpenAI writes it (`errors.ApiError`)."""

    error: ErrorBody
