"""Where adapter versions are kept: a folder every replica mounts, or an S3-compatible object store.

A version is written once under its versioned name (`student@vN`, a number reserved in the store first, so no
two publishers ever write the same name) and never changed, so a replica that has a version's files has the right
ones, which it checks against the sha256 manifest recorded at publish (services/registry/manifest.py). Files are
copied in without following links and up to a size cap. The object store's copy is downloaded once per replica
into a local cache (vLLM loads adapters from local folders), through a staging folder renamed into place, so a
half-finished download is never taken for a complete one.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlparse

from services.config import StorageConfig
from services.registry.manifest import FileEntry, read_files
from services.registry.validate import AdapterInvalid

DEFAULT_MAX_ADAPTER_BYTES: int = StorageConfig.model_fields["max_adapter_bytes"].default


@dataclass(frozen=True)
class Stored:
    location: str  # recorded in the registry
    files: list[FileEntry]  # what was written, hashed from the bytes read while copying


class AdapterStorage(Protocol):
    max_bytes: int

    def location(self, name: str) -> str:
        """Where version `name` is (or will be) stored: recorded with its number when the number is reserved."""
        ...

    def put(self, src: Path, name: str) -> Stored:
        """Store the folder `src` as version `name` (AdapterInvalid on a link, special file or size over the cap)."""
        ...

    def local(self, location: str, name: str) -> Path:
        """A local folder holding the files stored at `location`."""
        ...

    def delete(self, location: str) -> None:
        """Remove the files stored at `location` (a publish that never completed); missing is fine."""
        ...


class LocalStorage:
    """Versions as folders under one directory (the data dir's `adapters/`, shared by every replica)."""

    def __init__(self, root: Path, *, max_bytes: int = DEFAULT_MAX_ADAPTER_BYTES) -> None:
        self.root, self.max_bytes = root, max_bytes

    def location(self, name: str) -> str:
        return str(self.root / name)

    def put(self, src: Path, name: str) -> Stored:
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()

        @contextmanager
        def sink(rel: str) -> Iterator[BinaryIO]:
            out = staging / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("xb") as f:
                yield f

        dest = Path(self.location(name))
        try:
            files = read_files(src, self.max_bytes, sink)
            if dest.exists():  # left by a publisher that crashed under this reserved number: ours now
                shutil.rmtree(dest)
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return Stored(str(dest), files)

    def local(self, location: str, name: str) -> Path:
        return Path(location)

    def delete(self, location: str) -> None:
        path = Path(location)
        if path.parent != self.root:
            raise ValueError(f"{location} is not a version folder under {self.root}")
        shutil.rmtree(path, ignore_errors=True)


class S3Storage:
    """Versions as `s3://bucket/prefix/<name>/<file>` objects, cached per replica under `cache_dir/<name>`."""

    def __init__(self, url: str, cache_dir: Path, *, endpoint_url: str | None = None,
                 region: str = "us-east-1", max_bytes: int = DEFAULT_MAX_ADAPTER_BYTES) -> None:
        from pyarrow import fs

        parsed = urlparse(url)
        self.bucket_prefix = f"{parsed.netloc}{parsed.path}".rstrip("/")
        self.url, self.cache_dir, self.max_bytes = url.rstrip("/"), cache_dir, max_bytes
        kwargs: dict[str, object] = {"region": region}
        if endpoint_url:
            endpoint = urlparse(endpoint_url)
            kwargs.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme or "https")
        self.fs = fs.S3FileSystem(**kwargs)  # credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
        self._local = fs.LocalFileSystem()

    def _key(self, location: str) -> str:
        if not location.startswith(self.url + "/"):
            raise ValueError(f"{location} is not under the configured adapter store {self.url}")
        return f"{self.bucket_prefix}/{location.removeprefix(self.url + '/')}"

    def location(self, name: str) -> str:
        return f"{self.url}/{name}"

    def put(self, src: Path, name: str) -> Stored:
        location = self.location(name)
        key = self._key(location)
        # Overwrites only a leftover of a publisher that crashed under this same reserved number.
        self.fs.delete_dir_contents(key, missing_dir_ok=True)
        files = read_files(src, self.max_bytes, lambda rel: self.fs.open_output_stream(f"{key}/{rel}"))
        return Stored(location, files)

    def _stored_bytes(self, key: str) -> int:
        from pyarrow import fs

        infos = self.fs.get_file_info(fs.FileSelector(key, recursive=True, allow_not_found=True))
        return sum(i.size or 0 for i in infos if i.type == fs.FileType.File)

    def local(self, location: str, name: str) -> Path:
        from pyarrow import fs

        dest = self.cache_dir / name
        if dest.is_dir():
            return dest
        key = self._key(location)
        if (size := self._stored_bytes(key)) > self.max_bytes:
            raise AdapterInvalid(f"{location} holds {size} bytes, over the {self.max_bytes}-byte cap "
                                 "(storage.max_adapter_bytes); not downloaded")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = self.cache_dir / f".download-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            fs.copy_files(key, str(staging), source_filesystem=self.fs, destination_filesystem=self._local)
            if not staging.is_dir() or not any(staging.iterdir()):
                raise FileNotFoundError(f"no files at {location}")
            try:
                staging.rename(dest)
            except OSError:  # another process finished the same download first: theirs is identical
                if not dest.is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest

    def delete(self, location: str) -> None:
        self.fs.delete_dir_contents(self._key(location), missing_dir_ok=True)


def storage_from_settings(settings: object) -> AdapterStorage:
    cfg = settings.storage  # type: ignore[attr-defined]
    if cfg.adapters_url:
        return S3Storage(cfg.adapters_url, settings.adapter_cache_dir,  # type: ignore[attr-defined]
                         endpoint_url=cfg.s3_endpoint_url, region=cfg.s3_region, max_bytes=cfg.max_adapter_bytes)
    return LocalStorage(settings.adapters_dir, max_bytes=cfg.max_adapter_bytes)  # type: ignore[attr-defined]
