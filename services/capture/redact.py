"""Redaction applied to captured text before it is stored or sent to any teacher.

The default masks e-mail addresses and long digit runs (phone, card and account numbers) while keeping the
short numbers a question's arithmetic needs. Operators plug their own `str -> str` with
`capture.redactor: "package.module:function"`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from services.config import CaptureConfig

Redactor = Callable[[str], str]

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def default_redactor(min_digits: int = 7) -> Redactor:
    # Digits possibly split by spaces or dashes (e.g. "555-123-4567"), min_digits of them in all.
    digits = re.compile(r"(?<![\w])\d(?:[ \-]?\d){" + str(min_digits - 1) + r",}(?![\w])")

    def redact(text: str) -> str:
        return digits.sub("[NUMBER]", _EMAIL.sub("[EMAIL]", text))

    return redact


def build_redactor(cfg: CaptureConfig) -> Redactor:
    if cfg.redactor == "default":
        return default_redactor(cfg.redact_min_digits)
    if cfg.redactor == "none":
        return lambda text: text
    module, _, name = cfg.redactor.partition(":")
    if not name:
        raise ValueError(f"capture.redactor must be 'default', 'none' or 'module:function', got {cfg.redactor!r}")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise ValueError(f"capture.redactor {cfg.redactor!r} is not callable")
    return fn
