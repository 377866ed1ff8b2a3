"""A small client of the HTTP API for scripts and integrations.

    client = ApiClient.from_env()  # $BREACHWATCH_API + $BREACHWATCH_API_TOKEN[_FILE]
    for incident in client.incidents(state="suspected"):
        ...
    client.transition("BW-2026-0001", "confirmed", reason="customer data read by a leaver")

Errors from the API raise ApiClientError with the HTTP status and the JSON error fields.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import requests

from breachwatch.errors import BreachwatchError, ConfigError

ENV_URL = "BREACHWATCH_API"
ENV_TOKEN = "BREACHWATCH_API_TOKEN"
ENV_TOKEN_FILE = "BREACHWATCH_API_TOKEN_FILE"


class ApiClientError(BreachwatchError):
    def __init__(self, status: int, error: str, message: str, field: str | None = None) -> None:
        self.status = status
        self.error = error
        self.message = message
        self.field = field
        where = f" ({field})" if field else ""
        super().__init__(f"HTTP {status} {error}{where}: {message}")


class ApiClient:
    def __init__(self, base_url: str, token: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ApiClient:
        env = os.environ if environ is None else environ
        url = env.get(ENV_URL)
        if not url:
            raise ConfigError(ENV_URL, "", "the API address, e.g. http://127.0.0.1:9465")
        token = env.get(ENV_TOKEN)
        if not token and env.get(ENV_TOKEN_FILE):
            token = Path(env[ENV_TOKEN_FILE]).read_text(encoding="utf-8").strip()
        if not token:
            raise ConfigError(ENV_TOKEN, "", f"the API token (or {ENV_TOKEN_FILE})")
        return cls(url, token)

    def close(self) -> None:
        self._session.close()

    # ---- transport -------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        response = self._session.request(
            method,
            self.base_url + path,
            params={k: v for k, v in (params or {}).items() if v is not None},
            json=body,
            timeout=self.timeout,
        )
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            info = data if isinstance(data, dict) else {}
            raise ApiClientError(
                response.status_code,
                str(info.get("error", "http_error")),
                str(info.get("message", response.text[:200])),
                info.get("field"),
            )
        if not isinstance(data, dict):
            raise ApiClientError(response.status_code, "bad_response", "not a JSON object")
        return cast(dict[str, Any], data)

    @staticmethod
    def _ref(ref: str) -> str:
        return quote(ref, safe="")

    # ---- endpoints -------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    def incidents(self, state: str | None = None) -> list[dict[str, Any]]:
        params = {"state": state} if state else None
        return list(self._call("GET", "/v1/incidents", params)["incidents"])

    def incident(self, ref: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/incidents/{self._ref(ref)}")

    def transition(self, ref: str, to: str, reason: str) -> dict[str, Any]:
        path = f"/v1/incidents/{self._ref(ref)}/transitions"
        return dict(self._call("POST", path, body={"to": to, "reason": reason})["incident"])

    def comment(self, ref: str, text: str) -> dict[str, Any]:
        path = f"/v1/incidents/{self._ref(ref)}/comments"
        return dict(self._call("POST", path, body={"text": text})["incident"])

    def assign(self, ref: str, to: str) -> dict[str, Any]:
        path = f"/v1/incidents/{self._ref(ref)}/assignment"
        return dict(self._call("POST", path, body={"to": to})["incident"])

    def obligations(self, include_closed: bool = False) -> list[dict[str, Any]]:
        params = {"all": "true"} if include_closed else None
        return list(self._call("GET", "/v1/obligations", params)["obligations"])

    def notices(self, state: str | None = None) -> list[dict[str, Any]]:
        params = {"state": state} if state else None
        return list(self._call("GET", "/v1/notices", params)["notices"])

    def draft(self, ref: str, regime: str, lang: str = "fr") -> dict[str, Any]:
        path = f"/v1/incidents/{self._ref(ref)}/drafts/{quote(regime, safe='')}"
        return self._call("GET", path, {"lang": lang})

    def verify(self) -> dict[str, Any]:
        return self._call("GET", "/v1/verify")
