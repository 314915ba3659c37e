"""Text every database can store: NUL characters and lone surrogates stripped before capture reaches the store.

PostgreSQL's text refuses NUL (0x00), and no UTF-8 encoder takes a lone surrogate (what an undecodable byte in
the request becomes); either one in a captured message would make the insert fail every time it is tried.
"""

from __future__ import annotations

from typing import Any


def clean_text(text: str) -> str:
    if text.isascii():
        return text.replace("\x00", "")
    return text.replace("\x00", "").encode("utf-8", "ignore").decode("utf-8")


def clean(value: Any) -> tuple[Any, bool]:
    """`value` with every string in it cleaned (dicts and lists walked), and whether anything was removed."""
    if isinstance(value, str):
        out = clean_text(value)
        return out, out != value
    if isinstance(value, dict):
        pairs = [(clean(k), clean(v)) for k, v in value.items()]
        return {k: v for (k, _), (v, _) in pairs}, any(ck or cv for (_, ck), (_, cv) in pairs)
    if isinstance(value, list):
        items = [clean(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    return value, False
