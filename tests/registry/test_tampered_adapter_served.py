"""A version whose files were changed in storage after publish, sent to a real gateway (tests/gateway_app.py, the
real StudentEngine over a vLLM stand-in that records what it was asked to load): the replica checks the sha256
manifest before vLLM sees the files, refuses the load and the promotion, and keeps serving the version it served."""

from __future__ import annotations

from pathlib import Path

import httpx

from services.config import Settings
from tests.gateway_app import serve_gateway

CLIENT, ADMIN = "sk-client-tamper", "sk-admin-tamper"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


def test_a_tampered_version_is_refused_and_the_promoted_one_keeps_serving(tmp_path, model_dir, codeword_adapters):
    settings = Settings(data_dir=tmp_path, server={"host": "127.0.0.1", "api_keys": [CLIENT], "admin_key": ADMIN})
    with serve_gateway(settings, model_dir) as g:
        v1 = g.registry.publish(codeword_adapters["ALPHA-7"])
        v2 = g.registry.publish(codeword_adapters["BRAVO-3"])
        r = httpx.post(f"{g.url}/admin/adapters/{v1.name}/promote", json={"reason": "first"}, headers=AS_ADMIN)
        assert r.status_code == 200 and r.json()["promoted"] == v1.name

        weights = Path(v2.path) / "adapter_model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))

        r = httpx.post(f"{g.url}/admin/adapters/{v2.name}/promote", json={"reason": "tampered"}, headers=AS_ADMIN)
        assert r.status_code == 409 and r.json()["error"]["code"] == "adapter_checksum_mismatch"
        r = httpx.post(f"{g.url}/v1/load_lora_adapter", json={"lora_name": v2.name}, headers=AS_ADMIN)
        assert r.status_code == 409 and r.json()["error"]["code"] == "adapter_checksum_mismatch"
        assert v2.name not in g.vllm.added  # vLLM never saw the tampered files
        state = httpx.get(f"{g.url}/admin/adapters", headers=AS_ADMIN).json()
        assert (state["promoted"], state["serving"]) == (v1.name, v1.name)
        assert [h["version"] for h in state["history"]] == [v1.name]

        v3 = g.registry.publish(codeword_adapters["BRAVO-3"])  # the registry still publishes and promotes
        r = httpx.post(f"{g.url}/admin/adapters/{v3.name}/promote", json={"reason": "good"}, headers=AS_ADMIN)
        assert r.status_code == 200 and r.json()["promoted"] == v3.name
        assert g.vllm.added == [v1.name, v3.name]
