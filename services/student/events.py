"""What crosses the gateway -> student boundary (plain dataclasses: cheap to pickle through Ray).

The debate's turns send a `GenerateRequest` and get `Event`s; clients' OpenAI requests (vLLM's own request models)
get `StudentEvent`s."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GenerateRequest:
    request_id: str
    model: str  # as the client named it: `student`, `student@v3`, a label, or the base model id
    prompts: list[list[int]]  # token ids; several only for /v1/completions with a batch of prompts
    max_tokens: int | None = None  # None: up to the context length
    sampling: dict[str, Any] = field(default_factory=dict)  # temperature, top_p, n, stop, seed, penalties
    stream: bool = True  # False: the engine sends one Delta per choice at the end (one Ray hop, not one per token)
    background: bool = False  # a debate's turn, not a client's request: not counted as serving load
    preemptible: bool = False  # background only: aborted (Failed code `preempted`) as soon as a client request runs


@dataclass
class Started:
    """First event of every successful generation: which version serves it, fixed for its whole life."""

    adapter: str  # `student@vN`, or the base model id
    replica: str = ""  # the student replica serving it (Ray Serve's replica id)


@dataclass
class Delta:
    index: int  # choice index: prompt_index * n + sample index, as the OpenAI API numbers them
    text: str
    tokens: int  # completion tokens in this delta
    finish_reason: str | None = None
    first_token_wall: float | None = None  # time.time() of this choice's first token (set when aggregated)


@dataclass
class Failed:
    """An error value instead of an exception, so it arrives intact through Ray's streaming generator."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None

    @classmethod
    def model_not_found(cls, model: str) -> Failed:
        """A request named a model that is neither the student, its base nor a published version."""
        return cls(404, f"The model `{model}` does not exist.", "model", "model_not_found")


Event = Started | Delta | Failed


@dataclass
class Chunks:
    """Server-sent-event frames of a stream (`data: {...}\n\n`), as vLLM's serving class wrote them."""

    frames: list[str]


@dataclass
class Finished:
    """Last event of a served OpenAI request: what it produced, counted from the engine's outputs."""

    texts: list[str]  # per choice
    prompt_tokens: int
    completion_tokens: int
    first_token_wall: float | None  # time.time() of its first generated token


@dataclass
class Body:
    """The whole answer to a request without `stream`, in one message: the OpenAI response object as vLLM's serving
    class made it, the version that served it, and its tally."""

    json: dict[str, Any]
    adapter: str
    finished: Finished
    replica: str = ""


StudentEvent = Started | Body | Chunks | Finished | Failed


@dataclass
class LoadResult:
    version: str
    seconds: float
    already_loaded: bool = False
