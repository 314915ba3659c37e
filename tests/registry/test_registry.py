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


def test_a_version_records_what_was_published_and_updates_merge(registry, codeword_adapters, tmp_path):
    v1 = registry.publish(codeword_adapters["ALPHA-7"], metrics={"acc": 0.5}, note="first")
    assert (v1.number, v1.label, v1.base_model, v1.rank, v1.target_modules) == (1, None, "base", 8,
                                                                                ["q_proj", "v_proj"])
    assert v1.path == str(tmp_path / "adapters" / "student@v1") and v1.note == "first" and v1.lineage == {}
    v2 = registry.publish(codeword_adapters["BRAVO-3"], label="bravo")
    assert (v2.metrics, v2.lineage, v2.note) == ({}, {}, None)
    # Metrics merge into the record (evaluation adds to training's); a note is set only when given.
    merged = registry.update("student@v1", metrics={"f1": 0.25})
    assert merged.metrics == {"acc": 0.5, "f1": 0.25} and merged.note == "first"
    assert registry.update("student@v1", metrics={"acc": 0.75}, note="evaluated").metrics == {"acc": 0.75, "f1": 0.25}
    assert registry.get("student@v1").note == "evaluated"
    assert registry.update("bravo", metrics={}).metrics == {}  # by label; nothing to merge
    with pytest.raises(RegistryError, match="no adapter"):
        registry.update("student@v9", metrics={"acc": 1.0})
    with pytest.raises(RegistryError, match="no adapter named 'nobody'"):
        registry.get("nobody")
    bravo = registry.get("bravo")
    d = bravo.as_dict()
    assert {k: d[k] for k in ("version", "number", "label", "base_model", "rank", "target_modules", "status",
                              "metrics", "lineage", "note")} == {
        "version": "student@v2", "number": 2, "label": "bravo", "base_model": "base", "rank": 8,
        "target_modules": ["q_proj", "v_proj"], "status": "registered", "metrics": {}, "lineage": {}, "note": None}
    assert d["path"] == v2.path and d["created_at"] == bravo.created_at.isoformat()
    assert [v.name for v in registry.list()] == ["student@v1", "student@v2"]
    assert registry.version_name(12) == "student@v12"
    assert registry.local_path(v1) == tmp_path / "adapters" / "student@v1"  # the shared folder itself, no copy


def test_the_adapters_folder_is_created_with_its_parents(tmp_path, model_dir, codeword_adapters):
    db = Database(f"sqlite:///{tmp_path / 'd.db'}")
    db.create_all()
    root = tmp_path / "not" / "yet" / "adapters"
    reg = AdapterRegistry(db, root, served_name="student", base_model="base", base_model_dir=Path(model_dir),
                          max_rank=16)
    v1 = reg.publish(codeword_adapters["ALPHA-7"])
    assert sorted(p.name for p in root.iterdir()) == ["student@v1"]  # no staging folder left behind
    assert (Path(v1.path) / "adapter_config.json").is_file()


def test_reserved_names_are_the_served_name_and_its_versions_only(registry, codeword_adapters):
    with pytest.raises(AdapterInvalid, match="reserved"):
        registry.publish(codeword_adapters["ALPHA-7"], label="student")
    assert registry.list() == []
    # Only the exact `student@vN` form is a version name: these are ordinary labels.
    for i, label in enumerate(("student@v1x", "xstudent@v1", "student@vX", "student")[:3], start=1):
        assert registry.publish(codeword_adapters["ALPHA-7"], label=label).number == i
        assert registry.get(label).number == i
    assert registry.resolve("student@v1x").number == 1


def test_promotion_statuses_and_history(registry, codeword_adapters):
    for word in ("ALPHA-7", "BRAVO-3"):
        registry.publish(codeword_adapters[word])
    assert registry.promoted() is None and registry.history() == []
    assert registry.promote("student@v1", reason="first").status == "promoted"
    assert registry.rollback_target() is None  # one promotion: a rollback returns to the base model
    assert registry.promote("student@v1").status == "promoted"  # idempotent: no second event
    assert registry.promote("student@v2", reason="better").status == "promoted"
    assert registry.rollback_target().name == "student@v1"
    assert {v.name: v.status for v in registry.list()} == {"student@v1": "superseded", "student@v2": "promoted"}
    assert registry.resolve("student").name == "student@v2"
    assert registry.rollback("regressed").name == "student@v1"
    assert {v.name: v.status for v in registry.list()} == {"student@v1": "promoted", "student@v2": "rolled_back"}
    assert registry.rollback() is None and registry.promoted() is None
    assert registry.get("student@v1").status == "rolled_back"
    history = registry.history()
    assert [(h["kind"], h["version"], h["reason"]) for h in history] == [
        ("promote", "student@v1", "first"), ("promote", "student@v2", "better"),
        ("rollback", "student@v1", "regressed"), ("rollback", None, None)]
    assert all(isinstance(h["at"], str) and h["at"][:4].isdigit() for h in history)
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback_target()
    # A promotion after a return to the base model starts a new stack.
    registry.promote("student@v2")
    assert registry.promoted().name == "student@v2" and registry.rollback_target() is None


def test_from_settings_uses_the_configured_names_and_store(tmp_path, model_dir):
    from services.config import Settings

    settings = Settings(data_dir=tmp_path / "data")
    reg = AdapterRegistry.from_settings(settings, base_id="the-base", model_path=model_dir)
    assert (reg.served_name, reg.base_model, reg.base_model_dir) == (settings.student.served_name, "the-base",
                                                                     Path(model_dir))
    assert reg.max_rank == settings.student.max_lora_rank and reg.list() == []
    assert reg.storage.root == tmp_path / "data" / "adapters"  # type: ignore[attr-defined]
    assert reg.resolve("the-base") is None
    remote = AdapterRegistry.from_settings(settings, base_id="hub/model", model_path="hub/model")
    assert remote.base_model_dir is None  # a hub id, not a folder: shapes are not checked


def test_an_adapter_for_another_base_is_refused_by_validate_and_publish(registry, codeword_adapters, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other-base"
    shutil.copytree(codeword_adapters["ALPHA-7"], other)
    weights = other / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in tensors if k.endswith("q_proj.lora_A.weight"))
    tensors[key] = torch.zeros(8, 1024)  # this base's q_proj takes 576 inputs
    save_file(tensors, weights)
    with pytest.raises(AdapterInvalid, match="trained for another base model"):
        registry.validate(other)
    with pytest.raises(AdapterInvalid, match="trained for another base model"):
        registry.publish(other)
    assert registry.list() == []
    with pytest.raises(AdapterInvalid, match="exceeds the engine's max_lora_rank 4"):
        AdapterRegistry(registry.db, tmp_path / "a", served_name="student", base_model="base",
                        base_model_dir=None, max_rank=4).publish(codeword_adapters["ALPHA-7"])
