"""The command line as a user meets it: help, exit codes, JSON output, refused configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon_harness import REPO, audit_read, write_config


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "breachwatch.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["run"],
        ["check-config"],
        ["scan"],
        ["incidents"],
        ["incidents", "list"],
        ["incidents", "show"],
        ["incidents", "confirm"],
        ["obligations"],
        ["notices"],
        ["quarantine"],
        ["rules"],
    ],
)
def test_every_command_has_help(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: breachwatch" in result.stdout


def test_check_config_accepts_the_shipped_config() -> None:
    result = run("check-config", "--config", str(REPO / "config" / "breachwatch.yml"), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is True and summary["sources"] == ["pg-main", "app"]


def test_check_config_refuses_with_file_line_and_key_path(tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_port=None)
    text = config.read_text().replace("hold: 0s", "hold: soon")
    config.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "hold: soon" in ln)
    result = run("check-config", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}:{line}: obligations.hold:" in result.stderr
    assert "duration" in result.stderr

    config.write_text(
        text.replace("hold: soon", "hold: 1m").replace("poll_interval:", "pol_interval:")
    )
    result = run("check-config", "--config", str(config))
    assert result.returncode == 2 and "pol_interval: unknown key" in result.stderr


def test_check_config_refuses_a_bad_policy(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yml"
    policy.write_text(
        (REPO / "config" / "policy.yml").read_text().replace("actions: [read", "actions: [peek", 1)
    )
    config = write_config(tmp_path, smtp_port=None, extra={"policy": str(policy)})
    result = run("check-config", "--config", str(config))
    assert result.returncode == 2
    assert str(policy) in result.stderr and "grants." in result.stderr


def test_scan_json_exit_codes_and_positions(tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_port=None)
    benign = tmp_path / "benign.log"
    benign.write_text(
        audit_read(
            "2026-11-30 10:00:01.000 CET",
            1,
            "svc_shop",
            1,
            "clients.accounts",
            "SELECT id FROM accounts WHERE email = 'a@example.org'",
        )
    )
    assert run("scan", "--config", str(config), "--json", str(benign)).returncode == 0

    log = tmp_path / "postgresql.log"
    first = audit_read(
        "2026-11-30 10:00:01.000 CET",
        1,
        "svc_shop",
        1,
        "clients.accounts",
        "SELECT id FROM accounts WHERE email = 'a@example.org'",
    )
    multi = (
        "2026-11-30 10:00:02.000 CET [42] kevin_helpdesk@webhostdb psql 127.0.0.1 LOG:  "
        'AUDIT: SESSION,1,1,READ,SELECT,TABLE,clients.accounts,"SELECT full_name\n'
        '\t  FROM clients.accounts\n\t WHERE id = 1002;",<none>\n'
    )
    log.write_text(first + multi)
    result = run("scan", "--config", str(config), "--json", str(log))
    assert result.returncode == 1, result.stderr
    findings = [json.loads(line) for line in result.stdout.splitlines()]
    departed = [f for f in findings if f["rule"] == "ntk.departed_account"]
    assert len(departed) == 1
    finding = departed[0]
    assert finding["source"] == {"path": str(log), "line": 2, "offset": len(first.encode())}
    assert finding["time"] == "2026-11-30T09:00:02+00:00"
    assert finding["subjects"] == ["1002"] and finding["object"] == "clients.accounts"
    assert finding["actor"] == "kevin_helpdesk" and finding["severity"] == "critical"
    assert any(c.startswith("ISO27001:2022 A.") for c in finding["controls"])
    assert finding["explanation"]

    table = run("scan", "--config", str(config), str(log))
    assert table.returncode == 1 and "ntk.departed_account" in table.stdout


def test_scan_usage_errors_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_port=None)
    assert run("scan", "--config", str(config), str(tmp_path / "missing.log")).returncode == 2
    assert run("scan", "--config", str(tmp_path / "nope.yml"), "x").returncode == 2
    assert run("scan").returncode == 2  # argparse: PATH required


def test_scan_reads_gzip_and_counts_unparsed_lines(tmp_path: Path) -> None:
    import gzip

    config = write_config(tmp_path, smtp_port=None)
    line = audit_read(
        "2026-11-30 10:00:02.000 CET",
        7,
        "kevin_helpdesk",
        1,
        "clients.accounts",
        "SELECT email FROM clients.accounts WHERE id = 1001",
    )
    path = tmp_path / "old.log.gz"
    path.write_bytes(gzip.compress(("garbage that is no log line\n" + line).encode()))
    result = run("scan", "--config", str(config), "--json", str(path))
    assert result.returncode == 1
    assert "old.log.gz:1: unparsed" in result.stderr
    assert json.loads(result.stdout.splitlines()[0])["source"]["line"] == 2


def test_incident_commands_on_an_empty_store(tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp_port=None)
    listing = run("incidents", "list", "--config", str(config), "--json")
    assert listing.returncode == 0 and listing.stdout == ""
    missing = run("incidents", "confirm", "BW-2026-0042", "--reason", "x", "--config", str(config))
    assert missing.returncode == 3 and "no incident" in missing.stderr
