"""Request parsing shared by the generation endpoints: JSON, schema, unsupported fields, batch size, context
length."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from services.config import ServerConfig
from services.gateway.errors import ApiError, bad_request

M = TypeVar("M", bound=BaseModel)


def parse_body(raw: bytes, model: type[M]) -> M | ApiError:
    """400 for a body that is not a JSON object, 422 for one that breaks the schema."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return bad_request(f"Request body is not valid JSON: {e}", None, "invalid_json")
    if not isinstance(data, dict):
        return bad_request("Request body must be a JSON object", None, "invalid_json")
    try:
        parsed = model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        detail = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:5])
        return ApiError(422, f"Invalid request: {detail}", param, "validation_error")
    unsupported = getattr(parsed, "unsupported_param", lambda: None)()
    if unsupported:
        return bad_request(f"Parameter `{unsupported}` is not supported by this server", unsupported,
                           "unsupported_parameter")
    return parsed


def check_context(prompt_tokens: int, max_tokens: int | None, max_model_len: int, param: str) -> ApiError | None:
    """Refuse, never truncate, a prompt that does not fit the context (OpenAI's wording and code)."""
    wanted = prompt_tokens + (max_tokens or 0)
    if prompt_tokens >= max_model_len or wanted > max_model_len:
        return bad_request(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{wanted} tokens ({prompt_tokens} in the {param}, {max_tokens or 0} in the completion). "
            "Please reduce the length of the prompt or of max_tokens.",
            param,
            "context_length_exceeded",
        )
    return None


def check_batch(prompts: int, n: int, server: ServerConfig) -> ApiError | None:
    """Refuse a request for more prompts, or prompts x n sequences, than one request may ask for."""
    if prompts > server.max_prompts_per_request:
        return bad_request(f"At most {server.max_prompts_per_request} prompts are allowed in one request, got "
                           f"{prompts}", "prompt", "too_many_prompts")
    most = min(server.max_sequences_per_request, server.max_sequences_in_flight)
    if prompts * n > most:
        return bad_request(f"At most {most} sequences (prompts x n) are allowed in one request, got {prompts} x "
                           f"{n} = {prompts * n}", "n", "too_many_sequences")
    return None
