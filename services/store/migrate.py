"""Copy a whole Distillery store from one database to another (SQLite -> Postgres, the runbook's move).

Tables go in foreign-key order, in batches, inside one transaction on the target: a failed copy leaves the
target as it was. Primary keys are kept (MAG edges and the capture queue refer to them), so Postgres' id
sequences are moved past the copied ids afterwards, or the next insert would collide.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func, select, text

from services.store.db import Base, Database

BATCH = 1000


class TargetNotEmpty(RuntimeError):
    pass


def copy_store(source: Database, target: Database, progress: Callable[[str], None] = print) -> dict[str, int]:
    """Rows copied per table. The target must have no Distillery rows (its tables are created if missing)."""
    source.create_all()
    target.create_all()
    tables = Base.metadata.sorted_tables  # parents before children
    with target.engine.connect() as t:
        filled = [tb.name for tb in tables if t.execute(select(func.count()).select_from(tb)).scalar()]
    if filled:
        raise TargetNotEmpty(f"the target already holds rows in {', '.join(filled)}: copy into an empty database")
    counts: dict[str, int] = {}
    with source.engine.connect() as s, target.engine.begin() as t:
        for table in tables:
            n = 0
            rows = s.execution_options(yield_per=BATCH).execute(select(table))
            for chunk in rows.partitions(BATCH):
                t.execute(table.insert(), [dict(r._mapping) for r in chunk])
                n += len(chunk)
            counts[table.name] = n
            progress(f"{table.name}: {n} rows")
        if target.engine.dialect.name == "postgresql":
            for table in tables:
                if "id" in table.c and table.c.id.autoincrement:
                    t.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                                   f"COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM {table.name}"))
    return counts
