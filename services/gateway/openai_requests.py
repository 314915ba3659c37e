"""Reading a generation request: OpenAI's limits, vLLM's own request model, then what Distillery adds.

The body becomes vLLM's `ChatCompletionRequest` / `CompletionRequest`, the very object vLLM's serving classes take
in the student replica, so every field vLLM serves is accepted as vLLM accepts it. Before that, Distillery holds
the request to OpenAI's documented ranges (`protocol.OpenAILimits`) and checks what vLLM would find only after
rendering: each tool's `parameters` must be a JSON Schema. After it: the batch caps (prompts, prompts x n), the
task route, and what a captured request records (the conversation, its tools and response format).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.exceptions import VLLMClientError

from services.config import ServerConfig
from services.gateway.errors import ApiError, bad_request
from services.gateway.protocol import ChatLimits, CompletionLimits
from services.tasks.routing import TaskRouter

L = TypeVar("L", bound=BaseModel)
M = TypeVar("M", bound=BaseModel)

# Sampling fields a captured request records with its conversation (what the debate may want to replay).
_RECORDED = ("temperature", "top_p", "n", "stop", "seed", "presence_penalty", "frequency_penalty", "tools",
             "tool_choice", "response_format")


@dataclass
class Generation:
    """A generation request as the gateway serves it."""

    endpoint: str  # `chat` or `completions`
    request: Any  # vLLM's request model, sent as it is to the student replica
    model: str  # the model as the client named it
    sequences: int  # prompts x n: what admission charges it
    capture: dict[str, Any] = field(default_factory=dict)  # what a captured request records
    task: str | None = None
    via: str | None = None  # how the task was chosen (metadata, keyword, default)

    @property
    def stream(self) -> bool:
        return bool(self.request.stream)

    @property
    def response_id(self) -> str:
        """The id vLLM gives the response (set by `for_request`)."""
        prefix = "chatcmpl" if self.endpoint == "chat" else "cmpl"
        return f"{prefix}-{self.request.request_id}"

    def for_request(self, request_id: str) -> Generation:
        """Give the engine a request id unique among those in flight (a client's `x-request-id` may repeat)."""
        self.request.request_id = f"{request_id}-{uuid.uuid4().hex[:8]}"
        return self


def read_chat(raw: bytes, server: ServerConfig, router: TaskRouter) -> Generation | ApiError:
    parsed = _parse(raw, ChatLimits)
    if isinstance(parsed, ApiError):
        return parsed
    limits, data = parsed
    if (err := check_batch(1, limits.n or 1, server)) is not None:
        return err
    request = _vllm_request(data, ChatCompletionRequest)
    if isinstance(request, ApiError):
        return request
    if (err := _check_tools(request.tools)) is not None:
        return err
    messages = [_recorded_message(m) for m in limits.model_dump()["messages"]]
    route = router.route(limits.metadata, messages)
    capture = {"messages": messages, **_recorded(request), "max_tokens": request.max_completion_tokens
               or request.max_tokens, "task": route.task}
    return Generation("chat", request, limits.model, request.n or 1, capture, route.task, route.via)


def read_completion(raw: bytes, server: ServerConfig) -> Generation | ApiError:
    parsed = _parse(raw, CompletionLimits)
    if isinstance(parsed, ApiError):
        return parsed
    limits, data = parsed
    prompts, n = prompt_count(limits.prompt), limits.n or 1
    if (err := check_batch(prompts, n, server)) is not None:  # before vLLM's model reads a single prompt
        return err
    request = _vllm_request(data, CompletionRequest)
    if isinstance(request, ApiError):
        return request
    capture = {"prompt": limits.prompt, **_recorded(request), "max_tokens": request.max_tokens}
    return Generation("completions", request, limits.model, prompts * n, capture)


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


def prompt_count(prompt: str | list[str] | list[int] | list[list[int]]) -> int:
    """How many prompts `prompt` holds, without tokenising it: one text or token list, or a list of them."""
    if isinstance(prompt, str) or not prompt or isinstance(prompt[0], int):
        return 1
    return len(prompt)


def _parse(raw: bytes, limits: type[L]) -> tuple[L, dict[str, Any]] | ApiError:
    """The body held to OpenAI's limits, and as it came: 400 for a body that is not a JSON object, 422 for one
    that breaks the limits."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return bad_request(f"Request body is not valid JSON: {e}", None, "invalid_json")
    if not isinstance(data, dict):
        return bad_request("Request body must be a JSON object", None, "invalid_json")
    try:
        return limits.model_validate(data), data
    except ValidationError as e:
        return _invalid(e, data)


def _vllm_request(data: dict[str, Any], model: type[M]) -> M | ApiError:
    """The body as vLLM's request model: 422 where it breaks vLLM's schema, 400 where vLLM refuses a value."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        return _invalid(e, data)
    except VLLMClientError as e:  # vLLM's own checks raise past pydantic (e.g. its cap on prompts per request)
        return bad_request(str(e), getattr(e, "parameter", None), "invalid_request")


def _invalid(e: ValidationError, data: dict[str, Any]) -> ApiError:
    first = e.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or _named_param(str(first["msg"]), data)
    detail = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}".lstrip(": ") for err in e.errors()[:5])
    return ApiError(422, f"Invalid request: {detail}", param, "validation_error")


def _named_param(message: str, data: dict[str, Any]) -> str | None:
    """The request field a whole-request validation message names (vLLM's cross-field checks have no location)."""
    named = [key for key in data if f"`{key}`" in message or f"'{key}'" in message or f" {key} " in message]
    return named[0] if named else None


def _check_tools(tools: list[Any] | None) -> ApiError | None:
    """Each tool's `parameters` must be a JSON Schema, or the grammar built from it would be meaningless."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    for i, tool in enumerate(tools or []):
        parameters = getattr(tool.function, "parameters", None)
        if parameters is None:
            continue
        try:
            Draft202012Validator.check_schema(parameters)
        except SchemaError as e:
            return bad_request(f"tools[{i}].function.parameters is not a valid JSON Schema: {e.message}",
                               f"tools[{i}].function.parameters", "invalid_tool_schema")
    return None


def _recorded_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as capture records it: its role (`developer` as `system`, as chat templates know it), its text,
    and the tool calls an assistant made or the call a tool message answers."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    role = "system" if message["role"] == "developer" else message["role"]
    out = {"role": role, "content": content if isinstance(content, str) else ""}
    for key in ("tool_calls", "tool_call_id", "name"):
        if message.get(key) is not None:
            out[key] = message[key]
    return out


def _recorded(request: Any) -> dict[str, Any]:
    """The request's sampling fields and tools as the client spelled them (OpenAI's names, not vLLM's)."""
    values = {key: getattr(request, key, None) for key in _RECORDED}
    if not values["tools"]:
        values["tool_choice"] = None  # vLLM's default when no tools are given, not the client's choice

    def plain(v: Any) -> Any:
        if isinstance(v, BaseModel):
            return v.model_dump(exclude_none=True, by_alias=True)
        return [plain(x) for x in v] if isinstance(v, list) else v

    return {key: plain(v) for key, v in values.items() if v not in (None, [])}
