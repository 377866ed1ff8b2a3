"""Alembic migrations of the store: an empty SQLite or PostgreSQL store migrated to head has
exactly the schema of breachwatch/store/schema.py; a store created by create_all before
migrations existed is stamped; a store of a newer breachwatch is refused, untouched."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, func, select, text

from breachwatch.errors import ConfigError
from breachwatch.incidents.service import IncidentService
from breachwatch.store import migrate
from breachwatch.store.database import Database
from breachwatch.store.schema import SCHEMA_VERSION, Base, FindingRow, Meta, NoticeHold
from tests.daemon_harness import cli, write_config
from tests.pg_store import pg_database
from tests.store_fixtures import finding, make_config

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        (tmp_path / "state").mkdir()
        yield f"sqlite:///{tmp_path / 'state' / 'breachwatch.db'}"
        return
    with pg_database() as url:
        yield url


def _diff(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def _version_rows(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.scalars(text("SELECT version_num FROM alembic_version")))


def test_empty_store_migrated_to_head_matches_schema_py(empty_url: str) -> None:
    db = Database(empty_url)
    try:
        assert db.create_schema() == [migrate.head()]
        assert _diff(db.engine) == []
        assert _version_rows(db.engine) == [migrate.head()]
        assert db.schema_version() == SCHEMA_VERSION
        assert db.create_schema() == []  # nothing to do the second time
        state = migrate.current(db.engine)
        assert state.up_to_date and not state.legacy
    finally:
        db.dispose()


def test_downgrade_to_base_and_up_again(empty_url: str) -> None:
    from alembic import command

    db = Database(empty_url)
    try:
        db.create_schema()
        with db.engine.begin() as connection:
            command.downgrade(migrate.alembic_config(connection), "base")
        assert migrate.current(db.engine).revisions == ()
        db.create_schema()
        assert _diff(db.engine) == []
    finally:
        db.dispose()


def _legacy_store(url: str, *, without: tuple[str, ...] = ()) -> None:
    """What breachwatch wrote before migrations: create_all of the schema and a meta row."""
    engine = create_engine(url)
    tables = [t for t in Base.metadata.sorted_tables if t.name not in without]
    Base.metadata.create_all(engine, tables=tables)
    with engine.begin() as connection:
        connection.execute(Meta.__table__.insert().values(key="schema_version", value="1"))
    engine.dispose()


def test_store_created_by_create_all_is_stamped_and_keeps_its_data(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    Path(config.db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    _legacy_store(config.db_url)
    db = Database(config.db_url)
    with db.transaction() as session:
        IncidentService(config).record(session, [finding(T0)], T0)
    assert migrate.current(db.engine).legacy
    assert db.create_schema() == [migrate.head()]
    assert _version_rows(db.engine) == [migrate.head()]
    assert _diff(db.engine) == []
    with db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(FindingRow)) == 1
    db.dispose()


def test_older_store_missing_a_table_gains_it(empty_url: str) -> None:
    _legacy_store(empty_url, without=(NoticeHold.__tablename__,))
    db = Database(empty_url)
    try:
        db.create_schema()
        assert _diff(db.engine) == []
    finally:
        db.dispose()


def test_store_of_a_newer_breachwatch_is_refused_untouched(empty_url: str) -> None:
    db = Database(empty_url)
    try:
        db.create_schema()
        with db.engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '0999_future'"))
        with pytest.raises(ConfigError, match="newer breachwatch"):
            db.create_schema()
        assert _version_rows(db.engine) == ["0999_future"]  # untouched
        with db.engine.begin() as connection:
            connection.execute(text(f"UPDATE alembic_version SET version_num = '{migrate.head()}'"))
            connection.execute(
                text("UPDATE meta SET value = :v WHERE key = 'schema_version'"),
                {"v": str(SCHEMA_VERSION + 1)},
            )
        with pytest.raises(ConfigError, match=f"schema {SCHEMA_VERSION} or older"):
            db.create_schema()
    finally:
        db.dispose()


def test_password_is_not_in_the_refusal() -> None:
    state = migrate.StoreStatus(("0999_future",), migrate.head(), 1, False)
    with pytest.raises(ConfigError) as caught:
        migrate.refuse_newer("postgresql+psycopg://bw:s3cret@db.example/bw", state)
    assert "s3cret" not in str(caught.value)


def test_two_processes_starting_together_migrate_once() -> None:
    with pg_database() as url:
        dbs = [Database(url) for _ in range(4)]
        applied: list[list[str]] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(dbs))

        def start(db: Database) -> None:
            barrier.wait()
            try:
                applied.append(db.create_schema())
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(db,)) for db in dbs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert sorted(applied, key=len) == [[], [], [], [migrate.head()]]
        assert _diff(dbs[0].engine) == []
        for db in dbs:
            db.dispose()


def test_db_cli_current_and_upgrade(tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_port=None)
    before = cli(config, "db", "current", "--json")
    assert before.returncode == 0, before.stderr
    state = json.loads(before.stdout)
    assert state["current"] == [] and state["head"] == migrate.head()
    assert not state["up_to_date"]
    upgraded = cli(config, "db", "upgrade", "--json")
    assert upgraded.returncode == 0, upgraded.stderr
    assert json.loads(upgraded.stdout)["applied"] == [migrate.head()]
    text_out = cli(config, "db", "current")
    assert "up to date" in text_out.stdout
    again = cli(config, "db", "upgrade")
    assert again.returncode == 0 and f"already at {migrate.head()}" in again.stdout
    # a newer store: every command refuses it with a configuration error (exit 2)
    db_path = tmp_path / "state" / "breachwatch.db"
    engine = create_engine(f"sqlite:///{db_path}")
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0999_future'"))
    engine.dispose()
    for args in (("db", "upgrade"), ("incidents", "list")):
        refused = cli(config, *args)
        assert refused.returncode == 2, refused.stderr
        assert "newer breachwatch" in refused.stderr


def test_migrations_are_shipped_as_package_data() -> None:
    root = migrate.MIGRATIONS_DIR
    assert (root / "env.py").is_file() and (root / "script.py.mako").is_file()
    assert list((root / "versions").glob("0001_*.py"))
    assert migrate.scripts().get_base() == migrate.BASELINE
