"""Bearer-token authentication of the HTTP API. The token comes from a file or a systemd
credential ($CREDENTIALS_DIRECTORY/<name>), never from the config text, and is compared in
constant time."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from breachwatch.config import ApiConfig
from breachwatch.errors import ConfigError

MIN_TOKEN_LENGTH = 16


def load_token(config: ApiConfig) -> str:
    """The configured token; a ConfigError (or BreachwatchError for a missing
    $CREDENTIALS_DIRECTORY) when it cannot be read or is too short to be a secret."""
    from breachwatch.notifications.wiring import resolve_secret

    token = resolve_secret(config.token_file, config.token_credential, "api.token")
    if token is None:
        raise ConfigError("api", "token_file", "a token file or token_credential")
    token = token.strip()
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise ConfigError(
            str(config.token_file or config.token_credential),
            "api.token",
            f"a token of at least {MIN_TOKEN_LENGTH} characters without spaces "
            "(e.g. `openssl rand -hex 32`)",
        )
    return token


@dataclass(frozen=True)
class Authenticator:
    """Maps a request's Authorization header to the principal recorded in the history."""

    token: str
    principal: str

    def principal_for(self, authorization: str | None) -> str | None:
        if not authorization:
            return None
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        offered = credentials.strip().encode("utf-8", "surrogateescape")
        if hmac.compare_digest(offered, self.token.encode("utf-8")):
            return self.principal
        return None
