"""Transfers: the approved sub-processors, how each shows up in the logs, and where it is.

::

    transfers:
      subprocessors:
        - name: PrintPost Versand GmbH
          status: approved                   # approved | terminated
          country: DE                        # ISO 3166 alpha-2 of the destination
          purpose: printing
          identified_by:                     # any one matches (all its given fields must)
            - {account: svc_reporting, application: "printpost-bridge/*"}
            - {account: ext_printpost, client: 127.0.0.31}
        - {name: CallNord, status: terminated, terminated_on: 2025-04-18, country: DE,
           identified_by: [{account: ext_callnord}]}
      safeguards: {}                          # outside the EU/EEA: name -> "SCC 2021/914 ..."

Personal data reaching a sub-processor that is not approved (or no longer: terminated), or
outside the EU/EEA without a recorded safeguard (GDPR Art. 44-46), is a finding.
"""

from __future__ import annotations

import ipaddress
from datetime import date
from enum import StrEnum
from fnmatch import fnmatchcase

from pydantic import Field, model_validator

from breachwatch.detection.policy_types import Model, Name
from breachwatch.events import AccessEvent

EU_EEA = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
        "IS",
        "LI",
        "NO",
    ]
)


def address_matches(client: str | None, patterns: tuple[str, ...]) -> bool:
    """``client`` (``127.0.0.1``, ``[local]``, ``localhost``) against addresses, CIDRs and
    literal names."""
    if client is None:
        return False
    host = client
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host in patterns
    for pattern in patterns:
        try:
            if address in ipaddress.ip_network(pattern, strict=False):
                return True
        except ValueError:
            if host == pattern:
                return True
    return False


class Identification(Model):
    account: Name | None = None
    application: Name | None = None  # glob on the client application name
    client: Name | None = None  # address or CIDR

    @model_validator(mode="after")
    def _something(self) -> Identification:
        if self.account is None and self.application is None and self.client is None:
            raise ValueError("give account, application, client or several")
        return self

    def matches(self, event: AccessEvent) -> bool:
        if self.account is not None and event.actor != self.account:
            return False
        if self.application is not None and not fnmatchcase(
            event.application or "", self.application
        ):
            return False
        return self.client is None or address_matches(event.client, (self.client,))


class ProcessorStatus(StrEnum):
    APPROVED = "approved"
    TERMINATED = "terminated"


class Subprocessor(Model):
    name: Name
    status: ProcessorStatus = ProcessorStatus.APPROVED
    terminated_on: date | None = None
    country: str = Field(pattern=r"^[A-Z]{2}$")
    safeguard: str | None = None  # e.g. "SCC 2021/914 module 3, TIA 2024-02"
    purpose: Name | None = None
    identified_by: tuple[Identification, ...] = Field(min_length=1)

    def problem(self, when: date) -> str | None:
        """Why personal data must not go to this processor at ``when``, or None."""
        if self.status is ProcessorStatus.TERMINATED and (
            self.terminated_on is None or when >= self.terminated_on
        ):
            since = f" since {self.terminated_on}" if self.terminated_on else ""
            return f"its contract is terminated{since}"
        if self.country not in EU_EEA and not self.safeguard:
            return f"it is in {self.country}, outside the EU/EEA, with no recorded safeguard"
        return None


class Transfers(Model):
    subprocessors: tuple[Subprocessor, ...] = ()

    def identify(self, event: AccessEvent) -> Subprocessor | None:
        for processor in self.subprocessors:
            if any(i.matches(event) for i in processor.identified_by):
                return processor
        return None
