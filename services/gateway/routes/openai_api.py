"""The OpenAI API: generation through vLLM's serving classes, models, Distillery's feedback, adapter loading."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from services.config import Settings
from services.gateway.auth import Auth
from services.gateway.errors import ApiError, model_not_found
from services.gateway.generation import GenerationService, Served
from services.gateway.openai_requests import Generation, read_chat, read_completion
from services.gateway.openapi import generated, raw_body
from services.gateway.protocol import FeedbackRequest, LoadLoRARequest, ModelCard, ModelList, UnloadLoRARequest
from services.gateway.serving_adapters import AdapterService
from services.gateway.serving_feedback import FeedbackService
from services.gateway.streaming import GenerationStream
from services.gateway.student_client import StudentClient
from services.registry import AdapterRegistry
from services.store.debates import ANONYMOUS_KEY_ID
from services.tasks.routing import TaskRouter

ADAPTER_HEADER = "x-distillery-adapter"
REPLICA_HEADER = "x-distillery-replica"  # the student replica that served the request


def respond(result: Served | ApiError | dict[str, Any]) -> Response:
    if isinstance(result, ApiError):
        return result.response()
    if isinstance(result, dict):
        return JSONResponse(result)
    headers = {ADAPTER_HEADER: result.adapter}
    if result.replica:
        headers[REPLICA_HEADER] = result.replica
    if result.stream is not None:
        return GenerationStream(result, {**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})
    return JSONResponse(result.body, headers=headers)


def attach_router(app: FastAPI, settings: Settings, auth: Auth, generation: GenerationService,
                  student: StudentClient, registry: AdapterRegistry, adapters: AdapterService,
                  feedback: FeedbackService) -> None:
    router = APIRouter()
    client, admin = Depends(auth.require_client), Depends(auth.require_admin)
    tasks = TaskRouter(settings.tasks)

    async def generate(request: Request, read: Callable[[bytes], Generation | ApiError]) -> Response:
        gen = read(await request.body())
        if isinstance(gen, ApiError):
            return gen.response()
        if gen.task is not None:
            generation.metrics.task_requests.labels(gen.task, gen.via).inc()
        principal = getattr(request.state, "principal", None)
        return respond(await generation.run(
            gen, request_id=request.state.request_id, started_at=request.state.started_at,
            headers={k: v for k, v in request.headers.items() if k.startswith("x-distillery-")},
            key_id=principal.key_id if principal is not None else ANONYMOUS_KEY_ID))

    @router.post("/v1/chat/completions", dependencies=[client], openapi_extra=raw_body("ChatCompletionRequest"),
                 responses=generated("ChatCompletionResponse"))
    async def chat_completions(request: Request) -> Response:
        return await generate(request, lambda raw: read_chat(raw, settings.server, tasks))

    @router.post("/v1/completions", dependencies=[client], openapi_extra=raw_body("CompletionRequest"),
                 responses=generated("CompletionResponse"))
    async def create_completion(request: Request) -> Response:
        return await generate(request, lambda raw: read_completion(raw, settings.server))

    async def model_cards() -> list[ModelCard]:
        m = await student.models()
        base = m["base"]
        cards = [ModelCard(id=base, root=m["root"], max_model_len=m["max_model_len"]),
                 ModelCard(id=registry.served_name, root=m["promoted"], parent=base,
                           max_model_len=m["max_model_len"])]
        cards += [ModelCard(id=a["name"], root=a["path"], parent=base, max_model_len=m["max_model_len"])
                  for a in m["loaded"]]
        return cards

    @router.get("/v1/models", dependencies=[client], responses={200: {"model": ModelList}})
    async def list_models() -> Response:
        return JSONResponse(ModelList(data=await model_cards()).model_dump())

    @router.get("/v1/models/{model_id:path}", dependencies=[client], responses={200: {"model": ModelCard}})
    async def get_model(model_id: str) -> Response:
        for card in await model_cards():
            if card.id == model_id:
                return JSONResponse(card.model_dump())
        return model_not_found(model_id).response()

    @router.post("/v1/feedback", dependencies=[Depends(auth.require_labeller)], status_code=202)
    async def post_feedback(body: FeedbackRequest, request: Request) -> Response:
        result = await feedback.record(body, request.state.principal)
        return result.response() if isinstance(result, ApiError) else JSONResponse(result, status_code=202)

    @router.post("/v1/load_lora_adapter", dependencies=[admin])
    async def load_lora_adapter(body: LoadLoRARequest) -> Response:
        return respond(await adapters.load(body))

    @router.post("/v1/unload_lora_adapter", dependencies=[admin])
    async def unload_lora_adapter(body: UnloadLoRARequest) -> Response:
        return respond(await adapters.unload(body))

    app.include_router(router)

