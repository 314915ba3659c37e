"""Retention: delete what is past `retention.*`, in the store and on disk. Run every `retention.interval_s` by the
scheduler deployment, and on demand by `distillery purge` (a dry run unless told `--yes`).

Besides the store's rows (services/store/retention.py), a deleted job's working folder goes with it, and adapter
versions beyond the newest `adapter_versions_keep` lose their files; their registry record stays, marked `purged`,
so a number is never reused and the promotion history still names it (the registry serves it no more). Never
purged: the promoted version and every one successive rollbacks would return to, versions with a label (a client
may pin one), versions still being published, and any version while a training job runs (its candidate may not be
promoted yet). A version whose files cannot be deleted is logged and tried again next run.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from services.config import Settings
from services.registry import AdapterRegistry
from services.store.adapters import AdapterRow, AdapterStatus
from services.store.db import Database
from services.store.debates import utcnow
from services.store.jobs import JobRow, JobStatus
from services.store.retention import StorePurge, purge_store

log = logging.getLogger(__name__)

PURGEABLE_VERSIONS = (AdapterStatus.REGISTERED, AdapterStatus.SUPERSEDED, AdapterStatus.ROLLED_BACK)


@dataclass
class PurgeReport:
    store: StorePurge
    job_folders: list[str]
    adapter_versions: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self.store), "job_folders": self.job_folders, "adapter_versions": self.adapter_versions}

    def deleted(self) -> int:
        s = self.store
        return (len(s.captures) + len(s.labels) + len(s.dead_letters) + len(s.mags) + len(s.jobs)
                + len(self.adapter_versions))


def _before(now: datetime, days: float | None) -> datetime | None:
    return now - timedelta(days=days) if days is not None else None


class Retention:
    def __init__(self, settings: Settings, db: Database, registry: AdapterRegistry) -> None:
        self.settings, self.db, self.registry = settings, db, registry

    def run(self, dry_run: bool = False) -> PurgeReport:
        cfg, now = self.settings.retention, utcnow()
        store = purge_store(self.db, captures_before=_before(now, cfg.captures_days),
                            mags_before=_before(now, cfg.mags_days), jobs_before=_before(now, cfg.jobs_days),
                            dry_run=dry_run)
        folders = [p for p in (self.settings.jobs_dir / f"job-{i}" for i in store.jobs) if p.is_dir()]
        versions = self._old_versions()
        if not dry_run:
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)
            for number in versions:
                try:
                    self._purge_version(number)
                except (OSError, ValueError) as e:  # e.g. files outside today's storage root: the others go on
                    log.warning("retention could not delete %s: %r", self.registry.version_name(number), e)
        report = PurgeReport(store, [str(p) for p in folders], [self.registry.version_name(n) for n in versions])
        if report.deleted() and not dry_run:
            log.info("retention deleted %s", {k: len(v) for k, v in report.as_dict().items() if isinstance(v, list)})
        return report

    def _old_versions(self) -> list[int]:
        keep = self.settings.retention.adapter_versions_keep
        if keep is None:
            return []
        with self.db.session() as s:
            if s.scalar(select(JobRow.id).where(JobRow.status == JobStatus.RUNNING).limit(1)) is not None:
                return []
        versions = list(reversed(self.registry.list()))  # published and not purged, newest first
        live = set(self.registry.promotion_stack())
        return sorted(v.number for v in versions[keep:]
                      if v.status in PURGEABLE_VERSIONS and v.number not in live and v.label is None)

    def _purge_version(self, number: int) -> None:
        """Files first, then the record: a crash in between leaves a record whose files are gone, purged next run."""
        version = self.registry.get(self.registry.version_name(number))
        self.registry.storage.delete(version.path)
        shutil.rmtree(self.settings.adapter_cache_dir / version.name, ignore_errors=True)  # an object store's copy
        with self.db.session() as s:
            s.execute(update(AdapterRow).where(AdapterRow.number == number, AdapterRow.status.in_(PURGEABLE_VERSIONS))
                      .values(status=AdapterStatus.PURGED,
                              note=f"files deleted by retention at {utcnow().isoformat()}Z"))
