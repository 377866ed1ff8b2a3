"""The helpdesk casework policy and its case export, for the tests of reference tables
reloaded while running (the daemon, and a worker's partition pipelines)."""

from __future__ import annotations

import os
import time
from pathlib import Path

# yasmine (helpdesk) may read a customer's account only with an open case for that customer
# (ticket), and at most 5 distinct customers an hour; the case table itself in bulk.
HELPDESK_POLICY = """version: 1
staff:
  - {person: yasmine, accounts: [yasmine_helpdesk], roles: [helpdesk], team: helpdesk}
data_map:
  - {object: clients.accounts, categories: [identity], subject_column: id}
  - {object: helpdesk.cases, categories: [support], subject_column: account_id}
casework:
  source: {file: cases.csv}
  objects: [helpdesk.cases]
grants:
  - {role: helpdesk, objects: [clients.accounts], actions: [read, write], ticket: true,
     max_subjects: {window: 1h, threshold: 5}}
  - {role: helpdesk, objects: [helpdesk.cases], actions: [read, write], bulk: true}
"""
CASES_HEADER = "case_id,account_id,assignee,status,opened_at,closed_at\n"
OPENED_AT = "2026-11-29 09:00:00+01"


def write_cases(folder: Path, cases: dict[int, int]) -> None:
    """``folder/cases.csv``: case id -> customer, all open and assigned to yasmine; written by
    rename, as an export job does. The reload notices a change by its mtime, so each write
    gets a later one than the file it replaces, even within the same second."""
    rows = "".join(f"{c},{s},yasmine_helpdesk,open,{OPENED_AT},\n" for c, s in cases.items())
    path = folder / "cases.csv"
    stamp = time.time_ns()
    if path.exists():
        stamp = max(stamp, path.stat().st_mtime_ns + 1)
    part = folder / "cases.csv.part"
    part.write_text(CASES_HEADER + rows, encoding="utf-8")
    os.utime(part, ns=(stamp, stamp))
    part.replace(path)
