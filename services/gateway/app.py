"""The FastAPI application: thin routers over the serving classes.

`build_app` takes its collaborators (student client, tokenizer, registry, capture sink) as arguments, so the
same app runs inside the Ray Serve ingress or, in tests, in-process around any student.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.capture.policy import CapturePolicy, CaptureSink, NullSink
from services.config import Settings
from services.gateway.auth import Auth
from services.gateway.errors import ApiError, model_not_found
from services.gateway.front_door import install_front_door
from services.gateway.generation import GenerationService, Served
from services.gateway.metrics import ServingMetrics
from services.gateway.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    FeedbackRequest,
    LoadLoRARequest,
    ModelCard,
    ModelList,
    PromoteRequest,
    UnloadLoRARequest,
)
from services.gateway.request_ids import RequestIds
from services.gateway.serving_adapters import AdapterService
from services.gateway.serving_chat import ChatServing
from services.gateway.serving_completions import CompletionServing
from services.gateway.serving_distillation import DistillationService
from services.gateway.serving_feedback import FeedbackService
from services.gateway.serving_jobs import JobsService
from services.gateway.streaming import GenerationStream
from services.gateway.student_client import StudentClient
from services.registry import AdapterRegistry
from services.store.controls import Controls
from services.store.debates import ANONYMOUS_KEY_ID
from services.store.mags import MagStore
from services.student.tokenizer import PromptTokenizer
from services.tasks.routing import TaskRouter

log = logging.getLogger(__name__)

ADAPTER_HEADER = "x-distillery-adapter"


# A training job's id: the store's 64-bit key (a larger number would fail in the database, not as a 4xx).
JobId = Annotated[int, Path(ge=1, le=2**63 - 1)]
_SCHEMAS = "#/components/schemas/{model}"
# Routes that read their raw body (bounded by the front door) and parse it themselves: FastAPI cannot see
# their body models, so the OpenAPI schema names them here and `_openapi` adds them to its components.
_RAW_BODIES: tuple[type[BaseModel], ...] = (ChatCompletionRequest, CompletionRequest)
_ERRORS: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "Refused, in OpenAI's error shape"},
    "5XX": {"model": ErrorResponse, "description": "Failed, in OpenAI's error shape"},
}


def _raw_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` of a route whose handler parses its raw body as `model`."""
    ref = {"$ref": _SCHEMAS.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _generated(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The responses of a generation route: `model` as JSON, or with `stream` server-sent events (the schema of
    one event, as OpenAPI 3.1 reads it), each chunk as JSON in `data`, then `[DONE]`."""
    event = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}
    return {200: {"model": model, "content": {"text/event-stream": {"schema": event}}}}


def _openapi(app: FastAPI) -> Any:
    """The app's `openapi()`, with the models of the raw-body routes among its component schemas."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            _, defs = models_json_schema([(m, "validation") for m in _RAW_BODIES], ref_template=_SCHEMAS)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        return app.openapi_schema  # type: ignore[return-value]

    return openapi


def _respond(result: Served | ApiError | dict[str, Any]) -> Response:
    if isinstance(result, ApiError):
        return result.response()
    if isinstance(result, dict):
        return JSONResponse(result)
    headers = {ADAPTER_HEADER: result.adapter}
    if result.stream is not None:
        return GenerationStream(result, {**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})
    return JSONResponse(result.body, headers=headers)


def build_app(
    settings: Settings,
    *,
    student: StudentClient,
    tokenizer: PromptTokenizer,
    registry: AdapterRegistry,
    sink: CaptureSink | None = None,
    metrics: ServingMetrics | None = None,
    store: MagStore | None = None,
    extra_metrics: list[Callable[[], Awaitable[bytes]]] | None = None,
    jobs: JobsService | None = None,
    controls: Controls | None = None,
    echo_request_id: bool = True,
) -> FastAPI:
    """`store`: the capture queue, for /v1/feedback. `extra_metrics`: more exposition appended to /metrics (the
    debate worker's, the training scheduler's). `jobs`: /admin/train and /admin/jobs. `echo_request_id=False`
    behind Ray Serve, whose proxy already returns x-request-id."""
    app = FastAPI(title="Distillery", version="0.1.0", docs_url="/docs", redoc_url=None, responses=_ERRORS)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    metrics = metrics or ServingMetrics()
    auth = Auth(settings.server)
    capture = CapturePolicy(settings.capture, sink or NullSink(), task_rates={
        t.name: t.sample_rate for t in settings.tasks if t.sample_rate is not None})
    generation = GenerationService(settings, student, metrics, capture)
    max_len = settings.student.max_model_len
    chat = ChatServing(generation, tokenizer, max_len, TaskRouter(settings.tasks))
    completions = CompletionServing(generation, tokenizer, max_len)
    adapters = AdapterService(registry, student, metrics)
    feedback = FeedbackService(store, settings)
    jobs = jobs or JobsService(None, None)
    distillation = DistillationService(controls)
    app.state.metrics, app.state.generation = metrics, generation

    # ---- cross-cutting: the front door (body limit, cross-site refusal), request ids, errors in the OpenAI shape
    install_front_door(app, settings.server.max_body_bytes, settings.server.host)
    app.add_middleware(RequestIds, echo=echo_request_id)  # added last: outermost, so refusals carry the id too

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err["loc"] if p != "body"]
        return ApiError(422, f"Invalid request: {'.'.join(loc)}: {err['msg']}", ".".join(loc) or None,
                        "validation_error").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return ApiError(500, f"Internal server error: {type(exc).__name__}", None, "internal_error").response()

    client = Depends(auth.require_client)
    admin = Depends(auth.require_admin)

    def ctx(request: Request) -> dict[str, Any]:
        principal = getattr(request.state, "principal", None)
        return {"request_id": request.state.request_id, "started_at": request.state.started_at,
                "headers": {k: v for k, v in request.headers.items() if k.startswith("x-distillery-")},
                "key_id": principal.key_id if principal is not None else ANONYMOUS_KEY_ID}

    # ---- OpenAI API -------------------------------------------------------------------------------------
    @app.post("/v1/chat/completions", dependencies=[client], openapi_extra=_raw_body(ChatCompletionRequest),
              responses=_generated(ChatCompletionResponse))
    async def chat_completions(request: Request) -> Response:
        return _respond(await chat.create(await request.body(), **ctx(request)))

    @app.post("/v1/completions", dependencies=[client], openapi_extra=_raw_body(CompletionRequest),
              responses=_generated(CompletionResponse))
    async def create_completion(request: Request) -> Response:
        return _respond(await completions.create(await request.body(), **ctx(request)))

    async def model_cards() -> list[ModelCard]:
        m = await student.models()
        base = m["base"]
        cards = [ModelCard(id=base, root=m["root"], max_model_len=m["max_model_len"]),
                 ModelCard(id=registry.served_name, root=m["promoted"], parent=base,
                           max_model_len=m["max_model_len"])]
        cards += [ModelCard(id=a["name"], root=a["path"], parent=base, max_model_len=m["max_model_len"])
                  for a in m["loaded"]]
        return cards

    @app.get("/v1/models", dependencies=[client], responses={200: {"model": ModelList}})
    async def list_models() -> Response:
        return JSONResponse(ModelList(data=await model_cards()).model_dump())

    @app.get("/v1/models/{model_id:path}", dependencies=[client], responses={200: {"model": ModelCard}})
    async def get_model(model_id: str) -> Response:
        for card in await model_cards():
            if card.id == model_id:
                return JSONResponse(card.model_dump())
        return model_not_found(model_id).response()

    @app.post("/v1/feedback", dependencies=[Depends(auth.require_labeller)], status_code=202)
    async def post_feedback(body: FeedbackRequest, request: Request) -> Response:
        result = await feedback.record(body, request.state.principal)
        return result.response() if isinstance(result, ApiError) else JSONResponse(result, status_code=202)

    @app.post("/v1/load_lora_adapter", dependencies=[admin])
    async def load_lora_adapter(body: LoadLoRARequest) -> Response:
        return _respond(await adapters.load(body))

    @app.post("/v1/unload_lora_adapter", dependencies=[admin])
    async def unload_lora_adapter(body: UnloadLoRARequest) -> Response:
        return _respond(await adapters.unload(body))

    # ---- admin ------------------------------------------------------------------------------------------
    @app.get("/admin/adapters", dependencies=[admin])
    async def list_adapters() -> Response:
        return JSONResponse(await adapters.list())

    @app.post("/admin/adapters/rollback", dependencies=[admin])
    async def rollback(body: PromoteRequest | None = None) -> Response:
        return _respond(await adapters.rollback(body.reason if body else None))

    @app.post("/admin/adapters/{version}/promote", dependencies=[admin])
    async def promote(version: str, body: PromoteRequest | None = None) -> Response:
        return _respond(await adapters.promote(version, body.reason if body else None))

    @app.post("/admin/train", dependencies=[admin], status_code=202)
    async def train() -> Response:
        result = await jobs.train()
        return result.response() if isinstance(result, ApiError) else JSONResponse(result, status_code=202)

    @app.get("/admin/jobs", dependencies=[admin])
    async def list_jobs(limit: int = 20) -> Response:
        return _respond(await jobs.list(max(1, min(limit, 500))))

    @app.get("/admin/jobs/{job_id}", dependencies=[admin])
    async def get_job(job_id: JobId) -> Response:
        return _respond(await jobs.get(job_id))

    @app.post("/admin/jobs/{job_id}/cancel", dependencies=[admin])
    async def cancel_job(job_id: JobId) -> Response:
        return _respond(await jobs.cancel(job_id))

    @app.get("/admin/distillation", dependencies=[admin])
    async def distillation_state() -> Response:
        return _respond(await distillation.state())

    @app.post("/admin/distillation/pause", dependencies=[admin])
    async def pause_distillation(body: PromoteRequest | None = None) -> Response:
        return _respond(await distillation.pause(body.reason if body else None))

    @app.post("/admin/distillation/resume", dependencies=[admin])
    async def resume_distillation(body: PromoteRequest | None = None) -> Response:
        return _respond(await distillation.resume(body.reason if body else None))

    # ---- operations -------------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> Response:
        try:
            await asyncio.wait_for(student.check_health(), timeout=10)
            m = await student.models()
        except Exception as e:
            return ApiError(503, f"student engine not ready: {type(e).__name__}", None, "not_ready").response()
        return JSONResponse({"status": "ready", "serving": m["promoted"], "base_model": m["base"]})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        # Read from the registry at scrape time: promotions by a training job or another replica show too.
        promoted = await asyncio.to_thread(registry.promoted)
        metrics.set_promoted(promoted.name if promoted else registry.base_model)
        body = metrics.render()
        for extra in extra_metrics or []:
            try:
                body += await asyncio.wait_for(extra(), timeout=5)
            except Exception as e:  # the debate worker restarting must not break the serving metrics
                log.warning("extra metrics unavailable: %r", e)
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    return app
