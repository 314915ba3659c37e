"""`distillery tasks` + `distillery debate --dataset` + `distillery mags` against a real HTTP endpoint.

The endpoint is a real server on 127.0.0.1 laid out like the service: a scripted student at /v1 (right only on
the problems with one step) and the built-in reference teachers at /teachers/<name>/v1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from services.config import DebateConfig
from services.tasks.arithmetic import solve
from services.teachers.server import build_teacher_app
from tests.http_servers import Script, scripted_app, serve_app


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def question_in(prompt: str) -> str:
    return prompt.split("<question>\n", 1)[-1].split("\n</question>", 1)[0]


def student(prompt: str) -> Script:
    sol = solve(question_in(prompt))
    if sol is not None and len(sol.steps) == 1:
        return Script(f"### Answer\nEasy.\nFinal answer: {sol.answer}")
    return Script("### Answer\nHmm.\nFinal answer: 3")


def test_batch_debates_over_a_labelled_file_with_progress_and_summary(tmp_path: Path, model_dir: str):
    env = {**os.environ, "DISTILLERY_DATA_DIR": str(tmp_path / "data"), "DISTILLERY_STUDENT__MODEL": model_dir,
           "DISTILLERY_DEBATE__MAX_ROUNDS": "2"}
    tasks = run_cli(env, "tasks", "--split", "eval", "--n", "6", "--out", str(tmp_path / "eval.jsonl"))
    assert tasks.returncode == 0, tasks.stderr
    rows = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(set(r) == {"question", "answer", "steps"} for r in rows)

    asked: list[str] = []  # every prompt the student was given
    app = scripted_app(student, asked)
    app.get("/ready")(lambda: {"status": "ready"})
    app.mount("/teachers", build_teacher_app(DebateConfig().teachers))
    with serve_app(app) as url:
        out = run_cli(env, "debate", "--dataset", str(tmp_path / "eval.jsonl"), "--limit", "5", "--url", url,
                      "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    one_step = sum(r["steps"] == 1 for r in rows[:5])
    assert summary["debates"] == 5 and summary["student_first"] == one_step
    assert sum(summary["outcomes"].values()) == 5 and summary["reviewed"] == 5 * 3
    assert set(summary["teacher_tokens"]) == {"ref-exact", "ref-offbyone", "ref-sloppy"}
    assert "debates 5/5" in out.stderr  # the progress line
    # --limit 5 debated the file's first five questions: the student was asked those and nothing else.
    assert {question_in(p) for p in asked} == {r["question"] for r in rows[:5]}

    listed = json.loads(run_cli(env, "mags", "list", "--json").stdout)
    assert len(listed) == 5 and {m["source"] for m in listed} == {"batch:eval.jsonl"}
    assert all(m["gold_source"] == "dataset" for m in listed)
    missing = run_cli(env, "mags", "show", "999")
    assert missing.returncode != 0 and "no debate with id 999" in missing.stderr
    bad = run_cli(env, "debate", "--dataset", str(tmp_path / "nope.jsonl"))
    assert bad.returncode != 0 and "no dataset file" in bad.stderr
