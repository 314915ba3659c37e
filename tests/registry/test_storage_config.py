"""How the adapter storage is configured and addressed, without moving any file: the object store's bucket, prefix,
endpoint and region as settings give them, and keys that never leave the configured prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.config import Settings
from services.registry.storage import LocalStorage, S3Storage, storage_from_settings


def s3_options(storage: S3Storage) -> dict:
    return storage.fs.__reduce__()[1][0]  # pyarrow's own record of the options it was built with


def test_settings_give_the_object_stores_endpoint_and_region(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, storage={"adapters_url": "s3://bucket/team/adapters",
                                             "s3_endpoint_url": "http://minio.local:9000", "s3_region": "eu-west-1"})
    remote = storage_from_settings(s)
    assert isinstance(remote, S3Storage)
    options = s3_options(remote)
    assert (options["region"], options["scheme"], options["endpoint_override"]) == ("eu-west-1", "http",
                                                                                    "minio.local:9000")
    assert remote.cache_dir == tmp_path / "adapter-cache"
    assert (remote.url, remote.bucket_prefix) == ("s3://bucket/team/adapters", "bucket/team/adapters")
    # Without an endpoint: AWS itself, over https, in the default region.
    aws = S3Storage("s3://bucket/p/", tmp_path / "c")
    assert (s3_options(aws)["region"], s3_options(aws)["endpoint_override"]) == ("us-east-1", "")
    assert s3_options(S3Storage("s3://b/p", tmp_path, endpoint_url="https://minio:9000"))["scheme"] == "https"
    local = storage_from_settings(Settings(data_dir=tmp_path))
    assert isinstance(local, LocalStorage) and local.root == tmp_path / "adapters"


def test_keys_stay_under_the_configured_prefix(tmp_path: Path) -> None:
    store = S3Storage("s3://bucket/team/adapters/", tmp_path)
    assert store.url == "s3://bucket/team/adapters"
    assert store._key("s3://bucket/team/adapters/student@v3") == "bucket/team/adapters/student@v3"
    # Only the slash is trimmed from the configured URL, whatever the prefix ends with.
    x = S3Storage("s3://bucket/prefiX//", tmp_path)
    assert (x.url, x.bucket_prefix) == ("s3://bucket/prefiX", "bucket/prefiX")
    for outside in ("s3://bucket/team/other/student@v3", "s3://bucket/team/adapters-old/student@v3",
                    "s3://bucket/team/adapters"):
        with pytest.raises(ValueError, match="is not under the configured adapter store"):
            store._key(outside)


def test_a_local_version_is_its_folder_and_a_leftover_is_replaced(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text("{}")
    store = LocalStorage(tmp_path / "deep" / "adapters")  # parents created on first use
    leftover = tmp_path / "deep" / "adapters" / "student@v1"
    leftover.mkdir(parents=True)
    (leftover / "half-written.bin").write_text("x")  # a publisher that crashed under this reserved number
    location = store.put(src, "student@v1").location
    assert location == str(leftover)
    assert sorted(p.name for p in leftover.iterdir()) == ["adapter_config.json"]
    assert sorted(p.name for p in (tmp_path / "deep" / "adapters").iterdir()) == ["student@v1"]  # no staging left
    assert store.local(location, "student@v1") == leftover


def test_an_endpoint_without_a_scheme_is_https(tmp_path: Path) -> None:
    options = s3_options(S3Storage("s3://b/p", tmp_path, endpoint_url="//minio:9000"))
    assert (options["scheme"], options["endpoint_override"]) == ("https", "minio:9000")


def test_downloads_land_in_a_cache_made_on_first_use_and_never_half(s3_endpoint: str, tmp_path: Path) -> None:
    from pyarrow import fs

    moto_s3 = s3_endpoint  # the session's S3 server (tests/conftest.py)
    fs.S3FileSystem(endpoint_override=moto_s3.removeprefix("http://"), scheme="http", region="us-east-1",
                    allow_bucket_creation=True).create_dir("cachetest")
    src = tmp_path / "src"
    src.mkdir()
    (src / "adapter_config.json").write_text('{"r": 8}')
    cache = tmp_path / "not" / "yet" / "cache"
    store = S3Storage("s3://cachetest/p", cache, endpoint_url=moto_s3)
    v1, v2 = store.put(src, "student@v1").location, store.put(src, "student@v2").location
    assert (v1, v2) == ("s3://cachetest/p/student@v1", "s3://cachetest/p/student@v2")
    assert store.local(v1, "student@v1") == cache / "student@v1"  # the cache's parents are made
    assert store.local(v2, "student@v2") == cache / "student@v2"  # into the cache that now exists
    assert (cache / "student@v2" / "adapter_config.json").read_text() == '{"r": 8}'
    # A version whose prefix exists but holds no files is refused, and leaves nothing behind.
    store.fs.create_dir("cachetest/p/student@v3")
    with pytest.raises(FileNotFoundError, match="no files at s3://cachetest/p/student@v3"):
        store.local("s3://cachetest/p/student@v3", "student@v3")
    assert sorted(p.name for p in cache.iterdir()) == ["student@v1", "student@v2"]  # no staging folder left
