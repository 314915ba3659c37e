"""The gateway's front door, attacked over HTTP on the real app (tests/gateway_app.py): oversize bodies, chunked
or declared, are refused (413) before any route parses or authenticates them; on loopback, a foreign Host (DNS
rebinding) and a foreign Origin (a web page posting cross-site) are refused; a body that is not JSON gets 415.
After each attack the service still answers and the registry is as it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.config import Settings
from tests.gateway_app import Gateway, serve_gateway

CLIENT, ADMIN = "sk-client-front-door", "sk-admin-front-door"
LIMIT = 64 * 1024
ATTACK_BYTES = 2 * 1024 * 1024


def settings(tmp_path: Path, host: str = "127.0.0.1") -> Settings:
    return Settings(data_dir=tmp_path, server={"host": host, "api_keys": [CLIENT], "admin_key": ADMIN,
                                               "max_body_bytes": LIMIT})


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, model_dir: str) -> Iterator[Gateway]:
    with serve_gateway(settings(tmp_path_factory.mktemp("front-door")), model_dir) as g:
        yield g


def chunked(total: int = ATTACK_BYTES, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """A JSON-looking body with no Content-Length (httpx sends it chunked)."""
    yield b'{"reason": "'
    for _ in range(total // chunk):
        yield b"x" * chunk


def recorded(g: Gateway) -> Any:
    return [v.name for v in g.registry.list()], g.registry.history()


def assert_still_serving(g: Gateway, before: Any) -> None:
    assert httpx.get(f"{g.url}/health").status_code == 200
    admin = httpx.get(f"{g.url}/admin/adapters", headers={"Authorization": f"Bearer {ADMIN}"})
    assert admin.status_code == 200
    assert recorded(g) == before


def error_code(r: httpx.Response) -> str:
    return r.json()["error"]["code"]


# FastAPI reads a route's body model before it runs the route's auth: these two would parse 2 MB unauthenticated.
@pytest.mark.parametrize("path", ["/admin/adapters/rollback", "/v1/feedback"])
def test_a_chunked_oversize_body_is_refused_413_before_auth(gateway: Gateway, path: str) -> None:
    before = recorded(gateway)
    r = httpx.post(f"{gateway.url}{path}", content=chunked(), headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 413 and error_code(r) == "request_too_large"
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert_still_serving(gateway, before)


def test_a_chunked_oversize_body_with_the_right_key_is_still_413(gateway: Gateway) -> None:
    before = recorded(gateway)
    r = httpx.post(f"{gateway.url}/v1/chat/completions", content=chunked(),
                   headers={"content-type": "application/json", "authorization": f"Bearer {CLIENT}"}, timeout=30)
    assert r.status_code == 413 and error_code(r) == "request_too_large"
    assert_still_serving(gateway, before)


def test_a_declared_oversize_body_is_refused_without_reading_it(gateway: Gateway) -> None:
    before = recorded(gateway)
    r = httpx.post(f"{gateway.url}/admin/adapters/rollback", content=b"{" + b" " * LIMIT + b"}",
                   headers={"content-type": "application/json", "x-request-id": "req-oversize-1"})
    assert r.status_code == 413 and error_code(r) == "request_too_large"
    assert r.headers["x-request-id"] == "req-oversize-1"  # refusals are traceable like any answer
    assert_still_serving(gateway, before)


def test_a_body_just_under_the_limit_reaches_the_route(gateway: Gateway) -> None:
    body = b'{"reason": "' + b"x" * (LIMIT - 20) + b'"}'
    r = httpx.post(f"{gateway.url}/admin/adapters/rollback", content=body,
                   headers={"content-type": "application/json", "authorization": f"Bearer {ADMIN}"})
    assert r.status_code not in (401, 403, 413, 415)


@pytest.mark.parametrize("origin", ["https://evil.example", "http://127.0.0.1.evil.example", "null", "http://["])
@pytest.mark.parametrize("path", ["/admin/train", "/v1/chat/completions", "/admin/adapters/rollback"])
def test_a_cross_site_post_is_refused_403(gateway: Gateway, path: str, origin: str) -> None:
    before = recorded(gateway)
    # Even with the right key: a page must not drive the service through a browser that holds it.
    key = ADMIN if path.startswith("/admin") else CLIENT
    r = httpx.post(f"{gateway.url}{path}", json={"model": "student", "messages": []},
                   headers={"origin": origin, "authorization": f"Bearer {key}"})
    assert r.status_code == 403 and error_code(r) == "cross_origin_refused"
    assert_still_serving(gateway, before)


@pytest.mark.parametrize("origin", ["http://127.0.0.1:3000", "http://localhost:8000", "http://[::1]:8000"])
def test_a_loopback_origin_is_let_in(gateway: Gateway, origin: str) -> None:
    r = httpx.get(f"{gateway.url}/v1/models", headers={"origin": origin, "authorization": f"Bearer {CLIENT}"})
    assert r.status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "10.0.0.1", "0.0.0.0", "[::1"])
def test_a_foreign_host_header_is_refused_on_loopback(gateway: Gateway, host: str) -> None:
    before = recorded(gateway)
    for method, path in (("GET", "/admin/adapters"), ("POST", "/admin/train"), ("GET", "/health")):
        r = httpx.request(method, f"{gateway.url}{path}", headers={"host": host, "authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 421 and error_code(r) == "invalid_host", (method, path)
    assert_still_serving(gateway, before)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])
@pytest.mark.parametrize("path", ["/admin/adapters/rollback", "/v1/chat/completions", "/v1/feedback"])
def test_a_json_body_sent_as_another_type_is_refused_415(gateway: Gateway, path: str, content_type: str) -> None:
    before = recorded(gateway)
    headers = {"authorization": f"Bearer {ADMIN}"} | ({"content-type": content_type} if content_type else {})
    r = httpx.post(f"{gateway.url}{path}", content=b'{"reason": "cross-site"}', headers=headers)
    assert r.status_code == 415 and error_code(r) == "unsupported_media_type"
    assert_still_serving(gateway, before)


def test_json_with_a_charset_and_a_bodiless_post_are_let_in(gateway: Gateway) -> None:
    admin = {"authorization": f"Bearer {ADMIN}"}
    r = httpx.post(f"{gateway.url}/admin/distillation/pause", content=b'{"reason": "x"}',
                   headers=admin | {"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text
    r = httpx.post(f"{gateway.url}/admin/distillation/resume", headers=admin)
    assert r.status_code == 200, r.text


def test_off_loopback_any_host_is_served_but_bodies_are_still_checked(tmp_path: Path, model_dir: str) -> None:
    with serve_gateway(settings(tmp_path, host="0.0.0.0"), model_dir) as g:
        assert httpx.get(f"{g.url}/health", headers={"host": "distillery.example"}).status_code == 200
        r = httpx.post(f"{g.url}/v1/feedback", content=b"{}", headers={"content-type": "text/plain"})
        assert r.status_code == 415
        r = httpx.post(f"{g.url}/v1/feedback", content=chunked(), headers={"content-type": "application/json"},
                       timeout=30)
        assert r.status_code == 413
