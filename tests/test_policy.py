"""The policy file: the shipped example loads, bad files are refused where the mistake is."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from breachwatch.detection.findings import Severity
from breachwatch.detection.policy import (
    Policy,
    ServiceAccount,
    StaffMember,
    StaffStatus,
    load_policy,
)
from breachwatch.detection.rules import RULES
from breachwatch.errors import ConfigError
from breachwatch.events import Action

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """\
version: 1
staff:
  - person: yasmine
    accounts: [yasmine_helpdesk]
    roles: [helpdesk]
  - person: tom
    accounts: [tom_helpdesk, tom_panel]
    roles: [helpdesk]
service_accounts:
  - account: svc_shop
    roles: [webshop]
data_map:
  - object: clients.accounts
    categories: [identity, contact]
    subject_column: id
  - object: finance.bills
    categories: [billing]
    subject_column: account_id
grants:
  - role: helpdesk
    objects: [clients.accounts]
    actions: [read, write]
anomaly:
  distinct_subjects: {window: 10m, threshold: 50}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yml"
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    """1-based number of the line that contains needle (so tests survive edits of MINIMAL)."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def refused(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_policy(write(tmp_path, text))
    return caught.value


def test_shipped_policy_loads_and_describes_the_scenario() -> None:
    policy = load_policy(REPO / "config" / "policy.yml")
    kevin = policy.resolve_actor("kevin_helpdesk")
    assert isinstance(kevin, StaffMember)
    assert kevin.status is StaffStatus.LEFT
    assert isinstance(policy.resolve_actor("svc_shop"), ServiceAccount)
    assert policy.anomaly.distinct_subjects.window == timedelta(minutes=10)
    helpdesk = policy.roles_of("tom_helpdesk")
    # the bill archive is finance-only and mail content is nobody's business
    assert not policy.is_granted(helpdesk, "pg-main", "finance.bills_archive", Action.READ)
    assert not policy.is_granted(helpdesk, "pg-main", "webmail.messages", Action.READ)
    assert policy.is_granted(helpdesk, "pg-main", "clients.accounts", Action.READ)
    finance = policy.roles_of("lena_accounts")
    assert policy.is_granted(finance, "pg-main", "finance.bills_archive", Action.READ)
    assert not policy.is_granted(finance, "pg-main", "finance.bills", Action.EXPORT)
    assert policy.identifying_columns()["clients.accounts"] == ("email", "client_ref")
    entry = policy.data_entry("panel", "/panel/clients/5155/webmail/messages")
    assert entry is not None and entry.categories == ("communications_content",)


def test_minimal_policy_lookups(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, MINIMAL))
    tom = policy.resolve_actor("tom_panel")
    assert isinstance(tom, StaffMember) and tom.person == "tom"
    assert policy.resolve_actor("nobody") is None
    assert policy.roles_of("svc_shop") == frozenset({"webshop"})
    assert policy.roles_of("nobody") == frozenset()
    assert policy.subject_columns() == {"clients.accounts": "id", "finance.bills": "account_id"}
    assert policy.identifying_columns() == {}
    assert policy.categories_of("pg", ["finance.bills", "public.x", "clients.accounts"]) == (
        "billing",
        "identity",
        "contact",
    )
    assert policy.severity_of("ntk.outside_grants") is Severity.HIGH


def test_exact_beats_glob_and_store_entry_beats_star() -> None:
    policy = Policy.model_validate(
        {
            "version": 1,
            "data_map": [
                {"object": "webmail.*", "categories": ["mailbox"]},
                {"object": "webmail.*", "store": "maria", "categories": ["maria_mail"]},
                {"object": "webmail.messages", "categories": ["content"]},
                {"object": "webmail.messages", "store": "pg", "categories": ["pg_content"]},
            ],
        }
    )

    def categories(store: str, obj: str) -> tuple[str, ...] | None:
        entry = policy.data_entry(store, obj)
        return entry.categories if entry else None

    assert categories("pg", "webmail.messages") == ("pg_content",)
    assert categories("maria", "webmail.messages") == ("content",)
    assert categories("maria", "webmail.accounts") == ("maria_mail",)
    assert categories("pg", "webmail.accounts") == ("mailbox",)
    assert categories("pg", "finance.bills") is None
    # the second lookup is served from the cache and must agree
    assert categories("pg", "webmail.messages") == ("pg_content",)
    assert policy.subject_columns("pg") == {}


def test_category_grant_must_cover_every_category_of_the_object() -> None:
    policy = Policy.model_validate(
        {
            "version": 1,
            "data_map": [
                {"object": "clients.accounts", "categories": ["identity", "contact"]},
                {"object": "finance.bills_archive", "categories": ["identity", "billing"]},
            ],
            "grants": [
                {"role": "helpdesk", "categories": ["identity", "contact"], "actions": ["read"]}
            ],
        }
    )
    roles = frozenset({"helpdesk"})
    assert policy.is_granted(roles, "pg", "clients.accounts", Action.READ)
    assert not policy.is_granted(roles, "pg", "clients.accounts", Action.WRITE)
    assert not policy.is_granted(roles, "pg", "finance.bills_archive", Action.READ)
    assert not policy.is_granted(frozenset({"sales"}), "pg", "clients.accounts", Action.READ)


def test_grant_for_a_role_nobody_has_is_allowed(tmp_path: Path) -> None:
    extra = "  - role: auditor\n    objects: [finance.bills]\n    actions: [read]\nanomaly:"
    policy = load_policy(write(tmp_path, MINIMAL.replace("anomaly:", extra)))
    assert any(grant.role == "auditor" for grant in policy.grants)


def test_unknown_key_is_refused_with_line_and_key_path(tmp_path: Path) -> None:
    text = MINIMAL.replace("    roles: [webshop]", "    rolez: [webshop]")
    error = refused(tmp_path, text)
    assert error.file.endswith("policy.yml")
    assert error.key_path == "service_accounts.0.rolez"
    assert error.line == line_of(text, "rolez")
    assert "unknown key" in error.expected


@pytest.mark.parametrize("window", ["10", "10 minutes", "-5m", "0s", "1w", "1.5h"])
def test_bad_duration_is_refused(tmp_path: Path, window: str) -> None:
    error = refused(tmp_path, MINIMAL.replace("window: 10m", f"window: {window!r}"))
    assert error.key_path == "anomaly.distinct_subjects.window"
    assert error.line == line_of(MINIMAL, "window")
    assert '"90s", "10m", "2h" or "1d"' in error.expected


@pytest.mark.parametrize(
    ("text", "expected"), [("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400)]
)
def test_durations(tmp_path: Path, text: str, expected: int) -> None:
    policy = load_policy(write(tmp_path, MINIMAL.replace("window: 10m", f"window: {text}")))
    assert policy.anomaly.distinct_subjects.window.total_seconds() == expected


def test_bad_action_is_refused(tmp_path: Path) -> None:
    error = refused(tmp_path, MINIMAL.replace("actions: [read, write]", "actions: [read, update]"))
    assert error.key_path == "grants.0.actions.1"
    assert error.line == line_of(MINIMAL, "actions: [read, write]")
    assert "update" in error.expected


def test_duplicate_account_is_refused_where_it_repeats(tmp_path: Path) -> None:
    error = refused(
        tmp_path, MINIMAL.replace("[tom_helpdesk, tom_panel]", "[tom_panel, yasmine_helpdesk]")
    )
    assert error.key_path == "staff.1.accounts.1"
    assert error.line == line_of(MINIMAL, "tom_panel")
    assert "'yasmine_helpdesk' is already listed at staff.0 (yasmine)" in error.expected
    assert str(error).startswith(f"{error.file}:{error.line}: staff.1.accounts.1: ")


def test_account_both_staff_and_service_is_refused(tmp_path: Path) -> None:
    error = refused(tmp_path, MINIMAL.replace("account: svc_shop", "account: tom_panel"))
    assert error.key_path == "service_accounts.0.account"
    assert error.line == line_of(MINIMAL, "account: svc_shop")


def test_same_person_twice_is_refused(tmp_path: Path) -> None:
    error = refused(tmp_path, MINIMAL.replace("person: tom", "person: yasmine"))
    assert error.key_path == "staff.1.person"
    assert error.line == line_of(MINIMAL, "person: tom")


def test_severity_override_for_unknown_rule_is_refused(tmp_path: Path) -> None:
    text = MINIMAL + "severity:\n  ntk.outside_grant: critical\n"
    error = refused(tmp_path, text)
    assert error.key_path == "severity.ntk.outside_grant"
    assert error.line == line_of(text, "ntk.outside_grant:")
    assert "ntk.outside_grants" in error.expected  # the known rules are listed


def test_severity_override_applies(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, MINIMAL + "severity:\n  access.denied: medium\n"))
    assert policy.severity_of("access.denied") is Severity.MEDIUM
    assert policy.severity_of("auth.failed_login") is RULES["auth.failed_login"].default_severity


def test_grant_without_objects_or_categories_is_refused(tmp_path: Path) -> None:
    error = refused(tmp_path, MINIMAL.replace("    objects: [clients.accounts]\n", ""))
    assert error.key_path == "grants.0"
    assert "objects, categories or both" in error.expected


def test_version_is_required(tmp_path: Path) -> None:
    error = refused(tmp_path, MINIMAL.replace("version: 1\n", ""))
    assert error.key_path == "version"
    assert "missing" in error.expected


def test_policy_is_frozen(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, MINIMAL))
    with pytest.raises(ValueError, match="frozen"):
        policy.grants = ()


def test_rule_catalogue() -> None:
    assert set(RULES) == {
        "ntk.unknown_actor",
        "ntk.outside_grants",
        "ntk.departed_account",
        "access.denied",
        "auth.failed_login",
        "anomaly.distinct_subjects",
        "anomaly.unbounded_read",
        "anomaly.export",
        "baseline.distinct_subjects",
        "baseline.statements",
        "behaviour.first_access",
        "behaviour.unusual_hour",
        "behaviour.new_client",
        "behaviour.new_application",
        "behaviour.denied_burst",
        "auth.brute_force",
        "ntk.no_open_case",
        "ntk.outside_hours",
        "ntk.subject_limit",
        "ntk.service_account_interactive",
        "privacy.telecom_content",
        "privacy.archive_access",
        "gdpr.restricted_subject",
        "gdpr.marketing_objection",
        "gdpr.erased_subject",
        "gdpr.analytics_identifiable",
        "gdpr.retention_expired",
        "transfer.unapproved_processor",
        "privileged.personal_read",
        "change.ddl_personal_table",
    }
    outside = RULES["ntk.outside_grants"]
    assert outside.controls == (
        "ISO27001:2022 A.5.15",
        "ISO27001:2022 A.8.3",
        "GDPR Art. 5(1)(f)",
        "GDPR Art. 32",
    )
    assert outside.gdpr == "GDPR Art. 5(1)(f), Art. 32"
    assert RULES["ntk.departed_account"].default_severity is Severity.CRITICAL
    assert RULES["auth.failed_login"].controls == ("ISO27001:2022 A.8.5",)
    assert RULES["auth.failed_login"].gdpr == ""
    for rule_id, spec in RULES.items():
        assert spec.id == rule_id and spec.title
