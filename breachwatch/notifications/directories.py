"""Customer directories besides the CSV export: a SQL query and an HTTP API.

Every directory answers ``get(id) -> Customer | None``. ``None`` means "no such customer";
a directory that cannot answer right now (database down, API timeout, 5xx) raises a transient
DeliveryError, so the outbox retries later instead of recording a wrong "no address".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote

import requests
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from breachwatch.clock import Clock
from breachwatch.errors import ConfigError, DeliveryError
from breachwatch.notifications.directory import Customer


class Directory(Protocol):
    def get(self, customer_id: str) -> Customer | None: ...


def _customer(customer_id: str, data: dict[str, Any]) -> Customer:
    def value(name: str, default: str = "") -> str:
        raw = data.get(name)
        return default if raw is None else str(raw)

    return Customer(
        id=customer_id,
        name=value("name"),
        email=value("email"),
        language=value("language"),
        kind=value("kind", "person"),
    )


class SqlDirectory:
    """``query`` returns ``id, name, email, language`` and optionally ``kind`` for ``:id``.

    Example: ``SELECT id, full_name AS name, email, lang AS language FROM clients.accounts
    WHERE id = :id`` against ``postgresql+psycopg://breachwatch@db/crm`` (any SQLAlchemy URL).
    """

    def __init__(self, url: str, query: str, engine: Engine | None = None) -> None:
        if ":id" not in query:
            raise ConfigError("notifications.directory", "query", "a query using :id")
        self._query = text(query)
        try:
            self._engine = engine or create_engine(url, pool_pre_ping=True)
        except (SQLAlchemyError, ImportError, ValueError) as err:
            raise ConfigError("notifications.directory", "url", f"a usable URL ({err})") from err

    def get(self, customer_id: str) -> Customer | None:
        try:
            with self._engine.connect() as connection:
                row = connection.execute(self._query, {"id": customer_id}).mappings().first()
        except SQLAlchemyError as err:
            first = str(err).splitlines()[0][:300]
            raise DeliveryError(f"customer directory (SQL): {first}", transient=True) from err
        if row is None:
            return None
        return _customer(customer_id, dict(row))

    def close(self) -> None:
        self._engine.dispose()


@dataclass(frozen=True, slots=True)
class _Cached:
    customer: Customer | None
    until: datetime


class HttpDirectory:
    """``GET {base_url}/customers/{id}`` → JSON ``{name, email, language, kind}``; 404 is
    "no such customer". Answers (also 404s) are cached for ``ttl`` on the injected clock."""

    def __init__(
        self,
        base_url: str,
        clock: Clock,
        *,
        ttl: timedelta = timedelta(minutes=15),
        token: str | None = None,
        timeout: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._clock = clock
        self._ttl = ttl
        self._timeout = timeout
        self._session = session or requests.Session()
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._cache: dict[str, _Cached] = {}
        self.requests = 0  # how many GETs were made (the cache's effect is observable)

    def get(self, customer_id: str) -> Customer | None:
        now = self._clock.now()
        cached = self._cache.get(customer_id)
        if cached is not None and now < cached.until:
            return cached.customer
        customer = self._fetch(customer_id)
        self._cache[customer_id] = _Cached(customer, now + self._ttl)
        return customer

    def _fetch(self, customer_id: str) -> Customer | None:
        url = f"{self._base}/customers/{quote(customer_id, safe='')}"
        self.requests += 1
        try:
            response = self._session.get(url, headers=self._headers, timeout=self._timeout)
        except requests.RequestException as err:
            text_ = f"customer directory (HTTP): {type(err).__name__}"
            raise DeliveryError(text_, transient=True) from err
        with response:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                transient = response.status_code >= 500 or response.status_code == 429
                raise DeliveryError(
                    f"customer directory (HTTP) replied {response.status_code}",
                    transient=transient,
                )
            try:
                data = response.json()
            except ValueError as err:
                raise DeliveryError("customer directory (HTTP): not JSON", transient=True) from err
        if not isinstance(data, dict):
            raise DeliveryError("customer directory (HTTP): not a JSON object", transient=True)
        return _customer(customer_id, data)

    def close(self) -> None:
        self._session.close()
