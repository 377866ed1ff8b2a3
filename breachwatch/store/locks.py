"""Transaction-scoped locks that serialise writers of one store across processes.

PostgreSQL: ``pg_advisory_xact_lock`` on a 64-bit key derived from the lock's name, released
at commit or rollback. Keys are taken in sorted order, so writers that lock several names in
one call cannot deadlock on them. SQLite has one writer at a time anyway, but a transaction
only takes the write lock with its first write: a no-op write to `meta` takes it at once, so
what the transaction reads after the lock is what it writes on (no decision on stale reads).
"""

from __future__ import annotations

import hashlib

from sqlalchemy import text, update
from sqlalchemy.orm import Session

from breachwatch.store.schema import Meta

CHAIN = "history_chain"  # appends to the hash-chained incident history
MIGRATIONS = "migrations"


def actor(name: str) -> str:
    """The lock under which findings of one actor are correlated into incidents."""
    return f"actor:{name}"


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``name`` (the same in every process and version)."""
    digest = hashlib.sha256(f"breachwatch:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def xact_lock(session: Session, *names: str) -> None:
    """Hold the named locks until the transaction ends (re-entrant within it)."""
    if not names:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        for key in sorted({lock_key(n) for n in names}):
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    elif dialect == "sqlite":
        session.execute(
            update(Meta)
            .where(Meta.key == "schema_version")
            .values(value=Meta.value)
            .execution_options(synchronize_session=False)
        )
