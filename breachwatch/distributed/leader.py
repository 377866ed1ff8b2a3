"""One scheduler leader at a time: a session-level ``pg_try_advisory_lock`` held on a
dedicated connection. PostgreSQL releases it when that session ends — the process exits or is
killed, or TCP keepalives find the host gone — and the next worker to try becomes leader.

The lock only decides *who* runs deadline ticks and deliveries; *that* each effect happens
once is the store's job (reminders recorded on the obligation in the tick's transaction,
notices moved queued → sending → sent, reconciled by the new leader when it takes over).
"""

from __future__ import annotations

import contextlib

import structlog
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from breachwatch.store.locks import lock_key

log = structlog.get_logger("breachwatch.leader")

LEADER_LOCK = "scheduler_leader"
# The session must die with its host, not hours later: keepalives bound the takeover time.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


class LeaderLock:
    def __init__(self, url: str, name: str = LEADER_LOCK) -> None:
        self._engine = create_engine(url, poolclass=NullPool, connect_args=KEEPALIVES)
        self._key = lock_key(name)
        self._conn: Connection | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def ensure(self) -> tuple[bool, bool]:
        """(leader now, just became leader). Checks a held lock's session is still alive."""
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))
                return True, False
            except SQLAlchemyError as exc:
                log.error("leadership_lost", error=str(exc).splitlines()[0])
                self._drop()
                return False, False
        try:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError:
            return False, False
        try:
            got = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}))
        except SQLAlchemyError:
            conn.close()
            return False, False
        if not got:
            conn.close()
            return False, False
        self._conn = conn
        log.warning("leadership_acquired")
        return True, True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                conn.close()

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
        self._drop()
        self._engine.dispose()
