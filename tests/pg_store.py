"""Per-test PostgreSQL databases on the machine's server (trust auth, user postgres).

``BREACHWATCH_TEST_PG`` overrides the admin URL. A missing server skips the test (fails it
under BREACHWATCH_REQUIRE_SERVICES=1)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tests.conftest import skip_or_fail

ADMIN_URL = os.environ.get(
    "BREACHWATCH_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@contextmanager
def pg_database() -> Iterator[str]:
    """A new, empty database for one test; dropped afterwards (with its connections)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        skip_or_fail("psycopg (pip install 'psycopg[binary]')")
    admin = create_engine(
        ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    name = f"bw_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        skip_or_fail(f"PostgreSQL at {ADMIN_URL}: {str(exc.orig).splitlines()[0]}")
    try:
        url = make_url(ADMIN_URL).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
