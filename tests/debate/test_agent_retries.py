"""`OpenAIAgent`'s retries, timed where they happen: a 429's Retry-After measured between the attempts the server
received, connection refused and timeouts counted attempt by attempt (bounded by `max_retries`), and replies with
no text. Every endpoint is a real HTTP server on 127.0.0.1 (or a closed port on it)."""

from __future__ import annotations

import itertools
import socket
import time
from typing import Any

import httpx
import pytest
from fastapi import Request, Response

from services.config import TeacherConfig
from services.debate import prompts
from services.debate.agents import OpenAIAgent
from services.tasks.arithmetic import generate
from tests.hosted_teacher import HostedTeacher
from tests.http_servers import Script, scripted_app, serve_app

PROMPT = prompts.answer_prompt(generate("eval", 1)[0].question, "number")


def timed(teacher: HostedTeacher) -> list[float]:
    """When each request reached the teacher's server (monotonic seconds), recorded before it is answered."""
    arrivals: list[float] = []

    @teacher.app.middleware("http")
    async def arrival(request: Request, call_next: Any) -> Response:
        arrivals.append(time.monotonic())
        return await call_next(request)

    return arrivals


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def counting_agent(url: str, **cfg: Any) -> tuple[OpenAIAgent, list[float]]:
    """An agent whose HTTP client notes when each attempt is sent (the real transport still makes the call)."""
    sent: list[float] = []

    async def note(_: httpx.Request) -> None:
        sent.append(time.monotonic())

    tc = TeacherConfig(name="hosted", base_url=url, **cfg)
    client = httpx.AsyncClient(timeout=httpx.Timeout(tc.timeout_s), event_hooks={"request": [note]})
    return OpenAIAgent(tc, max_tokens=256, client=client), sent


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_retry_after_is_the_wait_the_server_sees_between_attempts():
    teacher = HostedTeacher("openai", faults=["rate_limited"], retry_after_s=2)
    arrivals = timed(teacher)
    with teacher.serve() as url:
        reply = await OpenAIAgent(TeacherConfig(name="hosted", base_url=url, max_retries=2)).ask(PROMPT, "answer")
    assert reply.error is None and reply.text and len(arrivals) == 2
    # 2 s as the provider asked, not the 0.25-0.75 s jittered backoff of a first retry.
    (wait,) = gaps(arrivals)
    assert 2.0 <= wait < 3.0, wait


async def test_a_rate_limit_that_lasts_ends_in_http_429_after_max_retries_each_after_retry_after():
    teacher = HostedTeacher("openai", faults=["rate_limited"] * 5, retry_after_s=1)
    arrivals = timed(teacher)
    with teacher.serve() as url:
        reply = await OpenAIAgent(TeacherConfig(name="hosted", base_url=url, max_retries=2)).ask(PROMPT, "answer")
    assert reply.text is None and reply.error == "http_429"
    assert len(arrivals) == 3 and len(teacher.faults) == 2  # 1 + max_retries attempts, then it gave up
    assert all(1.0 <= g < 2.0 for g in gaps(arrivals)), gaps(arrivals)


async def test_connection_refused_is_retried_max_retries_times_with_growing_backoff():
    agent, sent = counting_agent(f"http://127.0.0.1:{closed_port()}/v1", max_retries=2)
    reply = await agent.ask(PROMPT, "answer")
    await agent.aclose()
    assert reply.text is None and reply.error == "transport: ConnectError"
    assert len(sent) == 3
    first, second = gaps(sent)
    assert 0.25 <= first < 1.0 and 0.5 <= second < 2.0, (first, second)  # 0.5 s then 1 s, each jittered x0.5-1.5
    once, sent_once = counting_agent(f"http://127.0.0.1:{closed_port()}/v1", max_retries=0)
    assert (await once.ask(PROMPT, "answer")).error == "transport: ConnectError" and len(sent_once) == 1
    await once.aclose()


async def test_each_attempt_is_cut_at_the_timeout_and_attempts_are_bounded():
    teacher = HostedTeacher("openai", delay_s=5.0)
    with teacher.serve() as url:
        agent, sent = counting_agent(url, timeout_s=0.4, max_retries=2)
        t0 = time.monotonic()
        reply = await agent.ask(PROMPT, "answer")
        took = time.monotonic() - t0
        await agent.aclose()
    assert reply.text is None and reply.error == "timeout"
    assert len(sent) == 3 and len(teacher.requests) <= 3
    # Three attempts of 0.4 s and two backoffs (at most 0.75 s and 1.5 s): far below a single 5 s reply.
    assert 3 * 0.4 <= took < 4.5, took


@pytest.mark.parametrize(("fault", "error"), [("empty_choices", "bad_response: no choices"),
                                              ("null_content", "empty_reply: no text in the reply")])
async def test_a_reply_without_text_is_an_error_at_once_not_a_retry(fault, error):
    teacher = HostedTeacher("openai", faults=[fault])
    with teacher.serve() as url:
        agent = OpenAIAgent(TeacherConfig(name="hosted", base_url=url, max_retries=3))
        bad = await agent.ask(PROMPT, "answer")
        good = await agent.ask(PROMPT, "answer")
    assert bad.text is None and bad.error == error and len(teacher.requests) == 2
    assert bad.prompt_tokens == good.prompt_tokens > 0  # the usage the provider reported is counted all the same
    assert good.error is None and "**Final Answer:**" in (good.text or "")


async def test_a_reply_spent_before_any_text_says_it_was_cut_at_max_tokens():
    with serve_app(scripted_app(lambda p: Script("", finish_reason="length"))) as url:
        reply = await OpenAIAgent(TeacherConfig(name="thinker", base_url=f"{url}/v1")).ask(PROMPT, "answer")
    assert reply.text is None and reply.finish_reason == "length"
    assert reply.error == "empty_reply: no text in the reply (cut at max_tokens)"
