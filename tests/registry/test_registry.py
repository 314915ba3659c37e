"""The adapter registry on a real SQLite file: immutable versions, name resolution, promote/rollback replay."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.registry import AdapterInvalid, AdapterRegistry, RegistryError
from services.store import Database


@pytest.fixture
def registry(tmp_path, model_dir) -> AdapterRegistry:
    db = Database(f"sqlite:///{tmp_path / 'd.db'}")
    db.create_all()
    return AdapterRegistry(db, tmp_path / "adapters", served_name="student", base_model="base",
                           base_model_dir=Path(model_dir), max_rank=16)


def test_publish_copies_into_immutable_numbered_versions(registry, codeword_adapters, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(codeword_adapters["ALPHA-7"], src)
    v1 = registry.publish(src, label="alpha", metrics={"acc": 0.5}, lineage={"mags": [1, 2]})
    v2 = registry.publish(codeword_adapters["BRAVO-3"])
    assert (v1.name, v2.name) == ("student@v1", "student@v2")
    assert v1.status == "registered" and v1.metrics == {"acc": 0.5} and v1.lineage == {"mags": [1, 2]}
    shutil.rmtree(src)  # the trainer's folder may go away: the version is a copy
    assert (Path(registry.get("student@v1").path) / "adapter_model.safetensors").is_file()
    assert registry.get("alpha").number == 1
    with pytest.raises(RegistryError, match="already registered"):
        registry.publish(codeword_adapters["BRAVO-3"], label="alpha")
    with pytest.raises(AdapterInvalid, match="reserved"):
        registry.publish(codeword_adapters["BRAVO-3"], label="student@v7")
    with pytest.raises(RegistryError):
        registry.get("student@v9")
    assert registry.update("student@v2", metrics={"acc": 0.7}).metrics == {"acc": 0.7}


def test_invalid_adapter_is_not_registered(registry, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterInvalid):
        registry.publish(tmp_path / "empty")
    assert registry.list() == []
    assert not any((tmp_path / "adapters").glob("student@v*"))


def test_resolve_alias_version_label_and_base(registry, codeword_adapters):
    registry.publish(codeword_adapters["ALPHA-7"], label="alpha")
    assert registry.resolve("student") is None  # base until something is promoted
    assert registry.resolve("base") is None
    assert registry.resolve("student@v1").number == 1
    registry.promote("alpha")
    assert registry.resolve("student").name == "student@v1"


def test_promote_rollback_is_a_stack_replayed_from_the_log(registry, codeword_adapters):
    for word in ("ALPHA-7", "BRAVO-3", "ALPHA-7"):
        registry.publish(codeword_adapters[word])
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    registry.promote("student@v1")
    registry.promote("student@v2")
    registry.promote("student@v2")  # idempotent: no second event
    registry.promote("student@v3")
    assert registry.promoted().name == "student@v3"
    assert registry.rollback_target().name == "student@v2"
    assert registry.rollback("bad eval").name == "student@v2"
    assert registry.rollback().name == "student@v1"
    assert registry.rollback() is None  # back to the base model
    statuses = {v.name: v.status for v in registry.list()}
    assert statuses == {"student@v1": "rolled_back", "student@v2": "rolled_back", "student@v3": "rolled_back"}
    kinds = [h["kind"] for h in registry.history()]
    assert kinds == ["promote", "promote", "promote", "rollback", "rollback", "rollback"]
    assert registry.history()[3]["reason"] == "bad eval"


def test_a_second_process_sees_the_same_state(registry, codeword_adapters, tmp_path, model_dir):
    registry.publish(codeword_adapters["ALPHA-7"])
    registry.promote("student@v1")
    other = AdapterRegistry(Database(registry.db.url), registry.storage, served_name="student",
                            base_model="base", base_model_dir=Path(model_dir), max_rank=16)
    assert other.promoted().name == "student@v1"
