"""HTTP channels: a mail provider's API and a signed webhook, both with requests.

Errors: a refused or dropped connection, a timeout, 408, 429 and 5xx are transient (the
outbox retries with backoff); any other 4xx and a certificate that does not verify are
permanent (a person must fix the token, the payload or the trust store). Both send the outbox
key as ``Idempotency-Key``, so a provider that honours it folds the resend that follows a crash
between its 2xx and our commit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from email.message import EmailMessage
from typing import Any

import requests

from breachwatch.errors import DeliveryError

_TRANSIENT_STATUS = frozenset({408, 425, 429})
_MAX_REPLY = 300


def _part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body(preferencelist=(subtype,))
    if body is None or body.get_content_subtype() != subtype:
        return ""
    content: str = body.get_content()
    return content


def _addresses(message: EmailMessage, field: str) -> list[str]:
    return [str(a.addr_spec) for a in getattr(message[field], "addresses", ())]


def signature(secret: bytes, body: bytes) -> str:
    """The value of ``X-Breachwatch-Signature``: HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class _HttpChannel:
    name = "http"

    def __init__(self, url: str, timeout: float, session: requests.Session | None) -> None:
        self._url = url
        self._timeout = timeout
        self._session = session or requests.Session()

    def was_delivered(self, key: str) -> bool | None:
        return None  # resent with the same Idempotency-Key; the receiver folds it

    def close(self) -> None:
        self._session.close()

    def _post(self, body: bytes, headers: dict[str, str]) -> str:
        try:
            response = self._session.post(
                self._url,
                data=body,
                headers={"Content-Type": "application/json; charset=utf-8", **headers},
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.exceptions.SSLError as err:
            raise DeliveryError(f"{self.name} {self._url}: TLS: {err}", transient=False) from err
        except (requests.ConnectionError, requests.Timeout) as err:
            text = f"{self.name} {self._url}: {type(err).__name__}: {err}"
            raise DeliveryError(text[:1000], transient=True) from err
        except requests.RequestException as err:
            raise DeliveryError(f"{self.name} {self._url}: {err}", transient=False) from err
        reply = response.text[:_MAX_REPLY].replace("\n", " ")
        status = response.status_code
        with response:
            if 200 <= status < 300:
                return f"{self.name} {status} {reply}".strip()
            transient = status >= 500 or status in _TRANSIENT_STATUS
            raise DeliveryError(
                f"{self.name} {self._url} replied {status} {reply}", transient=transient
            )


class HttpMailApiChannel(_HttpChannel):
    """POSTs each notice as JSON to a mail provider's API with a bearer token.

    Body: ``from``, ``to`` (list), ``subject``, ``text``, ``html``, ``message_id``,
    ``headers`` (Auto-Submitted, Content-Language). Header ``Idempotency-Key`` = outbox key.
    """

    name = "http_api"

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 15.0,
        session: requests.Session | None = None,
    ) -> None:
        super().__init__(url, timeout, session)
        self._token = token

    def deliver(self, message: EmailMessage, key: str) -> str:
        payload: dict[str, Any] = {
            "from": str(message["From"]),
            "to": _addresses(message, "To"),
            "subject": str(message["Subject"]),
            "text": _part(message, "plain"),
            "html": _part(message, "html"),
            "message_id": str(message["Message-ID"]),
            "headers": {
                "Auto-Submitted": str(message["Auto-Submitted"] or "auto-generated"),
                "Content-Language": str(message["Content-Language"] or ""),
            },
        }
        if not payload["to"]:
            raise DeliveryError("message has no recipient", transient=False)
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        return self._post(body, {"Authorization": f"Bearer {self._token}", "Idempotency-Key": key})


class WebhookChannel(_HttpChannel):
    """A generic signed webhook (ticketing, chat) for internal notices to staff.

    Body: JSON ``key``, ``kind``, ``incident``, ``subject``, ``text``, ``to``,
    ``message_id``. Header ``X-Breachwatch-Signature: sha256=<hex HMAC of the body>`` with
    the shared secret; ``Idempotency-Key`` = outbox key.
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        super().__init__(url, timeout, session)
        self._secret = secret.encode("utf-8")

    def deliver(self, message: EmailMessage, key: str) -> str:
        payload = {
            "key": key,
            "kind": str(message["X-Breachwatch-Kind"] or "notice"),
            "incident": str(message["X-Breachwatch-Incident"] or ""),
            "subject": str(message["Subject"]),
            "text": _part(message, "plain"),
            "to": _addresses(message, "To"),
            "message_id": str(message["Message-ID"]),
        }
        body = json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")
        return self._post(
            body,
            {"X-Breachwatch-Signature": signature(self._secret, body), "Idempotency-Key": key},
        )
