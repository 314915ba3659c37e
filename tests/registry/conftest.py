"""The registry tests' real adapters, trained once per session, or once per folder for the mutation run.

`make mutants` runs these tests once per mutant, each run a fresh pytest session: training the two codeword adapters
(minutes on CPU) every time would dominate. With `DISTILLERY_TEST_ADAPTER_CACHE` set, the same adapters (same
trainer, same seeds) are trained into that folder on first use and reused; without it, the shared session fixture
trains them as always (once for the whole session).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.lora_factory import train_codeword_adapter

SEEDS = {"ALPHA-7": 0, "BRAVO-3": 1}


@pytest.fixture(scope="session")
def codeword_adapters(request: pytest.FixtureRequest, model_dir: str) -> dict[str, Path]:
    cache = os.environ.get("DISTILLERY_TEST_ADAPTER_CACHE")
    if not cache:
        return request.getfixturevalue("codeword_adapters")  # the shared session fixture (tests/conftest.py)
    root = Path(cache) / hashlib.sha256(str(Path(model_dir).resolve()).encode()).hexdigest()[:12]
    out = {}
    for word, seed in SEEDS.items():
        path = root / word
        if not (path / "adapter_model.safetensors").is_file():
            train_codeword_adapter(model_dir, path, word, seed=seed)
        out[word] = path
    return out

