"""Bearer-token auth: optional client keys for /v1/*, a separate admin key for /admin/* and adapter loading.

Keys are compared in constant time and never logged; errors name the problem, not the key.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from services.config import ServerConfig
from services.gateway.errors import ApiError


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str, keys: list[str]) -> bool:
    # Compare against every key so timing does not reveal which one (or whether any) matched early.
    found = False
    for k in keys:
        found |= hmac.compare_digest(token.encode(), k.encode())
    return found


class Auth:
    def __init__(self, cfg: ServerConfig) -> None:
        self._client_keys = [k.get_secret_value() for k in cfg.api_keys]
        self._admin_key = cfg.admin_key.get_secret_value() if cfg.admin_key else None

    @property
    def client_auth(self) -> bool:
        return bool(self._client_keys)

    def require_client(self, request: Request) -> None:
        if not self._client_keys:
            return
        token = _bearer(request)
        if token is None:
            raise ApiError(401, "Missing API key: send `Authorization: Bearer <key>`", None, "missing_api_key")
        keys = self._client_keys + ([self._admin_key] if self._admin_key else [])
        if not _matches(token, keys):
            raise ApiError(401, "Incorrect API key provided", None, "invalid_api_key")

    def require_admin(self, request: Request) -> None:
        if self._admin_key is None:
            if self._client_keys:  # clients are authenticated, so admin must be too; never fall open
                raise ApiError(403, "Admin endpoints are disabled: set server.admin_key to use them", None,
                               "admin_disabled")
            return
        token = _bearer(request)
        if token is None:
            raise ApiError(401, "Missing admin key: send `Authorization: Bearer <admin key>`", None,
                           "missing_api_key")
        if not _matches(token, [self._admin_key]):
            raise ApiError(401, "Incorrect admin key provided", None, "invalid_api_key")
