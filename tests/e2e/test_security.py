"""Auth on: client keys for /v1/*, a separate admin key for /admin/* and adapter loading; keys never logged.

(Auth off is the default service every other e2e test talks to without any key.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import start_service, stop_service
from tests.http_servers import wait_for

pytestmark = pytest.mark.e2e

CLIENT_KEY = "sk-client-0f9e8d7c6b5a"
ADMIN_KEY = "sk-admin-1a2b3c4d5e6f"


@pytest.fixture(scope="module")
def secured(model_dir, tmp_path_factory):
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # this service's Ray logs, apart (short: socket paths)
    svc = start_service(model_dir, tmp_path_factory.mktemp("secured"), {
        "DISTILLERY_SERVER__API_KEYS": f'["{CLIENT_KEY}"]',
        "DISTILLERY_SERVER__ADMIN_KEY": ADMIN_KEY,
        "RAY_TMPDIR": ray_dir,
    })
    svc.ray_dir = Path(ray_dir)
    yield svc
    stop_service(svc)
    shutil.rmtree(ray_dir, ignore_errors=True)


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


def serve_logs(svc) -> str:  # type: ignore[no-untyped-def]
    """The service's own log and every Ray process's log of this service (the proxy's, every replica's)."""
    logs = svc.log_path.read_text(errors="replace")
    for f in svc.ray_dir.glob("ray/session_2*/logs/**/*"):  # not session_latest: a link to the same folder
        if f.is_file() and f.suffix in {".log", ".out", ".err"}:
            logs += f.read_text(errors="replace")
    return logs


def test_keys_never_appear_in_logs_or_config_output(secured):
    marker = f"auth-log-{uuid.uuid4().hex}"
    for key, path, body in [
        (CLIENT_KEY, "/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        (CLIENT_KEY, "/v1/chat/completions", {"model": "student", "messages": "not a list"}),
        (ADMIN_KEY, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/nowhere"}),
        (ADMIN_KEY, "/admin/adapters/student@v9/promote", {"reason": "test"}),
    ]:  # failing requests: the ones most likely to log what they carried
        r = httpx.post(f"{secured.url}{path}", json=body, headers={"Authorization": f"Bearer {key}",
                                                                   "x-request-id": marker})
        assert 400 <= r.status_code < 500, r.text
    # The logs read here are the ones that recorded these requests (Ray Serve logs each request's id).
    wait_for(lambda: marker in serve_logs(secured), 30, "the requests in the service's logs")
    logs = serve_logs(secured)
    assert CLIENT_KEY not in logs and ADMIN_KEY not in logs

    env = {**os.environ, "DISTILLERY_DATA_DIR": str(secured.data_dir), "DISTILLERY_SERVER__ADMIN_KEY": ADMIN_KEY,
           "DISTILLERY_SERVER__API_KEYS": f'["{CLIENT_KEY}"]'}
    out = subprocess.run([sys.executable, "-m", "services.cli", "config"], env=env, capture_output=True, text=True,
                         timeout=120)
    config = json.loads(out.stdout)
    assert config["server"]["admin_key"] and config["server"]["api_keys"]  # present, and masked
    assert CLIENT_KEY not in out.stdout + out.stderr and ADMIN_KEY not in out.stdout + out.stderr
