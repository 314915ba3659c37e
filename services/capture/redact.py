"""Redaction applied to captured text (and client labels) before it is stored or sent to any teacher.

`default` is the fast path: regular expressions, linear in the text, about 0.4 ms per KB. It masks
secrets (API keys and tokens: `sk-...`, `AKIA...`, `ghp_...`, Slack, Google, JWTs, bearer tokens, private keys, long
hex or base64 strings), e-mail addresses, IBANs (checked by their mod-97 checksum), digit runs of `min_digits` or
more possibly split by spaces, dots, dashes or brackets (phone, card and account numbers: `+44 20 7946 0958`,
`(555) 123-4567`, `555.123.4567`), and names introduced by a cue ("my name is", "I'm", "Dear", "Regards,", a title
such as "Dr."). It keeps the short numbers a question's arithmetic needs, decimals and dates. A name with no cue
("John called") needs a NER model, which no offline package ships: `presidio` (services/capture/pii.py) adds
Presidio's validated recognizers (phone numbers by libphonenumber, cards by Luhn, SSNs, IPs, ...) after these rules.
Operators plug their own `str -> str` with `capture.redactor: "package.module:function"`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from services.config import CaptureConfig

Redactor = Callable[[str], str]

_SECRET = re.compile("|".join([
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{16,}",  # OpenAI, Anthropic (sk-ant-...), Stripe
    r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bgithub_pat_[A-Za-z0-9_]{30,}\b",  # GitHub tokens
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack tokens
    r"\bAIza[0-9A-Za-z_\-]{35}",  # Google API keys
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWTs
    r"(?i:\bbearer\s+)[A-Za-z0-9._~+/=-]{16,}",
    r"\b[0-9a-fA-F]{32,}\b",  # hex secrets (and digests)
]))
# Candidates for base64-like secrets; only those mixing digits, lower and upper case are masked (not long words).
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}={0,2}")
# Each pattern starts where its run starts (a lookbehind or \b): a long run is scanned once, not once per offset.
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)\b")
# Digit groups split by one separator each, optionally led by +country and (area): "+1 (555) 123-4567".
_DIGITS = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .\-]?)?(?:\(\d{1,4}\)[ .\-]?)?\d+(?:[ .\-]\d+)*(?!\w)")
_DATE = re.compile(r"\d{4}([-./])\d{1,2}\1\d{1,2}|\d{1,2}([-./])\d{1,2}\2\d{2,4}")
_DECIMAL = re.compile(r"\d+\.\d+")
_NAME = r"[A-Z][a-z]+(?:[ -][A-Z][a-z]+){0,2}"
_TITLE = r"(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+"
_CUED_NAME = re.compile(
    r"(?P<cue>(?i:\bmy name is|\bmy name's|\bname:|\bcall me|\bi am|\bi'm|\bdear|\bregards,|\bsincerely,"
    r"|\bthanks,|\bcheers,)\s+(?:" + _TITLE + r")?|\b" + _TITLE + ")" + _NAME
)


def _mixed_token(m: re.Match[str]) -> str:
    s = m.group()
    mixed = any(c.isdigit() for c in s) and any(c.islower() for c in s) and any(c.isupper() for c in s)
    return "[SECRET]" if mixed else s


def iban_valid(candidate: str) -> bool:
    """The ISO 13616 check: the country and check digits moved to the end, letters as 10..35, mod 97 == 1."""
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34 or not s.isalnum():
        return False
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


def _iban(m: re.Match[str]) -> str:
    # Grouped by four, the match may have taken a capitalised word after the IBAN: try shorter group prefixes.
    groups = m.group().split(" ")
    for k in range(len(groups), 0, -1):
        if iban_valid("".join(groups[:k])):
            return " ".join(["[IBAN]", *groups[k:]])
    return m.group()


def ordinary_number(s: str) -> bool:
    """A date or a decimal: digits that are not a phone, card or account number."""
    return bool(_DATE.fullmatch(s) or _DECIMAL.fullmatch(s))


def default_redactor(min_digits: int = 7) -> Redactor:
    def digits(m: re.Match[str]) -> str:
        s = m.group()
        if sum(c.isdigit() for c in s) < min_digits or ordinary_number(s):
            return s
        return "[NUMBER]"

    def redact(text: str) -> str:
        text = _TOKEN.sub(_mixed_token, _SECRET.sub("[SECRET]", text))
        text = _IBAN.sub(_iban, _EMAIL.sub("[EMAIL]", text))
        text = _DIGITS.sub(digits, text)
        return _CUED_NAME.sub(lambda m: m.group("cue") + "[NAME]", text)

    return redact


def build_redactor(cfg: CaptureConfig) -> Redactor:
    """The configured redactor: the gateway's capture sink and the feedback route (labels) both call it."""
    if cfg.redactor == "default":
        return default_redactor(cfg.redact_min_digits)
    if cfg.redactor == "presidio":
        from services.capture.pii import presidio_redactor

        return presidio_redactor(default_redactor(cfg.redact_min_digits))
    if cfg.redactor == "none":
        return lambda text: text
    module, _, name = cfg.redactor.partition(":")
    if not name:
        raise ValueError(f"capture.redactor must be 'default', 'presidio', 'none' or 'module:function', "
                         f"got {cfg.redactor!r}")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise ValueError(f"capture.redactor {cfg.redactor!r} is not callable")
    return fn
