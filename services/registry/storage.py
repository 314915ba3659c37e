"""Where adapter versions are kept: a folder every replica mounts, or an S3-compatible object store.

A version is written once under its versioned name (`student@vN`) and never changed, so a replica that has a
version's files has the right ones: the object store's copy is downloaded once per replica into a local cache
(vLLM loads adapters from local folders), through a staging folder renamed into place, so a half-finished
download is never taken for a complete one.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse


class AdapterStorage(Protocol):
    def put(self, src: Path, name: str) -> str:
        """Store the folder `src` as version `name`; returns the location recorded in the registry."""
        ...

    def local(self, location: str, name: str) -> Path:
        """A local folder holding the files stored at `location`."""
        ...


class LocalStorage:
    """Versions as folders under one directory (the data dir's `adapters/`, shared by every replica)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, src: Path, name: str) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        shutil.copytree(src, staging)
        dest = self.root / name
        try:
            if dest.exists():  # left by a crashed publish whose row never committed: the number is free
                shutil.rmtree(dest)
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return str(dest)

    def local(self, location: str, name: str) -> Path:
        return Path(location)


class S3Storage:
    """Versions as `s3://bucket/prefix/<name>/<file>` objects, cached per replica under `cache_dir/<name>`."""

    def __init__(self, url: str, cache_dir: Path, *, endpoint_url: str | None = None,
                 region: str = "us-east-1") -> None:
        from pyarrow import fs

        parsed = urlparse(url)
        self.bucket_prefix = f"{parsed.netloc}{parsed.path}".rstrip("/")
        self.url, self.cache_dir = url.rstrip("/"), cache_dir
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

    def put(self, src: Path, name: str) -> str:
        from pyarrow import fs

        location = f"{self.url}/{name}"
        key = self._key(location)
        # Files overwrite any leftover of a publish whose row never committed; the number is free, so no replica
        # has cached it.
        self.fs.delete_dir_contents(key, missing_dir_ok=True)
        fs.copy_files(str(src), key, source_filesystem=self._local, destination_filesystem=self.fs)
        return location

    def local(self, location: str, name: str) -> Path:
        from pyarrow import fs

        dest = self.cache_dir / name
        if dest.is_dir():
            return dest
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = self.cache_dir / f".download-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            fs.copy_files(self._key(location), str(staging), source_filesystem=self.fs,
                          destination_filesystem=self._local)
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


def storage_from_settings(settings: object) -> AdapterStorage:
    cfg = settings.storage  # type: ignore[attr-defined]
    if cfg.adapters_url:
        return S3Storage(cfg.adapters_url, settings.adapter_cache_dir,  # type: ignore[attr-defined]
                         endpoint_url=cfg.s3_endpoint_url, region=cfg.s3_region)
    return LocalStorage(settings.adapters_dir)  # type: ignore[attr-defined]
