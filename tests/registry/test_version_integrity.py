"""Durable adapter versions, attacked: racing publishers, a publisher that dies mid-publish, files tampered with in
storage after publish, symlinks out of the adapter folder, folders over the size cap. Real SQLite and Postgres, real
files, moto's real S3 server; after each attack the registry still publishes and promotes a good version."""

from __future__ import annotations

import io
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyarrow import fs
from sqlalchemy import update

from services.registry import AdapterInvalid, AdapterRegistry, AdapterTampered, RegistryError
from services.registry.manifest import digest, read_files
from services.registry.storage import LocalStorage, S3Storage
from services.registry.validate import validate_adapter
from services.store import Database
from services.store.adapters import AdapterRow
from tests.postgres_server import fresh_database

CAP = 64 * 1024 * 1024


def make_registry(db_url: str, storage: Path | LocalStorage | S3Storage, model_dir: str) -> AdapterRegistry:
    return AdapterRegistry(Database(db_url), storage, served_name="student", base_model="base",
                           base_model_dir=Path(model_dir), max_rank=16)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = (f"sqlite:///{tmp_path / 'd.db'}" if request.param == "sqlite"
           else fresh_database(request.getfixturevalue("postgres")))
    Database(url).create_all()
    return url


def assert_still_publishes_and_promotes(reg: AdapterRegistry, good: Path) -> None:
    version = reg.publish(good)
    assert reg.promote(version.name).status == "promoted"
    assert reg.promoted().name == version.name
    assert version.sha256 == digest(read_files(good, CAP))


def test_racing_publishers_get_distinct_numbers_and_their_own_files(db_url, tmp_path, model_dir, codeword_adapters):
    rounds = 3
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def publisher(word: str) -> None:
        reg = make_registry(db_url, tmp_path / "adapters", model_dir)  # its own engine: like another process
        try:
            start.wait()
            for _ in range(rounds):
                reg.publish(codeword_adapters[word], lineage={"publisher": word})
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=publisher, args=(w,)) for w in codeword_adapters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    reg = make_registry(db_url, tmp_path / "adapters", model_dir)
    versions = reg.list()
    assert [v.number for v in versions] == list(range(1, 2 * rounds + 1))
    expected = {w: digest(read_files(src, CAP)) for w, src in codeword_adapters.items()}
    assert expected["ALPHA-7"] != expected["BRAVO-3"]
    for v in versions:
        assert v.sha256 == expected[v.lineage["publisher"]]
        reg.local_path(v)  # the stored files are the publisher's own: they verify
    assert sorted(v.lineage["publisher"] for v in versions) == sorted(list(codeword_adapters) * rounds)
    assert_still_publishes_and_promotes(reg, codeword_adapters["ALPHA-7"])


def test_a_publisher_that_died_after_reserving_blocks_nothing_and_is_cleaned(db_url, tmp_path, model_dir,
                                                                              codeword_adapters):
    reg = make_registry(db_url, tmp_path / "adapters", model_dir)
    src = codeword_adapters["ALPHA-7"]
    dead = reg._reserve(validate_adapter(src, None, 16), metrics={}, lineage={}, note=None)
    half = Path(reg.storage.location(reg.version_name(dead)))
    half.mkdir(parents=True)
    (half / "adapter_config.json").write_text("{")  # what it wrote before it died
    with pytest.raises(RegistryError):
        reg.get(reg.version_name(dead))
    assert reg.list() == []
    v2 = reg.publish(src)
    assert v2.number == dead + 1 and [v.number for v in reg.list()] == [v2.number]
    assert reg.promote(v2.name).status == "promoted"
    with pytest.raises(RegistryError):
        reg.promote(reg.version_name(dead))
    # Past the timeout, the next publish abandons the reservation and deletes what it wrote.
    with reg.db.session() as s:
        s.execute(update(AdapterRow).where(AdapterRow.number == dead)
                  .values(created_at=datetime.now(UTC) - timedelta(hours=7)))
    v3 = reg.publish(src)
    assert v3.number == dead + 2 and not half.exists()
    with reg.db.session() as s:
        assert s.get(AdapterRow, dead).status == "abandoned"
    assert [v.number for v in reg.list()] == [v2.number, v3.number] and reg.promoted().name == v2.name


def test_a_failed_copy_abandons_its_number_at_once(tmp_path, model_dir, codeword_adapters):
    reg = make_registry(f"sqlite:///{tmp_path / 'd.db'}", tmp_path / "adapters", model_dir)
    reg.db.create_all()
    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / "student@v1").write_text("a file where the version folder goes: the copy fails")
    with pytest.raises(OSError):
        reg.publish(codeword_adapters["ALPHA-7"])
    with reg.db.session() as s:
        assert s.get(AdapterRow, 1).status == "abandoned"
    assert reg.list() == [] and not any(p.name.startswith(".staging") for p in (tmp_path / "adapters").iterdir())
    assert_still_publishes_and_promotes(reg, codeword_adapters["BRAVO-3"])
    assert reg.promoted().number == 2


def test_a_file_tampered_in_storage_is_refused_and_never_promoted(tmp_path, model_dir, codeword_adapters):
    reg = make_registry(f"sqlite:///{tmp_path / 'd.db'}", tmp_path / "adapters", model_dir)
    reg.db.create_all()
    v1 = reg.publish(codeword_adapters["ALPHA-7"])
    reg.promote(v1.name)
    v2 = reg.publish(codeword_adapters["BRAVO-3"])
    weights = Path(v2.path) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte changed: still a readable safetensors file
    weights.write_bytes(bytes(data))
    reg.validate(Path(v2.path))  # validation alone cannot tell
    with pytest.raises(AdapterTampered, match=r"adapter_model\.safetensors"):
        reg.local_path(reg.get(v2.name))
    with pytest.raises(AdapterTampered):
        reg.promote(v2.name)
    assert reg.promoted().name == v1.name and reg.get(v2.name).status == "registered"
    (Path(v1.path) / "extra.bin").write_bytes(b"planted")  # a file added to the promoted version
    with pytest.raises(AdapterTampered, match=r"extra\.bin"):
        reg.local_path(v1)
    (Path(v1.path) / "extra.bin").unlink()
    reg.local_path(v1)
    assert_still_publishes_and_promotes(reg, codeword_adapters["BRAVO-3"])


def test_a_version_published_before_checksums_still_loads(tmp_path, model_dir, codeword_adapters):
    reg = make_registry(f"sqlite:///{tmp_path / 'd.db'}", tmp_path / "adapters", model_dir)
    reg.db.create_all()
    v1 = reg.publish(codeword_adapters["ALPHA-7"])
    with reg.db.session() as s:  # what a row written by the previous release looks like
        s.execute(update(AdapterRow).values(sha256=None, files=None))
    legacy = reg.get(v1.name)
    assert legacy.sha256 is None and reg.local_path(legacy) == Path(v1.path)
    assert reg.promote(v1.name).status == "promoted"
    os.symlink("/etc/passwd", Path(v1.path) / "passwd")  # links and size are still checked
    with pytest.raises(AdapterInvalid, match="symbolic link"):
        reg.local_path(legacy)


@pytest.mark.parametrize("where", ["top", "weights", "subfolder"])
def test_a_symlink_in_the_adapter_folder_refuses_the_publish(where, tmp_path, model_dir, codeword_adapters):
    reg = make_registry(f"sqlite:///{tmp_path / 'd.db'}", tmp_path / "adapters", model_dir)
    reg.db.create_all()
    src = tmp_path / "src"
    shutil.copytree(codeword_adapters["ALPHA-7"], src)
    if where == "top":
        os.symlink("/etc/passwd", src / "notes.txt")
    elif where == "weights":  # a valid adapter elsewhere, reached through a link
        (src / "adapter_model.safetensors").unlink()
        os.symlink(codeword_adapters["BRAVO-3"] / "adapter_model.safetensors", src / "adapter_model.safetensors")
    else:
        os.symlink("/etc", src / "more")
    with pytest.raises(AdapterInvalid, match="symbolic link"):
        reg.publish(src)
    assert reg.list() == []
    with reg.db.session() as s:
        assert s.get(AdapterRow, 1) is None  # refused before a number was taken
    assert not (tmp_path / "adapters").exists() or list((tmp_path / "adapters").iterdir()) == []
    assert_still_publishes_and_promotes(reg, codeword_adapters["ALPHA-7"])


def test_a_folder_over_the_cap_is_refused(tmp_path, model_dir, codeword_adapters):
    src = codeword_adapters["ALPHA-7"]
    size = sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
    reg = make_registry(f"sqlite:///{tmp_path / 'd.db'}", LocalStorage(tmp_path / "adapters", max_bytes=size),
                        model_dir)
    reg.db.create_all()
    big = tmp_path / "big"
    shutil.copytree(src, big)
    (big / "padding.bin").write_bytes(b"\0" * 1024)
    with pytest.raises(AdapterInvalid, match="cap"):
        reg.publish(big)
    assert reg.list() == [] and not (tmp_path / "adapters").exists()
    assert_still_publishes_and_promotes(reg, src)  # exactly at the cap is fine


@pytest.fixture
def s3(s3_endpoint: str) -> str:
    fs.S3FileSystem(endpoint_override=s3_endpoint.removeprefix("http://"), scheme="http", region="us-east-1",
                    allow_bucket_creation=True).create_dir("integrity")
    return s3_endpoint


def test_an_object_tampered_in_s3_is_refused_by_the_replica(s3, tmp_path, model_dir, codeword_adapters):
    db_url = f"sqlite:///{tmp_path / 'd.db'}"
    Database(db_url).create_all()
    prefix = f"s3://integrity/{tmp_path.name}"
    trainer = make_registry(db_url, S3Storage(prefix, tmp_path / "t-cache", endpoint_url=s3), model_dir)
    v1 = trainer.publish(codeword_adapters["ALPHA-7"])
    trainer.promote(v1.name)
    v2 = trainer.publish(codeword_adapters["BRAVO-3"])
    key = f"integrity/{tmp_path.name}/{v2.name}/adapter_model.safetensors"
    with trainer.storage.fs.open_input_stream(key) as f:  # type: ignore[attr-defined]
        data = bytearray(f.read())
    data[-1] ^= 0xFF
    with trainer.storage.fs.open_output_stream(key) as f:  # type: ignore[attr-defined]
        f.write(bytes(data))
    replica = make_registry(db_url, S3Storage(prefix, tmp_path / "r-cache", endpoint_url=s3), model_dir)
    assert replica.local_path(replica.get(v1.name)).is_dir()
    with pytest.raises(AdapterTampered):
        replica.local_path(replica.get(v2.name))
    assert not (tmp_path / "r-cache" / v2.name).exists()  # the bad download is dropped, not kept and refused forever
    with trainer.storage.fs.open_output_stream(key) as f:  # type: ignore[attr-defined]
        data[-1] ^= 0xFF
        f.write(bytes(data))  # the object repaired in S3
    assert replica.local_path(replica.get(v2.name)).is_dir()  # fetched afresh and verified
    # A download over the cap is refused before it is fetched.
    small = make_registry(db_url, S3Storage(prefix, tmp_path / "s-cache", endpoint_url=s3, max_bytes=1024),
                          model_dir)
    with pytest.raises(AdapterInvalid, match="cap"):
        small.local_path(small.get(v1.name))
    assert not (tmp_path / "s-cache" / v1.name).exists()
    # A symlink is refused on the way to S3 too: nothing uploaded, no number taken.
    src = tmp_path / "src"
    shutil.copytree(codeword_adapters["ALPHA-7"], src)
    os.symlink("/etc/passwd", src / "passwd")
    with pytest.raises(AdapterInvalid, match="symbolic link"):
        trainer.publish(src)
    assert [v.number for v in trainer.list()] == [1, 2]
    assert_still_publishes_and_promotes(trainer, codeword_adapters["BRAVO-3"])
    assert replica.promoted().number == 3


def test_a_folder_swapped_for_a_link_during_the_copy_is_refused(tmp_path):
    src = tmp_path / "src"
    (src / "z").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"first")
    (src / "z" / "inner.bin").write_bytes(b"second")
    copied: list[str] = []

    @contextmanager
    def swapping_sink(rel: str) -> Iterator[io.BytesIO]:
        if rel == "a.bin":  # after the listing, before z/inner.bin is opened: z becomes a link out of the folder
            (src / "z").rename(tmp_path / "z-moved")
            os.symlink("/etc", src / "z")
        copied.append(rel)
        yield io.BytesIO()

    with pytest.raises(AdapterInvalid, match="without following a link"):
        read_files(src, CAP, swapping_sink)
    assert copied == ["a.bin"]
