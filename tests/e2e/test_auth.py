"""Auth on: client keys for /v1/*, a separate admin key for /admin/* and adapter loading; keys never logged.

(Auth off is the default service every other e2e test talks to without any key.)
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import start_service, stop_service

pytestmark = pytest.mark.e2e

CLIENT_KEY = "sk-client-0f9e8d7c6b5a"
ADMIN_KEY = "sk-admin-1a2b3c4d5e6f"


@pytest.fixture(scope="module")
def secured(model_dir, tmp_path_factory):
    svc = start_service(model_dir, tmp_path_factory.mktemp("secured"), {
        "DISTILLERY_SERVER__API_KEYS": f'["{CLIENT_KEY}"]',
        "DISTILLERY_SERVER__ADMIN_KEY": ADMIN_KEY,
    })
    yield svc
    stop_service(svc)


def test_client_key_required_for_the_openai_api(secured):
    ok = openai.OpenAI(base_url=f"{secured.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    r = ok.chat.completions.create(model="student", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert r.choices[0].message.content is not None
    assert [m.id for m in ok.models.list().data][1] == "student"
    bad = openai.OpenAI(base_url=f"{secured.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="student", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    r = httpx.post(f"{secured.url}/v1/completions", json={"model": "student", "prompt": "x"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert r.json()["error"]["code"] == "missing_api_key"


def test_admin_endpoints_need_the_admin_key_not_a_client_key(secured):
    client_h = {"Authorization": f"Bearer {CLIENT_KEY}"}
    admin_h = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for method, path, body in [("GET", "/admin/adapters", None), ("POST", "/admin/adapters/rollback", None),
                               ("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/nowhere"})]:
        assert httpx.request(method, f"{secured.url}{path}", json=body).status_code == 401
        assert httpx.request(method, f"{secured.url}{path}", json=body, headers=client_h).status_code == 401
    r = httpx.get(f"{secured.url}/admin/adapters", headers=admin_h)
    assert r.status_code == 200 and r.json()["serving"] == "smollm2-135m-instruct"
    # The admin key also works as a client key (operators test with it).
    r = httpx.post(f"{secured.url}/v1/chat/completions", headers=admin_h,
                   json={"model": "student", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200


def test_ops_endpoints_stay_open_for_probes_and_scrapers(secured):
    assert httpx.get(f"{secured.url}/health").status_code == 200
    assert httpx.get(f"{secured.url}/ready").status_code == 200
    assert "distillery_requests_total" in httpx.get(f"{secured.url}/metrics").text


def test_keys_never_appear_in_logs_or_config_output(secured):
    httpx.post(f"{secured.url}/v1/chat/completions", headers={"Authorization": f"Bearer {CLIENT_KEY}"},
               json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    logs = secured.log_path.read_text(errors="replace")
    for f in Path("/tmp/ray").glob("session_*/logs/serve/*.log"):  # every replica's log, both services
        logs += f.read_text(errors="replace")
    assert CLIENT_KEY not in logs and ADMIN_KEY not in logs
