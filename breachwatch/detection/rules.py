"""The rule catalogue: every rule id a detector may emit, with its default severity and the
controls a finding of it is evidence for.

Kept as data so that the policy file can be checked against it at load (a severity override
for a misspelt rule would otherwise silently do nothing) and so that reports can list the
controls without asking the detectors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from breachwatch.detection.findings import Severity

ISO = "ISO27001:2022"


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One rule. ``controls`` is what findings are tagged with: the ISO/IEC 27001:2022
    Annex A controls, then the GDPR articles; ``gdpr`` is the same articles as one line for
    reports ("GDPR Art. 5(1)(f), Art. 32"), empty when no article applies directly."""

    id: str
    default_severity: Severity
    title: str
    controls: tuple[str, ...]
    gdpr: str


def _rule(
    rule_id: str,
    severity: Severity,
    title: str,
    annex_a: tuple[str, ...],
    articles: tuple[str, ...] = (),
) -> RuleSpec:
    # Both renderings come from one list so they cannot drift apart.
    controls = tuple(f"{ISO} A.{number}" for number in annex_a)
    controls += tuple(f"GDPR {article}" for article in articles)
    gdpr = f"GDPR {', '.join(articles)}" if articles else ""
    return RuleSpec(rule_id, severity, title, controls, gdpr)


_CATALOGUE = (
    _rule(
        "ntk.unknown_actor",
        Severity.HIGH,
        "Personal data accessed by an account that is neither staff nor a service account",
        ("5.16", "5.18"),
        ("Art. 32",),
    ),
    _rule(
        "ntk.outside_grants",
        Severity.HIGH,
        "Personal data accessed outside the grants of the actor's roles",
        ("5.15", "8.3"),
        ("Art. 5(1)(f)", "Art. 32"),
    ),
    _rule(
        "ntk.departed_account",
        Severity.CRITICAL,
        "Account of a person who left or is suspended was used",
        ("5.18", "5.16"),
        ("Art. 32",),
    ),
    _rule(
        "access.denied",
        Severity.LOW,
        "The store refused an access",
        ("8.3", "8.16"),
    ),
    _rule(
        "auth.failed_login",
        Severity.LOW,
        "Failed login",
        ("8.5",),
    ),
    _rule(
        "anomaly.distinct_subjects",
        Severity.HIGH,
        "Unusually many distinct data subjects accessed in a short window",
        ("8.16", "8.12"),
        ("Art. 33",),
    ),
    _rule(
        "anomaly.unbounded_read",
        Severity.MEDIUM,
        "Read of personal data without a data-subject predicate (whole table)",
        ("8.12", "8.3"),
        ("Art. 5(1)(c)",),
    ),
    _rule(
        "anomaly.export",
        Severity.HIGH,
        "Personal data exported out of the store",
        ("8.12", "5.14"),
        ("Art. 5(1)(f)",),
    ),
)

RULES: Mapping[str, RuleSpec] = MappingProxyType({rule.id: rule for rule in _CATALOGUE})
