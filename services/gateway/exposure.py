"""Who can reach the service: loopback hosts, and the start refusal for an exposed one without keys."""

from __future__ import annotations

import ipaddress

from services.config import ServerConfig


class UnsafeExposure(ValueError):
    """The service would serve a non-loopback address without the keys that protect it."""


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (bracketed or not) and `localhost`; a wildcard (0.0.0.0, ::) or any other name is not."""
    host = host.strip().strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(server: ServerConfig) -> None:
    """Refuse (UnsafeExposure, naming the fix) a non-loopback `server.host` without `server.admin_key`, or
    without client keys unless `server.allow_anonymous`. Loopback without keys is fine."""
    if is_loopback(server.host):
        return
    where = f"server.host={server.host!r} is not a loopback address"
    if server.admin_key is None:
        raise UnsafeExposure(f"{where}: set server.admin_key (DISTILLERY_SERVER__ADMIN_KEY), or bind to 127.0.0.1")
    if not (server.api_keys or server.labeller_keys or server.allow_anonymous):
        raise UnsafeExposure(f"{where}: set server.api_keys (DISTILLERY_SERVER__API_KEYS='[\"<key>\"]'), or set "
                             "server.allow_anonymous: true to serve clients without keys")
