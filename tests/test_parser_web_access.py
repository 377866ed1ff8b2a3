"""The web access parser against the real nginx panel log (combined format) and its ground
truth; routes as the panel's nginx configuration (server_settings_nginx.conf) defines them."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from breachwatch.errors import ParseFailure
from breachwatch.events import Action
from breachwatch.parsers.registry import FORMAT_NAMES, build_format
from breachwatch.parsers.web_access import WebAccessFormat
from breachwatch.parsers.web_routes import normalize_path
from tests.parser_helpers import Parsed, assert_each_line_once, frame, text_lines

CUSTOMER = "{customer_id:int}"
ROUTES: list[dict[str, Any]] = [
    {"pattern": "/panel/clients/search", "object": "panel.clients"},
    {"pattern": "/panel/clients/export.csv", "object": "panel.clients"},
    {"pattern": f"/panel/clients/{CUSTOMER}", "object": "panel.clients"},
    {"pattern": f"/panel/clients/{CUSTOMER}/bills", "object": "panel.bills"},
    {"pattern": f"/panel/clients/{CUSTOMER}/contracts", "object": "panel.contracts"},
    {"pattern": f"/panel/clients/{CUSTOMER}/webmail", "object": "panel.webmail"},
    {"pattern": f"/panel/clients/{CUSTOMER}/webmail/messages", "object": "panel.messages"},
    {"pattern": "/panel/cases/{case_id:int}/*", "object": "panel.cases", "methods": ["POST"]},
    {"pattern": "/panel/cases/{case_id:int}", "object": "panel.cases"},
    {"pattern": "/panel/cases", "object": "panel.cases"},
    {"pattern": "/panel/bills/archive", "object": "panel.bills_archive", "subject": "client"},
    {"pattern": "/panel/bills/export.csv", "object": "panel.bills"},
    {"pattern": "/panel/bills/{bill_no}/{step}", "object": "panel.bills", "action": "write"},
    {"pattern": "/panel/bills/{bill_no}", "object": "panel.bills"},
    {"pattern": "/panel/bills", "object": "panel.bills"},
    {"pattern": "/panel/marketing/segments", "object": "panel.marketing"},
    {"pattern": "/panel/users/{user}/disable", "object": "panel.users", "methods": ["POST"]},
    {"pattern": "/api/v1/clients/{customer_id:int}", "object": "api.clients"},
    {"pattern": "/api/v1/clients", "object": "api.clients"},
    {"pattern": "/api/v1/print-queue", "object": "api.print_queue"},
    {"pattern": "/panel/", "object": "panel.dashboard"},
]
FMT = WebAccessFormat(ROUTES)


@pytest.fixture(scope="module")
def day(samples_dir: Path) -> Parsed:
    return Parsed(FMT, samples_dir / "nginx_panel_dayshift" / "access.log", "panel")


@pytest.fixture(scope="module")
def truth(samples_dir: Path) -> list[dict[str, Any]]:
    path = samples_dir / "nginx_panel_dayshift" / "ground_truth.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_line_is_one_event(day: Parsed) -> None:
    assert len(day.lines) == 771
    assert_each_line_once(day.records, 771)
    assert not day.failures
    assert len(day.events) == 771
    unmatched = {e.objects for e in day.events if "route:none" in e.tags}
    assert unmatched == {("/healthz",)}
    assert all(e.actor == "" for e in day.events if e.objects == ("/healthz",))


def test_ground_truth_requests(day: Parsed, truth: list[dict[str, Any]]) -> None:
    lines = {no: day.lines[no - 1].text for e in truth for no in e["lines"]}
    actors = {no: set(e.get("actors") or [e["actor"]]) for e in truth for no in e["lines"]}
    assert len(lines) == 108  # every suspicious request, 401s included
    for no, text in lines.items():
        (event,) = day.at(no)
        assert event.actor in actors[no], no
        status = int(text.split('"')[2].split()[0])
        method, target = text.split('"')[1].split()[:2]
        expected = Action.WRITE if method == "POST" else Action.READ
        if status == 401:
            expected = Action.LOGIN_FAILED
        elif status == 403:
            expected = Action.DENIED
        elif "export" in target:
            expected = Action.EXPORT
        assert event.action is expected, (no, text)
        assert event.command == method and event.client == text.split()[0]
        assert "route:none" not in event.tags, no
        assert f"status:{status}" in event.tags


def test_customer_pages_referer_and_subjects(day: Parsed) -> None:
    (nina,) = day.at(8)  # GET /panel/clients/1735, Referer .../panel/cases/8401
    assert nina.objects == ("panel.clients",) and nina.subjects == ("1735",)
    assert "referer:/panel/cases/8401" in nina.tags
    assert nina.time == datetime(2025, 6, 17, 6, 6, 1, tzinfo=UTC)
    assert nina.application is not None and nina.application.startswith("Mozilla/5.0")
    tom = [
        e
        for e in day.events
        if e.actor == "tom_helpdesk" and e.objects == ("panel.clients",) and e.command == "GET"
    ]
    # the slow exfiltration: customer pages opened without a case Referer (NGX-02)
    no_case = [e for e in tom if not any(t.startswith("referer:/panel/cases/") for t in e.tags)]
    assert len(no_case) == 75
    (lena,) = day.at(373)  # the archive by year: no subject
    assert lena.objects == ("panel.bills_archive",) and lena.subjects == ()
    (archive,) = day.at(398)  # NGX-14: the subject is a query parameter
    assert archive.subjects == ("903",) and archive.parameters == ("client=903",)
    (close,) = day.at(14)  # POST /panel/cases/8401/close
    assert close.action is Action.WRITE and "case_id:8401" in close.tags
    (paula,) = day.at(188)  # marketing segment ?export=1
    assert paula.action is Action.EXPORT and "export=1" in paula.parameters


def test_subject_from_the_referer_page() -> None:
    """``subject: referer``: the request is tagged to take the customer of the page it came
    from, and what that page's own route names comes along (the page may not be in the log)."""
    routes: list[dict[str, Any]] = [
        {
            "pattern": "/panel/bills/{bill_no}/{verb}",
            "object": "finance.bills",
            "methods": ["POST"],
            "action": "write",
            "subject": "referer",
        },
        {"pattern": "/panel/bills/{bill_no}", "object": "finance.bills", "subject": "referer"},
        {"pattern": "/panel/cases/{case_id:int}", "object": "helpdesk.cases", "subject": "case"},
        {"pattern": f"/panel/clients/{CUSTOMER}/bills", "object": "finance.bills"},
        {"pattern": "/panel/bills", "object": "finance.bills", "subject": "none"},
    ]
    fmt = WebAccessFormat(routes)
    head = '127.0.0.24 - lena [17/Jun/2025:11:20:02 +0200] "'
    lines = text_lines(
        [
            head + 'GET /panel/bills/B-1 HTTP/1.1" 200 47 "http://panel/panel/cases/8306" "UA"',
            head
            + 'POST /panel/bills/B-1/collection HTTP/1.1" 200 4 "http://x/panel/bills/B-1" "-"',
            head + 'GET /panel/bills/B-2 HTTP/1.1" 200 47 "http://x/panel/clients/55/bills" "-"',
            head
            + 'GET /panel/bills/B-3 HTTP/1.1" 200 47 "http://x/panel/bills?status=overdue" "-"',
            head + 'GET /panel/clients/55/bills HTTP/1.1" 200 47 "http://x/panel/cases/8306" "-"',
        ]
    )
    results = [fmt.parse(r, "panel") for r in frame(fmt, lines)]
    by_case, post, by_customer, from_list, own = [
        e for r in results if isinstance(r, list) for e in r
    ]
    assert {"subject:referer", "referer_case_id:8306", "path:/panel/bills/B-1"} <= by_case.tags
    assert by_case.subjects == ()
    assert "subject:referer" in post.tags and "referer:/panel/bills/B-1" in post.tags
    assert not any(t.startswith("referer_") for t in post.tags)  # its Referer inherits too
    assert "referer_subject:55" in by_customer.tags
    assert not any(t.startswith("referer_") for t in from_list.tags)  # a list names nobody
    # a route with its own subject does not look at the Referer's route
    assert own.subjects == ("55",) and not any(t.startswith("referer_") for t in own.tags)


def test_json_variant_and_options() -> None:
    fmt = build_format(
        "web_access",
        {
            "routes": ROUTES,
            "json_fields": {"time": "time_iso8601", "user_agent": "ua"},
            "export_paths": ["download"],
            "export_query": {"format": ["csv"]},
        },
    )
    docs = [
        {
            "time_iso8601": "2025-06-17T08:06:01+02:00",
            "remote_addr": "127.0.0.22",
            "remote_user": "tom_helpdesk",
            "request_method": "GET",
            "request_uri": "/panel//clients/./2745?format=CSV",
            "status": 200,
            "http_referer": "http://panel/panel/cases/8412?x=1",
        },
        {"time_iso8601": "2025-06-17T08:06:02", "request": "GET /panel/ HTTP/1.1", "status": 401},
        {"time_iso8601": "2025-06-17T08:06:02", "status": 200},
        ["not", "an", "object"],
    ]
    lines = text_lines([json.dumps(d) for d in docs] + ["{broken"])
    results = [fmt.parse(r, "panel") for r in frame(fmt, lines)]
    first = results[0][0]  # type: ignore[index]
    assert first.action is Action.EXPORT and first.subjects == ("2745",)
    assert first.time == datetime(2025, 6, 17, 6, 6, 1, tzinfo=UTC)
    assert "referer:/panel/cases/8412" in first.tags
    second = results[1][0]  # type: ignore[index]
    assert second.action is Action.LOGIN_FAILED and second.actor == ""
    assert [r.reason for r in results[2:] if isinstance(r, ParseFailure)] == [
        "missing_field",
        "bad_json",
        "bad_json",
    ]


def test_combined_edge_cases() -> None:
    texts = [
        '10.0.0.1 - - [17/Jun/2025:08:06:00 +0200] "-" 400 0 "-" "-"',
        '10.0.0.1 - - [17/Jun/2025:08:06:00 +0200] "\\x16\\x03\\x01" 400 0 "-" "-"',
        '10.0.0.1 - j\\xC3\\xB6rg [17/Jun/2025:08:06:00 -0130] "DELETE /panel/bills/B-1 HTTP/1.1" '
        '204 0 "http://[broken" "curl/8 \\"quoted\\""',
        '10.0.0.1 - bob [17/Jun/2025:08:06:00 +0000] "GET /panel/clients/7 HTTP/1.1" 404 0',
        '10.0.0.1 - bob [31/Foo/2025:08:06:00 +0000] "GET / HTTP/1.1" 200 0 "-" "-"',
        "not a log line",
    ]
    results = [FMT.parse(r, "panel") for r in frame(FMT, text_lines(texts))]
    assert results[0] == [] and results[1] == []
    (delete,) = results[2]  # type: ignore[misc]
    assert delete.actor == "jörg" and delete.action is Action.DELETE
    assert delete.application == 'curl/8 "quoted"'
    assert delete.time == datetime(2025, 6, 17, 9, 36, tzinfo=UTC)
    assert results[3][0].action is Action.OTHER  # type: ignore[index]
    assert [r.reason for r in results[4:] if isinstance(r, ParseFailure)] == [
        "bad_time",
        "bad_line",
    ]


def test_path_normalisation() -> None:
    assert normalize_path("/panel/%63lients//5/../6/") == "/panel/clients/6/"
    assert normalize_path("//a/./b") == "/a/b"
    assert normalize_path("") == "/"


def test_bad_route_options_are_refused() -> None:
    assert "web_access" in FORMAT_NAMES
    bad: list[Any] = [
        "not a list",
        [{"pattern": "no-slash", "object": "x"}],
        [{"pattern": "/x", "object": ""}],
        [{"pattern": "/x", "object": "x", "action": "steal"}],
        [{"pattern": "/x", "object": "x", "methods": "POST"}],
        [{"pattern": "/{a}/{a}", "object": "x"}],
        [{"pattern": "/x", "object": "x", "colour": "red"}],
    ]
    for routes in bad:
        with pytest.raises(ValueError):
            build_format("web_access", {"routes": routes})
    with pytest.raises(ValueError):
        build_format("web_access", {"json_fields": {"nope": "x"}})


def test_hostile_lines_are_fast() -> None:
    hostile = [
        "1 2 " + "a [" * 40_000,
        '1 - u [17/Jun/2025:08:06:00 +0200] "GET /' + "\\x" * 50_000,
        '1 - u [17/Jun/2025:08:06:00 +0200] "GET /?' + "a=1&" * 25_000 + ' HTTP/1.1" 200 1',
        "1 " * 50_000,
        '1 - u [x] "GET /' + "a/" * 50_000 + ' HTTP/1.1" 200 1 "' + "\\" * 10_000,
    ]
    for text in hostile:
        start = time.perf_counter()
        for record in frame(FMT, text_lines([text])):
            FMT.parse(record, "panel")
        assert time.perf_counter() - start < 0.5, text[:40]
