"""Who the affected customers are and how to reach them, loaded from a CSV export.

A customer whose address cannot be used is still loaded: the lead's outbox must see that
person and record that a notice could not be e-mailed (Art. 34(3)(c) may then require a
public communication), rather than lose them at load time.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.headerregistry import Address
from pathlib import Path
from typing import Final

from breachwatch.errors import ConfigError

LANGUAGES: Final = frozenset({"fr", "nl", "en"})
DEFAULT_LANGUAGE: Final = "en"
REQUIRED_COLUMNS: Final = ("id", "name", "email", "language")
KINDS: Final = frozenset({"person", "business"})  # business: a hosting customer as controller

_MAX_NAME = 200
_MAX_EMAIL = 254  # RFC 5321 forward-path limit minus the angle brackets
_DOMAIN_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def normalise_language(value: str) -> str:
    """ "fr", "FR", "fr-BE" and "nl_be" are understood; anything else gets the default."""
    primary = re.split(r"[-_]", value.strip().lower(), maxsplit=1)[0]
    return primary if primary in LANGUAGES else DEFAULT_LANGUAGE


def normalise_kind(value: str) -> str:
    """ "business" (the customer is a controller, Art. 33(2)); anything else is a person."""
    return (
        "business" if value.strip().lower() in ("business", "company", "controller") else "person"
    )


def normalise_name(value: str) -> str:
    """Control characters (CR/LF above all) become spaces: the name ends up in a header."""
    cleaned = "".join(" " if unicodedata.category(c).startswith("C") else c for c in value)
    return " ".join(cleaned.split())[:_MAX_NAME]


def normalise_email(value: str) -> str:
    """The address in a form smtplib can send to, or "" when it is not a usable address.

    Internationalised domains are converted to their ASCII (IDNA) form so that no SMTPUTF8
    support is needed from the relay; non-ASCII local parts are rare and refused.
    """
    value = value.strip()
    if not value or len(value) > _MAX_EMAIL or any(c.isspace() for c in value):
        return ""
    if any(unicodedata.category(c).startswith("C") for c in value):
        return ""
    try:
        address = Address(addr_spec=value)
        domain = address.domain.encode("idna").decode("ascii").lower()
    except (HeaderParseError, ValueError, IndexError, UnicodeError):
        return ""
    labels = domain.split(".")
    if len(labels) < 2 or not all(_DOMAIN_LABEL.match(label) for label in labels):
        return ""
    if not address.username or not address.username.isascii():
        return ""
    try:
        return Address(username=address.username, domain=domain).addr_spec
    except ValueError:
        return ""


@dataclass(frozen=True, slots=True)
class Customer:
    """One customer. Values are normalised on construction, wherever the customer comes from:
    ``language`` is always one of :data:`LANGUAGES` and ``email`` is usable or ``""``."""

    id: str
    name: str
    email: str
    language: str
    kind: str = "person"  # person (data subject, Art. 34) or business (controller, Art. 33(2))

    def __post_init__(self) -> None:
        # Frozen, so the normalised values have to be set through object.__setattr__.
        object.__setattr__(self, "name", normalise_name(self.name))
        object.__setattr__(self, "email", normalise_email(self.email))
        object.__setattr__(self, "language", normalise_language(self.language))
        object.__setattr__(self, "kind", normalise_kind(self.kind))

    @property
    def deliverable(self) -> bool:
        return bool(self.email)


class CustomerDirectory:
    """Customers by id. Immutable once loaded; reload by building a new one."""

    def __init__(self, customers: dict[str, Customer]) -> None:
        self._customers = dict(customers)

    @classmethod
    def from_csv(cls, path: Path) -> CustomerDirectory:
        """Load ``id,name,email,language[,kind]`` (header required, other columns ignored).

        Raises ConfigError for an unreadable file, a missing column, a short row, an empty or
        repeated id. A bad e-mail address or language is not an error (see the module doc).
        """
        file = str(path)
        customers: dict[str, Customer] = {}
        line: int | None = None
        try:
            # utf-8-sig: spreadsheet exports often start with a byte-order mark.
            with path.open(encoding="utf-8-sig", newline="") as handle:
                reader = csv.DictReader(handle, strict=True)
                header = [column.strip().lower() for column in reader.fieldnames or []]
                reader.fieldnames = header
                missing = [column for column in REQUIRED_COLUMNS if column not in header]
                if missing:
                    raise ConfigError(
                        file,
                        "header",
                        f"columns {', '.join(REQUIRED_COLUMNS)}; missing {', '.join(missing)}",
                        line=1,
                    )
                line = 1
                for row in reader:
                    line = reader.line_num
                    values = {column: row.get(column) for column in REQUIRED_COLUMNS}
                    short = [column for column, value in values.items() if value is None]
                    if short:
                        raise ConfigError(file, "row", f"a value for {', '.join(short)}", line=line)
                    customer_id = (values["id"] or "").strip()
                    if not customer_id:
                        raise ConfigError(file, "id", "a non-empty customer id", line=line)
                    if customer_id in customers:
                        raise ConfigError(
                            file, "id", f"a unique id; {customer_id!r} repeats", line=line
                        )
                    customers[customer_id] = Customer(
                        id=customer_id,
                        name=values["name"] or "",
                        email=values["email"] or "",
                        language=values["language"] or "",
                        kind=row.get("kind") or "person",
                    )
        except OSError as err:
            raise ConfigError(file, "", f"a readable CSV file ({err.strerror})") from err
        except UnicodeDecodeError as err:
            raise ConfigError(file, "", f"UTF-8 text ({err.reason})") from err
        except csv.Error as err:
            raise ConfigError(file, "", f"valid CSV ({err})", line=line) from err
        return cls(customers)

    def get(self, customer_id: str) -> Customer | None:
        return self._customers.get(customer_id)

    def __len__(self) -> int:
        return len(self._customers)

    def __iter__(self) -> Iterator[Customer]:
        return iter(self._customers.values())
