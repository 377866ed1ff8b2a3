"""The local HTTP API: a real server on a free port over a real SQLite store populated through
IncidentService, real HTTP requests; and the daemon starting it when enabled."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from breachwatch.api.auth import load_token
from breachwatch.api.client import ApiClient, ApiClientError
from breachwatch.api.server import ApiServer, serve_api
from breachwatch.cli import main as cli_main
from breachwatch.clock import FakeClock
from breachwatch.config import ApiConfig, DaemonConfig
from breachwatch.errors import ConfigError
from breachwatch.incidents.deadlines import DeadlineKeeper
from breachwatch.incidents.service import IncidentService
from breachwatch.store.database import Database
from tests.daemon_harness import DaemonProcess, free_port, wait_for, write_config
from tests.store_fixtures import finding, make_config, make_db

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
TOKEN = "s3cr3t-token-for-tests-0123456789"
PRINCIPAL = "ticketing-bot"


@dataclass
class Api:
    url: str
    config: DaemonConfig
    config_path: Path
    db: Database
    server: ApiServer
    clock: FakeClock
    refs: list[str]

    def get(self, path: str, token: str | None = TOKEN, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, headers=_auth(token), timeout=10, **kw)

    def post(self, path: str, body: Any, token: str | None = TOKEN) -> requests.Response:
        return requests.post(self.url + path, json=body, headers=_auth(token), timeout=10)


def cli_json(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> list[Any]:
    """The command line, in process (same store), one JSON value per printed line."""
    capsys.readouterr()
    assert cli_main([*args, "--config", str(config), "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _token_file(tmp_path: Path, value: str = TOKEN) -> Path:
    path = tmp_path / "api.token"
    path.write_text(value + "\n")
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


def _api_section(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "port": 0,
        "token_file": str(_token_file(tmp_path)),
        "principal": PRINCIPAL,
        "max_body_bytes": 1024,
        **extra,
    }


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    config = make_config(tmp_path, api=_api_section(tmp_path))
    db = make_db(config)
    service = IncidentService(config)
    with db.transaction() as session:
        refs = [
            service.record(session, [finding(T0)], T0).opened[0].ref,
            service.record(session, [finding(T0, actor="omar_sysadmin", offset=200)], T0)
            .opened[0]
            .ref,
        ]
    DeadlineKeeper(db, config, "mailfolder").tick(T0 + timedelta(minutes=1))  # queues notices
    clock = FakeClock(T0 + timedelta(minutes=5))
    server = serve_api(config, db, clock)
    try:
        yield Api(server.url, config, tmp_path / "breachwatch.yml", db, server, clock, refs)
    finally:
        server.shutdown()
        db.dispose()


# ---- authentication ----------------------------------------------------------------------
def test_refused_without_or_with_a_wrong_token(api: Api) -> None:
    for token in (None, "wrong-token-of-the-same-length-xx", TOKEN + "x", TOKEN[:-1]):
        response = api.get("/v1/incidents", token=token)
        assert response.status_code == 401, token
        assert response.json()["error"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    basic = requests.get(
        api.url + "/v1/incidents", headers={"Authorization": f"Basic {TOKEN}"}, timeout=10
    )
    assert basic.status_code == 401
    refused = api.post(f"/v1/incidents/{api.refs[0]}/comments", {"text": "x"}, token="nope")
    assert refused.status_code == 401
    assert _history(api, api.refs[0])[-1]["action"] != "comment"  # nothing recorded
    assert api.get("/v1/incidents").status_code == 200


def test_health_needs_no_token_and_says_little(api: Api) -> None:
    response = api.get("/v1/health", token=None)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.headers["Content-Type"].startswith("application/json")
    assert set(response.json()) == {"status", "store", "version"}


# ---- reading -----------------------------------------------------------------------------
def test_incidents_list_filter_and_show(api: Api) -> None:
    listed = api.get("/v1/incidents").json()["incidents"]
    assert [i["ref"] for i in listed] == api.refs
    assert listed[0]["state"] == "suspected" and listed[0]["subjects"] == 1
    assert api.get("/v1/incidents", params={"state": "confirmed"}).json()["incidents"] == []
    bad = api.get("/v1/incidents", params={"state": "on-fire"})
    assert bad.status_code == 400 and bad.json()["field"] == "state"
    assert api.get("/v1/incidents", params={"sate": "x"}).json()["field"] == "sate"

    shown = api.get(f"/v1/incidents/{api.refs[0]}").json()
    assert shown["ref"] == api.refs[0]
    assert shown["findings"][0]["rule"] == "ntk.departed_account"
    assert isinstance(shown["findings"][0]["id"], int)
    assert {o["regime"] for o in shown["obligations"]} >= {"gdpr_art33", "gdpr_art34"}
    assert shown["history"][0]["action"] == "opened"
    assert api.get("/v1/incidents/1").json()["ref"] == api.refs[0]  # by number, as the CLI

    missing = api.get("/v1/incidents/BW-1999-0042")
    assert missing.status_code == 404
    assert "BW-1999-0042" in missing.json()["message"]


def test_same_data_as_the_command_line(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    ref = api.refs[0]
    (cli_show,) = cli_json(capsys, api.config_path, "incidents", "show", ref)
    shown = api.get(f"/v1/incidents/{ref}").json()
    assert shown["history"] == cli_show["history"]
    assert shown["findings"] == cli_show["findings"]
    assert [o["regime"] for o in shown["obligations"]] == [
        o["regime"] for o in cli_show["obligations"]
    ]
    assert api.get("/v1/incidents").json()["incidents"] == cli_json(
        capsys, api.config_path, "incidents", "list"
    )


def test_obligations_and_notices(api: Api) -> None:
    obligations = api.get("/v1/obligations").json()["obligations"]
    assert obligations and all(o["state"] == "open" for o in obligations)
    assert {o["incident"] for o in obligations} == set(api.refs)
    due = datetime.fromisoformat(obligations[0]["due_at"])
    assert obligations[0]["seconds_left"] == round((due - api.clock.now()).total_seconds())
    assert len(api.get("/v1/obligations", params={"all": "true"}).json()["obligations"]) >= len(
        obligations
    )
    assert api.get("/v1/obligations", params={"all": "maybe"}).json()["field"] == "all"

    notices = api.get("/v1/notices").json()["notices"]
    assert notices and notices[0]["recipient"] == "1001"
    assert notices[0]["state"] == "queued"
    assert api.get("/v1/notices", params={"state": "sent"}).json()["notices"] == []
    assert api.get("/v1/notices", params={"state": "lost"}).status_code == 400


def test_drafts(api: Api) -> None:
    ref = api.refs[0]
    doc = api.get(f"/v1/incidents/{ref}/drafts/gdpr_art33", params={"lang": "nl"}).json()
    assert doc["regime"] == "gdpr_art33" and doc["language"] == "nl"
    assert "to_complete" in doc
    default = api.get(f"/v1/incidents/{ref}/drafts/gdpr_art33").json()
    assert default["language"] == "fr"
    md = api.get(f"/v1/incidents/{ref}/drafts/gdpr_art33", params={"format": "md"})
    assert md.headers["Content-Type"].startswith("text/markdown")
    assert ref in md.text
    assert api.get(f"/v1/incidents/{ref}/drafts/gdpr_art99").status_code == 404
    assert api.get("/v1/incidents/BW-1999-0042/drafts/gdpr_art33").status_code == 404
    bad = api.get(f"/v1/incidents/{ref}/drafts/gdpr_art33", params={"lang": "de"})
    assert bad.status_code == 400 and bad.json()["field"] == "lang"


def test_verify_reports_the_chain(api: Api) -> None:
    report = api.get("/v1/verify").json()
    assert report["ok"] is True and report["rows"] > 0
    api.post(f"/v1/incidents/{api.refs[0]}/comments", {"text": "checked"})
    after = api.get("/v1/verify").json()
    assert after["ok"] is True and after["rows"] == report["rows"] + 1


# ---- changing ----------------------------------------------------------------------------
def _history(api: Api, ref: str) -> list[dict[str, Any]]:
    return list(api.get(f"/v1/incidents/{ref}").json()["history"])


def test_transition_is_recorded_with_the_principal(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = api.refs[0]
    response = api.post(
        f"/v1/incidents/{ref}/transitions", {"to": "confirmed", "reason": "leaver read data"}
    )
    assert response.status_code == 200, response.text
    incident = response.json()["incident"]
    assert incident["state"] == "confirmed"
    assert incident["aware_at"] == api.clock.now().isoformat()  # the service set awareness
    state = [h for h in _history(api, ref) if h["action"] == "state"]
    assert state[-1]["by"] == PRINCIPAL
    assert state[-1]["detail"] == {
        "old": "suspected",
        "new": "confirmed",
        "reason": "leaver read data",
    }
    awareness = [h for h in _history(api, ref) if h["action"] == "awareness"]
    assert awareness[-1]["by"] == PRINCIPAL
    # and the command line sees the same change in the same store
    (shown,) = cli_json(capsys, api.config_path, "incidents", "show", ref)
    assert shown["state"] == "confirmed"


def test_refused_transition_is_409_with_the_rule(api: Api) -> None:
    ref = api.refs[1]
    assert (
        api.post(
            f"/v1/incidents/{ref}/transitions", {"to": "dismissed", "reason": "test account"}
        ).json()["incident"]["state"]
        == "dismissed"
    )
    before = _history(api, ref)
    refused = api.post(f"/v1/incidents/{ref}/transitions", {"to": "confirmed", "reason": "oops"})
    assert refused.status_code == 409
    assert refused.json()["error"] == "conflict"
    assert "cannot go from dismissed to confirmed" in refused.json()["message"]
    assert _history(api, ref) == before  # rolled back whole
    reopened = api.post(
        f"/v1/incidents/{ref}/transitions", {"to": "suspected", "reason": "new facts"}
    )
    assert reopened.json()["incident"]["state"] == "suspected"
    gone = api.post("/v1/incidents/BW-1999-0042/transitions", {"to": "closed", "reason": "x"})
    assert gone.status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reason": "x"}, "to"),
        ({"to": "merged", "reason": "x"}, "to"),
        ({"to": "confirmed"}, "reason"),
        ({"to": "confirmed", "reason": "   "}, "reason"),
        ({"to": "confirmed", "reason": 42}, "reason"),
        ({"to": "confirmed", "reason": "x", "by": "someone else"}, "by"),
        (["confirmed"], "body"),
    ],
)
def test_bad_transition_bodies_name_the_field(api: Api, body: Any, field: str) -> None:
    response = api.post(f"/v1/incidents/{api.refs[0]}/transitions", body)
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert response.json()["message"]


def test_invalid_json_is_400(api: Api) -> None:
    response = requests.post(
        f"{api.url}/v1/incidents/{api.refs[0]}/comments",
        data=b"{not json",
        headers={**_auth(TOKEN), "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400 and response.json()["field"] == "body"
    plain = requests.post(
        f"{api.url}/v1/incidents/{api.refs[0]}/comments",
        data=b"text=hello",
        headers={**_auth(TOKEN), "Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert plain.status_code == 415


def test_comment_and_assignment(api: Api) -> None:
    ref = api.refs[0]
    created = api.post(f"/v1/incidents/{ref}/comments", {"text": "called the DPO — ok"})
    assert created.status_code == 201
    assigned = api.post(f"/v1/incidents/{ref}/assignment", {"to": "alice"})
    assert assigned.status_code == 200 and assigned.json()["incident"]["assignee"] == "alice"
    history = _history(api, ref)
    assert history[-2]["action"] == "comment" and history[-2]["by"] == PRINCIPAL
    assert history[-2]["detail"] == {"text": "called the DPO — ok"}
    assert history[-1] == {
        "at": api.clock.now().isoformat(),
        "by": PRINCIPAL,
        "action": "assigned",
        "detail": {"old": None, "new": "alice"},
    }
    assert api.post(f"/v1/incidents/{ref}/comments", {"text": ""}).json()["field"] == "text"
    assert api.post(f"/v1/incidents/{ref}/assignment", {"to": "x" * 129}).json()["field"] == "to"


def test_oversize_body_is_413_and_not_recorded(api: Api) -> None:
    ref = api.refs[0]
    response = api.post(f"/v1/incidents/{ref}/comments", {"text": "x" * 4096})
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
    assert all(h["action"] != "comment" for h in _history(api, ref))


def test_unknown_path_and_method(api: Api) -> None:
    assert api.get("/v1/nothing").status_code == 404
    assert api.get("/v2/incidents").status_code == 404
    wrong = requests.delete(f"{api.url}/v1/incidents", headers=_auth(TOKEN), timeout=10)
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "GET"
    get_on_post = api.get(f"/v1/incidents/{api.refs[0]}/comments")
    assert get_on_post.status_code == 405


def test_keep_alive_connection_serves_several_requests(api: Api) -> None:
    with requests.Session() as session:
        session.headers.update(_auth(TOKEN))
        for _ in range(3):
            assert session.get(api.url + "/v1/incidents", timeout=10).status_code == 200
        assert (
            session.post(
                f"{api.url}/v1/incidents/{api.refs[0]}/comments", json={"text": "a"}, timeout=10
            ).status_code
            == 201
        )
        assert session.get(api.url + "/v1/verify", timeout=10).json()["ok"] is True


# ---- the client --------------------------------------------------------------------------
def test_client_round_trip(api: Api) -> None:
    client = ApiClient.from_env({"BREACHWATCH_API": api.url, "BREACHWATCH_API_TOKEN": TOKEN})
    try:
        assert client.health()["status"] == "ok"
        assert [i["ref"] for i in client.incidents(state="suspected")] == api.refs
        assert client.transition(api.refs[0], "confirmed", "seen in the log")["state"] == (
            "confirmed"
        )
        assert client.assign(api.refs[0], "bob")["assignee"] == "bob"
        assert client.comment(api.refs[0], "hello")["ref"] == api.refs[0]
        assert client.incident(api.refs[0])["history"][-1]["by"] == PRINCIPAL
        assert client.obligations() and client.notices(state="queued")
        assert client.draft(api.refs[0], "gdpr_art33", "en")["language"] == "en"
        assert client.verify()["ok"] is True
        with pytest.raises(ApiClientError) as refused:
            client.transition(api.refs[0], "suspected", "back")
        assert refused.value.status == 409 and "confirmed" in refused.value.message
        with pytest.raises(ApiClientError) as bad:
            client.comment(api.refs[0], " ")
        assert bad.value.status == 400 and bad.value.field == "text"
    finally:
        client.close()
    token_file = api.config.api.token_file
    assert token_file is not None
    from_file = ApiClient.from_env(
        {"BREACHWATCH_API": api.url, "BREACHWATCH_API_TOKEN_FILE": str(token_file)}
    )
    assert from_file.incidents()
    from_file.close()
    with pytest.raises(ConfigError):
        ApiClient.from_env({"BREACHWATCH_API": api.url})


# ---- configuration -----------------------------------------------------------------------
def test_config_needs_exactly_one_token_source_when_enabled(tmp_path: Path) -> None:
    assert ApiConfig().enabled is False and ApiConfig().host == "127.0.0.1"
    with pytest.raises(ValueError, match="exactly one"):
        ApiConfig(enabled=True)
    with pytest.raises(ValueError, match="exactly one"):
        ApiConfig(enabled=True, token_file=Path("a"), token_credential="b")
    with pytest.raises(ValueError):
        ApiConfig(enabled=True, token_credential="api", principal="has spaces")
    with pytest.raises(ValueError):
        ApiConfig(token="inline-token-in-the-config")  # type: ignore[call-arg]


def test_token_file_is_relative_to_the_config_and_short_tokens_are_refused(
    tmp_path: Path,
) -> None:
    (tmp_path / "api.token").write_text("short\n")
    config = make_config(tmp_path, api={"enabled": True, "token_file": "api.token"})
    assert config.api.token_file == tmp_path / "api.token"
    with pytest.raises(ConfigError, match="at least 16"):
        load_token(config.api)


def test_token_from_a_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "breachwatch-api").write_text(TOKEN)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    api = ApiConfig(enabled=True, token_credential="breachwatch-api")
    assert load_token(api) == TOKEN
    with pytest.raises(ConfigError):
        load_token(ApiConfig(enabled=True, token_credential="../etc/passwd"))


# ---- the daemon --------------------------------------------------------------------------
@pytest.mark.slow
def test_daemon_serves_the_api_when_enabled(tmp_path: Path) -> None:
    port = free_port()
    section = _api_section(tmp_path, port=port, max_body_bytes=65536)
    config = write_config(tmp_path, smtp_port=None, extra={"api": section})
    daemon = DaemonProcess(config, tmp_path / "daemon.out").start()
    url = f"http://127.0.0.1:{port}"
    try:
        started = next(
            json.loads(line)
            for line in (tmp_path / "daemon.out").read_text().splitlines()
            if '"started"' in line
        )
        assert started["api_port"] == port
        health = wait_for(
            lambda: requests.get(url + "/v1/health", timeout=5).json(), 10, "api health", daemon
        )
        assert health["status"] == "ok"
        assert requests.get(url + "/v1/incidents", timeout=5).status_code == 401
        listed = requests.get(url + "/v1/incidents", headers=_auth(TOKEN), timeout=5)
        assert listed.status_code == 200 and listed.json() == {"incidents": []}
        assert requests.get(url + "/v1/verify", headers=_auth(TOKEN), timeout=5).json()["ok"]
    finally:
        assert daemon.stop() == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/v1/health", timeout=2)


def test_merge_split_risk_notice_and_exemption(api: Api) -> None:
    kevin, omar = api.refs
    merged = api.post(f"/v1/incidents/{kevin}/merge", {"other": omar, "reason": "one cause"})
    assert merged.status_code == 200, merged.text
    assert api.get(f"/v1/incidents/{omar}").json()["state"] == "merged"
    findings = api.get(f"/v1/incidents/{kevin}").json()["findings"]
    assert len(findings) == 2
    split = api.post(
        f"/v1/incidents/{kevin}/split", {"finding": findings[-1]["id"], "reason": "separate"}
    )
    assert split.status_code == 201, split.text
    assert split.json()["split_off"] not in (kevin, omar)
    assert (
        api.post(f"/v1/incidents/{kevin}/split", {"finding": "x", "reason": "r"}).json()["field"]
        == "finding"
    )

    risk = api.post(f"/v1/incidents/{kevin}/risk", {"band": "high", "reason": "bank data"})
    assert risk.status_code == 200, risk.text
    no_reason = api.post(f"/v1/incidents/{kevin}/risk", {"band": "high", "reason": " "})
    assert no_reason.status_code in (400, 409)
    assert (
        api.post(f"/v1/incidents/{kevin}/risk", {"band": "huge", "reason": "r"}).json()["field"]
        == "band"
    )

    given = api.post(
        f"/v1/incidents/{kevin}/notices-given",
        {"regime": "gdpr_art33", "phase": "initial", "reason": "sent by the DPO"},
    )
    assert given.status_code == 201, given.text
    wrong = api.post(
        f"/v1/incidents/{kevin}/exemptions",
        {"regime": "gdpr_art34", "ground": "no-such-ground", "reason": "r"},
    )
    assert wrong.status_code == 409 and "no exemption" in wrong.json()["message"]
    actions = [h["action"] for h in _history(api, kevin)]
    assert "merged" in " ".join(actions) or any("merge" in a for a in actions)
    assert all(h["by"] in (PRINCIPAL, "breachwatch") for h in _history(api, kevin))
