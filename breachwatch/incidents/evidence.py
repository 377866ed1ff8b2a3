"""The evidence pack of one incident: a .tar.gz that verifies offline.

Members: `log_lines.jsonl` (the raw records read back from their files by path, offset and
length, base64 with their SHA-256), `dossier.json` (incident, findings, timeline, severity
calculation, obligations, every notice with its delivery state and receipt), `history.json`
(the incident's rows of the hash chain) and `manifest.json` (SHA-256 and size of every other
member, the store's chain head and the verification result at export time).

`verify_pack` checks member hashes, log-line hashes and each history row's hash; history rows
of other incidents are not in the pack, so links between rows cannot be checked offline
(`breachwatch incidents verify` checks the whole chain in the store).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from breachwatch.incidents.chain import ChainReport, ChainRow, verify_isolated

FORMAT = "breachwatch-evidence/1"
MAX_RECORD = 1 << 20  # a record longer than this is cut (and marked so)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_record(path: str, offset: int, length: int) -> dict[str, Any]:
    """The raw bytes of one record, read again from its file."""
    entry: dict[str, Any] = {"path": path, "offset": offset, "length": length}
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            if length > 0:
                data = handle.read(min(length, MAX_RECORD))
            else:
                data = handle.readline(MAX_RECORD)
    except OSError as exc:
        return {**entry, "status": "unavailable", "error": f"{type(exc).__name__}: {exc}"}
    status = "ok" if (length == 0 or len(data) == length) else "short"
    return {
        **entry,
        "status": status,
        "bytes": len(data),
        "sha256": _sha(data),
        "data_b64": base64.b64encode(data).decode("ascii"),
        "text": data.decode("utf-8", "replace"),
    }


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o600
    tar.addfile(info, io.BytesIO(data))


def build_pack(
    out: Path, dossier: dict[str, Any], chain: ChainReport, now: datetime
) -> dict[str, Any]:
    lines = []
    for finding in dossier["findings"]:
        for pos in finding["evidence"]:
            record = read_record(pos["path"], pos["offset"], pos.get("length", 0))
            lines.append({"finding": finding["id"], "line": pos.get("line"), **record})
    members = {
        "log_lines.jsonl": "".join(
            json.dumps(x, ensure_ascii=False, sort_keys=True) + "\n" for x in lines
        ).encode(),
        "dossier.json": json.dumps(
            {k: v for k, v in dossier.items() if k != "history"},
            ensure_ascii=False,
            sort_keys=True,
            indent=1,
        ).encode(),
        "history.json": json.dumps(dossier["history"], ensure_ascii=False, indent=1).encode(),
    }
    manifest = {
        "format": FORMAT,
        "incident": dossier["incident"]["ref"],
        "created_at": now.isoformat(),
        "files": {
            name: {"sha256": _sha(data), "bytes": len(data)} for name, data in members.items()
        },
        "log_records": {
            "total": len(lines),
            "unavailable": sum(1 for x in lines if x["status"] != "ok"),
        },
        "store_chain": chain.to_json(),
    }
    manifest_bytes = json.dumps(manifest, ensure_ascii=False, sort_keys=True, indent=1).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        _add(tar, "manifest.json", manifest_bytes, now.timestamp())
        for name, data in members.items():
            _add(tar, name, data, now.timestamp())
    return {
        "path": str(out),
        "manifest_sha256": _sha(manifest_bytes),
        "records": len(lines),
        "unavailable": manifest["log_records"]["unavailable"],
    }


@dataclass
class PackReport:
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    manifest_sha256: str = ""

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "checked": self.checked,
            "manifest_sha256": self.manifest_sha256,
        }


def verify_pack(path: Path) -> PackReport:
    report = PackReport()
    try:
        with tarfile.open(path, "r:gz") as tar:
            contents = {}
            for member in tar.getmembers():
                if not member.isfile():
                    report.fail(f"unexpected member {member.name!r} (not a file)")
                    continue
                handle = tar.extractfile(member)
                contents[member.name] = handle.read() if handle else b""
    except (OSError, tarfile.TarError) as exc:
        report.fail(f"not a readable evidence pack: {exc}")
        return report
    raw = contents.pop("manifest.json", None)
    if raw is None:
        report.fail("no manifest.json")
        return report
    report.manifest_sha256 = _sha(raw)
    manifest = json.loads(raw)
    listed = manifest.get("files", {})
    for name in sorted(set(contents) - set(listed)):
        report.fail(f"{name}: not listed in the manifest")
    for name, meta in sorted(listed.items()):
        data = contents.get(name)
        if data is None:
            report.fail(f"{name}: listed in the manifest but missing")
        elif _sha(data) != meta["sha256"]:
            report.fail(f"{name}: SHA-256 differs from the manifest")
    lines = contents.get("log_lines.jsonl", b"").decode().splitlines()
    for number, text in enumerate(lines, 1):
        entry = json.loads(text)
        if entry.get("status") == "unavailable":
            continue
        data = base64.b64decode(entry["data_b64"])
        if _sha(data) != entry["sha256"]:
            report.fail(f"log_lines.jsonl:{number}: record does not match its SHA-256")
    history = json.loads(contents.get("history.json", b"[]"))
    rows = [
        ChainRow(
            h["id"],
            h["incident_id"],
            datetime.fromisoformat(h["at"]),
            h["by"],
            h["action"],
            h["detail"],
            h["prev_hash"],
            h["hash"],
        )
        for h in history
    ]
    broken = verify_isolated(rows)
    if broken is not None:
        report.fail(f"history.json: {broken.explanation}")
    report.checked = {"files": len(listed), "log_records": len(lines), "history_rows": len(rows)}
    return report
