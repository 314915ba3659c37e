"""AdapterRegistry: publish immutable adapter versions, resolve model names, promote and roll back.

Versions are `student@v1`, `student@v2`, ...: each is a copy of the adapter folder under `<data_dir>/adapters/
student@vN` (or `s3://.../student@vN`, services/registry/storage.py), never overwritten, so any replica can load
any version and no replica ever serves a stale adapter under a reused name. The promoted version is derived by
replaying the append-only promotion log (promote pushes, rollback pops), so there is no second copy of that state
to drift.

Publishing is three steps, so two publishers never share a number: (1) reserve N by inserting a `reserved` row whose
number the database computes in the same statement (the primary key refuses a duplicate; the loser retries with
the next one), (2) copy the files to `student@vN`, hashing them (services/registry/manifest.py), (3) mark the row
`registered` with its sha256 manifest. A reserved row is never served; one whose publisher failed is marked
`abandoned` at once, one whose publisher died is marked so (and its files deleted) by the next publish after
RESERVATION_TIMEOUT. Replicas verify the manifest before loading (`local_path`).
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from services.registry import manifest
from services.registry.storage import AdapterStorage, LocalStorage, storage_from_settings
from services.registry.validate import AdapterInfo, AdapterInvalid, validate_adapter
from services.store.adapters import AdapterRow, AdapterStatus, PromotionRow, utcnow
from services.store.db import Database

log = logging.getLogger(__name__)

# Statuses of a number taken by a publish that has not (or never will have) its files registered: never served.
UNPUBLISHED = frozenset({AdapterStatus.RESERVED, AdapterStatus.ABANDONED})
# A version whose files retention deleted: its record keeps the number taken and the history readable, never served.
GONE = UNPUBLISHED | {AdapterStatus.PURGED}
# A reservation older than this belongs to a publisher that died: the next publish abandons it and deletes its files.
RESERVATION_TIMEOUT = timedelta(hours=6)
RESERVE_ATTEMPTS = 50


class RegistryError(LookupError):
    """Unknown version or an operation the registry's state does not allow."""


@dataclass(frozen=True)
class AdapterVersion:
    number: int
    name: str  # student@vN
    path: str
    base_model: str
    rank: int
    target_modules: list[str]
    created_at: datetime
    status: str
    label: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    sha256: str | None = None  # None: published before checksums were recorded (loaded unverified)
    files: list[manifest.FileEntry] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.name,
            "number": self.number,
            "label": self.label,
            "path": self.path,
            "base_model": self.base_model,
            "rank": self.rank,
            "target_modules": self.target_modules,
            "created_at": self.created_at.isoformat(),
            "status": self.status,
            "metrics": self.metrics,
            "lineage": self.lineage,
            "note": self.note,
            "sha256": self.sha256,
        }


class AdapterRegistry:
    def __init__(
        self,
        db: Database,
        storage: Path | AdapterStorage,
        *,
        served_name: str,
        base_model: str,
        base_model_dir: Path | None,
        max_rank: int,
    ) -> None:
        self.db = db
        self.storage = LocalStorage(storage) if isinstance(storage, Path) else storage
        self.served_name = served_name
        self.base_model = base_model
        self.base_model_dir = base_model_dir
        self.max_rank = max_rank
        self._version_re = re.compile(rf"^{re.escape(served_name)}@v(\d+)$")

    @classmethod
    def from_settings(cls, settings: Any, *, base_id: str, model_path: str) -> AdapterRegistry:
        """The registry in the configured store (tables created on first use)."""
        db = Database(settings.db_url)
        db.create_all()
        local = Path(model_path)
        return cls(
            db,
            storage_from_settings(settings),
            served_name=settings.student.served_name,
            base_model=base_id,
            base_model_dir=local if local.is_dir() else None,
            max_rank=settings.student.max_lora_rank,
        )

    # ---- naming -------------------------------------------------------------------------------------
    def version_name(self, number: int) -> str:
        return f"{self.served_name}@v{number}"

    def _to_version(self, row: AdapterRow) -> AdapterVersion:
        return AdapterVersion(
            number=row.number,
            name=self.version_name(row.number),
            path=row.path,
            base_model=row.base_model,
            rank=row.rank,
            target_modules=list(row.target_modules or []),
            created_at=row.created_at,
            status=row.status,
            label=row.label,
            metrics=dict(row.metrics or {}),
            lineage=dict(row.lineage or {}),
            note=row.note,
            sha256=row.sha256,
            files=manifest.from_json(row.files or []),
        )

    # ---- publishing ---------------------------------------------------------------------------------
    def validate(self, path: Path) -> None:
        validate_adapter(path, self.base_model_dir, self.max_rank)

    def publish(
        self,
        src: Path,
        *,
        label: str | None = None,
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        note: str | None = None,
    ) -> AdapterVersion:
        """Validate `src`, copy it to a new immutable version, and register it (status `registered`)."""
        src = Path(src).expanduser().resolve()
        # Links, special files and size first, from metadata alone: nothing in a refused folder is ever read.
        manifest.list_files(src, self.storage.max_bytes)
        info = validate_adapter(src, self.base_model_dir, self.max_rank)
        if label is not None and (self._version_re.match(label) or label == self.served_name):
            raise AdapterInvalid(f"label {label!r} collides with the reserved names {self.served_name}[@vN]")
        if label is not None and self._find_label(label) is not None:
            raise RegistryError(f"an adapter labelled {label!r} is already registered")
        self._abandon_stale_reservations()
        number = self._reserve(info, metrics=metrics or {}, lineage=lineage or {}, note=note)
        try:
            stored = self.storage.put(src, self.version_name(number))
            with self.db.session() as s:
                row = s.get(AdapterRow, number)
                if row is None or row.status != AdapterStatus.RESERVED:
                    raise RegistryError(f"the reservation of {self.version_name(number)} was abandoned "
                                        f"(publish took over {RESERVATION_TIMEOUT})")
                row.path, row.label, row.status = stored.location, label, AdapterStatus.REGISTERED
                row.sha256, row.files = manifest.digest(stored.files), manifest.to_json(stored.files)
        except IntegrityError as e:  # another publisher registered the same label meanwhile
            self._abandon(number)
            raise RegistryError(f"an adapter labelled {label!r} is already registered") from e
        except BaseException:
            self._abandon(number)
            raise
        return self.get(self.version_name(number))

    def _reserve(self, info: AdapterInfo, **fields: Any) -> int:
        """Take the next number with one INSERT that computes it: atomic on SQLite (the statement holds the write
        lock while it reads the max), and on Postgres a concurrent publisher's duplicate fails on the primary key
        and takes the next one."""
        next_number = select(func.coalesce(func.max(AdapterRow.number), 0) + 1).scalar_subquery()
        for _ in range(RESERVE_ATTEMPTS):
            try:
                with self.db.session() as s:
                    number = s.scalar(
                        insert(AdapterRow).values(number=next_number, path="", base_model=self.base_model,
                                                  rank=info.rank, target_modules=info.target_modules,
                                                  status=AdapterStatus.RESERVED, created_at=utcnow(), **fields)
                        .returning(AdapterRow.number)
                    )
                    s.get_one(AdapterRow, number).path = self.storage.location(self.version_name(number))
                    return number
            except IntegrityError:
                continue
        raise RegistryError(f"could not reserve a version number in {RESERVE_ATTEMPTS} attempts")

    def _abandon(self, number: int) -> None:
        """A publish that will not finish: its number stays taken (never served), its files go."""
        with self.db.session() as s:
            row = s.get(AdapterRow, number)
            if row is None or row.status not in UNPUBLISHED:
                return
            row.status, location = AdapterStatus.ABANDONED, row.path
        try:
            self.storage.delete(location)
        except OSError:
            log.warning("could not delete the files of abandoned %s at %s", self.version_name(number), location)

    def _abandon_stale_reservations(self) -> None:
        cutoff = datetime.now(UTC) - RESERVATION_TIMEOUT
        with self.db.session() as s:
            reserved = s.execute(select(AdapterRow.number, AdapterRow.created_at)
                                 .where(AdapterRow.status == AdapterStatus.RESERVED)).all()
        for number, created_at in reserved:
            if (created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)) < cutoff:
                log.warning("abandoning %s: reserved at %s by a publisher that never finished",
                            self.version_name(number), created_at.isoformat())
                self._abandon(number)

    def local_path(self, version: AdapterVersion) -> Path:
        """A local folder with the version's files (downloaded once per replica from an object store), checked
        against the sha256 manifest recorded at publish: AdapterTampered when they differ. A version published
        before checksums were recorded is checked for links and size only."""
        local = self.storage.local(version.path, version.name)
        if version.sha256 is None:
            log.warning("%s has no recorded checksum (published before checksums): loading it unverified",
                        version.name)
            manifest.list_files(local, self.storage.max_bytes)
        else:
            try:
                manifest.verify(local, version.files, version.sha256, self.storage.max_bytes)
            except manifest.AdapterTampered:
                if local != Path(version.path):  # a replica's download, not the store: fetched afresh next time
                    shutil.rmtree(local, ignore_errors=True)
                raise
        return local

    def update(self, name: str, *, metrics: dict[str, Any] | None = None, note: str | None = None) -> AdapterVersion:
        """Merge metrics into a version's record (e.g. evaluation results) and/or set its note."""
        number = self._number(name)
        with self.db.session() as s:
            row = s.get(AdapterRow, number)
            if row is None or row.status in GONE:
                raise RegistryError(f"no adapter {name!r}")
            if metrics:
                row.metrics = {**(row.metrics or {}), **metrics}
            if note is not None:
                row.note = note
            return self._to_version(row)

    # ---- lookup ---------------------------------------------------------------------------------------
    def _find_label(self, label: str) -> AdapterRow | None:
        with self.db.session() as s:
            return s.scalar(select(AdapterRow).where(AdapterRow.label == label))

    def _number(self, name: str) -> int:
        m = self._version_re.match(name)
        if m:
            if len(m.group(1)) > 18:  # past the store's 64-bit key: no such version, not a database error
                raise RegistryError(f"no adapter named {name!r}")
            return int(m.group(1))
        row = self._find_label(name)
        if row is None:
            raise RegistryError(f"no adapter named {name!r}")
        return row.number

    def get(self, name: str) -> AdapterVersion:
        number = self._number(name)
        with self.db.session() as s:
            row = s.get(AdapterRow, number)
            if row is None or row.status in GONE:
                raise RegistryError(f"no adapter {name!r} in the registry")
            return self._to_version(row)

    def list(self) -> list[AdapterVersion]:
        with self.db.session() as s:
            rows = s.scalars(select(AdapterRow).where(AdapterRow.status.not_in(GONE))
                             .order_by(AdapterRow.number))
            return [self._to_version(r) for r in rows]

    def resolve(self, model: str) -> AdapterVersion | None:
        """Adapter a request for `model` runs on: None means the bare base model."""
        if model == self.served_name:
            return self.promoted()
        if model == self.base_model:
            return None
        return self.get(model)

    # ---- promotion ------------------------------------------------------------------------------------
    def promotion_stack(self) -> list[int]:
        """The versions successive rollbacks would return to, the promoted one last (the base model left out)."""
        return [n for n in self._stack() if n is not None]

    def _stack(self) -> list[int | None]:
        with self.db.session() as s:
            events = s.execute(select(PromotionRow.kind, PromotionRow.number).order_by(PromotionRow.id)).all()
        stack: list[int | None] = []
        for kind, number in events:
            if kind == "promote":
                stack.append(number)
            elif stack:
                stack.pop()
        return stack

    def promoted(self) -> AdapterVersion | None:
        stack = self._stack()
        if not stack or stack[-1] is None:
            return None
        with self.db.session() as s:
            row = s.get(AdapterRow, stack[-1])
            return self._to_version(row) if row else None

    def promote(self, name: str, reason: str | None = None) -> AdapterVersion:
        """Make `name` the promoted version, once its files match its checksum (AdapterTampered otherwise)."""
        target = self.get(name)
        self.local_path(target)
        current = self.promoted()
        if current is not None and current.number == target.number:
            return target
        with self.db.session() as s:
            if current is not None:
                s.get(AdapterRow, current.number).status = AdapterStatus.SUPERSEDED  # type: ignore[union-attr]
            s.get(AdapterRow, target.number).status = AdapterStatus.PROMOTED  # type: ignore[union-attr]
            s.add(PromotionRow(kind="promote", number=target.number, reason=reason))
        return self.get(target.name)

    def rollback_target(self) -> AdapterVersion | None:
        """The version a rollback would return to (None: the base model); RegistryError if there is none."""
        stack = self._stack()
        if not stack:
            raise RegistryError("nothing to roll back: the base model is served and no adapter was promoted")
        previous = stack[-2] if len(stack) > 1 else None
        return self.get(self.version_name(previous)) if previous is not None else None

    def rollback(self, reason: str | None = None) -> AdapterVersion | None:
        """Return to the version promoted before the current one (the base model if none)."""
        self.rollback_target()  # raises when there is nothing to roll back
        stack = self._stack()
        with self.db.session() as s:
            if stack[-1] is not None:
                s.get(AdapterRow, stack[-1]).status = AdapterStatus.ROLLED_BACK  # type: ignore[union-attr]
            previous = stack[-2] if len(stack) > 1 else None
            if previous is not None:
                s.get(AdapterRow, previous).status = AdapterStatus.PROMOTED  # type: ignore[union-attr]
            s.add(PromotionRow(kind="rollback", number=previous, reason=reason))
        return self.promoted()

    def history(self) -> list[dict[str, Any]]:
        with self.db.session() as s:
            rows = s.scalars(select(PromotionRow).order_by(PromotionRow.id)).all()
            return [
                {
                    "at": r.at.isoformat(),
                    "kind": r.kind,
                    "version": self.version_name(r.number) if r.number else None,
                    "reason": r.reason,
                }
                for r in rows
            ]
