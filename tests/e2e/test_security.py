"""The real service (Ray Serve + vLLM) with auth on, and the attacks of docs/security.md sent to it.

Client keys for /v1/*, labeller keys that may also label their own requests, a separate admin key for /admin/* and
adapter loading; keys never logged. Each attack test sends the attack, asserts the refusal or the bound, then that
the service still answers and that what it recorded is intact. (Auth off is the default service every other e2e
test talks to without any key.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import select

from services.config import Settings
from services.store.db import Database
from services.store.debates import CaptureRow
from tests.conftest import start_service, stop_service
from tests.http_servers import wait_for

pytestmark = pytest.mark.e2e

CLIENT_KEY = "sk-client-0f9e8d7c6b5a"
ADMIN_KEY = "sk-admin-1a2b3c4d5e6f"
ALICE, BOB = "sk-labeller-alice-7e6d5c", "sk-labeller-bob-4b3a29"  # labeller keys


@pytest.fixture(scope="module")
def secured(model_dir, tmp_path_factory):
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # this service's Ray logs, apart (short: socket paths)
    svc = start_service(model_dir, tmp_path_factory.mktemp("secured"), {
        "DISTILLERY_SERVER__API_KEYS": f'["{CLIENT_KEY}"]',
        "DISTILLERY_SERVER__LABELLER_KEYS": f'["{ALICE}", "{BOB}"]',
        "DISTILLERY_SERVER__ADMIN_KEY": ADMIN_KEY,
        "DISTILLERY_CAPTURE__MAX_RELABELS": "2",
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
    r = httpx.post(f"{secured.url}/v1/chat/completions", headers=admin_h, timeout=120,  # generates beside debates
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


# ---- attacks (docs/security.md), each sent to the real service ------------------------------------------------

CHAT = {"model": "student", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def still_serves(svc) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(f"{svc.url}/v1/chat/completions", json=CHAT, headers=bearer(CLIENT_KEY), timeout=120)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None
    assert httpx.get(f"{svc.url}/admin/adapters", headers=bearer(ADMIN_KEY)).status_code == 200


def captured(svc, request_id: str) -> CaptureRow:  # type: ignore[no-untyped-def]
    """The capture queue's row of a request, once the capture writer has stored it."""
    db = Database(Settings(data_dir=svc.data_dir).db_url)

    def row() -> CaptureRow | None:
        with db.session() as s:
            return s.scalar(select(CaptureRow).where(CaptureRow.request_id == request_id))

    wait_for(lambda: row() is not None, 60, f"{request_id} in the capture queue")
    return row()  # type: ignore[return-value]


def chunked(size: int) -> Iterator[bytes]:
    """A body sent without Content-Length (chunked transfer encoding)."""
    for _ in range(size // 65536 + 1):
        yield b" " * 65536


def test_a_chunked_oversize_body_is_refused_before_auth_on_every_route_kind(secured):
    for path, headers in [("/admin/adapters/rollback", {}), ("/v1/feedback", {}),
                          ("/v1/chat/completions", bearer(CLIENT_KEY))]:
        r = httpx.post(f"{secured.url}{path}", content=chunked(2_000_000), timeout=60,
                       headers={**headers, "content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", (path, r.text)
    assert httpx.get(f"{secured.url}/admin/adapters", headers=bearer(ADMIN_KEY)).json()["serving"] \
        == "smollm2-135m-instruct"  # the rollback never ran
    still_serves(secured)


def test_cross_site_requests_to_the_loopback_service_are_refused(secured):
    admin = bearer(ADMIN_KEY)
    jobs_before = httpx.get(f"{secured.url}/admin/jobs", headers=admin).json()["data"]
    r = httpx.post(f"{secured.url}/admin/train", headers={**admin, "origin": "https://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin_refused"
    r = httpx.post(f"{secured.url}/v1/chat/completions", json=CHAT,
                   headers={**bearer(CLIENT_KEY), "origin": "https://evil.example"})
    assert r.status_code == 403
    r = httpx.post(f"{secured.url}/v1/chat/completions", json=CHAT,  # DNS rebinding: a foreign name, our address
                   headers={**bearer(CLIENT_KEY), "host": "evil.example"})
    assert r.status_code == 421 and r.json()["error"]["code"] == "invalid_host"
    r = httpx.post(f"{secured.url}/v1/chat/completions", content=json.dumps(CHAT).encode(),  # a "simple" form post
                   headers={**bearer(CLIENT_KEY), "content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    jobs = httpx.get(f"{secured.url}/admin/jobs", headers=admin).json()["data"]
    assert [j for j in jobs if j["trigger"] == "api"] == [j for j in jobs_before if j["trigger"] == "api"]
    ok = httpx.post(f"{secured.url}/v1/chat/completions", json=CHAT, timeout=120,  # a generation: not httpx's 5 s
                    headers={**bearer(CLIENT_KEY), "origin": secured.url})  # the service's own origin is fine
    assert ok.status_code == 200
    still_serves(secured)


def test_prompts_and_sequences_per_request_are_capped_before_any_work(secured):
    h = bearer(CLIENT_KEY)
    t0 = time.monotonic()
    r = httpx.post(f"{secured.url}/v1/completions", headers=h, timeout=60,
                   json={"model": "student", "prompt": ["x"] * 10_000, "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_prompts"
    assert time.monotonic() - t0 < 10  # refused, not 10,000 generations later
    r = httpx.post(f"{secured.url}/v1/completions", headers=h,
                   json={"model": "student", "prompt": ["x"] * 8, "n": 8, "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_sequences"
    still_serves(secured)


def _gauge(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})?\s+(\S+)$", text, re.M))


def test_streaming_clients_that_vanish_give_their_slots_back(secured):
    body = {**CHAT, "stream": True, "max_tokens": 64}
    with httpx.Client(timeout=120) as c:
        for i in range(8):
            with c.stream("POST", f"{secured.url}/v1/chat/completions", json=body, headers=bearer(CLIENT_KEY)) as r:
                assert r.status_code == 200
                if i % 2:
                    next(r.iter_lines())  # the first frame, then the client is gone; else gone before any frame

    def idle() -> bool:
        text = httpx.get(f"{secured.url}/metrics").text
        return _gauge(text, "distillery_requests_in_flight") == 0 == _gauge(text, "distillery_sequences_in_flight")

    wait_for(idle, 60, "in-flight requests and sequences back to zero")
    still_serves(secured)


def test_client_spellings_of_a_model_never_become_metric_series(secured):
    for i in range(30):
        r = httpx.post(f"{secured.url}/v1/chat/completions", headers=bearer(CLIENT_KEY),
                       json={**CHAT, "model": f"Student-spelling-{i}"})
        assert r.status_code == 404
    text = httpx.get(f"{secured.url}/metrics").text
    assert "spelling" not in text
    models = set(re.findall(r'^distillery_requests_total\{[^}]*model="([^"]*)"', text, re.M))
    assert models <= {"student", "smollm2-135m-instruct", "unknown", "-"}, models
    still_serves(secured)


def test_labels_only_from_the_requests_own_labeller_key_and_a_bounded_number_of_times(secured):
    r = httpx.post(f"{secured.url}/v1/chat/completions", json=CHAT, headers=bearer(ALICE), timeout=120)
    rid = r.headers["x-request-id"]
    assert captured(secured, rid).label is None

    def label(key: str, answer: str) -> httpx.Response:
        return httpx.post(f"{secured.url}/v1/feedback", headers=bearer(key), json={"request_id": rid,
                                                                                  "answer": answer})

    assert label(BOB, "7").json()["error"]["code"] == "not_your_request"
    assert label(CLIENT_KEY, "7").json()["error"]["code"] == "insufficient_scope"
    assert captured(secured, rid).label is None  # neither refused label was stored
    codes = [label(ALICE, str(5 + i % 2)).status_code for i in range(6)]
    assert codes == [202, 202, 202, 409, 409, 409]  # the first label, then capture.max_relabels=2
    row = captured(secured, rid)
    assert row.label == "5" and row.relabels == 2 and row.label_trusted is False
    assert label(ADMIN_KEY, "5").status_code == 409  # the bound holds for the admin key too
    still_serves(secured)


def test_a_nul_character_is_stripped_at_capture_and_capture_goes_on(secured):
    nul = {**CHAT, "messages": [{"role": "user", "content": "What is 2 +\x00 3?"}]}
    r = httpx.post(f"{secured.url}/v1/chat/completions", json=nul, headers=bearer(CLIENT_KEY), timeout=120)
    assert r.status_code == 200
    row = captured(secured, r.headers["x-request-id"])
    assert row.messages[-1]["content"] == "What is 2 + 3?"
    after = httpx.post(f"{secured.url}/v1/chat/completions", json=CHAT, headers=bearer(CLIENT_KEY), timeout=120)
    assert captured(secured, after.headers["x-request-id"]).question == "Say hi."  # the writer is not wedged


def test_the_built_in_teachers_answer_only_with_the_internal_token(secured):
    name = next(t.name for t in Settings().debate.teachers if t.builtin)
    url = f"{secured.url}/teachers/{name}/v1/chat/completions"
    body = {"model": "reference", "messages": [{"role": "user", "content": "What is 2 + 3?"}], "n": 10_000}
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers=bearer(CLIENT_KEY)).status_code == 401
    assert httpx.post(url, json=body, headers=bearer(ADMIN_KEY)).status_code == 401  # not a key of this route
    still_serves(secured)
