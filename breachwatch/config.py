"""The daemon's configuration file (YAML), validated at load.

Relative paths in the file are resolved against the directory of the file itself, so the
shipped `config/breachwatch.yml` works from any working directory.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from breachwatch.detection.findings import Severity
from breachwatch.errors import ConfigError
from breachwatch.yamlconf import load_yaml_model

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return timedelta(seconds=value)
        if isinstance(value, str) and (match := _DURATION.match(value)):
            return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    except OverflowError:  # beyond timedelta's ±999,999,999 days (found by fuzzing)
        raise ValueError("a duration of at most 999,999,999 days") from None
    raise ValueError('a duration such as "90s", "15m", "72h" or "1d"')


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
DataKind = Literal["simple", "behavioural", "financial", "sensitive", "credentials"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    path: Path
    format: Literal[
        "pgaudit_stderr",
        "pgaudit_csvlog",
        "pgaudit_jsonlog",
        "jsonl",
        "mariadb_audit",
        "web_access",
        "auditd",
    ]
    options: dict[str, Any] = Field(default_factory=dict)
    max_line_bytes: int = Field(default=64 * 1024, ge=256)
    # no event for this long: breachwatch_source_stalled{source} = 1 and a warning in the log
    stall_after: Duration = timedelta(minutes=30)


def _one_of(*allowed: float) -> BeforeValidator:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value not in allowed:
            raise ValueError(f"one of {', '.join(f'{a:g}' for a in allowed)}")
        return float(value)

    return BeforeValidator(check)


EaseOfIdentification = Annotated[float, _one_of(0.25, 0.5, 0.75, 1.0)]
CircumstanceValue = Annotated[float, _one_of(0.25, 0.5)]


class CategoryRisk(_Strict):
    """ENISA (2013) data processing context of one data-map category."""

    kind: DataKind = "simple"
    dpc: int | None = Field(default=None, ge=1, le=4)  # adjusted score; needs a reason
    reason: str | None = None
    unlocks: tuple[str, ...] = ()  # credentials score as what they unlock
    ease_of_identification: EaseOfIdentification = 0.75
    special: bool = False  # Art. 9/10 data: EDPB 9/2022 para 102 treats harm as likely

    @field_validator("reason")
    @classmethod
    def _reason_text(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("a reason in words")
        return value

    @model_validator(mode="after")
    def _documented(self) -> CategoryRisk:
        if self.dpc is not None and not self.reason:
            raise ValueError("an adjusted dpc needs a reason (ENISA: adjustments are documented)")
        if self.kind == "credentials" and not self.unlocks:
            raise ValueError("credentials need unlocks: the categories they give access to")
        return self


def _default_categories() -> dict[str, CategoryRisk]:
    c = CategoryRisk
    return {
        "identity": c(kind="simple", ease_of_identification=1.0),
        "contact": c(kind="simple", ease_of_identification=1.0),
        "contract": c(kind="simple", ease_of_identification=0.75),
        "support": c(
            kind="simple",
            dpc=2,
            reason="free-text cases can reveal the customer's financial or social situation",
            ease_of_identification=0.75,
        ),
        "gdpr_register": c(
            kind="simple",
            dpc=2,
            reason="reveals objections and restrictions the person asked for",
            ease_of_identification=0.75,
        ),
        "mailbox": c(kind="behavioural", ease_of_identification=1.0),
        "communications_content": c(
            kind="behavioural",
            dpc=3,
            reason="message content gives a detailed profile of private and business life",
            ease_of_identification=1.0,
        ),
        "billing": c(kind="financial", ease_of_identification=0.75),
        "bank": c(kind="financial", ease_of_identification=0.75),
        "credentials": c(kind="credentials", unlocks=("mailbox", "communications_content")),
    }


class RiskConfig(_Strict):
    """ENISA severity inputs (incidents/severity.py); categories come from the data map."""

    categories: dict[str, CategoryRisk] = Field(default_factory=_default_categories)
    unmapped: CategoryRisk = CategoryRisk(kind="simple", ease_of_identification=1.0)
    # Circumstances of breach from the rules that fired (rule id -> added value)
    unknown_recipient_rules: tuple[str, ...] = ("anomaly.export", "ntk.unknown_actor")
    integrity_rules: dict[str, CircumstanceValue] = Field(default_factory=dict)
    availability_rules: dict[str, CircumstanceValue] = Field(default_factory=dict)
    malicious_rules: tuple[str, ...] = ("ntk.departed_account", "ntk.unknown_actor")


class IncidentsConfig(_Strict):
    correlation_window: Duration = timedelta(hours=1)
    min_severity: Severity = Severity.MEDIUM  # findings below this are recorded, not incidents
    # Awareness (GDPR Art. 33 clock) is set when staff confirm; an incident nobody decided on
    # within the triage window gets it automatically, so a forgotten incident cannot stop the
    # clock. "detection": awareness dated back to detection (default), "window_end": the end
    # of the triage window.
    triage_window: Duration = timedelta(hours=24)
    unconfirmed_awareness: Literal["detection", "window_end"] = "detection"
    risk: RiskConfig = RiskConfig()


RiskBandName = Literal["low", "medium", "high", "very_high"]


class Nis2Config(_Strict):
    """NIS2 Art. 23; off unless the provider is an essential or important entity."""

    enabled: bool = False
    recipient: str = "CCB — Centre for Cybersecurity Belgium (CSIRT)"
    early_warning: Duration = timedelta(hours=24)
    notification: Duration = timedelta(hours=72)
    # Implementing Reg. (EU) 2024/2690: data compromised by a suspected malicious action
    significant_when_malicious: bool = True
    significant_from_band: RiskBandName = "very_high"


class RegimesConfig(_Strict):
    """Which notification regimes apply (incidents/regimes.py), decided from the data map
    categories of the incident and its ENISA band."""

    # The provider's own customer records: it is the controller (Art. 33 / 34)
    controller_categories: tuple[str, ...] = (
        "identity",
        "contact",
        "contract",
        "support",
        "gdpr_register",
        "billing",
        "bank",
        "credentials",
    )
    # Customers' hosted data and mail: the provider is their processor (Art. 33(2))
    processor_categories: tuple[str, ...] = ("mailbox", "communications_content")
    # Data of the electronic-communications service (mail): Reg. (EU) 611/2013
    ecomms_categories: tuple[str, ...] = ("communications_content",)
    authority_from_band: RiskBandName = "low"  # Art. 33 unless staff record "risk unlikely"
    subjects_from_band: RiskBandName = "high"  # Art. 34 (high risk)
    special_categories_high_risk: bool = True  # EDPB 9/2022 para 102
    processor_deadline: Duration = timedelta(hours=24)  # contractual (DPA with customers)
    processor_recipient: str = "each affected hosting customer (controller)"
    ecomms_recipient: str = "Autorité de protection des données / Gegevensbeschermingsautoriteit"
    ecomms_deadline: Duration = timedelta(hours=24)
    ecomms_followup: Duration = timedelta(days=3)
    nis2: Nis2Config = Nis2Config()


class ObligationsConfig(_Strict):
    # GDPR Art. 33(1): 72 h from awareness. Until staff confirm, breachwatch starts the clock at
    # detection (the conservative reading); see README "Legal clock".
    authority_deadline: Duration = timedelta(hours=72)
    authority_name: str = "Gegevensbeschermingsautoriteit / Autorité de protection des données"
    customer_deadline: Duration = timedelta(hours=72)
    hold: Duration = timedelta(minutes=30)  # staff may dismiss a false positive before mail goes
    reminders: tuple[float, ...] = (0.5, 0.75, 0.9)
    notify_customers_from: Severity = Severity.HIGH

    regimes: RegimesConfig = RegimesConfig()

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


def _one_secret(file: Path | None, credential: str | None, what: str) -> None:
    if (file is None) == (credential is None):
        raise ValueError(f"{what}: exactly one of *_file or *_credential (never the secret itself)")


class HttpApiConfig(_Strict):
    """A mail provider's HTTP API: POST JSON with a bearer token (notifications/http.py)."""

    url: str = Field(pattern=r"^https?://")
    token_file: Path | None = None
    token_credential: str | None = None  # a name under $CREDENTIALS_DIRECTORY
    timeout: Duration = timedelta(seconds=15)

    @model_validator(mode="after")
    def _secret(self) -> HttpApiConfig:
        _one_secret(self.token_file, self.token_credential, "http_api token")
        return self


class WebhookConfig(_Strict):
    """A signed webhook (ticketing, chat) for internal notices to the security team."""

    url: str = Field(pattern=r"^https?://")
    secret_file: Path | None = None
    secret_credential: str | None = None
    timeout: Duration = timedelta(seconds=10)
    rate_per_second: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _secret(self) -> WebhookConfig:
        _one_secret(self.secret_file, self.secret_credential, "webhook secret")
        return self


class SecurityTeamConfig(_Strict):
    """Reminders, overdue alarms and escalations for staff (incidents/deadlines.py)."""

    webhook: WebhookConfig | None = None  # unset: reminders only in the history and the log
    contact: str  # "Security team <security@hosting.example>", named in the internal notice
    escalation_contact: str | None = None  # the second contact
    escalate_within: Duration = timedelta(hours=24)  # before the customer deadline
    language: Literal["en", "fr", "nl"] = "en"


class SqlDirectoryConfig(_Strict):
    type: Literal["sql"]
    url: str  # any SQLAlchemy URL
    query: str  # returns id, name, email, language [, kind] for the bind parameter :id

    @field_validator("query")
    @classmethod
    def _bound(cls, value: str) -> str:
        if ":id" not in value:
            raise ValueError("a query with the bind parameter :id (one customer per call)")
        return value


class HttpDirectoryConfig(_Strict):
    type: Literal["http"]
    base_url: str = Field(pattern=r"^https?://")  # GET {base_url}/customers/{id}
    token_file: Path | None = None
    token_credential: str | None = None
    cache_ttl: Duration = timedelta(minutes=15)
    timeout: Duration = timedelta(seconds=10)


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
    retry_base: Duration = timedelta(seconds=30)  # first retry delay; doubles, capped at 1 h
    # Customer channel; default: smtp when `smtp` is set, else the mail folder
    channel: Literal["smtp", "mailfolder", "http_api"] | None = None
    http_api: HttpApiConfig | None = None
    burst: int = Field(default=10, ge=1)  # token bucket size of the customer channel
    directory: (
        Annotated[SqlDirectoryConfig | HttpDirectoryConfig, Field(discriminator="type")] | None
    ) = None  # instead of the `customers` CSV when set
    security_team: SecurityTeamConfig | None = None

    @model_validator(mode="after")
    def _channel_settings(self) -> NotificationsConfig:
        if self.channel == "smtp" and self.smtp is None:
            raise ValueError("channel smtp needs the smtp settings")
        if self.channel == "http_api" and self.http_api is None:
            raise ValueError("channel http_api needs the http_api settings")
        return self

    @property
    def selected_channel(self) -> str:
        return self.channel or ("smtp" if self.smtp else "mailfolder")

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


class ApiConfig(_Strict):
    """The local HTTP API (breachwatch/api): off by default, loopback by default, one bearer
    token from a file or a systemd credential (never the token itself in this file). Changes
    made through it are recorded in the history as done by ``principal``."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=9465, ge=0, le=65535)
    token_file: Path | None = None
    token_credential: str | None = None  # a name under $CREDENTIALS_DIRECTORY
    principal: str = Field(default="api", pattern=r"^[A-Za-z0-9_.@:+-]{1,64}$")
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)

    @model_validator(mode="after")
    def _secret(self) -> ApiConfig:
        if self.enabled or (self.token_file and self.token_credential):
            _one_secret(self.token_file, self.token_credential, "api token")
        return self


class StreamSettings(_Strict):
    """``stream:`` — the NATS JetStream event stream of ``mode: jetstream`` (breachwatch/
    distributed): `breachwatch ship` publishes records, `breachwatch run` workers consume them."""

    url: str = "nats://127.0.0.1:4222"
    name: str = Field(default="BREACHWATCH", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    subject_prefix: str = Field(default="breachwatch.records", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    partitions: int = Field(default=16, ge=1, le=4096)  # fixed once records are published
    duplicate_window: Duration = timedelta(hours=1)  # JetStream drops a re-publish within it
    max_age: Duration = timedelta(days=7)  # retention of published records
    lease_ttl: Duration = timedelta(seconds=6)  # a dead worker's partitions move after this
    fetch_batch: int = Field(default=1000, ge=1)
    worker_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:@-]{1,128}$")
    shipper_db: Path | None = None  # default: <state_dir>/shipper.db


class DaemonConfig(_Strict):
    state_dir: Path
    database_url: str | None = None  # default: SQLite in state_dir
    policy: Path
    sources: list[SourceConfig] = Field(min_length=1)
    incidents: IncidentsConfig = IncidentsConfig()
    obligations: ObligationsConfig = ObligationsConfig()
    notifications: NotificationsConfig
    metrics: MetricsConfig = MetricsConfig()
    api: ApiConfig = ApiConfig()
    poll_interval: Duration = timedelta(milliseconds=250)
    flush_after: Duration = timedelta(milliseconds=500)  # emit a held record after this idle time
    tick_interval: Duration = timedelta(seconds=15)
    batch_lines: int = Field(default=5000, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    pseudonym_key_file: Path | None = None
    # local: tail the sources (one process); jetstream: consume `breachwatch ship`'s stream
    mode: Literal["local", "jetstream"] = "local"
    stream: StreamSettings = StreamSettings()

    @model_validator(mode="after")
    def _jetstream_store(self) -> DaemonConfig:
        url = self.database_url or ""
        if self.mode == "jetstream" and not url.startswith("postgresql"):
            raise ValueError("mode jetstream needs a shared PostgreSQL database_url")
        return self

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


def _resolve_secret_files(base: Path, n: NotificationsConfig) -> NotificationsConfig:
    if n.http_api and n.http_api.token_file:
        api = n.http_api.model_copy(update={"token_file": _resolve(base, n.http_api.token_file)})
        n = n.model_copy(update={"http_api": api})
    if isinstance(n.directory, HttpDirectoryConfig) and n.directory.token_file:
        token = _resolve(base, n.directory.token_file)
        n = n.model_copy(update={"directory": n.directory.model_copy(update={"token_file": token})})
    team = n.security_team
    if team and team.webhook and team.webhook.secret_file:
        hook = team.webhook.model_copy(
            update={"secret_file": _resolve(base, team.webhook.secret_file)}
        )
        n = n.model_copy(update={"security_team": team.model_copy(update={"webhook": hook})})
    return n


def load_config(path: Path) -> DaemonConfig:
    """Load and validate; relative paths become absolute, based at the file's directory."""
    raw = load_yaml_model(DaemonConfig, path)
    _check_source_options(raw, path)
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
    notifications = _resolve_secret_files(base, notifications)
    return raw.model_copy(
        update={
            "state_dir": state_dir,
            "policy": _resolve(base, raw.policy),
            "sources": [s.model_copy(update={"path": _resolve(base, s.path)}) for s in raw.sources],
            "notifications": notifications,
            "api": (
                raw.api.model_copy(update={"token_file": _resolve(base, raw.api.token_file)})
                if raw.api.token_file
                else raw.api
            ),
            "pseudonym_key_file": (
                _resolve(base, raw.pseudonym_key_file) if raw.pseudonym_key_file else None
            ),
        }
    )


def _check_source_options(config: DaemonConfig, path: Path) -> None:
    """Format options are checked by the format itself, at load, like every other key."""
    from breachwatch.parsers.registry import build_format  # parsers import config types

    for index, source in enumerate(config.sources):
        try:
            build_format(source.format, source.options)
        except (ValueError, TypeError) as exc:
            raise ConfigError(str(path), f"sources.{index}.options", str(exc)) from exc
