"""The OpenAPI document's generation endpoints: vLLM's own request and response models.

The generation routes read their raw body (bounded by the front door) and parse it themselves, so FastAPI cannot
see their models; the routes name them here and `install_openapi` adds their JSON Schemas to the components.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest, ChatCompletionResponse
from vllm.entrypoints.openai.completion.protocol import CompletionRequest, CompletionResponse

from services.gateway.protocol import ErrorResponse

_SCHEMAS = "#/components/schemas/{model}"
ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "Refused, in OpenAI's error shape"},
    "5XX": {"model": ErrorResponse, "description": "Failed, in OpenAI's error shape"},
}


_MODELS: list[Any] = [ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse]


def raw_body(model: str) -> dict[str, Any]:
    """`openapi_extra` of a route whose handler parses its raw body as vLLM's `model`."""
    ref = {"$ref": _SCHEMAS.format(model=model)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def generated(model: str) -> dict[int | str, dict[str, Any]]:
    """The responses of a generation route: vLLM's `model` as JSON, or with `stream` server-sent events (the schema
    of one event, as OpenAPI 3.1 reads it), each chunk as JSON in `data`, then `[DONE]`."""
    event = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
    ref = {"$ref": _SCHEMAS.format(model=model)}
    return {200: {"content": {"application/json": {"schema": ref}, "text/event-stream": {"schema": event}}}}


def _errors_as_json(schema: dict[str, Any]) -> None:
    """Errors are JSON (OpenAI's shape) on every route; FastAPI files them under a route's own media type (text/plain
    for /metrics)."""
    for operation in (op for path in schema.get("paths", {}).values() for op in path.values()):
        for code, response in operation.get("responses", {}).items():
            content = response.get("content", {})
            if not str(code).startswith("2") and content and "application/json" not in content:
                response["content"] = {"application/json": next(iter(content.values()))}


def install_openapi(app: FastAPI) -> None:
    """The app's `openapi()`, with vLLM's models among its component schemas."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            modes = [(m, "validation" if m.__name__.endswith("Request") else "serialization") for m in _MODELS]
            _, defs = models_json_schema(modes, ref_template=_SCHEMAS)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            _errors_as_json(schema)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
