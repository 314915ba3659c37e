"""Tables of the adapter registry: one row per immutable adapter version, one per promotion event."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from services.store.db import Base


def utcnow() -> datetime:
    return datetime.now(UTC)


class AdapterStatus(StrEnum):
    """An adapter version's `status`: reserved -> registered -> promoted -> superseded | rolled_back; a candidate
    refused by a gate stays registered; a publish that failed or never finished ends abandoned (never served, its
    number never reused)."""

    RESERVED = "reserved"
    REGISTERED = "registered"
    PROMOTED = "promoted"
    SUPERSEDED = "superseded"
    ROLLED_BACK = "rolled_back"
    ABANDONED = "abandoned"
    PURGED = "purged"  # retention deleted its files: the record keeps the number taken, never served


class AdapterRow(Base):
    __tablename__ = "adapters"

    # N of student@vN, never reused: taken by inserting a `reserved` row (the primary key makes it unique) before
    # any file is written, marked `registered` once the files are stored.
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    path: Mapped[str] = mapped_column(Text)
    base_model: Mapped[str] = mapped_column(Text)
    rank: Mapped[int] = mapped_column(Integer)
    target_modules: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    status: Mapped[str] = mapped_column(String(32), default=AdapterStatus.REGISTERED)  # AdapterStatus
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    # services/registry/manifest.py: the digest over the files' list, and the list (path, size, sha256) itself.
    # NULL for versions published before checksums were recorded; those load unverified.
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    files: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)


class PromotionRow(Base):
    """An append-only log; the promoted version is derived from it by replay (see AdapterRegistry)."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))  # promote | rollback
    number: Mapped[int | None] = mapped_column(Integer, nullable=True)  # version promoted to; None = base
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
