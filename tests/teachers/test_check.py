"""`distillery teachers check` against stand-in hosted teachers and the built-in reference teachers, over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI

from services.cli import main
from services.config import ReferenceProfile, TeacherConfig
from services.debate.agents import OpenAIAgent
from services.teachers.check import GOLD, check_teachers, table_row
from services.teachers.server import build_teacher_app
from tests.hosted_teacher import MODELS, REASONING_MODEL, HostedTeacher
from tests.http_servers import serve_app


async def test_rows_for_a_good_hosted_teacher_and_a_reasoning_model_without_its_options():
    claude_cfg = TeacherConfig(name="claude", base_url="http://unused", price_prompt_per_1k=0.8,
                               price_completion_per_1k=4.0)
    with HostedTeacher("claude").serve() as claude_url, HostedTeacher(reasoning_model=True).serve() as o3_url:
        claude, o3 = await check_teachers([OpenAIAgent(claude_cfg, base_url=claude_url),
                                           OpenAIAgent(TeacherConfig(name="o3", base_url=o3_url))])
    assert claude.passed and claude.reachable == "yes" and claude.model == MODELS["claude"]
    assert (claude.answer_status, claude.answer, claude.correct, claude.score) == ("ok", GOLD, True, 5)
    assert claude.prompt_tokens > 0 and claude.completion_tokens > 0
    assert claude.cost_usd == pytest.approx((claude.prompt_tokens * 0.8 + claude.completion_tokens * 4.0) / 1000)
    assert table_row(claude)[4] == f"ok {GOLD} (correct)"
    assert not o3.passed and o3.answer_status == "error" and o3.answer is None and o3.score is None
    assert o3.reachable.startswith("misconfigured: http_400: Unsupported parameter: 'max_tokens'")
    assert o3.score_note.startswith("misconfigured: http_400")
    assert table_row(o3)[1] == o3.reachable and table_row(o3)[5] == "not read: the call failed"


def use_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, teachers: list[dict[str, Any]],
               **settings: Any) -> None:
    path = tmp_path / "distillery.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "debate": {"teachers": teachers},
                                    **settings}))
    monkeypatch.setenv("DISTILLERY_CONFIG", str(path))


def json_rows(capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    return {r["teacher"]: r for r in json.loads(capsys.readouterr().out)}


def test_the_command_exits_0_when_every_answer_and_score_was_read_and_1_otherwise(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("UNSET_TEACHER_KEY", raising=False)
    with HostedTeacher("gemini").serve() as gemini, HostedTeacher("deepseek").serve() as deepseek, \
            HostedTeacher(reasoning_model=True).serve() as o3:
        use_config(monkeypatch, tmp_path, [{"name": "gemini", "base_url": gemini, "model": "gemini-2.0-flash"},
                                           {"name": "deepseek", "base_url": deepseek, "model": "deepseek-reasoner"}])
        main(["teachers", "check"])
        table = capsys.readouterr().out
        main(["teachers", "check", "--json"])
        good = json_rows(capsys)
        use_config(monkeypatch, tmp_path, [
            {"name": "gemini", "base_url": gemini},
            {"name": "o3", "base_url": o3, "model": "o3-mini"},
            {"name": "paid", "base_url": gemini, "api_key_env": "UNSET_TEACHER_KEY"},
        ])
        with pytest.raises(SystemExit) as failed:
            main(["teachers", "check", "--json"])
        bad = json_rows(capsys)
    assert "gemini" in table and "deepseek" in table and table.count(f"ok {GOLD} (correct)") == 2
    assert all(r["passed"] and r["answer"] == GOLD for r in good.values())
    assert good["deepseek"]["model"] == MODELS["deepseek"]
    assert failed.value.code == 1
    assert bad["gemini"]["passed"] and not bad["o3"]["passed"] and not bad["paid"]["passed"]
    assert bad["o3"]["reachable"].startswith("misconfigured: http_400") and bad["o3"]["answer_status"] == "error"
    assert bad["paid"]["reachable"].startswith("not configured:") and "UNSET_TEACHER_KEY" in bad["paid"]["reachable"]


def test_built_in_reference_teachers_are_checked_where_the_service_hosts_them(monkeypatch, tmp_path, capsys):
    refs = [TeacherConfig(name="ref-exact", reference=ReferenceProfile())]
    service = FastAPI()  # the service's own API: the launcher mounts the reference teachers at /teachers
    service.mount("/teachers", build_teacher_app(refs))
    with serve_app(service) as url, HostedTeacher("json", reasoning_model=True).serve() as o3:
        use_config(monkeypatch, tmp_path, [
            {"name": "ref-exact", "reference": {}},
            {"name": "o3", "base_url": o3, "max_tokens_param": "max_completion_tokens", "send_temperature": False,
             "extra_body": {"reasoning_effort": "low"}},
        ], server={"internal_url": url})
        main(["teachers", "check", "--json"])
    rows = json_rows(capsys)
    assert rows["ref-exact"]["passed"] and rows["ref-exact"]["correct"] and rows["ref-exact"]["model"] == "ref-exact"
    assert rows["o3"]["passed"] and rows["o3"]["model"] == REASONING_MODEL


async def test_a_reply_cut_at_max_tokens_fails_the_check_and_is_not_graded():
    cfg = TeacherConfig(name="claude", base_url="http://unused")
    with HostedTeacher("claude", truncate_every=1).serve() as url:
        (row,) = await check_teachers([OpenAIAgent(cfg, base_url=url)])
    assert row.reachable == "yes" and not row.passed
    assert (row.answer_status, row.answer, row.correct) == ("truncated", None, None)
    assert table_row(row)[4] == "truncated"
