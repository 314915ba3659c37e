"""What each replica reports of itself, in the store every node sees: what each student replica serves (the
shared view behind /ready, /metrics and promotions), and where each gateway replica's own metrics are scraped.

Every student replica writes its row every `student.registry_poll_s` (after following the registry): the version
the registry promotes, the version its `student` alias serves, whether the two agree (`ready`) and, when they do
not, why. Replicas run on any node of the cluster, so only the store sees them all; a row not written for
`stale_after(poll_s)` seconds belongs to a replica that is gone (its node stopped, Serve replaced it) and counts for
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, String, Text, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from services.store.db import Base, Database
from services.store.debates import utcnow

FORGET_AFTER = timedelta(hours=1)  # rows of replicas gone this long are deleted


def stale_after(poll_s: float) -> float:
    """Seconds after which a replica that has not reported is taken for gone: three missed polls, and never less
    than 10 s (a replica busy merging, or a slow store, skips a beat)."""
    return max(3 * poll_s, 10.0)


class ReplicaRow(Base):
    __tablename__ = "student_replicas"
    replica_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(64))
    promoted: Mapped[str | None] = mapped_column(String(200))  # what the registry promotes (None: the base model)
    serving: Mapped[str] = mapped_column(String(200))  # what `student` resolves to on this replica
    ready: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    loaded: Mapped[Any] = mapped_column(JSON)  # the versions in its engine
    started_at: Mapped[datetime] = mapped_column(DateTime)
    seen_at: Mapped[datetime] = mapped_column(DateTime, index=True)


@dataclass(frozen=True)
class ReplicaState:
    replica_id: str
    node_id: str
    promoted: str | None
    serving: str
    ready: bool
    error: str | None = None
    loaded: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"replica": self.replica_id, "node": self.node_id, "promoted": self.promoted,
                "serving": self.serving, "ready": self.ready, "error": self.error, "loaded": list(self.loaded)}


class ReplicaBoard:
    def __init__(self, db: Database) -> None:
        self.db = db

    def report(self, state: ReplicaState, started_at: datetime) -> None:
        with self.db.session() as s:
            s.merge(ReplicaRow(replica_id=state.replica_id, node_id=state.node_id, promoted=state.promoted,
                               serving=state.serving, ready=state.ready, error=state.error,
                               loaded=list(state.loaded), started_at=started_at, seen_at=utcnow()))

    def leave(self, replica_id: str) -> None:
        """A replica shutting down takes its row with it."""
        with self.db.session() as s:
            s.execute(delete(ReplicaRow).where(ReplicaRow.replica_id == replica_id))

    def live(self, stale_s: float) -> list[ReplicaState]:
        """Replicas that reported within `stale_s` seconds, by id; rows of replicas long gone are deleted."""
        now = utcnow()
        with self.db.session() as s:
            s.execute(delete(ReplicaRow).where(ReplicaRow.seen_at < now - FORGET_AFTER))
            rows = s.scalars(select(ReplicaRow).where(ReplicaRow.seen_at >= now - timedelta(seconds=stale_s))
                             .order_by(ReplicaRow.replica_id)).all()
            return [ReplicaState(r.replica_id, r.node_id, r.promoted, r.serving, r.ready, r.error,
                                 tuple(r.loaded or ())) for r in rows]


class ScrapeTargetRow(Base):
    __tablename__ = "scrape_targets"
    replica_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    address: Mapped[str] = mapped_column(String(200))  # host:port of the replica's own /metrics
    seen_at: Mapped[datetime] = mapped_column(DateTime, index=True)


class ScrapeTargets:
    """Where Prometheus reads each gateway replica's own serving series (HTTP service discovery: GET
    /metrics/targets), so that every replica's counts reach it and the rules sum them."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def report(self, replica_id: str, address: str) -> None:
        with self.db.session() as s:
            s.merge(ScrapeTargetRow(replica_id=replica_id, address=address, seen_at=utcnow()))

    def leave(self, replica_id: str) -> None:
        with self.db.session() as s:
            s.execute(delete(ScrapeTargetRow).where(ScrapeTargetRow.replica_id == replica_id))

    def live(self, stale_s: float) -> list[tuple[str, str]]:
        """(replica id, address) of the replicas that reported within `stale_s` seconds."""
        now = utcnow()
        with self.db.session() as s:
            s.execute(delete(ScrapeTargetRow).where(ScrapeTargetRow.seen_at < now - FORGET_AFTER))
            rows = s.scalars(select(ScrapeTargetRow).where(
                ScrapeTargetRow.seen_at >= now - timedelta(seconds=stale_s)).order_by(ScrapeTargetRow.replica_id))
            return [(r.replica_id, r.address) for r in rows]
