"""The shipped unit: `systemd-analyze verify` accepts it and its exposure stays low."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, skip_or_fail

UNIT = REPO / "systemd" / "breachwatch.service"
MAX_EXPOSURE = 2.0


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        skip_or_fail("systemd-analyze not installed (Debian package: systemd)")
        raise AssertionError("unreachable")
    return tool


def runnable_copy(tmp_path: Path, unit_text: str | None = None) -> Path:
    """A copy of the unit for `verify`, which checks that ExecStart's binary exists: the real
    /opt/breachwatch/venv/bin/breachwatch is not installed on a test machine, so ExecStart is
    rewritten to /bin/true. Everything else is the shipped unit, byte for byte."""
    text = UNIT.read_text() if unit_text is None else unit_text
    rewritten, n = re.subn(r"(?m)^ExecStart=\S+", "ExecStart=/bin/true", text)
    assert n == 1, "the unit must have exactly one ExecStart="
    copy = tmp_path / "breachwatch.service"
    copy.write_text(rewritten)
    return copy


def exposure(tool: str, unit: Path) -> float:
    res = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    return float(m.group(1))


def test_unit_declares_what_the_daemon_relies_on() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "ExecStart=/opt/breachwatch/venv/bin/breachwatch run --config "
        "/etc/breachwatch/breachwatch.yml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=30",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=breachwatch",
        "StateDirectoryMode=0700",
        "ConfigurationDirectory=breachwatch",
        "SupplementaryGroups=adm",
        "LoadCredential=smtp-password:/etc/breachwatch/smtp-password",
        "TemporaryFileSystem=/var/log:ro",
        "BindReadOnlyPaths=-/var/log/postgresql -/var/log/mysql",
        "MemoryDenyWriteExecute=yes",
    ):
        assert re.search(rf"(?m)^{re.escape(line)}$", text), line
    # ProcSubset=pid hides /proc/stat, and with it every process_* metric.
    assert not re.search(r"(?m)^ProcSubset=", text)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = analyze()
    copy = runnable_copy(tmp_path)
    res = subprocess.run(
        [tool, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=120
    )
    # Lines about other units (the host's own) are not ours to judge.
    problems = [ln for ln in (res.stdout + res.stderr).splitlines() if "breachwatch" in ln]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr


def test_verify_can_fail(tmp_path: Path) -> None:
    """The check above is not vacuous: a misspelt directive is reported."""
    tool = analyze()
    copy = runnable_copy(tmp_path, UNIT.read_text().replace("WatchdogSec=", "WatchDogSec="))
    res = subprocess.run(
        [tool, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=120
    )
    assert "WatchDogSec" in res.stdout + res.stderr


def test_security_exposure_is_low(tmp_path: Path) -> None:
    tool = analyze()
    level = exposure(tool, runnable_copy(tmp_path))
    assert level <= MAX_EXPOSURE


def test_exposure_check_can_fail(tmp_path: Path) -> None:
    tool = analyze()
    bare = "[Service]\nType=notify\nExecStart=/bin/true\n"
    assert exposure(tool, runnable_copy(tmp_path, bare)) > MAX_EXPOSURE


@pytest.mark.parametrize(
    "directive", ["DynamicUser=yes", "CapabilityBoundingSet=", "RestrictNamespaces=yes"]
)
def test_dropping_hardening_raises_exposure(tmp_path: Path, directive: str) -> None:
    tool = analyze()
    full = exposure(tool, runnable_copy(tmp_path))
    weaker = UNIT.read_text().replace(directive + "\n", "")
    sub = tmp_path / "weaker"
    sub.mkdir()
    assert exposure(tool, runnable_copy(sub, weaker)) > full
