"""Customer directories: CSV with a kind column, a SQL query (SQLite file), an HTTP API with a
TTL cache on the injected clock; a directory that cannot answer is a transient error."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from breachwatch.clock import FakeClock
from breachwatch.errors import ConfigError, DeliveryError
from breachwatch.notifications.directories import HttpDirectory, SqlDirectory
from breachwatch.notifications.directory import CustomerDirectory

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def test_csv_kind_column(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(
        "id,name,email,language,kind\n1,A,a@example.org,fr,business\n"
        "2,B,b@example.org,nl,\n3,C,c@example.org,en,Person\n"
    )
    directory = CustomerDirectory.from_csv(path)
    assert [directory.get(i).kind for i in "123"] == ["business", "person", "person"]  # type: ignore[union-attr]


def test_sql_directory_on_a_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "crm.db"
    with sqlite3.connect(db) as connection:
        connection.execute(
            "CREATE TABLE accounts (id TEXT, full_name TEXT, mail TEXT, lang TEXT, segment TEXT)"
        )
        connection.executemany(
            "INSERT INTO accounts VALUES (?, ?, ?, ?, ?)",
            [
                ("1001", "Amélie\r\nBcc: x@evil.example", "amelie@example.org", "fr-BE", "person"),
                ("2001", "Hostco BV", "dpo@hostco.example", "nl", "business"),
                ("3001", "No Mail", "", "nl", "person"),
            ],
        )
    directory = SqlDirectory(
        f"sqlite:///{db}",
        "SELECT id, full_name AS name, mail AS email, lang AS language, segment AS kind "
        "FROM accounts WHERE id = :id",
    )
    amelie = directory.get("1001")
    assert amelie is not None and amelie.language == "fr" and "\n" not in amelie.name
    business = directory.get("2001")
    assert business is not None and business.kind == "business"
    no_mail = directory.get("3001")
    assert no_mail is not None and not no_mail.deliverable
    assert directory.get("9999") is None
    assert directory.get("1001' OR '1'='1") is None  # a bound parameter, not SQL text
    directory.close()
    broken = SqlDirectory(f"sqlite:///{db}", "SELECT * FROM missing WHERE id = :id")
    with pytest.raises(DeliveryError) as info:
        broken.get("1001")
    assert info.value.transient
    broken.close()
    with pytest.raises(ConfigError):
        SqlDirectory(f"sqlite:///{db}", "SELECT * FROM accounts")


@pytest.fixture
def api() -> Iterator[tuple[dict[str, object], str]]:
    state: dict[str, object] = {"status": 200, "hits": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state["hits"] = int(state["hits"]) + 1  # type: ignore[call-overload]
            state["auth"] = self.headers.get("Authorization")
            status = int(state["status"])  # type: ignore[call-overload]
            customer_id = self.path.rsplit("/", 1)[-1]
            if status == 200 and customer_id == "404":
                status = 404
            body = json.dumps(
                {
                    "id": customer_id,
                    "name": "Pieter",
                    "email": "pieter@example.org",
                    "language": "nl",
                }
            ).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_http_directory_cache_ttl_on_the_injected_clock(api: tuple[dict[str, object], str]) -> None:
    state, base = api
    clock = FakeClock(T0)
    directory = HttpDirectory(base, clock, ttl=timedelta(minutes=10), token="t0k", timeout=5)
    first = directory.get("1002")
    assert first is not None and first.language == "nl" and state["auth"] == "Bearer t0k"
    assert directory.get("1002") == first and state["hits"] == 1  # cached
    clock.advance(timedelta(minutes=9))
    directory.get("1002")
    assert state["hits"] == 1
    clock.advance(timedelta(minutes=2))  # past the TTL
    directory.get("1002")
    assert state["hits"] == 2
    assert directory.get("404") is None
    state["status"] = 503
    with pytest.raises(DeliveryError) as info:
        directory.get("1003")
    assert info.value.transient
    state["status"] = 403
    with pytest.raises(DeliveryError) as denied:
        directory.get("1004")
    assert not denied.value.transient
    directory.close()
