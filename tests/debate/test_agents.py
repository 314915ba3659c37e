"""`OpenAIAgent` against stand-in hosted teachers on 127.0.0.1: provider styles, per-teacher request options,
misconfiguration, retries, and every kind of bad reply (each an error, never an exception, and never the end of
that teacher)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from services.config import DebateConfig, TeacherConfig
from services.debate import prompts
from services.debate.agents import OpenAIAgent, build_teachers, provider_message
from services.debate.metrics import DebateMetrics
from services.tasks.answers import read_answer, read_score, same_answer
from services.tasks.arithmetic import generate
from tests.hosted_teacher import MODELS, REFUSAL, SCORES, STYLES, HostedTeacher, work, write_answer

PROBLEM = next(p for p in generate("eval", 20) if p.steps >= 2)
PROMPT = prompts.answer_prompt(PROBLEM.question, "number")
RIGHT = f"### Answer\n{' '.join(work(PROBLEM.question).lines)}\nFinal answer: {PROBLEM.answer}"  # type: ignore[union-attr]
WRONG = RIGHT.replace(f"Final answer: {PROBLEM.answer}", f"Final answer: {int(PROBLEM.answer) + 7}")
KEY = "sk-test-never-in-the-logs-0123456789"


def hosted(url: str, name: str = "hosted", max_tokens: int = 1024, **cfg: Any) -> OpenAIAgent:
    return OpenAIAgent(TeacherConfig(name=name, base_url=url, **cfg), max_tokens=max_tokens)


# ---- provider styles ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("style", STYLES)
async def test_each_provider_style_comes_back_with_its_text_and_finish_reason(style):
    with HostedTeacher(style).serve() as url:
        agent = hosted(url)
        reply = await agent.ask(PROMPT, "answer")
        unknown = await agent.ask(prompts.answer_prompt("Who wrote Hamlet?", "text"), "answer")
    assert reply.error is None and reply.finish_reason == "stop" and reply.model == MODELS[style]
    assert reply.text == write_answer(style, work(PROBLEM.question))
    assert reply.prompt_tokens > 0 and reply.completion_tokens > 0
    reading = read_answer(reply.text, "number", finish_reason=reply.finish_reason)
    assert reading.status == "ok" and same_answer(reading.answer, PROBLEM.answer, "number")
    assert read_answer(unknown.text, "text").status == "abstained"  # it reasons, then says it does not know


@pytest.mark.parametrize("style", STYLES)
async def test_each_provider_style_scores_reviews_in_its_own_format(style):
    teacher = HostedTeacher(style)
    with teacher.serve() as url:
        agent = hosted(url)
        right = await agent.ask(prompts.review_prompt(PROBLEM.question, RIGHT, None), "review")
        wrong = await agent.ask(prompts.review_prompt(PROBLEM.question, WRONG, None), "review")
        teacher.faults.append("score_9")
        nine = await agent.ask(prompts.review_prompt(PROBLEM.question, RIGHT, None), "review")
    assert read_score(right.text) == SCORES[style] and read_score(wrong.text) == 1
    assert nine.error is None and "9" in (nine.text or "") and read_score(nine.text) is None  # out of range


async def test_completion_limits_cut_replies_with_finish_reason_length():
    with HostedTeacher("deepseek").serve() as ds_url, HostedTeacher(reasoning_model=True).serve() as o3_url:
        cut = await hosted(ds_url, max_tokens=60).ask(PROMPT, "answer")
        thinking_only = await hosted(o3_url, max_tokens=40, max_tokens_param="max_completion_tokens",
                                     send_temperature=False).ask(PROMPT, "answer")
    assert cut.error is None and cut.finish_reason == "length" and cut.text and cut.text.startswith("<think>")
    assert read_answer(cut.text, "number", finish_reason=cut.finish_reason).status == "truncated"
    # A reasoning model that spends its whole budget thinking writes nothing: an error that says why.
    assert thinking_only.text is None and thinking_only.finish_reason == "length"
    assert thinking_only.error == "empty_reply: no text in the reply (cut at max_tokens)"


# ---- request options --------------------------------------------------------------------------------------------
async def test_request_options_n_extra_body_and_the_explanation_temperature_shape_the_body():
    teacher = HostedTeacher("llama")
    cfg = TeacherConfig(name="t", base_url="http://unused", temperature=0.3,
                        extra_body={"reasoning_effort": "low", "seed": 7}, headers={"x-team": "distill"})
    with teacher.serve() as url:
        agent = OpenAIAgent(cfg, base_url=url, max_tokens=300, samples=3, kind_temperature={"explanation": 0.8})
        for prompt, kind in [(PROMPT, "answer"), ("Explain the student's mistake.", "explanation"),
                             (prompts.review_prompt(PROBLEM.question, RIGHT, None), "review")]:
            assert (await agent.ask(prompt, kind)).error is None
        single = OpenAIAgent(cfg, base_url=url)
        await single.ask(PROMPT, "answer")
    answer, explanation, review, single_answer = teacher.requests
    assert answer["n"] == 3 and answer["max_tokens"] == 300 and answer["temperature"] == 0.3
    assert answer["top_p"] == 0.9 and answer["reasoning_effort"] == "low" and answer["seed"] == 7
    assert explanation["temperature"] == 0.8 and review["temperature"] == 0.3
    assert "n" not in explanation and "n" not in review and "n" not in single_answer  # n only when sampling
    assert all(h["x-team"] == "distill" for h in teacher.request_headers)


def test_configured_teachers_sample_explanations_at_the_explanation_temperature_with_their_own_limits():
    cfg = DebateConfig(teachers=[TeacherConfig(name="a", base_url="http://127.0.0.1:1/a/v1"),
                                 TeacherConfig(name="b", base_url="http://127.0.0.1:1/b/v1", max_tokens=2048)],
                       explanation_temperature=0.7, max_tokens=300)
    agents = build_teachers(cfg, None)
    assert [a.kind_temperature for a in agents] == [{"explanation": 0.7}] * 2
    assert [a.max_tokens for a in agents] == [300, 2048]  # a reasoning model gets room to think


async def test_the_student_retry_keeps_the_first_sample_with_a_final_answer():
    with HostedTeacher("openai", truncate_every=3).serve() as url:
        student = OpenAIAgent(TeacherConfig(name="s", base_url=url), role="student", max_tokens=1024, samples=2)
        first = await student.ask(PROMPT, "answer")  # samples 1 and 2: both whole
        second = await student.ask(PROMPT, "answer")  # sample 3 cut, sample 4 whole: the 4th is kept
    assert first.finish_reason == second.finish_reason == "stop" and second.text == first.text
    with HostedTeacher("openai", truncate_every=1).serve() as url:  # every sample cut: the first is kept, as cut
        cut = await OpenAIAgent(TeacherConfig(name="s", base_url=url), samples=2).ask(PROMPT, "answer")
    assert cut.error is None and cut.finish_reason == "length" and len((cut.text or "").split()) == 5


# ---- a reasoning model without the options: misconfigured ------------------------------------------------------
async def test_a_reasoning_model_refuses_max_tokens_and_temperature_until_configured(monkeypatch, caplog):
    monkeypatch.setenv("HOSTED_KEY", KEY)
    teacher = HostedTeacher(reasoning_model=True)
    with teacher.serve() as url:
        plain = hosted(url, name="o3", api_key_env="HOSTED_KEY", max_retries=3)
        with caplog.at_level(logging.WARNING, logger="services.debate.agents"):
            refused = await plain.ask(PROMPT, "answer")
        no_temp = await hosted(url, name="o3", api_key_env="HOSTED_KEY",
                               max_tokens_param="max_completion_tokens").ask(PROMPT, "answer")
        fixed = hosted(url, name="o3", api_key_env="HOSTED_KEY", max_tokens_param="max_completion_tokens",
                       send_temperature=False)
        ok = await fixed.ask(PROMPT, "answer")
    assert refused.text is None and refused.error is not None
    assert refused.error.startswith("misconfigured: http_400: Unsupported parameter: 'max_tokens' is not supported")
    assert plain.misconfigured == refused.error.removeprefix("misconfigured: ")
    assert (no_temp.error or "").startswith("misconfigured: http_400: Unsupported value: 'temperature'")
    assert len(teacher.requests) == 3  # a refusal is never retried
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "o3" in warning.getMessage() and "Unsupported parameter: 'max_tokens'" in warning.getMessage()
    assert KEY not in caplog.text and "Bearer" not in caplog.text and "Authorization" not in caplog.text
    assert ok.error is None and ok.model == "o3-mini-2025-01-31" and fixed.misconfigured is None
    sent = teacher.requests[-1]
    assert teacher.request_headers[-1]["authorization"] == f"Bearer {KEY}"
    assert sent["max_completion_tokens"] == 1024 and not {"max_tokens", "temperature", "top_p"} & set(sent)


@pytest.mark.parametrize(("body", "message"), [
    (b'[{"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}}]',
     "API key not valid."),  # Gemini
    (b'{"type": "error", "error": {"type": "not_found_error", "message": "model: claude-9"}}', "model: claude-9"),
    (b"<html><body>403   Forbidden</body></html>", "<html><body>403 Forbidden</body></html>"),
    (b'{"error": {"message": "' + b"x" * 500 + b'"}}', "x" * 200),
])
def test_the_providers_message_is_read_from_its_error_body(body, message):
    assert provider_message(body) == message


async def test_the_misconfigured_gauge_goes_to_1_and_back_to_0_after_a_success():
    metrics = DebateMetrics()
    gauge = lambda: metrics.registry.get_sample_value("distillery_teacher_misconfigured", {"agent": "o3"})  # noqa: E731
    with HostedTeacher(reasoning_model=True).serve() as url:
        agent = hosted(url, name="o3")
        metrics.on_reply(agent, "answer", await agent.ask(PROMPT, "answer"))
        assert gauge() == 1 and agent.misconfigured is not None
        agent.cfg = agent.cfg.model_copy(update={"max_tokens_param": "max_completion_tokens",
                                                 "send_temperature": False})
        metrics.on_reply(agent, "answer", await agent.ask(PROMPT, "answer"))
    assert gauge() == 0 and agent.misconfigured is None
    assert metrics.registry.get_sample_value("distillery_teacher_errors_total",
                                             {"agent": "o3", "error": "misconfigured"}) == 1


# ---- retries ------------------------------------------------------------------------------------------------------
async def test_5xx_replies_are_retried_until_the_teacher_recovers():
    teacher = HostedTeacher("claude", faults=["server_error", "server_error"])
    with teacher.serve() as url:
        reply = await hosted(url, max_retries=2).ask(PROMPT, "answer")
    assert reply.error is None and len(teacher.requests) == 3


# ---- bad replies --------------------------------------------------------------------------------------------------
BAD = {
    "html": "bad_response: not JSON",
    "empty_choices": "bad_response: no choices",
    "null_content": "empty_reply",
    "error_body": "provider_error: The server had an error while processing your request",
    "huge": "reply_too_large: over 1000000 bytes",
}


@pytest.mark.parametrize("fault", list(BAD))
async def test_a_bad_reply_is_an_error_and_the_next_call_works(fault):
    teacher = HostedTeacher("gemini", faults=[fault])
    with teacher.serve() as url:
        agent = hosted(url)
        bad = await agent.ask(PROMPT, "answer")
        good = await agent.ask(PROMPT, "answer")
    assert bad.text is None and (bad.error or "").startswith(BAD[fault])
    assert good.error is None and good.text == write_answer("gemini", work(PROBLEM.question))
    assert len(teacher.requests) == 2  # a bad reply is not retried


# ---- the stand-in's own behaviour ------------------------------------------------------------------------------
async def test_the_stand_in_refuses_and_errs_on_request():
    with HostedTeacher("claude", refuse_every=2).serve() as url, \
            HostedTeacher("claude", error_rate=1.0).serve() as wrong_url:
        agent = hosted(url)
        answered, refused = [await agent.ask(PROMPT, "answer") for _ in range(2)]
        wrong = await hosted(wrong_url).ask(PROMPT, "answer")
    assert read_answer(answered.text, "number").status == "ok" and refused.text == REFUSAL
    assert read_answer(refused.text, "number").status != "ok"
    wrong_reading = read_answer(wrong.text, "number")
    assert wrong_reading.status == "ok" and not same_answer(wrong_reading.answer, PROBLEM.answer, "number")
