"""Alembic's entry point: migrate over the connection `services.store.migrations.upgrade` hands it (online only)."""

from __future__ import annotations

from alembic import context

from services.store.migrations import target_metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=target_metadata(),
    render_as_batch=True,  # SQLite alters a table by copying it; elsewhere a batch is plain ALTERs
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
