"""`capture.redactor: presidio`: the fast rules (services/capture/redact.py), then Microsoft Presidio's recognizers.

Presidio runs here offline with only its pattern recognizers, each validated the way the library does it: phone
numbers through libphonenumber (any national format), cards by Luhn, IBANs by checksum, US SSNs, IP and MAC
addresses, crypto wallets, UK NHS and NI numbers. Its NLP engine is spaCy's blank English pipeline (a tokenizer, no
model download), so Presidio's NER-based entities (names, places) are not detected by it: names are masked only
where the rules see a cue. The e-mail and URL recognizers are left out (the rules mask e-mails; Presidio's validate
them by fetching the public suffix list from the internet). About 5 ms per KB (p95 7 ms), against the rules' 0.4 ms,
and 4 s to load: the capture sink runs it on its writer thread, never on the gateway's event loop.
"""

from __future__ import annotations

from services.capture.redact import Redactor, ordinary_number

ENTITIES = ("PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS", "MAC_ADDRESS", "CRYPTO",
            "UK_NHS", "UK_NINO")


def _number_around(text: str, start: int, end: int) -> str:
    """The whole number a match lies in: libphonenumber takes 2.718281828 for a phone, the SSN pattern its tail."""
    while start > 0 and (text[start - 1].isdigit() or text[start - 1] in ".-/"):
        start -= 1
    while end < len(text) and (text[end].isdigit() or text[end] in ".-/"):
        end += 1
    return text[start:end].strip(".-/")


def presidio_redactor(rules: Redactor) -> Redactor:
    import spacy
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        CryptoRecognizer,
        IbanRecognizer,
        IpRecognizer,
        MacAddressRecognizer,
        NhsRecognizer,
        PhoneRecognizer,
        UkNinoRecognizer,
        UsSsnRecognizer,
    )
    from presidio_anonymizer import AnonymizerEngine
    from presidio_anonymizer.entities import OperatorConfig

    nlp = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": "blank:en"}])
    nlp.nlp = {"en": spacy.blank("en")}  # loaded here instead of by name: no model package to download
    registry = RecognizerRegistry(supported_languages=["en"], recognizers=[
        PhoneRecognizer(), CreditCardRecognizer(), IbanRecognizer(), UsSsnRecognizer(), IpRecognizer(),
        MacAddressRecognizer(), CryptoRecognizer(), NhsRecognizer(), UkNinoRecognizer()])
    analyzer = AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])
    anonymizer = AnonymizerEngine()
    operators = {e: OperatorConfig("replace", {"new_value": f"[{e}]"}) for e in ENTITIES}

    def redact(text: str) -> str:
        text = rules(text)
        found = [r for r in analyzer.analyze(text, language="en", entities=list(ENTITIES))
                 if not ordinary_number(_number_around(text, r.start, r.end))]
        return anonymizer.anonymize(text, found, operators).text if found else text

    return redact
