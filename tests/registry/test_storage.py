"""Adapter versions in an S3-compatible object store: published once under the versioned name, downloaded once
per replica into its cache, refused clearly when the objects are missing. The store is moto's S3 server, a real
HTTP server speaking the S3 protocol on loopback (a stand-in for AWS S3 or MinIO, which are not available here)."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
from pyarrow import fs
from pydantic import ValidationError

from services.config import Settings
from services.registry import AdapterRegistry
from services.registry.storage import S3Storage, storage_from_settings
from services.store import Database


@pytest.fixture
def s3(s3_endpoint: str) -> str:
    """The session's S3 server (tests/conftest.py) with an `adapters` bucket."""
    fs.S3FileSystem(endpoint_override=s3_endpoint.removeprefix("http://"), scheme="http", region="us-east-1",
                    allow_bucket_creation=True).create_dir("adapters")
    return s3_endpoint


def replica(db_url: str, s3: str, cache: Path, model_dir: str) -> AdapterRegistry:
    storage = S3Storage("s3://adapters/prod", cache, endpoint_url=s3)
    return AdapterRegistry(Database(db_url), storage, served_name="student", base_model="base",
                           base_model_dir=Path(model_dir), max_rank=16)


def test_versions_go_to_the_object_store_and_every_replica_fetches_them_once(s3, tmp_path, model_dir,
                                                                              codeword_adapters) -> None:
    db_url = f"sqlite:///{tmp_path / 'd.db'}"
    Database(db_url).create_all()
    trainer = replica(db_url, s3, tmp_path / "trainer-cache", model_dir)
    v1 = trainer.publish(codeword_adapters["ALPHA-7"])
    assert v1.path == "s3://adapters/prod/student@v1"
    listing = trainer.storage.fs.get_file_info(fs.FileSelector("adapters/prod/student@v1"))  # type: ignore[attr-defined]
    names = {i.base_name for i in listing}
    assert "adapter_model.safetensors" in names and "adapter_config.json" in names

    serving = replica(db_url, s3, tmp_path / "replica-cache", model_dir)
    local = serving.local_path(serving.get("student@v1"))
    assert local == tmp_path / "replica-cache" / "student@v1"
    src = codeword_adapters["ALPHA-7"]
    assert filecmp.cmp(src / "adapter_model.safetensors", local / "adapter_model.safetensors", shallow=False)
    serving.validate(local)  # what the student checks before vLLM loads it

    # Cached: the replica no longer needs the store for this version.
    trainer.storage.fs.delete_dir("adapters/prod/student@v1")  # type: ignore[attr-defined]
    assert serving.local_path(serving.get("student@v1")) == local
    # A replica that never fetched it gets a clear error, not a half folder.
    late = replica(db_url, s3, tmp_path / "late-cache", model_dir)
    with pytest.raises(OSError):
        late.local_path(late.get("student@v1"))
    assert not (tmp_path / "late-cache" / "student@v1").exists()

    v2 = trainer.publish(codeword_adapters["BRAVO-3"])
    assert v2.path == "s3://adapters/prod/student@v2"  # a new name, never a rewrite of an old one


def test_settings_choose_the_storage(s3, tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    local = storage_from_settings(Settings(data_dir=tmp_path / "data"))
    assert local.put(src, "student@v1").location == str(tmp_path / "data" / "adapters" / "student@v1")
    assert (tmp_path / "data" / "adapters" / "student@v1" / "adapter_config.json").read_text() == "{}"
    s = Settings(data_dir=tmp_path / "data", storage={"adapters_url": "s3://adapters/p/", "s3_endpoint_url": s3})
    assert s.storage.adapters_url == "s3://adapters/p"
    remote = storage_from_settings(s)
    # The configured bucket, prefix and endpoint: the object lands in the S3 server this test started.
    assert remote.put(src, "student@v1").location == "s3://adapters/p/student@v1"
    bucket = fs.S3FileSystem(endpoint_override=s3.removeprefix("http://"), scheme="http", region="us-east-1")
    with bucket.open_input_stream("adapters/p/student@v1/adapter_config.json") as f:
        assert f.read() == b"{}"
    cached = remote.local("s3://adapters/p/student@v1", "student@v1")
    assert cached == tmp_path / "data" / "adapter-cache" / "student@v1" and (cached / "adapter_config.json").is_file()
    with pytest.raises(ValidationError, match="s3://bucket/prefix"):
        Settings(storage={"adapters_url": "/mnt/adapters"})
