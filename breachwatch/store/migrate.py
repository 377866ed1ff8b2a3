"""Schema migrations (Alembic), run programmatically on the Database's own engine.

The revisions live in ``breachwatch/store/migrations/versions`` (package data; no alembic.ini
at runtime). ``upgrade()`` brings any store to the head revision in one transaction, under a
lock on PostgreSQL so that two processes starting together migrate once:

- an empty store is built by the revisions (the baseline 0001 is the schema of 0.1);
- a store created before migrations existed (``Base.metadata.create_all``: tables but no
  ``alembic_version``) gets what the baseline has and it lacks, then is stamped;
- a store written by a newer breachwatch (a revision this version does not know, or a
  ``meta.schema_version`` above ``SCHEMA_VERSION``) is refused with a ConfigError, untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from breachwatch.errors import ConfigError
from breachwatch.store import locks
from breachwatch.store.schema import SCHEMA_VERSION

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
BASELINE = "0001"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


@cache
def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    revision = scripts().get_current_head()
    if revision is None:  # pragma: no cover - the package always ships the baseline
        raise RuntimeError("no migration revisions shipped")
    return revision


@dataclass(frozen=True, slots=True)
class StoreStatus:
    revisions: tuple[str, ...]  # what alembic_version holds (empty: not under migrations)
    head: str  # the newest revision this breachwatch knows
    schema_version: int | None  # meta.schema_version
    legacy: bool  # tables of breachwatch, but no alembic_version: created by create_all

    @property
    def up_to_date(self) -> bool:
        return self.revisions == (self.head,)

    def to_json(self) -> dict[str, object]:
        return {
            "current": list(self.revisions),
            "head": self.head,
            "up_to_date": self.up_to_date,
            "schema_version": self.schema_version,
            "supported_schema_version": SCHEMA_VERSION,
            "legacy": self.legacy,
        }


def status(connection: Connection) -> StoreStatus:
    revisions = tuple(MigrationContext.configure(connection).get_current_heads())
    tables = set(inspect(connection).get_table_names())
    version = None
    if "meta" in tables:
        value = connection.scalar(text("SELECT value FROM meta WHERE key = 'schema_version'"))
        version = int(value) if value is not None else None
    legacy = not revisions and bool(tables & {"meta", "incidents", "findings", "checkpoints"})
    return StoreStatus(revisions, head(), version, legacy)


def refuse_newer(url: str, state: StoreStatus) -> None:
    """A store written by a newer breachwatch is never touched by this one."""
    unknown = [r for r in state.revisions if _known(r) is False]
    if unknown:
        raise ConfigError(
            _safe(url),
            "schema",
            f"a store at migration {state.head} or older (found {', '.join(unknown)}: "
            "written by a newer breachwatch; upgrade breachwatch)",
        )
    if state.schema_version is not None and state.schema_version > SCHEMA_VERSION:
        raise ConfigError(
            _safe(url),
            "schema_version",
            f"a store of schema {SCHEMA_VERSION} or older (found {state.schema_version}: "
            "written by a newer breachwatch; upgrade breachwatch)",
        )


def upgrade(engine: Engine, url: str) -> list[str]:
    """Bring the store to head; returns the revisions applied (empty: already there)."""
    with engine.connect() as connection:  # cheap check first: most starts have nothing to do
        state = status(connection)
        refuse_newer(url, state)
        if state.up_to_date and state.schema_version == SCHEMA_VERSION:
            return []
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"),
                {"key": locks.lock_key(locks.MIGRATIONS)},
            )
        state = status(connection)  # again, under the lock: another process may have done it
        refuse_newer(url, state)
        before = set(state.revisions)
        command.upgrade(alembic_config(connection), "head")
        after = status(connection)
        if after.schema_version != SCHEMA_VERSION:
            raise ConfigError(
                _safe(url),
                "schema_version",
                f"schema {SCHEMA_VERSION} after migrating to {after.head} "
                f"(found {after.schema_version}): the revisions and SCHEMA_VERSION disagree",
            )
    return [r for r in _path_to_head(before) if r not in before]


def current(engine: Engine) -> StoreStatus:
    with engine.connect() as connection:
        return status(connection)


def _known(revision: str) -> bool:
    try:
        return scripts().get_revision(revision) is not None
    except Exception:  # alembic raises ResolutionError/CommandError for unknown ids
        return False


def _path_to_head(have: set[str]) -> list[str]:
    """Revisions after ``have`` up to head, oldest first (the history is linear)."""
    newer: list[str] = []
    for script in scripts().walk_revisions("base", "heads"):  # newest first
        if script.revision in have:
            break
        newer.append(script.revision)
    return newer[::-1]


def _safe(url: str) -> str:
    """The URL without a password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
