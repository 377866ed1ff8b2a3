"""Builds the configured channels and customer directory. Secrets only ever come from a file
or from a systemd credential ($CREDENTIALS_DIRECTORY/<name>), never from the config text."""

from __future__ import annotations

import os
from pathlib import Path

from breachwatch.clock import Clock
from breachwatch.config import HttpDirectoryConfig, NotificationsConfig, SqlDirectoryConfig
from breachwatch.errors import BreachwatchError, ConfigError
from breachwatch.notifications.channels import (
    Channel,
    MailFolderChannel,
    SmtpChannel,
    read_secret,
)
from breachwatch.notifications.directories import Directory, HttpDirectory, SqlDirectory
from breachwatch.notifications.directory import CustomerDirectory
from breachwatch.notifications.http import HttpMailApiChannel, WebhookChannel

SMTP_MESSAGES_PER_CONNECTION = 100


def resolve_secret(file: Path | None, credential: str | None, where: str) -> str | None:
    if credential:
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if not credentials:
            raise BreachwatchError(
                f"{where} names a credential but $CREDENTIALS_DIRECTORY is not set "
                "(run under systemd with LoadCredential=)"
            )
        if "/" in credential or credential in (".", ".."):
            raise ConfigError(where, "credential", "a credential name, not a path")
        return read_secret(Path(credentials) / credential)
    if file is not None:
        return read_secret(file)
    return None


def build_customer_channel(config: NotificationsConfig) -> Channel:
    selected = config.selected_channel
    if selected == "http_api":
        api = config.http_api
        if api is None:
            raise ConfigError("notifications", "http_api", "settings for channel http_api")
        token = resolve_secret(api.token_file, api.token_credential, "notifications.http_api")
        if token is None:
            raise ConfigError("notifications", "http_api.token_file", "a bearer token")
        return HttpMailApiChannel(api.url, token, timeout=api.timeout.total_seconds())
    smtp = config.smtp
    if selected == "mailfolder" or smtp is None:
        return MailFolderChannel(config.mail_folder)
    password = resolve_secret(
        smtp.password_file, smtp.password_credential, "notifications.smtp.password"
    )
    return SmtpChannel(
        smtp.host,
        smtp.port,
        security=smtp.security,
        username=smtp.username,
        password=password,
        timeout=smtp.timeout.total_seconds(),
        max_per_connection=SMTP_MESSAGES_PER_CONNECTION,
    )


def build_staff_channel(config: NotificationsConfig) -> WebhookChannel | None:
    team = config.security_team
    if team is None or team.webhook is None:
        return None
    hook = team.webhook
    where = "notifications.security_team.webhook"
    secret = resolve_secret(hook.secret_file, hook.secret_credential, where)
    if secret is None:
        raise ConfigError("notifications", f"{where}.secret_file", "a signing secret")
    return WebhookChannel(hook.url, secret, timeout=hook.timeout.total_seconds())


def build_directory(config: NotificationsConfig, clock: Clock) -> Directory:
    source = config.directory
    if isinstance(source, SqlDirectoryConfig):
        return SqlDirectory(source.url, source.query)
    if isinstance(source, HttpDirectoryConfig):
        token = resolve_secret(
            source.token_file, source.token_credential, "notifications.directory"
        )
        return HttpDirectory(
            source.base_url,
            clock,
            ttl=source.cache_ttl,
            token=token,
            timeout=source.timeout.total_seconds(),
        )
    return CustomerDirectory.from_csv(config.customers)
