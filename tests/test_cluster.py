"""Joining a Ray cluster and the shared-state rule: more than one node needs the store in Postgres and adapter
versions where every node reads them, and the refusal says what to set."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cluster import StateNotShared, check_shared_state, cluster_address
from services.config import Settings

PG = "postgresql+psycopg://distillery@db:5432/distillery"


def settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(data_dir=tmp_path, **kw)  # type: ignore[arg-type]


def test_one_node_runs_on_anything(tmp_path: Path) -> None:
    check_shared_state(settings(tmp_path), nodes=1)  # SQLite and local adapter folders: the embedded default


def test_several_nodes_refuse_sqlite_and_local_adapters_and_say_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(StateNotShared) as e:
        check_shared_state(settings(tmp_path), nodes=2)
    assert "2 nodes" in str(e.value) and "database_url" in str(e.value) and "storage.adapters_url" in str(e.value)
    with pytest.raises(StateNotShared) as e:
        check_shared_state(settings(tmp_path, database_url=PG), nodes=3)
    assert "database_url" not in str(e.value) and "storage.shared_volume" in str(e.value)
    with pytest.raises(StateNotShared) as e:
        check_shared_state(settings(tmp_path, storage={"adapters_url": "s3://b/p"}), nodes=2)
    assert "database_url" in str(e.value) and "adapters_url" not in str(e.value)


def test_several_nodes_run_on_postgres_with_s3_or_a_shared_volume(tmp_path: Path) -> None:
    check_shared_state(settings(tmp_path, database_url=PG, storage={"adapters_url": "s3://b/p"}), nodes=4)
    check_shared_state(settings(tmp_path, database_url=PG, storage={"shared_volume": True}), nodes=4)


def test_the_cluster_address_comes_from_the_setting_else_ray_address(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(settings(tmp_path)) is None  # start a local Ray
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster_address(settings(tmp_path)) == "10.0.0.1:6379"
    assert cluster_address(settings(tmp_path, ray={"address": "ray://head:10001"})) == "ray://head:10001"
