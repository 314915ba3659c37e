"""The internal bearer token of the built-in reference teachers: what their app requires, what the debate sends.

`server.teachers_token` when configured; else derived from the admin key (every process of a deployment that
holds the key derives the same token, nothing to share); else generated once into `<data_dir>/teachers-token`
(mode 0600), which every process on this machine reads. Never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from services.config import Settings

TOKEN_FILE = "teachers-token"


def teachers_token(settings: Settings) -> str:
    server = settings.server
    if server.teachers_token is not None:
        return server.teachers_token.get_secret_value()
    if server.admin_key is not None:
        key = server.admin_key.get_secret_value().encode()
        return hmac.new(key, b"distillery reference teachers", hashlib.sha256).hexdigest()
    path = settings.data_dir / TOKEN_FILE
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f"{TOKEN_FILE}.{os.getpid()}.tmp")
        draft.touch(mode=0o600)
        draft.write_text(secrets.token_urlsafe(32))
        try:
            os.link(draft, path)  # atomic, and the first process to get there wins
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()
