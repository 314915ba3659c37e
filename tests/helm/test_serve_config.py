"""The Serve application builders a RayService imports (`serveConfigV2` in helm/distillery). Running them under
`serve run` with the rendered config is tests/deploy/test_prometheus_live.py's service."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.launcher import serve_app, teachers_app


def test_builders_return_applications(model_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.serve import Application

    monkeypatch.setenv("DISTILLERY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DISTILLERY_STUDENT__MODEL", model_dir)
    assert isinstance(serve_app({}), Application) and isinstance(teachers_app({}), Application)
    monkeypatch.setenv("DISTILLERY_DEBATE__TEACHERS", '[{"name": "a", "model": "m", "base_url": "http://a/v1"}, '
                       '{"name": "b", "model": "m", "base_url": "http://b/v1"}]')
    with pytest.raises(ValueError, match="no built-in reference teachers"):
        teachers_app({})
