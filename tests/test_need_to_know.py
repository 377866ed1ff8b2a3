"""Need-to-know rules on hand-built events."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from breachwatch.detection.findings import Finding, Severity
from breachwatch.detection.need_to_know import NeedToKnowDetector, resolve_person
from breachwatch.detection.policy import Policy, load_policy
from breachwatch.detection.rules import RULES
from breachwatch.events import AccessEvent, Action, SourcePosition

CEST = timezone(timedelta(hours=2))
T0 = datetime(2025, 6, 17, 9, 48, 8, tzinfo=CEST)
REPO = Path(__file__).resolve().parents[1]

POLICY = Policy.model_validate(
    {
        "version": 1,
        "staff": [
            {"person": "yasmine", "accounts": ["yasmine_helpdesk"], "roles": ["helpdesk"]},
            {"person": "lena", "accounts": ["lena_accounts"], "roles": ["finance"]},
            {
                "person": "kevin",
                "accounts": ["kevin_helpdesk"],
                "roles": ["helpdesk"],
                "status": "left",
            },
            {
                "person": "max",
                "accounts": ["max_helpdesk"],
                "roles": ["helpdesk"],
                "status": "suspended",
            },
            {"person": "intern", "accounts": ["intern1"]},
        ],
        "service_accounts": [{"account": "svc_shop", "roles": ["webshop"]}],
        "data_map": [
            {"object": "clients.accounts", "categories": ["identity", "contact"]},
            {"object": "finance.*", "categories": ["billing"]},
            {"object": "webmail.messages", "categories": ["communications_content"]},
        ],
        "grants": [
            {
                "role": "helpdesk",
                "categories": ["identity", "contact"],
                "actions": ["read", "write"],
            },
            {"role": "finance", "objects": ["finance.*"], "actions": ["read", "write"]},
            {
                "role": "webshop",
                "objects": ["clients.accounts", "finance.bills"],
                "actions": ["read"],
            },
        ],
        "severity": {"access.denied": "medium"},
    }
)


def event(
    actor: str,
    action: Action,
    *objects: str,
    subjects: tuple[str, ...] = (),
    detail: str | None = None,
    client: str | None = None,
) -> AccessEvent:
    return AccessEvent(
        time=T0,
        store="pg-main",
        actor=actor,
        action=action,
        position=SourcePosition("/var/log/postgresql/postgresql.log", 100, 7, 80),
        objects=objects,
        subjects=subjects,
        detail=detail,
        client=client,
    )


detect = NeedToKnowDetector(POLICY)


def rules(found: list[Finding]) -> list[str]:
    return [f.rule for f in found]


def test_granted_access_is_silent() -> None:
    assert detect(event("yasmine_helpdesk", Action.READ, "clients.accounts")) == []
    assert detect(event("lena_accounts", Action.WRITE, "finance.bills")) == []
    assert detect(event("svc_shop", Action.READ, "finance.bills", "clients.accounts")) == []


def test_objects_outside_the_data_map_are_not_personal_data() -> None:
    assert detect(event("stranger", Action.READ, "pg_catalog.pg_class")) == []
    assert detect(event("intern1", Action.EXPORT, "public.settings")) == []


def test_outside_grants_names_person_object_action_and_reason() -> None:
    found = detect(
        event(
            "yasmine_helpdesk",
            Action.EXPORT,
            "clients.accounts",
            "finance.bills",
            "public.x",
            subjects=("5155",),
        )
    )
    assert len(found) == 1
    finding = found[0]
    assert finding.rule == "ntk.outside_grants"
    assert finding.severity is Severity.HIGH
    assert finding.person == "yasmine"
    assert finding.actor == "yasmine_helpdesk"
    # clients.accounts is granted for read/write only, so both personal objects are outside
    assert finding.objects == ("clients.accounts", "finance.bills")
    assert finding.categories == ("identity", "contact", "billing")
    assert finding.subjects == ("5155",)
    assert finding.controls == RULES["ntk.outside_grants"].controls
    assert finding.evidence == (SourcePosition("/var/log/postgresql/postgresql.log", 100, 7, 80),)
    assert finding.time == T0 and finding.store == "pg-main"
    assert "yasmine (account yasmine_helpdesk) exported" in finding.explanation
    assert "no grant of role(s) helpdesk allows export of clients.accounts, finance.bills" in (
        finding.explanation
    )


def test_only_the_uncovered_objects_are_named() -> None:
    [finding] = detect(
        event("yasmine_helpdesk", Action.READ, "clients.accounts", "webmail.messages")
    )
    assert finding.objects == ("webmail.messages",)
    assert finding.categories == ("communications_content",)


def test_staff_without_roles() -> None:
    [finding] = detect(event("intern1", Action.READ, "clients.accounts"))
    assert finding.rule == "ntk.outside_grants"
    assert "has no roles" in finding.explanation


def test_service_account_outside_grants() -> None:
    [finding] = detect(event("svc_shop", Action.READ, "finance.bills_archive"))
    assert finding.rule == "ntk.outside_grants"
    assert finding.person is None
    assert "account svc_shop read finance.bills_archive" in finding.explanation


def test_unknown_actor_touching_personal_data() -> None:
    [finding] = detect(event("leadlift", Action.READ, "clients.accounts", "public.x"))
    assert finding.rule == "ntk.unknown_actor"
    assert finding.severity is Severity.HIGH
    assert finding.objects == ("clients.accounts",)
    assert finding.person is None
    assert finding.explanation.startswith("account leadlift read clients.accounts")
    assert "no known staff member or service account" in finding.explanation


@pytest.mark.parametrize("action", [Action.LOGIN, Action.READ, Action.OTHER])
@pytest.mark.parametrize(
    ("account", "status"), [("kevin_helpdesk", "left"), ("max_helpdesk", "suspended")]
)
def test_departed_or_suspended_account_any_use(action: Action, account: str, status: str) -> None:
    objects = ("clients.accounts",) if action is Action.READ else ()
    found = detect(event(account, action, *objects))
    # grants are not evaluated on top: the use of the account is the finding
    assert rules(found) == ["ntk.departed_account"]
    finding = found[0]
    assert finding.severity is Severity.CRITICAL
    assert f"has status {status}" in finding.explanation
    assert finding.controls[:2] == ("ISO27001:2022 A.5.18", "ISO27001:2022 A.5.16")


def test_departed_account_refused_access_is_both() -> None:
    found = detect(event("kevin_helpdesk", Action.DENIED, "webmail.messages"))
    assert rules(found) == ["ntk.departed_account", "access.denied"]


def test_denied_is_reported_with_the_severity_override() -> None:
    [finding] = detect(
        event(
            "paula_sales",
            Action.DENIED,
            "clients.accounts",
            detail="permission denied for table accounts",
        )
    )
    assert finding.rule == "access.denied"
    assert finding.severity is Severity.MEDIUM  # policy override of the default low
    assert finding.explanation == (
        "account paula_sales was refused access to clients.accounts "
        "(permission denied for table accounts)."
    )


def test_failed_login() -> None:
    [finding] = detect(event("lena_accounts", Action.LOGIN_FAILED, client="127.0.0.1"))
    assert finding.rule == "auth.failed_login"
    assert finding.severity is Severity.LOW
    assert finding.person == "lena"
    assert finding.explanation == "Failed login as lena (account lena_accounts) from 127.0.0.1."


def test_successful_login_of_active_staff_is_silent() -> None:
    assert detect(event("yasmine_helpdesk", Action.LOGIN)) == []
    assert detect(event("stranger", Action.LOGIN)) == []


def test_resolve_person_sets_person_for_staff_only() -> None:
    enrich = resolve_person(POLICY)
    raw = event("yasmine_helpdesk", Action.READ, "clients.accounts")
    enriched = enrich(raw)
    assert enriched.person == "yasmine"
    assert raw.person is None  # events are values, never changed in place
    assert enriched.objects == raw.objects and enriched.position == raw.position
    service = event("svc_shop", Action.READ)
    assert enrich(service) is service


def test_shipped_policy_flags_the_scenario() -> None:
    policy = load_policy(REPO / "config" / "policy.yml")
    ntk = NeedToKnowDetector(policy)
    # tom reads the bill archive (PG-15), omar reads mail content (PG-11)
    assert rules(ntk(event("tom_helpdesk", Action.READ, "finance.bills_archive"))) == [
        "ntk.outside_grants"
    ]
    assert rules(ntk(event("omar_sysadmin", Action.READ, "webmail.messages"))) == [
        "ntk.outside_grants"
    ]
    assert rules(ntk(event("kevin_helpdesk", Action.LOGIN))) == ["ntk.departed_account"]
    assert ntk(event("yasmine_helpdesk", Action.READ, "clients.accounts", "webmail.accounts")) == []
