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
    _rule(
        "ntk.no_open_case",
        Severity.HIGH,
        "Customer data accessed without an open case for that customer assigned to the person "
        "or their team",
        ("5.15", "8.3", "5.34"),
        ("Art. 5(1)(b)", "Art. 5(1)(c)", "Art. 32"),
    ),
    _rule(
        "ntk.outside_hours",
        Severity.MEDIUM,
        "Personal data accessed outside the business hours of the grant, with no on-call duty",
        ("5.15", "8.16"),
        ("Art. 32",),
    ),
    _rule(
        "ntk.subject_limit",
        Severity.HIGH,
        "More distinct data subjects accessed in the window than the grant allows",
        ("8.3", "8.12", "8.16"),
        ("Art. 5(1)(c)",),
    ),
    _rule(
        "ntk.service_account_interactive",
        Severity.HIGH,
        "Service account used interactively (interactive client, or a source address it is "
        "not allowed to use)",
        ("5.16", "5.17", "8.2", "8.5"),
        ("Art. 32",),
    ),
    _rule(
        "privacy.telecom_content",
        Severity.CRITICAL,
        "Communications content (telecommunications secrecy) read without a recorded legal "
        "exception",
        ("5.34", "8.3"),
        ("Art. 5(1)(f)", "Art. 32", "ePrivacy Dir. 2002/58/EC Art. 5"),
    ),
    _rule(
        "privacy.archive_access",
        Severity.MEDIUM,
        "Archived (retention-only) data processed by a role outside legal and finance",
        ("5.33", "8.3", "5.34"),
        ("Art. 5(1)(b)", "Art. 5(1)(e)"),
    ),
    _rule(
        "gdpr.restricted_subject",
        Severity.HIGH,
        "Processing beyond storage of a data subject under an Art. 18 restriction",
        ("5.34", "8.3"),
        ("Art. 18",),
    ),
    _rule(
        "gdpr.marketing_objection",
        Severity.HIGH,
        "Marketing use of data subjects who objected (or a campaign that does not exclude them)",
        ("5.34", "8.11"),
        ("Art. 21(2)", "Art. 21(3)"),
    ),
    _rule(
        "gdpr.erased_subject",
        Severity.HIGH,
        "Access to data of a subject whose erasure is recorded as done",
        ("8.10", "5.34"),
        ("Art. 17",),
    ),
    _rule(
        "gdpr.analytics_identifiable",
        Severity.MEDIUM,
        "Analytics purpose reading identifiable personal data instead of aggregates",
        ("5.34", "8.11"),
        ("Art. 5(1)(c)", "Art. 25", "Art. 89(1)"),
    ),
    _rule(
        "gdpr.retention_expired",
        Severity.HIGH,
        "Data of former customers past the retention period used (targeted) for a live purpose",
        ("5.33", "8.10", "5.34"),
        ("Art. 5(1)(e)",),
    ),
    _rule(
        "transfer.unapproved_processor",
        Severity.CRITICAL,
        "Personal data to a processor that is not approved, terminated, or outside the EU/EEA "
        "without a recorded safeguard",
        ("5.14", "5.19", "5.20", "5.22", "8.12"),
        ("Art. 28", "Art. 44", "Art. 46"),
    ),
    _rule(
        "privileged.personal_read",
        Severity.HIGH,
        "Privileged (DBA) account read personal data outside a change window",
        ("8.2", "8.18", "8.3"),
        ("Art. 32",),
    ),
    _rule(
        "change.ddl_personal_table",
        Severity.MEDIUM,
        "Schema change (DDL other than routine maintenance) on a personal-data table outside a "
        "change window",
        ("8.2", "5.3"),
        ("Art. 32",),
    ),
    # Anomaly side (baseline.py, behaviour.py): unusual for this actor, not forbidden as such.
    _rule(
        "baseline.distinct_subjects",
        Severity.MEDIUM,
        "More distinct data subjects in the window than the actor's (or peers') usual volume",
        ("8.16", "8.12"),
        ("Art. 32",),
    ),
    _rule(
        "baseline.statements",
        Severity.MEDIUM,
        "More personal-data reads in the window than the actor's (or peers') usual volume",
        ("8.16", "8.12"),
    ),
    _rule(
        "behaviour.first_access",
        Severity.LOW,
        "First access by the actor to a store or personal-data object, after the learning period",
        ("8.16", "5.15"),
    ),
    _rule(
        "behaviour.unusual_hour",
        Severity.MEDIUM,
        "Access at a local hour in which the actor never (or hardly ever) works",
        ("8.16",),
    ),
    _rule(
        "behaviour.new_client",
        Severity.LOW,
        "Access from a client address not seen for the actor before",
        ("8.16", "8.5"),
    ),
    _rule(
        "behaviour.new_application",
        Severity.LOW,
        "Access with an application not seen for the actor before",
        ("8.16", "8.5"),
    ),
    _rule(
        "behaviour.denied_burst",
        Severity.MEDIUM,
        "A burst of refused statements by one actor",
        ("8.3", "8.16"),
    ),
    _rule(
        "auth.brute_force",
        Severity.HIGH,
        "Failed logins against several account names (or many failures) from one address",
        ("8.5", "8.16"),
        ("Art. 32",),
    ),
)

RULES: Mapping[str, RuleSpec] = MappingProxyType({rule.id: rule for rule in _CATALOGUE})
