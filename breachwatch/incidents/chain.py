"""The incident history as one hash chain per store, ordered by row id.

Each row stores `prev_hash` (the previous row's `hash`, or 64 zeros for the first row) and

    hash = sha256(prev_hash + canonical JSON of {id, incident_id, at, by, action, detail})

(canonical: sorted keys, no spaces, UTF-8, `at` in ISO 8601 UTC). Editing a row breaks its
hash; deleting or reordering rows breaks the next row's link; deleting the newest rows is caught
by the chain head kept in the `meta` table (and shown by `incidents verify`, so it can also be
written down outside the store). The chain makes tampering evident; it does not prevent it —
whoever can rewrite the whole store can rewrite the whole chain, hence the head to keep elsewhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from breachwatch.store import locks
from breachwatch.store.schema import IncidentHistory, Meta

GENESIS = "0" * 64
HEAD_KEY = "history_chain_head"


def canonical(content: dict[str, Any]) -> str:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def normalise(detail: dict[str, Any]) -> dict[str, Any]:
    """The detail exactly as the JSON column gives it back, so the hash can be recomputed."""
    value: dict[str, Any] = json.loads(json.dumps(detail, default=str))
    return value


def content_of(
    row_id: int, incident_id: int, at: datetime, by: str, action: str, detail: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": row_id,
        "incident_id": incident_id,
        "at": at.astimezone(UTC).isoformat(),
        "by": by,
        "action": action,
        "detail": detail,
    }


def link(prev_hash: str, content: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical(content)).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainRow:
    id: int
    incident_id: int
    at: datetime
    by: str
    action: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def content(self) -> dict[str, Any]:
        return content_of(self.id, self.incident_id, self.at, self.by, self.action, self.detail)

    def to_json(self) -> dict[str, Any]:
        return {**self.content(), "prev_hash": self.prev_hash, "hash": self.hash}


@dataclass(frozen=True, slots=True)
class ChainBreak:
    row_id: int | None
    kind: str  # edited, broken_link, truncated
    explanation: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    rows: int
    head: str
    first_break: ChainBreak | None

    @property
    def ok(self) -> bool:
        return self.first_break is None

    def to_json(self) -> dict[str, Any]:
        brk = self.first_break
        return {
            "ok": self.ok,
            "rows": self.rows,
            "head": self.head,
            "first_break": None
            if brk is None
            else {"row": brk.row_id, "kind": brk.kind, "explanation": brk.explanation},
        }


def verify_rows(rows: Iterable[ChainRow], expected_head: str | None) -> ChainReport:
    """Pure: recompute the chain over rows in id order and report the first break."""
    prev, prev_id, count = GENESIS, None, 0
    for row in rows:
        count += 1
        if row.prev_hash != prev:
            where = f"row {prev_id}" if prev_id is not None else "the start of the chain"
            return ChainReport(
                count,
                prev,
                ChainBreak(
                    row.id,
                    "broken_link",
                    f"row {row.id} does not follow {where}: a row before it was deleted, "
                    "inserted or reordered",
                ),
            )
        if link(row.prev_hash, row.content()) != row.hash:
            return ChainReport(
                count,
                prev,
                ChainBreak(row.id, "edited", f"row {row.id}: content does not match its hash"),
            )
        prev, prev_id = row.hash, row.id
    head = f"{prev_id}:{prev}" if prev_id is not None else f"0:{GENESIS}"
    if expected_head is not None and expected_head != head:
        return ChainReport(
            count,
            head,
            ChainBreak(
                None,
                "truncated",
                f"the recorded chain head is {expected_head}, the last row gives {head}: "
                "the newest rows were deleted or replaced",
            ),
        )
    return ChainReport(count, head, None)


# ---- store side --------------------------------------------------------------------------
def append(session: Session, row: IncidentHistory) -> None:
    """Chain a new row: called by record_history, the single entry point for history."""
    row.detail = normalise(row.detail)
    row.prev_hash, row.hash = "", ""
    # One appender at a time, until commit: the id is assigned under the lock, so ids follow
    # the lock order and the previous row read below is committed (PostgreSQL: an advisory
    # lock; SQLite: the write lock). Without it two transactions could both link to the same
    # previous row and fork the chain.
    locks.xact_lock(session, locks.CHAIN)
    session.add(row)
    session.flush()  # assigns the id
    prev = session.scalar(
        select(IncidentHistory.hash)
        .where(IncidentHistory.id < row.id)
        .order_by(IncidentHistory.id.desc())
        .limit(1)
    )
    row.prev_hash = prev or GENESIS
    row.hash = link(
        row.prev_hash, content_of(row.id, row.incident_id, row.at, row.by, row.action, row.detail)
    )
    head = session.get(Meta, HEAD_KEY)
    value = f"{row.id}:{row.hash}"
    if head is None:
        session.add(Meta(key=HEAD_KEY, value=value))
    else:
        head.value = value
    session.flush()


def load_rows(session: Session, incident_id: int | None = None) -> list[ChainRow]:
    query = select(IncidentHistory).order_by(IncidentHistory.id)
    if incident_id is not None:
        query = query.where(IncidentHistory.incident_id == incident_id)
    return [
        ChainRow(h.id, h.incident_id, h.at, h.by, h.action, h.detail, h.prev_hash, h.hash)
        for h in session.scalars(query)
    ]


def verify_store(session: Session) -> ChainReport:
    head = session.get(Meta, HEAD_KEY)
    return verify_rows(load_rows(session), head.value if head else None)


def verify_isolated(rows: Iterable[ChainRow]) -> ChainBreak | None:
    """Offline check of rows taken out of the chain (one incident's, in an evidence pack):
    each row's hash against its content and recorded prev_hash; links to rows of other
    incidents cannot be checked without them."""
    for row in rows:
        if link(row.prev_hash, row.content()) != row.hash:
            return ChainBreak(row.id, "edited", f"row {row.id}: content does not match its hash")
    return None
