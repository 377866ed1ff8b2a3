"""The policy's conditional rules (cases, hours, registry, transfers, content, privileged work),
with real reference files and a real HTTP server for the case API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from breachwatch.cli import main
from breachwatch.clock import FakeClock
from breachwatch.detection.conditions import PolicyConditionsDetector, build_conditions
from breachwatch.detection.need_to_know import NeedToKnowDetector, PolicyView
from breachwatch.detection.policy import Policy, load_policy
from breachwatch.detection.reference import HttpTable, Refresher
from breachwatch.errors import ConfigError
from breachwatch.events import AccessEvent, Action, SourcePosition

T0 = datetime(2025, 6, 17, 9, 0, tzinfo=UTC)  # a Tuesday, 11:00 in Brussels
CASES = """case_id,account_id,assignee,status,opened_at,closed_at
1,100,yasmine_helpdesk,open,2025-06-16 10:00:00+02,
2,200,yasmine_helpdesk,closed,2025-06-10 10:00:00+02,2025-06-16 17:00:00+02
3,300,helpdesk,open,2025-06-16 10:00:00+02,
"""
POLICY = """version: 1
staff:
  - {person: yasmine, accounts: [yasmine_helpdesk], roles: [helpdesk], team: helpdesk}
  - {person: kevin, accounts: [kevin_helpdesk], roles: [helpdesk], end: 2025-05-31}
  - {person: omar, accounts: [omar_dba], roles: [dba]}
  - {person: paula, accounts: [paula_sales], roles: [marketing]}
service_accounts:
  - {account: svc_etl, roles: [reporting], applications: [etl], sources: [10.0.0.0/24]}
data_map:
  - {object: clients.accounts, categories: [identity], subject_column: id}
  - {object: finance.archive, categories: [billing], subject_column: account_id, archive: true}
  - {object: helpdesk.cases, categories: [support], subject_column: account_id}
  - {object: mail.messages, categories: [communications_content]}
hours:
  business: {windows: [{start: "08:00", end: "18:00"}]}
casework:
  source: {file: cases.csv}
  objects: [helpdesk.cases]
registry:
  restrictions: {source: {file: restrictions.csv}, since: since, until: lifted}
  erasures: {source: {file: erasures.csv}, since: completed}
grants:
  - {role: helpdesk, objects: [clients.accounts], actions: [read, write], ticket: true,
     hours: business}
  - {role: helpdesk, objects: [helpdesk.cases], actions: [read, write]}
  - {role: reporting, objects: [clients.accounts, finance.archive], actions: [read],
     purpose: analytics}
  - {role: marketing, objects: [clients.accounts], actions: [read], purpose: marketing}
  - {role: dba, objects: ["clients.*"], actions: [ddl]}
telecom:
  exceptions: [{id: "order 2025/7", person: omar, objects: [mail.messages],
                start: 2025-06-17T00:00:00+00:00, end: 2025-06-18T00:00:00+00:00}]
privileged: {roles: [dba]}
marketing: {must_exclude: [clients.optouts]}
transfers:
  subprocessors:
    - {name: Far Away Inc, country: US, identified_by: [{account: svc_etl, application: "far/*"}]}
"""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    (tmp_path / "policy.yml").write_text(POLICY, encoding="utf-8")
    (tmp_path / "cases.csv").write_text(CASES, encoding="utf-8")
    (tmp_path / "restrictions.csv").write_text(
        "account_id,since,lifted\n100,2025-06-01 00:00:00+02,\n", encoding="utf-8"
    )
    (tmp_path / "erasures.csv").write_text(
        "account_id,completed\n400,2025-05-01 00:00:00+02\n500,\n", encoding="utf-8"
    )
    return tmp_path


def _detector(policy_dir: Path) -> PolicyConditionsDetector:
    return build_conditions(PolicyView(load_policy(policy_dir / "policy.yml")))


def ev(
    actor: str,
    objects: tuple[str, ...],
    *,
    action: Action = Action.READ,
    subjects: tuple[str, ...] = (),
    time: datetime = T0,
    statement: str | None = None,
    application: str | None = None,
    client: str | None = None,
    command: str | None = None,
) -> AccessEvent:
    return AccessEvent(
        time=time,
        store="db",
        actor=actor,
        action=action,
        position=SourcePosition("log", 0, 1),
        objects=objects,
        subjects=subjects,
        statement=statement,
        application=application,
        client=client,
        command=command,
    )


def rules(found: list[Any]) -> list[str]:
    return sorted(f.rule for f in found)


def test_case_bound_access(policy_dir: Path) -> None:
    detect = _detector(policy_dir)
    assert detect(ev("yasmine_helpdesk", ("clients.accounts",), subjects=("100",))) == []
    # assigned to her team
    assert detect(ev("yasmine_helpdesk", ("clients.accounts",), subjects=("300",))) == []
    # closed yesterday, no case at all, or a search naming no customer
    for subjects in (("200",), ("999",), ()):
        found = detect(ev("yasmine_helpdesk", ("clients.accounts",), subjects=subjects))
        assert rules(found) == ["ntk.no_open_case"]
    # the work list needs no case
    assert detect(ev("yasmine_helpdesk", ("helpdesk.cases",))) == []


def test_lookup_by_a_key_whose_value_is_not_logged(policy_dir: Path) -> None:
    """MariaDB logs an executed prepared statement with ``?`` and no values: a lookup by case
    id or customer id is bound to one case, just not one the log names; a search is not."""
    detect = _detector(policy_dir)
    objects = ("helpdesk.cases", "clients.accounts")
    by_case = (
        "SELECT c.case_id, a.full_name FROM helpdesk.cases c JOIN clients.accounts a "
        "ON a.id = c.account_id WHERE c.case_id = ?"
    )
    assert detect(ev("yasmine_helpdesk", objects, statement=by_case)) == []
    by_id = "SELECT full_name FROM clients.accounts WHERE id = ?"
    assert detect(ev("yasmine_helpdesk", ("clients.accounts",), statement=by_id)) == []
    # the same with pgaudit.log_parameter=off
    by_param = "SELECT full_name FROM clients.accounts WHERE id = $1"
    assert detect(ev("yasmine_helpdesk", ("clients.accounts",), statement=by_param)) == []
    for search in (
        "SELECT id, full_name FROM clients.accounts WHERE full_name LIKE ?",
        "SELECT id FROM clients.accounts WHERE id = 7 OR 'id = ?' = ?",  # ? in a string
        "SELECT id, full_name FROM clients.accounts",
    ):
        found = detect(ev("yasmine_helpdesk", ("clients.accounts",), statement=search))
        assert rules(found) == ["ntk.no_open_case"], search


def test_case_closed_in_the_log_closes_it_from_then(policy_dir: Path) -> None:
    detect = _detector(policy_dir)
    close = ev(
        "yasmine_helpdesk",
        ("helpdesk.cases",),
        action=Action.WRITE,
        statement="UPDATE helpdesk.cases SET status = 'closed' WHERE case_id = 1",
    )
    assert detect(close) == []
    later = ev("yasmine_helpdesk", ("clients.accounts",), subjects=("100",), time=T0 + timedelta(1))
    assert rules(detect(later)) == ["ntk.no_open_case"]
    assert "case 1" in detect(later)[0].explanation


def test_cases_file_reload_swaps_the_index(policy_dir: Path) -> None:
    detect = _detector(policy_dir)
    event = ev("yasmine_helpdesk", ("clients.accounts",), subjects=("999",))
    assert rules(detect(event)) == ["ntk.no_open_case"]
    with (policy_dir / "cases.csv").open("a", encoding="utf-8") as handle:
        handle.write("9,999,yasmine_helpdesk,open,2025-06-17 08:00:00+02,\n")
    assert all(h.refresh() for h in detect.holders[:1])
    assert detect(event) == []


def test_refresher_reports_swaps_and_survives_a_table_that_does_not_build(
    policy_dir: Path,
) -> None:
    detect = _detector(policy_dir)
    reports: list[tuple[str, str]] = []
    refresher = Refresher(detect.holders, 0.05, lambda kind, detail: reports.append((kind, detail)))
    refresher.refresh_once()
    assert reports == []  # nothing changed since the detector read the files
    cases = policy_dir / "cases.csv"
    cases.write_text(CASES + "9,999,yasmine_helpdesk,open,yesterday,\n", encoding="utf-8")
    refresher.refresh_once()  # parses as CSV, but "yesterday" is no time: the old index stays
    assert [k for k, _ in reports] == ["failed"] and "yesterday" in reports[0][1]
    event = ev("yasmine_helpdesk", ("clients.accounts",), subjects=("999",))
    assert rules(detect(event)) == ["ntk.no_open_case"]
    cases.write_text(CASES + "9,999,yasmine_helpdesk,open,2025-06-17 08:00:00+02,\n", "utf-8")
    refresher.start()  # the thread does the same rounds
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while detect(event) and datetime.now(UTC) < deadline:
            threading.Event().wait(0.02)
    finally:
        refresher.stop()
    assert detect(event) == [] and not refresher.is_alive()
    assert reports[-1] == ("reloaded", str(cases))


def test_conditions_state_snapshot_restore(policy_dir: Path, tmp_path: Path) -> None:
    limited = POLICY.replace(
        "actions: [read, write], ticket: true,\n     hours: business}",
        "actions: [read, write], ticket: true,\n     max_subjects: {window: 1h, threshold: 2}}",
    )
    (policy_dir / "policy.yml").write_text(limited, encoding="utf-8")
    first = _detector(policy_dir)
    close = ev(
        "yasmine_helpdesk",
        ("helpdesk.cases",),
        action=Action.WRITE,
        statement="UPDATE helpdesk.cases SET status = 'closed' WHERE case_id = 1",
    )
    assert first(close) == []
    assert first(ev("yasmine_helpdesk", ("clients.accounts",), subjects=("300",))) == []
    saved = json.loads(json.dumps(first.snapshot()))  # what the store keeps
    assert saved["closed_in_log"] == {"1": T0.isoformat().replace("+00:00", "Z")}

    def after_restart(policy_text: str) -> list[str]:
        (policy_dir / "policy.yml").write_text(policy_text, encoding="utf-8")
        second = _detector(policy_dir)
        second.restore(saved)
        later = T0 + timedelta(minutes=5)
        again = second(ev("yasmine_helpdesk", ("clients.accounts",), subjects=("100",), time=later))
        more = second(ev("yasmine_helpdesk", ("clients.accounts",), subjects=("200",), time=later))
        return rules(again) + rules(more)

    # 100: its case was closed in the log; 300, 100, 200 make three customers, the limit is 2
    assert after_restart(limited) == ["ntk.no_open_case", "ntk.no_open_case", "ntk.subject_limit"]
    # a policy whose grants moved: the window follows its grant by content, not by position
    grants = limited.index("grants:\n") + len("grants:\n")
    moved = (
        limited[:grants]
        + "  - {role: nobody, objects: [x.y], actions: [read]}\n"
        + limited[grants:]
    )
    assert after_restart(moved) == ["ntk.no_open_case", "ntk.no_open_case", "ntk.subject_limit"]
    # a changed grant starts a new window
    changed = limited.replace("threshold: 2}", "threshold: 3}")
    assert after_restart(changed) == ["ntk.no_open_case", "ntk.no_open_case"]
    with pytest.raises(ValueError):
        first.restore({"version": 2})


def test_web_page_takes_the_customer_of_its_referer(policy_dir: Path) -> None:
    """A route with ``subject: referer`` (a bill's page, its POST actions) is about the
    customer of the page it was opened from: a case page (through the case index) or a page
    seen before by the same account. Customer 100 of case 1 is under an Art. 18 restriction."""
    detect = _detector(policy_dir)

    def web(method: str, path: str, referer: str, *tags: str) -> AccessEvent:
        action = Action.READ if method == "GET" else Action.WRITE
        event = ev("yasmine_helpdesk", ("clients.accounts",), action=action, command=method)
        return replace(event, tags=frozenset({f"path:{path}", f"referer:{referer}", *tags}))

    page = web("GET", "/bills/B-1", "/cases/1", "subject:referer", "referer_case_id:1")
    assert detect(page) == []  # case 1 is hers and open: reading is fine
    post = web("POST", "/bills/B-1/collection", "/bills/B-1", "subject:referer")
    found = detect(post)  # the page above was customer 100's
    assert rules(found) == ["gdpr.restricted_subject"] and found[0].subjects == ("100",)
    # the same page, remembered across a restart
    saved = json.loads(json.dumps(detect.snapshot()))
    again = _detector(policy_dir)
    assert rules(again(post)) == ["ntk.no_open_case"]  # nothing known: names no customer
    again.restore(saved)
    assert rules(again(post)) == ["gdpr.restricted_subject"]
    # a route without ``subject: referer`` (a search) stays a search wherever it came from
    search = web("GET", "/search", "/cases/1", "referer_case_id:1")
    assert rules(detect(search)) == ["ntk.no_open_case"]
    # another account's pages are not this one's
    other = replace(post, actor="paula_sales")
    assert detect(other) == []
    paula_page = replace(page, actor="paula_sales")
    # her own visit of the page (through case 1): a marketing read of a restricted customer
    assert rules(detect(paula_page)) == ["gdpr.restricted_subject"]
    assert rules(detect(other)) == ["gdpr.restricted_subject"]


def test_business_hours(policy_dir: Path) -> None:
    detect = _detector(policy_dir)
    night = T0.replace(hour=1)  # 03:00 in Brussels
    found = detect(ev("yasmine_helpdesk", ("clients.accounts",), subjects=("100",), time=night))
    assert rules(found) == ["ntk.outside_hours"]


def test_departed_by_end_date_even_if_status_active(policy_dir: Path) -> None:
    ntk = NeedToKnowDetector(load_policy(policy_dir / "policy.yml"))
    found = ntk(ev("kevin_helpdesk", ("clients.accounts",), subjects=("100",)))
    assert rules(found) == ["ntk.departed_account"]
    assert "ended on 2025-05-31" in found[0].explanation


def test_service_account_interactive_and_unapproved_integrations(policy_dir: Path) -> None:
    detect = _detector(policy_dir)
    ok = ev("svc_etl", ("clients.accounts",), application="etl", client="10.0.0.5")
    assert rules(detect(ok)) == ["gdpr.analytics_identifiable"]  # rows, not aggregates
    psql = ev("svc_etl", ("clients.accounts",), application="psql", client="10.0.0.5")
    assert "ntk.service_account_interactive" in rules(detect(psql))
    elsewhere = ev("svc_etl", ("clients.accounts",), application="etl", client="192.0.2.1")
    assert "ntk.service_account_interactive" in rules(detect(elsewhere))
    other = ev("svc_etl", ("clients.accounts",), application="leadtool/1", client="10.0.0.5")
    assert "transfer.unapproved_processor" in rules(detect(other))
    # an identified processor outside the EU/EEA without a safeguard
    far = ev("svc_etl", ("clients.accounts",), application="far/2", client="10.0.0.5")
    assert "transfer.unapproved_processor" in rules(detect(far))


def test_aggregates_are_not_identifiable_rows(policy_dir: Path) -> None:
    detect = _detector(policy_dir)
    stats = ev(
        "svc_etl",
        ("clients.accounts",),
        application="etl",
        client="10.0.0.5",
        statement="SELECT lang, count(*) FROM clients.accounts GROUP BY lang",
    )
    assert detect(stats) == []


def test_telecom_content_needs_a_legal_exception(policy_dir: Path) -> None:
    detect = _detector(policy_dir)
    assert "privacy.telecom_content" in rules(detect(ev("paula_sales", ("mail.messages",))))
    assert "privacy.telecom_content" not in rules(detect(ev("omar_dba", ("mail.messages",))))
    after = ev("omar_dba", ("mail.messages",), time=T0 + timedelta(days=2))
    assert "privacy.telecom_content" in rules(detect(after))


def test_archive_restriction_erasure(policy_dir: Path) -> None:
    detect = _detector(policy_dir)
    archive = ev("svc_etl", ("finance.archive",), application="etl", client="10.0.0.5")
    assert "privacy.archive_access" in rules(detect(archive))
    write = ev("yasmine_helpdesk", ("clients.accounts",), action=Action.WRITE, subjects=("100",))
    assert rules(detect(write)) == ["gdpr.restricted_subject"]
    erased = ev("paula_sales", ("clients.accounts",), subjects=("400",))
    assert rules(detect(erased)) == ["gdpr.erased_subject"]
    not_done = ev("paula_sales", ("clients.accounts",), subjects=("500",))
    assert detect(not_done) == []


def test_marketing_campaign_must_exclude_the_registers(policy_dir: Path) -> None:
    detect = _detector(policy_dir)
    good = (
        "SELECT email FROM clients.accounts a WHERE NOT EXISTS "
        "(SELECT 1 FROM clients.optouts o WHERE o.account_id = a.id)"
    )
    assert detect(ev("paula_sales", ("clients.accounts",), statement=good)) == []
    picked = "SELECT email FROM clients.accounts a JOIN clients.optouts o ON o.account_id = a.id"
    assert rules(detect(ev("paula_sales", ("clients.accounts",), statement=picked))) == [
        "gdpr.marketing_objection"
    ]
    bare = "SELECT email FROM clients.accounts WHERE lang = 'nl'"
    assert rules(detect(ev("paula_sales", ("clients.accounts",), statement=bare))) == [
        "gdpr.marketing_objection"
    ]


def test_privileged_work(policy_dir: Path) -> None:
    detect = _detector(policy_dir)
    count = ev("omar_dba", ("clients.accounts",), statement="SELECT count(*) FROM clients.accounts")
    assert detect(count) == []
    index = ev("omar_dba", ("clients.accounts",), action=Action.DDL, command="CREATE INDEX")
    assert detect(index) == []
    alter = ev("omar_dba", ("clients.accounts",), action=Action.DDL, command="ALTER TABLE")
    assert rules(detect(alter)) == ["change.ddl_personal_table"]
    read = ev("omar_dba", ("clients.accounts",), statement="SELECT email FROM clients.accounts")
    assert rules(detect(read)) == ["privileged.personal_read"]


class _CaseApi(BaseHTTPRequestHandler):
    body: bytes = b"[]"
    requests = 0

    def do_GET(self) -> None:
        type(self).requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def case_api() -> Iterator[tuple[str, type[_CaseApi]]]:
    handler = type("Api", (_CaseApi,), {"body": b"[]", "requests": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cases", handler
    finally:
        server.shutdown()
        server.server_close()


def test_cases_polled_from_http_on_the_injected_clock(
    policy_dir: Path, case_api: tuple[str, type[_CaseApi]]
) -> None:
    url, handler = case_api
    text = POLICY.replace("source: {file: cases.csv}", f"source: {{url: '{url}', poll: 1m}}")
    (policy_dir / "policy.yml").write_text(text, encoding="utf-8")
    clock = FakeClock(T0)
    detect = build_conditions(PolicyView(load_policy(policy_dir / "policy.yml")), clock)
    event = ev("yasmine_helpdesk", ("clients.accounts",), subjects=("100",))
    assert rules(detect(event)) == ["ntk.no_open_case"]
    handler.body = json.dumps(
        [
            {
                "case_id": 1,
                "account_id": 100,
                "assignee": "yasmine_helpdesk",
                "status": "open",
                "opened_at": "2025-06-16T10:00:00+02:00",
                "closed_at": None,
            }
        ]
    ).encode()
    assert detect.holders[0].refresh() is False  # not due yet
    assert handler.requests == 1
    clock.advance(timedelta(minutes=1))
    assert detect.holders[0].refresh() is True
    assert detect(event) == []


def test_http_table_keeps_the_last_table_when_the_api_fails() -> None:
    table = HttpTable("http://127.0.0.1:9/none", FakeClock(T0), timedelta(minutes=1), timeout=0.5)
    assert table.rows == () and table.error is not None


def test_policy_refused_with_line_and_key(tmp_path: Path) -> None:
    bad = POLICY.replace("hours: business}", "hours: night}")
    (tmp_path / "policy.yml").write_text(bad, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_policy(tmp_path / "policy.yml")
    lines = bad.splitlines()
    key = next(i for i, line in enumerate(lines, 1) if "hours: night" in line)
    assert f"policy.yml:{key}: grants.0.hours: no schedule 'night'" in str(err.value)


def test_policy_schema_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "casework" in schema["properties"] and "transfers" in schema["properties"]


def test_rules_json_names_iso_and_gdpr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "--json"]) == 0
    items = {
        json.loads(line)["rule"]: json.loads(line) for line in capsys.readouterr().out.splitlines()
    }
    assert items["ntk.no_open_case"]["iso27001"] and items["gdpr.erased_subject"]["gdpr"]
    assert isinstance(Policy.model_json_schema(), dict)
