"""Authority notice drafts (every required field, fr/nl/en, md/json) and the evidence pack
(raw records with their hashes, verified offline; tampering is caught)."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from breachwatch.events import SourcePosition
from breachwatch.incidents import documents, evidence
from breachwatch.incidents.service import IncidentService, get_incident
from tests.daemon_harness import cli
from tests.store_fixtures import finding, make_config, make_db

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
LINE1 = "2026-11-30 10:00:02.000 CET [4242] kevin_helpdesk@webhostdb psql 127.0.0.1 LOG:  x\n"
LINE2 = "2026-11-30 10:00:09.000 CET [4242] kevin_helpdesk@webhostdb psql 127.0.0.1 LOG:  é\n"


def _setup(tmp_path: Path, categories: tuple[str, ...] = ("identity", "contact")) -> Path:
    log = tmp_path / "pg.log"
    log.write_text(LINE1 + LINE2, encoding="utf-8")
    config = make_config(tmp_path)
    db = make_db(config)
    second = len(LINE1.encode())
    findings = [
        replace(
            finding(T0),
            categories=categories,
            evidence=(SourcePosition(str(log), 0, 1, len(LINE1.encode())),),
        ),
        replace(
            finding(T0 + timedelta(seconds=7), offset=1, subjects=("1002",)),
            categories=categories,
            evidence=(SourcePosition(str(log), second, 2, len(LINE2.encode())),),
        ),
    ]
    with db.transaction() as session:
        IncidentService(config).record(session, findings, T0)
    db.dispose()
    return tmp_path / "breachwatch.yml"


def _dossier(tmp_path: Path) -> dict[str, object]:
    config = make_config(tmp_path)
    db = make_db(config)
    with db.transaction() as session:
        return documents.dossier(session, get_incident(session, "1"), config)


@pytest.mark.parametrize("lang", ["fr", "nl", "en"])
def test_gdpr_art33_draft_has_every_33_3_field(tmp_path: Path, lang: str) -> None:
    _setup(tmp_path)
    doc = documents.draft(_dossier(tmp_path), "gdpr_art33", lang, T0)
    keys = [f["key"] for s in doc["sections"] for f in s["fields"]]
    for required in (
        "nature",
        "subject_categories",
        "subjects_approx",
        "record_categories",
        "records_approx",
        "contact",
        "consequences",
        "measures",
        "aware",
        "detected",
        "deadline",
        "phased",
        "risk",
    ):
        assert required in keys
    values = {f["key"]: f["value"] for s in doc["sections"] for f in s["fields"]}
    assert values["subjects_approx"] == "2" and values["records_approx"] == 2
    assert "dpo@hosting.example" in values["contact"]
    assert doc["to_complete"] == ["aware"]  # not confirmed yet
    md = documents.draft_markdown(doc)
    assert md.startswith("# ") and documents.t("nature", lang) in md
    assert (doc["note"] is not None) == (lang == "en")  # APD/GBA: fr, nl or de only


def test_late_art33_draft_asks_for_the_reasons(tmp_path: Path) -> None:
    _setup(tmp_path)
    doc = documents.draft(_dossier(tmp_path), "gdpr_art33", "fr", T0 + timedelta(hours=73))
    assert "delay" in doc["to_complete"]


def test_eprivacy_and_nis2_drafts(tmp_path: Path) -> None:
    _setup(tmp_path, ("communications_content",))
    d = _dossier(tmp_path)
    first = documents.draft(d, "eprivacy_611", "nl", T0)
    keys = {f["key"] for s in first["sections"] for f in s["fields"]}
    assert {
        "which_notice",
        "incident_time",
        "detection_time",
        "circumstances",
        "data_content",
        "tech_measures",
        "other_providers",
    } <= keys
    second = documents.draft(d, "eprivacy_611_followup", "fr", T0)
    keys2 = {f["key"] for s in second["sections"] for f in s["fields"]}
    assert {"summary", "subscribers", "subscriber_notice", "cross_border"} <= keys2
    for regime, expected in (
        ("nis2_early_warning", {"malicious", "cross_border"}),
        ("nis2_notification", {"impact", "ioc"}),
        ("nis2_final_report", {"description", "root_cause", "mitigation"}),
    ):
        doc = documents.draft(d, regime, "en", T0)
        assert expected <= {f["key"] for s in doc["sections"] for f in s["fields"]}
    with pytest.raises(ValueError, match="language"):
        documents.draft(d, "gdpr_art33", "de", T0)


def test_draft_command(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    md = cli(config, "incidents", "draft", "1", "--regime", "gdpr_art33", "--lang", "fr")
    assert md.returncode == 0, md.stderr
    assert "Nature de la violation" in md.stdout
    js = cli(
        config,
        "incidents",
        "draft",
        "1",
        "--regime",
        "gdpr_art33",
        "--lang",
        "nl",
        "--format",
        "json",
    )
    assert json.loads(js.stdout)["language"] == "nl"


def test_evidence_pack_round_trip_and_tampering(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    out = tmp_path / "BW.tar.gz"
    made = cli(config, "incidents", "evidence", "1", "--out", str(out), "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["records"] == 2
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        lines = [json.loads(x) for x in tar.extractfile("log_lines.jsonl").read().splitlines()]  # type: ignore[union-attr]
        dossier = json.loads(tar.extractfile("dossier.json").read())  # type: ignore[union-attr]
    assert names == {"manifest.json", "log_lines.jsonl", "dossier.json", "history.json"}
    assert [x["text"] for x in lines] == [LINE1, LINE2]
    assert dossier["risk"]["formula"] and dossier["obligations"]
    ok = cli(config, "evidence-verify", str(out))
    assert ok.returncode == 0, ok.stdout

    # alter one log record inside the pack, keep everything else
    with tarfile.open(out) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    lines[0]["text"] = "forged"
    import base64

    lines[0]["data_b64"] = base64.b64encode(b"forged\n").decode()
    members["log_lines.jsonl"] = "".join(json.dumps(x) + "\n" for x in lines).encode()
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    report = evidence.verify_pack(bad)
    assert not report.ok
    assert any("log_lines.jsonl" in p for p in report.problems)
    result = cli(config, "evidence-verify", str(bad), "--json")
    assert result.returncode == 1 and json.loads(result.stdout)["ok"] is False


def test_missing_log_file_is_recorded_not_fatal(tmp_path: Path) -> None:
    config = _setup(tmp_path)
    (tmp_path / "pg.log").unlink()
    out = tmp_path / "BW.tar.gz"
    made = cli(config, "incidents", "evidence", "1", "--out", str(out), "--json")
    assert json.loads(made.stdout)["unavailable"] == 2
    assert evidence.verify_pack(out).ok
