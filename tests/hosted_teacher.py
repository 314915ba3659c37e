"""A stand-in for a hosted LLM teacher: a real HTTP server speaking the OpenAI chat protocol, writing like one.

It solves the project's arithmetic questions exactly (`services.tasks.arithmetic.solve` on the `<question>` of the
debate prompts) and writes its replies in one provider's style, so the code under test meets the formats real
hosted models use rather than the reference teacher's tidy `Final answer: X`:

    openai    markdown steps, `**Final Answer:** 42`          reviews `**Rating:** 4.5`
    claude    prose ending `The final answer is 42.`          reviews `Score: 5/5`
    gemini    bullets, `## Final answer` then `42`            reviews `[4/5]`
    deepseek  a long `<think>` block, then `$\\boxed{42}$`     reviews `[[5]]`
    json      `{"reasoning": "...", "answer": 42}`           reviews `{"reasoning": "...", "score": "[5]"}`
    llama     steps, `Answer: 42`                            reviews `[4]`

A question it cannot solve gets some reasoning and an abstention (`I don't know` in the style's answer slot).
Reviews (prompts with `<solution>` or `<explanation>`) judge the work against its own solution (`read_answer` and
`same_answer`); critiques, reflections and explanations are prose. It honours the request's `max_tokens` /
`max_completion_tokens` (cut with `finish_reason: "length"`) and `n`, and records every request body in
`requests` (and its headers in `request_headers`).

Options (constructor keywords):
    reasoning_model   like OpenAI's o-series: 400 with an OpenAI error body for `max_tokens`, or a `temperature` /
                      `top_p` other than 1; reasoning tokens count against the completion limit
    truncate_every=k  answer replies k, 2k, ... are cut to a few words with `finish_reason: "length"`
    refuse_every=k    answer replies k, 2k, ... are a refusal
    error_rate        share of questions it answers wrong (and judges by that wrong answer), deterministic per
                      question
    faults            consumed in order, each by the next request it applies to: `html` (a 200 HTML page),
                      `empty_choices`, `null_content`, `error_body` (a 200 whose JSON is an error object), `huge`
                      (a 3 MB body, streamed without a length), `score_9` (the next review scores 9),
                      `rate_limited` (429 with `Retry-After: retry_after_s`), `server_error` (500)
    delay_s           seconds every request waits before it is answered

    teacher = HostedTeacher("claude", truncate_every=3)
    with teacher.serve() as base_url:  # http://127.0.0.1:<port>/v1
        ...
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, get_args

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from services.debate.prompts import final_message, tag
from services.tasks.answers import read_answer, same_answer
from services.tasks.arithmetic import fmt, solve
from tests.http_servers import serve_app

Style = Literal["openai", "claude", "gemini", "deepseek", "json", "llama"]
Fault = Literal["html", "empty_choices", "null_content", "error_body", "huge", "score_9", "rate_limited",
                "server_error"]
Task = Literal["answer", "review", "commentary"]
STYLES: tuple[Style, ...] = get_args(Style)
FAULTS: tuple[Fault, ...] = get_args(Fault)

MODELS: dict[Style, str] = {
    "openai": "gpt-4o-mini-2024-07-18", "claude": "claude-3-5-haiku-20241022", "gemini": "gemini-2.0-flash",
    "deepseek": "deepseek-reasoner", "json": "qwen2.5-72b-instruct", "llama": "llama-3.1-8b-instruct",
}
REASONING_MODEL = "o3-mini-2025-01-31"
REASONING_TOKENS = 64
REFUSAL = "I'm sorry, but I can't help with that request."
ABSTAIN = "I don't know"
HUGE_BYTES = 3 * 1024 * 1024
SCORES: dict[Style, float] = {"openai": 4.5, "claude": 5, "gemini": 4, "deepseek": 5, "json": 5, "llama": 4}


# ---- solving -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Worked:
    """A worked solution: the lines of reasoning and the final answer as written."""

    lines: tuple[str, ...]
    answer: str


def work(question: str, error_rate: float = 0.0) -> Worked | None:
    """The exact solution of a suite question (None: not solvable), wrong by one at `error_rate`."""
    sol = solve(question)
    if sol is None:
        return None
    if sol.kind == "expression":
        lines: tuple[str, ...] = (f"{sol.expression} = {fmt(sol.answer)}.",)
    else:
        lines = (f"We start with {fmt(sol.start)}.", *(f"{s.sentence} {s.equation()}." for s in sol.steps))
    if _errs(question, error_rate):
        wrong = fmt(sol.answer + Fraction(1))
        return Worked((*lines, f"Carrying the one over gives {wrong}."), wrong)
    return Worked(lines, fmt(sol.answer))


def _errs(question: str, error_rate: float) -> bool:
    return int(hashlib.sha256(question.encode()).hexdigest()[:8], 16) / 16**8 < error_rate


def question_of(prompt: str) -> str:
    return final_message(tag(prompt, "question") or prompt)


def task_of(prompt: str) -> Task:
    if tag(prompt, "solution") is not None or tag(prompt, "explanation") is not None:
        return "review"
    if any(tag(prompt, t) is not None for t in ("other_answer", "your_answer", "student_answer")):
        return "commentary"
    return "answer"


# ---- writing in a provider's style --------------------------------------------------------------------------
def _think(lines: tuple[str, ...]) -> str:
    working = " ".join(lines)
    return ("<think>\nOkay, let me read the question carefully and figure out what is being asked. "
            f"First pass: {working} Hmm, wait. Let me double-check each step instead of trusting the first pass. "
            f"Going through it again slowly: {working} Yes, every step holds. Is there any trick in the wording? "
            "I don't think so: it asks for one number. Let me also make sure I did not drop a step or misread an "
            f"operation. Once more: {working} Good, that is consistent. I'm confident now.\n</think>\n\n")


ANSWER_WRITERS: dict[Style, Callable[[tuple[str, ...], str], str]] = {
    "openai": lambda lines, final: "Let's solve this step by step.\n\n"
    + "\n".join(f"{i}. {line}" for i, line in enumerate(lines, 1)) + f"\n\n**Final Answer:** {final}",
    "claude": lambda lines, final: "I'll work through this carefully.\n\n" + " ".join(lines)
    + f"\n\nThe final answer is {final}.",
    "gemini": lambda lines, final: "Here's the solution:\n\n" + "\n".join(f"* {line}" for line in lines)
    + f"\n\n## Final answer\n{final}",
    "deepseek": lambda lines, final: _think(lines) + "\n".join(lines)
    + "\n\n" + (f"$\\boxed{{{final}}}$" if final != ABSTAIN else f"$\\boxed{{\\text{{{final}}}}}$"),
    "json": lambda lines, final: json.dumps({"reasoning": " ".join(lines),
                                             "answer": final if final == ABSTAIN else json.loads(final)}),
    "llama": lambda lines, final: "\n".join(lines) + f"\nAnswer: {final}",
}

REVIEW_WRITERS: dict[Style, Callable[[str, float], str]] = {
    "openai": lambda verdict, score: f"**Assessment:** {verdict}\n\n**Rating:** {score:g}",
    "claude": lambda verdict, score: f"{verdict}\n\nScore: {score:g}/5",
    "gemini": lambda verdict, score: f"{verdict}\n\n[{score:g}/5]",
    "deepseek": lambda verdict, score: f"<think>\nLet me check the solution step by step. {verdict}\n</think>\n\n"
    f"{verdict}\n\n[[{score:g}]]",
    "json": lambda verdict, score: json.dumps({"reasoning": verdict, "score": f"[{score:g}]"}),
    "llama": lambda verdict, score: f"{verdict}\n[{score:g}]",
}


def write_answer(style: Style, worked: Worked | None) -> str:
    if worked is None:
        return ANSWER_WRITERS[style](("This question is outside what I can work out reliably.",), ABSTAIN)
    return ANSWER_WRITERS[style](worked.lines, worked.answer)


def write_review(style: Style, right: bool | None, score: float | None = None) -> str:
    """A review in the style: 1 for wrong work, the style's high score for right work, 3 when it cannot tell."""
    verdict = {True: "The reasoning is sound and the final answer is correct.",
               False: "The final answer is wrong: the calculation does not match the question.",
               None: "I cannot verify this solution with confidence."}[right]
    if score is None:
        score = {True: SCORES[style], False: 1.0, None: 3.0}[right]
    return REVIEW_WRITERS[style](verdict, score)


def write_commentary(prompt: str, worked: Worked | None) -> str:
    """Critiques, reflections and explanations: prose, with the prefix the prompt asks for."""
    if worked is None:
        body = "I could not work this question out myself, so I cannot point to a specific step."
    else:
        body = f"Working it through correctly: {' '.join(worked.lines)} So the answer is {worked.answer}."
    if tag(prompt, "your_answer") is not None:
        return f"Self-reflection: I made an arithmetic slip and did not recheck my steps. {body}"
    if tag(prompt, "other_answer") is not None:
        return f"Feedback: The other agent's calculation goes wrong along the way. {body}"
    return f"The student's answer goes wrong in its arithmetic. Let's look at it step by step. {body}"


# ---- the wire format ----------------------------------------------------------------------------------------
def _tokens(text: str) -> int:
    return len(text) // 4 + 1


def openai_error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def completion(model: str, prompt: str, choices: list[tuple[str | None, str]], reasoning_tokens: int = 0
               ) -> dict[str, Any]:
    completion_tokens = sum(_tokens(t or "") for t, _ in choices) + reasoning_tokens
    usage: dict[str, Any] = {"prompt_tokens": _tokens(prompt), "completion_tokens": completion_tokens,
                             "total_tokens": _tokens(prompt) + completion_tokens}
    if reasoning_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "usage": usage,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": fr}
                        for i, (text, fr) in enumerate(choices)]}


async def _huge_body() -> AsyncIterator[bytes]:
    yield b'{"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "'
    chunk = b"x" * 65536
    for _ in range(HUGE_BYTES // len(chunk)):
        yield chunk
    yield b'"}, "finish_reason": "stop"}]}'


def _every(k: int, count: int) -> bool:
    return k > 0 and count % k == 0


def _cut(text: str, limit: int | None) -> tuple[str, str]:
    """The text as a model with a completion limit of `limit` tokens writes it."""
    if limit is None or _tokens(text) <= limit:
        return text, "stop"
    return text[: max(0, limit) * 4], "length"


# ---- the server -----------------------------------------------------------------------------------------------
class HostedTeacher:
    def __init__(
        self,
        style: Style = "openai",
        *,
        model: str | None = None,
        reasoning_model: bool = False,
        truncate_every: int = 0,
        refuse_every: int = 0,
        error_rate: float = 0.0,
        faults: Iterable[Fault] = (),
        delay_s: float = 0.0,
        retry_after_s: int = 1,
    ) -> None:
        self.style = style
        self.model = model or (REASONING_MODEL if reasoning_model else MODELS[style])
        self.reasoning_model = reasoning_model
        self.truncate_every, self.refuse_every, self.error_rate = truncate_every, refuse_every, error_rate
        self.faults: list[Fault] = list(faults)
        self.delay_s, self.retry_after_s = delay_s, retry_after_s
        self.requests: list[dict[str, Any]] = []  # every request body received, in order
        self.request_headers: list[dict[str, str]] = []  # and its headers
        self._answers = 0
        self.app = self._build_app()

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Serve on a free loopback port; yields the base URL (`.../v1`)."""
        with serve_app(self.app) as url:
            yield f"{url}/v1"

    def _build_app(self) -> FastAPI:
        app = FastAPI(docs_url=None, redoc_url=None)

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            self.requests.append(body)
            self.request_headers.append(dict(request.headers))
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return self.respond(body)

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "stand-in"}]}

        return app

    def respond(self, body: dict[str, Any]) -> Response:
        if (refused := self._unsupported(body)) is not None:
            return refused
        prompt = str(body["messages"][-1]["content"])
        task = task_of(prompt)
        if (fault := self._next_fault(task)) is not None:
            return self._faulty(fault, prompt)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        reasoning = REASONING_TOKENS if self.reasoning_model else 0
        choices = [self._choice(task, prompt, None if limit is None else limit - reasoning)
                   for _ in range(int(body.get("n") or 1))]
        return JSONResponse(completion(self.model, prompt, choices, reasoning))

    def _unsupported(self, body: dict[str, Any]) -> JSONResponse | None:
        """An o-series model's refusals of sampling parameters it does not take."""
        if not self.reasoning_model:
            return None
        if "max_tokens" in body:
            return openai_error(400, "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                                "'max_completion_tokens' instead.", "invalid_request_error", "max_tokens",
                                "unsupported_parameter")
        for param in ("temperature", "top_p"):
            if param in body and body[param] != 1:
                return openai_error(400, f"Unsupported value: '{param}' does not support {body[param]} with this "
                                    "model. Only the default (1) value is supported.", "invalid_request_error",
                                    param, "unsupported_value")
        return None

    def _next_fault(self, task: Task) -> Fault | None:
        for i, fault in enumerate(self.faults):
            if fault != "score_9" or task == "review":
                return self.faults.pop(i)
        return None

    def _faulty(self, fault: Fault, prompt: str) -> Response:
        if fault == "html":
            return HTMLResponse("<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
                                "<body>Checking your browser before accessing the API.</body></html>")
        if fault == "empty_choices":
            return JSONResponse(completion(self.model, prompt, []))
        if fault == "null_content":
            return JSONResponse(completion(self.model, prompt, [(None, "stop")]))
        if fault == "error_body":
            return openai_error(200, "The server had an error while processing your request. Sorry about that!",
                                "server_error")
        if fault == "huge":
            return StreamingResponse(_huge_body(), media_type="application/json")
        if fault == "rate_limited":
            return openai_error(429, "Rate limit reached for requests per min. Please try again in 1s.",
                                "requests", code="rate_limit_exceeded",
                                headers={"Retry-After": str(self.retry_after_s)})
        if fault == "server_error":
            return openai_error(500, "The server had an error while processing your request.", "server_error")
        return JSONResponse(completion(self.model, prompt, [(write_review(self.style, True, 9.0), "stop")]))  # score_9

    def _choice(self, task: Task, prompt: str, limit: int | None) -> tuple[str | None, str]:
        worked = work(question_of(prompt), self.error_rate)
        if task == "review":
            return _cut(write_review(self.style, self._judge(prompt, worked)), limit)
        if task == "commentary":
            return _cut(write_commentary(prompt, worked), limit)
        self._answers += 1
        if _every(self.refuse_every, self._answers):
            return REFUSAL, "stop"
        text = write_answer(self.style, worked)
        if _every(self.truncate_every, self._answers):
            return " ".join(text.split()[:5]), "length"
        return _cut(text, limit)

    @staticmethod
    def _judge(prompt: str, worked: Worked | None) -> bool | None:
        """Whether the reviewed work reaches its own answer (None: it has none to compare with)."""
        if worked is None:
            return None
        solution = tag(prompt, "solution")
        if solution is not None:
            reading = read_answer(solution, "number")
            return reading.status == "ok" and same_answer(reading.answer, worked.answer, "number")
        return worked.answer in re.findall(r"-?\d+(?:\.\d+)?", tag(prompt, "explanation") or "")
