"""Auth on every route of the real gateway app, enumerated from its OpenAPI schema (a new route is covered by
itself): client keys for /v1/*, the admin key for /admin/* and adapter loading, admin routes disabled (403, never
open) when clients have keys and no admin key is set. Served over HTTP in this process (tests/gateway_app.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.config import Settings
from tests.gateway_app import Gateway, serve_gateway

CLIENT, ADMIN, LABELLER = "sk-client-auth-unit", "sk-admin-auth-unit", "sk-labeller-auth-unit"
OPEN = {"/health", "/ready", "/metrics", "/metrics/targets", "/openapi.json"}  # probes and Prometheus


def admin_route(path: str) -> bool:
    return path.startswith("/admin/") or path in {"/v1/load_lora_adapter", "/v1/unload_lora_adapter"}


def routes(url: str) -> list[tuple[str, str]]:
    """(method, path) of every operation in the schema, path parameters filled in."""
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    fill = {"{version}": "student@v1", "{job_id}": "1", "{model_id}": "student", "{model_id:path}": "student"}
    out = []
    for path, ops in paths.items():
        for key, value in fill.items():
            path = path.replace(key, value)
        out += [(method.upper(), path) for method in ops]
    return out


@pytest.fixture
def gateway(tmp_path: Path, model_dir: str, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    admin_key = {"admin_key": ADMIN} if request.param else {}
    server = {"api_keys": [CLIENT], "labeller_keys": [LABELLER], **admin_key}
    with serve_gateway(Settings(data_dir=tmp_path, server=server), model_dir) as g:
        yield g


def call(g: Gateway, method: str, path: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{g.url}{path}", json={}, headers=headers, timeout=30)


@pytest.mark.parametrize("gateway", [False], indirect=True)
def test_without_an_admin_key_every_admin_route_is_disabled_not_open(gateway: Gateway) -> None:
    ops = routes(gateway.url)
    admin = [(m, p) for m, p in ops if admin_route(p)]
    assert len(admin) == 12  # adapters (3), lora loading (2), training and jobs (4), distillation (3)
    for method, path in admin:
        for key in (None, CLIENT, "sk-anything"):
            r = call(gateway, method, path, key)
            assert r.status_code == 403 and r.json()["error"]["code"] == "admin_disabled", (method, path, key)
    assert httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {CLIENT}"}).status_code == 200
    assert httpx.get(f"{gateway.url}/v1/models").status_code == 401


@pytest.mark.parametrize("gateway", [True], indirect=True)
def test_each_route_asks_for_its_key(gateway: Gateway) -> None:
    for method, path in routes(gateway.url):
        if path in OPEN:
            assert call(gateway, method, path, None).status_code not in (401, 403), path  # probes, scrapers
            continue
        needs = ADMIN if admin_route(path) else LABELLER if path == "/v1/feedback" else CLIENT
        for key in (None, "sk-wrong", *([CLIENT, LABELLER] if needs == ADMIN else [])):
            assert call(gateway, method, path, key).status_code == 401, (method, path, key)
        if needs == LABELLER:  # a plain client key is known but lacks the scope
            r = call(gateway, method, path, CLIENT)
            assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", (method, path)
        # The right key passes auth: whatever the route then answers, it is not an auth error.
        assert call(gateway, method, path, needs).status_code not in (401, 403), (method, path)
