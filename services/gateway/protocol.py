"""Distillery's own request and response models, and the OpenAI limits it holds requests to.

The generation endpoints' bodies are vLLM's own request models (`vllm.entrypoints.openai.*.protocol`), parsed in
`requests.py`; what is here is what vLLM does not do: OpenAI's documented ranges that vLLM accepts wider (a
temperature of 7, a role named `wizard`, 5 stop sequences, metadata of any size), Distillery's model cards,
adapters, feedback and errors.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator


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


class OpenAILimits(BaseModel):
    """The fields both generation endpoints share, held to the OpenAI API reference's ranges."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=16)
    stop: Annotated[str | list[str] | None, _STOP] = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    top_logprobs: int | None = Field(None, ge=0)

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


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]


class ChatLimits(OpenAILimits):
    messages: list[Message] = Field(min_length=1)
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


_Text = Annotated[str, Field(min_length=1)]
_Tokens = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionLimits(OpenAILimits):
    prompt: Annotated[_Text | Annotated[list[_Text], Field(min_length=1)] | _Tokens
                      | Annotated[list[_Tokens], Field(min_length=1)], _PROMPT]
    max_tokens: int | None = Field(None, ge=1)


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
