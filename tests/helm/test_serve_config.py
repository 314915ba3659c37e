"""The Serve application builders a RayService imports (`serveConfigV2` in helm/distillery). Running them under
`serve run` with the rendered config is tests/deploy/test_prometheus_live.py's service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.launcher import serve_app, teachers_app, teachers_url


def bound(app: Any) -> Any:
    """The deployment an application binds (Ray Serve keeps it on the application)."""
    from ray.serve import Application

    assert isinstance(app, Application)
    return app._bound_deployment


def test_builders_bind_the_services_deployments_from_the_environment(model_dir: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTILLERY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DISTILLERY_STUDENT__MODEL", model_dir)
    monkeypatch.setenv("DISTILLERY_STUDENT__NUM_CPUS", "3")
    gateway = bound(serve_app({}))
    student, debate, scheduler, settings, model_path, base_id = gateway.init_args
    assert gateway.name == "Gateway" and settings.data_dir == tmp_path and model_path == model_dir
    assert base_id == Path(model_dir).name
    assert [bound(a).name for a in (student, debate, scheduler)] == ["Student", "Debate", "Scheduler"]
    assert bound(student).init_args[1:] == (model_dir, base_id)
    assert bound(student).ray_actor_options["num_cpus"] == 3  # the environment reached the replicas' options
    # The debate worker drives the same student and reaches the reference teachers through the service's route.
    debate_student, _, _, debate_teachers = bound(debate).init_args
    assert bound(debate_student) is bound(student) and debate_teachers == teachers_url(settings)
    assert debate_teachers.endswith("/teachers")
    teachers = bound(teachers_app({}))
    assert teachers.name == "ReferenceTeachers"
    assert [t.name for t in teachers.init_args[0]] == [t.name for t in settings.debate.teachers if t.builtin]
    assert [t.name for t in teachers.init_args[0]] == ["ref-exact", "ref-offbyone", "ref-sloppy"]
    monkeypatch.setenv("DISTILLERY_DEBATE__TEACHERS", '[{"name": "a", "model": "m", "base_url": "http://a/v1"}, '
                       '{"name": "b", "model": "m", "base_url": "http://b/v1"}]')
    with pytest.raises(ValueError, match="no built-in reference teachers"):
        teachers_app({})
    monkeypatch.setenv("DISTILLERY_DEBATE__ENABLED", "false")  # no debate worker at all
    assert bound(serve_app({})).init_args[1] is None
