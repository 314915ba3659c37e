"""The OpenAPI document the gateway serves: what clients and the API fuzzer (tests/e2e/test_fuzz.py) hold it to."""

from __future__ import annotations

from pathlib import Path

import httpx

from services.config import Settings
from tests.gateway_app import serve_gateway


def test_every_error_response_is_documented_as_json_in_openais_error_shape(tmp_path: Path, model_dir: str) -> None:
    with serve_gateway(Settings(data_dir=tmp_path), model_dir) as g:
        doc = httpx.get(f"{g.url}/openapi.json", timeout=30).json()
        r = httpx.get(f"{g.url}/metrics", params={"part": "everything"}, timeout=30)
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"  # a route whose 200 is text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"].keys() == {"text/plain"}
    errors = {(path, method, code): response.get("content", {})
              for path, ops in doc["paths"].items() for method, op in ops.items()
              for code, response in op["responses"].items() if not code.startswith("2")}
    assert ("/metrics", "get", "4XX") in errors and len(errors) >= 40
    for where, content in errors.items():
        assert list(content) == ["application/json"], where
