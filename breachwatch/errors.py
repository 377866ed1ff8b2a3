"""The errors breachwatch raises. Library code raises these; only the CLI turns them into
exit codes. Each message is written for the person who has to fix the cause."""

from __future__ import annotations


class BreachwatchError(Exception):
    """Base class of every error breachwatch raises on purpose."""


class ConfigError(BreachwatchError, ValueError):
    """Raised at load when a config or policy file is unusable.

    ``key_path`` is dotted (``sources.0.format``); ``line`` is 1-based when known.
    """

    def __init__(self, file: str, key_path: str, expected: str, line: int | None = None) -> None:
        self.file = file
        self.key_path = key_path
        self.expected = expected
        self.line = line
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key_path or '<root>'}: {expected}")


class ParseFailure(BreachwatchError, ValueError):
    """Raised (or returned as a value) when a log record cannot be understood."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason  # short, stable, fit for a metric label: "bad_prefix", "bad_json"
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DeliveryError(BreachwatchError):
    """Raised by a notification channel. ``transient`` says whether a retry may succeed."""

    def __init__(self, message: str, *, transient: bool) -> None:
        self.transient = transient
        super().__init__(message)


class StateError(BreachwatchError):
    """Raised when a requested change is not allowed from the current state
    (confirming a dismissed incident, an unknown incident id)."""
