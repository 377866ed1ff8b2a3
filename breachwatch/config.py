"""The daemon's configuration file (YAML), validated at load.

Relative paths in the file are resolved against the directory of the file itself, so the
shipped `config/breachwatch.yml` works from any working directory.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from breachwatch.detection.findings import Severity
from breachwatch.yamlconf import load_yaml_model

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    raise ValueError('a duration such as "90s", "15m", "72h" or "1d"')


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    path: Path
    format: Literal["pgaudit_stderr", "jsonl"]
    options: dict[str, Any] = Field(default_factory=dict)
    max_line_bytes: int = Field(default=64 * 1024, ge=256)


class IncidentsConfig(_Strict):
    correlation_window: Duration = timedelta(hours=1)
    min_severity: Severity = Severity.MEDIUM  # findings below this are recorded, not incidents


class ObligationsConfig(_Strict):
    # GDPR Art. 33(1): 72 h from awareness. Until staff confirm, breachwatch starts the clock at
    # detection (the conservative reading); see README "Legal clock".
    authority_deadline: Duration = timedelta(hours=72)
    authority_name: str = "Gegevensbeschermingsautoriteit / Autorité de protection des données"
    customer_deadline: Duration = timedelta(hours=72)
    hold: Duration = timedelta(minutes=30)  # staff may dismiss a false positive before mail goes
    reminders: tuple[float, ...] = (0.5, 0.75, 0.9)
    notify_customers_from: Severity = Severity.HIGH

    @field_validator("reminders")
    @classmethod
    def _fractions(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < f < 1 for f in value):
            raise ValueError("fractions of the deadline window, each between 0 and 1")
        return tuple(sorted(set(value)))


class SmtpConfig(_Strict):
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    # Never the password itself: a file, or a systemd credential name (LoadCredential=)
    password_file: Path | None = None
    password_credential: str | None = None
    timeout: Duration = timedelta(seconds=30)


class NoticeTexts(_Strict):
    nature: str
    likely_consequences: str
    measures_taken: str
    measures_advised: str


class NotificationsConfig(_Strict):
    customers: Path
    sender: str
    organisation: str
    contact_name: str
    contact_email: str
    contact_phone: str = ""
    mail_folder: Path = Path("mail")
    smtp: SmtpConfig | None = None
    texts: dict[Literal["en", "fr", "nl"], NoticeTexts]
    rate_per_second: float = Field(default=20.0, gt=0)
    max_attempts: int = Field(default=8, ge=1)

    @field_validator("texts")
    @classmethod
    def _english_required(cls, value: dict[str, NoticeTexts]) -> dict[str, NoticeTexts]:
        if "en" not in value:
            raise ValueError("texts for 'en' at least (the fallback language)")
        return value


class MetricsConfig(_Strict):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class DaemonConfig(_Strict):
    state_dir: Path
    database_url: str | None = None  # default: SQLite in state_dir
    policy: Path
    sources: list[SourceConfig] = Field(min_length=1)
    incidents: IncidentsConfig = IncidentsConfig()
    obligations: ObligationsConfig = ObligationsConfig()
    notifications: NotificationsConfig
    metrics: MetricsConfig = MetricsConfig()
    poll_interval: Duration = timedelta(milliseconds=250)
    flush_after: Duration = timedelta(milliseconds=500)  # emit a held record after this idle time
    tick_interval: Duration = timedelta(seconds=15)
    batch_lines: int = Field(default=5000, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    pseudonym_key_file: Path | None = None

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, value: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in value]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"source names must be unique (repeated: {sorted(duplicates)})")
        return value

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'breachwatch.db'}"


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()


def load_config(path: Path) -> DaemonConfig:
    """Load and validate; relative paths become absolute, based at the file's directory."""
    raw = load_yaml_model(DaemonConfig, path)
    base = path.resolve().parent
    state_dir = _resolve(base, raw.state_dir)
    notifications = raw.notifications.model_copy(
        update={
            "customers": _resolve(base, raw.notifications.customers),
            "mail_folder": _resolve(state_dir, raw.notifications.mail_folder),
        }
    )
    if raw.notifications.smtp and raw.notifications.smtp.password_file:
        smtp = raw.notifications.smtp.model_copy(
            update={"password_file": _resolve(base, raw.notifications.smtp.password_file)}
        )
        notifications = notifications.model_copy(update={"smtp": smtp})
    return raw.model_copy(
        update={
            "state_dir": state_dir,
            "policy": _resolve(base, raw.policy),
            "sources": [s.model_copy(update={"path": _resolve(base, s.path)}) for s in raw.sources],
            "notifications": notifications,
            "pseudonym_key_file": (
                _resolve(base, raw.pseudonym_key_file) if raw.pseudonym_key_file else None
            ),
        }
    )
