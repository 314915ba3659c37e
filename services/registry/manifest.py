"""What an adapter version is made of: its files (relative path, size, sha256) in a fixed order, and one digest over
that list, recorded at publish and checked by every replica before it loads the version.

Folders are read without following any link: each path component is opened relative to its parent with
O_NOFOLLOW, so a symbolic link anywhere in an adapter folder (one that could point at /etc/passwd, or be swapped in
while a copy runs) refuses the folder, as do special files (FIFOs, devices) and folders over the size cap.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from services.registry.validate import AdapterInvalid

CHUNK_BYTES = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW

# Where a copy writes a file: given its relative path, a writable binary stream (closed when the block ends).
Sink = Callable[[str], AbstractContextManager[BinaryIO]]


class AdapterTampered(AdapterInvalid):
    """A version's files differ from the ones recorded when it was published: never load it."""


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the adapter folder, `/`-separated
    size: int
    sha256: str


def digest(files: list[FileEntry]) -> str:
    """The version's checksum: sha256 over `<sha256>  <path>` lines (sha256sum's format), in path order."""
    lines = "".join(f"{f.sha256}  {f.path}\n" for f in sorted(files, key=lambda f: f.path))
    return hashlib.sha256(lines.encode()).hexdigest()


def to_json(files: list[FileEntry]) -> list[dict[str, Any]]:
    return [asdict(f) for f in files]


def from_json(rows: list[dict[str, Any]]) -> list[FileEntry]:
    return [FileEntry(str(r["path"]), int(r["size"]), str(r["sha256"])) for r in rows]


def _refuse_unless_plain(folder: Path, rel: str, mode: int) -> None:
    if stat.S_ISLNK(mode):
        raise AdapterInvalid(f"{folder}: {rel} is a symbolic link; an adapter folder must hold plain files only")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise AdapterInvalid(f"{folder}: {rel} is not a regular file; an adapter folder must hold plain files only")


def list_files(folder: Path, max_bytes: int) -> list[tuple[str, int]]:
    """(relative path, size) of every file under `folder`, sorted, checked from metadata alone (nothing is read or
    followed): AdapterInvalid on a link, a special file, or more than `max_bytes` in all."""
    try:
        top = os.lstat(folder)
    except OSError as e:
        raise AdapterInvalid(f"adapter path {str(folder)!r} cannot be read ({e})") from e
    if not stat.S_ISDIR(top.st_mode):
        raise AdapterInvalid(f"adapter path {str(folder)!r} is not a directory (links are not followed)")
    found: list[tuple[str, int]] = []
    total = 0

    def fail(e: OSError) -> None:
        raise AdapterInvalid(f"{folder}: cannot list {e.filename} ({e.strerror})") from e

    for dirpath, dirnames, filenames in os.walk(folder, onerror=fail, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            st = os.lstat(path)
            _refuse_unless_plain(folder, rel, st.st_mode)
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
                if total > max_bytes:
                    raise AdapterInvalid(f"{folder}: the adapter's files exceed the {max_bytes}-byte cap "
                                         "(storage.max_adapter_bytes)")
                found.append((rel, st.st_size))
    return sorted(found)


@contextmanager
def _open_nofollow(folder: Path, rel: str) -> Iterator[BinaryIO]:
    """`folder/rel` for reading, every component opened relative to its parent without following a link."""
    *parents, name = rel.split("/")
    fds = [os.open(folder, _DIR_FLAGS)]
    try:
        for part in parents:
            fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
        fd = os.open(name, _FILE_FLAGS, dir_fd=fds[-1])
    except OSError as e:  # ELOOP: a component became a link after the listing
        raise AdapterInvalid(f"{folder}: {rel} cannot be opened without following a link ({e.strerror})") from e
    finally:
        for d in fds:
            os.close(d)
    with os.fdopen(fd, "rb") as f:
        _refuse_unless_plain(folder, rel, os.fstat(f.fileno()).st_mode)
        yield f


def read_files(folder: Path, max_bytes: int, sink: Sink | None = None) -> list[FileEntry]:
    """Hash every file under `folder` (and write it to `sink(rel)` when given), counting the bytes actually read
    against `max_bytes`, so a file that grows during the copy is refused too."""
    entries: list[FileEntry] = []
    total = 0
    for rel, _ in list_files(folder, max_bytes):
        h, size = hashlib.sha256(), 0
        with _open_nofollow(folder, rel) as f, (sink(rel) if sink else nullcontext()) as out:
            while chunk := f.read(CHUNK_BYTES):
                size += len(chunk)
                total += len(chunk)
                if total > max_bytes:
                    raise AdapterInvalid(f"{folder}: the adapter's files exceed the {max_bytes}-byte cap "
                                         "(storage.max_adapter_bytes)")
                h.update(chunk)
                if out is not None:
                    out.write(chunk)
        entries.append(FileEntry(rel, size, h.hexdigest()))
    return entries


def verify(folder: Path, expected: list[FileEntry], expected_digest: str, max_bytes: int) -> None:
    """AdapterTampered unless `folder` holds exactly the files recorded at publish (sizes compared first, so a
    grown or planted file is refused before it is read)."""
    if digest(expected) != expected_digest:
        raise AdapterTampered(f"{folder}: the recorded file list does not match the recorded checksum")
    want = {f.path: f for f in expected}
    have = dict(list_files(folder, max_bytes))
    differ = sorted(p for p in want.keys() | have.keys() if p not in have or p not in want or
                    have[p] != want[p].size)
    if not differ:
        actual = {f.path: f.sha256 for f in read_files(folder, max_bytes)}
        differ = sorted(p for p in want if actual.get(p) != want[p].sha256)
    if differ:
        raise AdapterTampered(f"{folder}: files differ from the published version ({', '.join(differ[:5])}); "
                              "refusing to load it")
