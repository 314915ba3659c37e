"""Persistent state of Distillery: one SQLAlchemy database (SQLite in the data dir, or Postgres by URL)."""

from services.store.db import Base, Database

__all__ = ["Base", "Database"]
