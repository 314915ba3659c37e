from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.config import EMBEDDED_MODEL, Settings


def test_defaults_and_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILLERY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DISTILLERY_STUDENT__MAX_LORA_RANK", "32")
    s = Settings()
    assert s.student.model == EMBEDDED_MODEL and s.server.port == 8000 and s.server.host == "127.0.0.1"
    assert s.student.max_lora_rank == 32
    assert s.db_url == f"sqlite:///{tmp_path / 'distillery.db'}"


def test_yaml_file_below_env(monkeypatch, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  port: 9001\n  max_body_bytes: 2048\nstudent:\n  max_loras: 2\n")
    monkeypatch.setenv("DISTILLERY_CONFIG", str(cfg))
    monkeypatch.setenv("DISTILLERY_SERVER__PORT", "9002")
    s = Settings()
    assert s.server.port == 9002  # env wins over the file
    assert s.server.max_body_bytes == 2048 and s.student.max_loras == 2


def test_bad_values_are_rejected_with_a_reason(monkeypatch, tmp_path):
    with pytest.raises(ValidationError, match="dtype must be one of"):
        Settings(student={"dtype": "int3"})
    with pytest.raises(ValidationError, match="admin_key must differ"):
        Settings(server={"api_keys": ["k1"], "admin_key": "k1"})
    with pytest.raises(ValidationError):
        Settings(unknown_field=1)
    with pytest.raises(ValidationError, match=r"exceeds student\.max_lora_rank=16"):
        Settings(training={"lora": {"r": 32}})
    assert Settings(training={"lora": {"r": 32}}, student={"max_lora_rank": 32}).training.lora.r == 32
    with pytest.raises(ValidationError):
        Settings(training={"tdpo": {"beta": 0}})
    monkeypatch.setenv("DISTILLERY_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError):
        Settings()


def test_secrets_are_masked_in_public_dump():
    s = Settings(server={"api_keys": ["sk-secret-client"], "admin_key": "sk-secret-admin"})
    dumped = str(s.public_dict())
    assert "sk-secret-client" not in dumped and "sk-secret-admin" not in dumped
    assert s.server.admin_key.get_secret_value() == "sk-secret-admin"


def test_teacher_endpoint_and_key_from_environment(monkeypatch):
    """How the Helm chart wires teachers from Secrets: the config names variables, never holds the values."""
    from services.config import TeacherConfig
    from services.debate.agents import OpenAIAgent

    t = TeacherConfig(name="big", model="m", base_url_env="T_URL", api_key_env="T_KEY")
    assert not t.builtin
    with pytest.raises(ValueError, match="T_URL is not set"):
        OpenAIAgent(t)
    monkeypatch.setenv("T_URL", "https://teacher.example/v1/")
    monkeypatch.setenv("T_KEY", "sk-secret")
    agent = OpenAIAgent(t)
    assert agent.base_url == "https://teacher.example/v1" and agent.headers["Authorization"] == "Bearer sk-secret"
    with pytest.raises(ValidationError, match="needs a base_url or base_url_env"):
        TeacherConfig(name="nowhere", model="m")


BANKING77_LABELS = Path("/work/shared/data/banking77/labels.json")


def test_a_label_task_needs_exactly_one_label_source(tmp_path):
    from services.config import TaskProfile

    with pytest.raises(ValidationError, match=r"task 'intent' has answer_type label but no label set: give "
                                              r"`labels` or `labels_file`"):
        TaskProfile(name="intent", answer_type="label")
    labels = tmp_path / "labels.json"
    labels.write_text('["a", "b"]')
    with pytest.raises(ValidationError, match="give `labels` or `labels_file`, not both"):
        TaskProfile(name="intent", answer_type="label", labels=["a"], labels_file=labels)
    with pytest.raises(ValidationError, match="is not a file"):
        TaskProfile(name="intent", answer_type="label", labels_file=tmp_path / "missing.json")
    with pytest.raises(ValidationError, match="labels must be unique"):
        TaskProfile(name="intent", answer_type="label", labels=["a", "a"])
    with pytest.raises(ValidationError, match="name"):
        TaskProfile(name="Intent Classifier")  # not a task name (lowercase, no spaces)
    assert TaskProfile(name="intent", answer_type="label", labels_file=labels).spec.labels == ("a", "b")


def test_tasks_name_known_teachers_and_at_least_two_while_debating():
    with pytest.raises(ValidationError, match=r"task 'intent' names teachers \['gpt-x'\] that are not in "
                                              r"debate.teachers"):
        Settings(tasks=[{"name": "intent", "teachers": ["ref-exact", "gpt-x"]}])
    with pytest.raises(ValidationError, match="task 'intent' lists 1 teacher: a debate needs at least two"):
        Settings(tasks=[{"name": "intent", "teachers": ["ref-exact"]}])
    alone = Settings(tasks=[{"name": "intent", "teachers": ["ref-exact"]}], debate={"enabled": False})
    assert alone.task("intent").teachers == ["ref-exact"]  # no debates, no peer review to need a second
    two = Settings(tasks=[{"name": "intent", "teachers": ["ref-exact", "ref-sloppy"]}])
    assert two.task("intent").teachers == ["ref-exact", "ref-sloppy"]


def test_task_names_are_unique_and_default_is_added_as_a_text_task():
    with pytest.raises(ValidationError, match="tasks names must be unique"):
        Settings(tasks=[{"name": "intent", "answer_type": "text"}, {"name": "intent", "answer_type": "number"}])
    s = Settings(tasks=[{"name": "intent", "answer_type": "label", "labels": ["a", "b"]}])
    assert [t.name for t in s.tasks] == ["intent", "default"]
    assert s.task("default").answer_type == "text" and s.task("default").spec.type == "text"
    kept = Settings(tasks=[{"name": "default", "answer_type": "choice"}])
    assert [(t.name, t.answer_type) for t in kept.tasks] == [("default", "choice")]  # a listed default stays


def test_the_embedded_task_is_arithmetic_measured_on_the_suite():
    s = Settings()
    [default] = s.tasks
    assert (default.name, default.answer_type, default.eval.golden, default.eval.holdout) == \
           ("default", "number", "builtin:arithmetic", 0.0)


def test_an_unconfigured_task_name_is_the_default_profile():
    s = Settings(tasks=[{"name": "intent", "answer_type": "label", "labels": ["a", "b"]}])
    assert s.task("intent").answer_type == "label"
    assert s.task("nope") is s.task("default")
    assert s.task("") is s.task("default")


def test_spec_reads_the_labels_file_once(tmp_path):
    from services.config import TaskProfile

    task = TaskProfile(name="banking77", answer_type="label", labels_file=BANKING77_LABELS)
    assert len(task.spec.labels) == 77 and "card_arrival" in task.spec.labels
    copy = tmp_path / "labels.json"
    copy.write_text(BANKING77_LABELS.read_text())
    mine = TaskProfile(name="banking77", answer_type="label", labels_file=copy)
    first = mine.spec
    copy.write_text('["only_this"]')  # read at first use, then kept: a later edit (or removal) changes nothing
    copy.unlink()
    assert mine.spec is first and len(mine.spec.labels) == 77 and mine.spec.type == "label"


def test_tasks_from_the_yaml_file(monkeypatch, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
tasks:
  - name: intent
    answer_type: label
    labels_file: {BANKING77_LABELS}
    match: {{system_prompt_prefix: "You are a banking assistant."}}
    sample_rate: 0.5
    eval: {{holdout: 0.3, tolerance: 0.02}}
""")
    monkeypatch.setenv("DISTILLERY_CONFIG", str(cfg))
    s = Settings()
    intent = s.task("intent")
    assert intent.match.system_prompt_prefix == "You are a banking assistant." and intent.sample_rate == 0.5
    assert (intent.eval.holdout, intent.eval.tolerance, intent.eval.max_items) == (0.3, 0.02, 200)
    assert len(intent.spec.labels) == 77 and [t.name for t in s.tasks] == ["intent", "default"]
    with pytest.raises(ValidationError):
        Settings(tasks=[{"name": "intent", "eval": {"holdout": 0.95}}])  # at most 0.9: something must train


def test_a_labels_file_must_hold_a_label_set(tmp_path):
    """An empty (or malformed) labels_file is no label set: refused at load, as a missing one is, not left to
    behave as a free-text task (any answer valid) or fail at first use in a serving path."""
    from services.config import TaskProfile

    for content in ("[]", '"card_arrival"', '["a", "a"]'):
        path = tmp_path / "labels.json"
        path.write_text(content)
        with pytest.raises(ValidationError, match="label"):
            TaskProfile(name="intent", answer_type="label", labels_file=path)


def test_replica_counts_become_ray_serve_options() -> None:
    from services.config import Replicas

    assert Replicas().serve_options() == {"num_replicas": 1}
    assert Replicas(num=3, max_per_node=1).serve_options() == {"num_replicas": 3, "max_replicas_per_node": 1}
    scaled = Replicas(min=0, max=4, target_ongoing_requests=16).serve_options()
    assert scaled == {"autoscaling_config": {"min_replicas": 0, "max_replicas": 4, "initial_replicas": 1,
                                             "target_ongoing_requests": 16}}
    with pytest.raises(ValueError, match="raise max or lower min"):
        Replicas(min=5, max=2)
