from __future__ import annotations

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
