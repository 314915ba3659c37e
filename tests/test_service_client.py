"""The service's own HTTP client: where it reaches the service and what it sends with every request."""

from __future__ import annotations

from services.capture.policy import OPT_OUT_HEADER
from services.config import Settings
from services.service_client import ServiceClient, service_url


def test_service_url_reaches_a_wildcard_bind_on_loopback():
    assert service_url(Settings(server={"host": "0.0.0.0", "port": 8123})) == "http://127.0.0.1:8123"
    assert service_url(Settings(server={"host": "10.0.0.5", "port": 9000})) == "http://10.0.0.5:9000"


def test_service_url_prefers_the_internal_url():
    assert service_url(Settings(server={"internal_url": "http://gateway.svc:8000/"})) == "http://gateway.svc:8000"


def test_client_opts_out_of_capture_and_authenticates_as_admin():
    client = ServiceClient(Settings(server={"api_keys": ["client-key"], "admin_key": "admin-key"}), "http://x/")
    assert client.url == "http://x"
    assert client.headers == {OPT_OUT_HEADER: "1", "Authorization": "Bearer admin-key"}
    assert ServiceClient(Settings()).headers == {OPT_OUT_HEADER: "1"}
