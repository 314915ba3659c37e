"""Bearer-token auth: optional client keys for /v1/*, a separate admin key for /admin/* and adapter loading.

Every authenticated request carries a `Principal` in `request.state.principal`: a stable, non-secret key id
and the key's scopes. Keys are compared in constant time and never logged; errors name the problem, not the key.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Request

from services.config import ServerConfig
from services.gateway.errors import ApiError
from services.gateway.exposure import is_loopback
from services.store.debates import ADMIN_KEY_ID, ANONYMOUS_KEY_ID

INFERENCE, LABELLER, TRUSTED, ADMIN = "inference", "labeller", "trusted", "admin"


@dataclass(frozen=True)
class Principal:
    key_id: str  # "anonymous" without keys, "admin" for the admin key, else sha256(key)[:16]
    scopes: frozenset[str]


def key_id_of(key: str) -> str:
    """The non-secret id a key is known by in the store, metrics and config (`server.trusted_labellers`)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _match(token: str, keys: list[str]) -> str | None:
    # Compare against every key so timing does not reveal which one (or whether any) matched early.
    found = None
    for k in keys:
        if hmac.compare_digest(token.encode(), k.encode()):
            found = k
    return found


class Auth:
    def __init__(self, cfg: ServerConfig) -> None:
        self._labeller_keys = [k.get_secret_value() for k in cfg.labeller_keys]
        self._client_keys = [k.get_secret_value() for k in cfg.api_keys] + self._labeller_keys
        self._admin_key = cfg.admin_key.get_secret_value() if cfg.admin_key else None
        self._trusted = frozenset(cfg.trusted_labellers)
        # Without keys everyone is anonymous with every scope; their labels are trusted only on loopback.
        anonymous = {INFERENCE, LABELLER} | ({TRUSTED} if is_loopback(cfg.host) else set())
        self._anonymous = Principal(ANONYMOUS_KEY_ID, frozenset(anonymous))
        self._admin = Principal(ADMIN_KEY_ID, frozenset({INFERENCE, LABELLER, TRUSTED, ADMIN}))

    def _client(self, key: str) -> Principal:
        key_id = key_id_of(key)
        scopes = {INFERENCE}
        if key in self._labeller_keys:
            scopes |= {LABELLER} | ({TRUSTED} if key_id in self._trusted else set())
        return Principal(key_id, frozenset(scopes))

    def require_client(self, request: Request) -> None:
        token = _bearer(request)
        if self._admin_key is not None and token is not None and _match(token, [self._admin_key]):
            request.state.principal = self._admin
            return
        if not self._client_keys:
            request.state.principal = self._anonymous
            return
        if token is None:
            raise ApiError(401, "Missing API key: send `Authorization: Bearer <key>`", None, "missing_api_key")
        key = _match(token, self._client_keys)
        if key is None:
            raise ApiError(401, "Incorrect API key provided", None, "invalid_api_key")
        request.state.principal = self._client(key)

    def require_labeller(self, request: Request) -> None:
        """A client key with the `labeller` scope (POST /v1/feedback)."""
        self.require_client(request)
        if LABELLER not in request.state.principal.scopes:
            raise ApiError(403, "This API key may not post feedback: it needs the `labeller` scope "
                           "(server.labeller_keys)", None, "insufficient_scope")

    def require_admin(self, request: Request) -> None:
        if self._admin_key is None:
            if self._client_keys:  # clients are authenticated, so admin must be too; never fall open
                raise ApiError(403, "Admin endpoints are disabled: set server.admin_key to use them", None,
                               "admin_disabled")
            request.state.principal = Principal(ANONYMOUS_KEY_ID, self._admin.scopes)
            return
        token = _bearer(request)
        if token is None:
            raise ApiError(401, "Missing admin key: send `Authorization: Bearer <admin key>`", None,
                           "missing_api_key")
        if not _match(token, [self._admin_key]):
            raise ApiError(401, "Incorrect admin key provided", None, "invalid_api_key")
        request.state.principal = self._admin
