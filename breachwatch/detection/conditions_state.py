"""The policy-conditions detector's own state, as JSON for the ingest transaction.

Two things the log itself establishes and the reference files do not know: cases closed in the
log (``UPDATE ... SET status = 'closed'``, ``POST .../close``) and, per actor and grant, the
customers seen in the grant's ``max_subjects`` window. Both are committed with the offsets that
produced them (:mod:`breachwatch.ingest`), so a restart after ``kill -9`` judges the rest of the
log as an uninterrupted run would.

A window belongs to a grant by the grant's content, not its position: after a policy reload that
reorders, changes or drops grants, a window is kept only for a grant that is still the same.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from breachwatch.detection.policy import Grant

# (person or account, grant key) -> (subject -> newest sighting, quiet until)
Windows = dict[tuple[str, str], tuple[dict[str, datetime], datetime | None]]


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _WindowState(_State):
    actor: str
    grant: str
    subjects: dict[str, AwareDatetime]
    quiet_until: AwareDatetime | None = None


class _ConditionsState(_State):
    version: Literal[1] = 1
    closed_in_log: dict[str, AwareDatetime] = {}
    windows: tuple[_WindowState, ...] = ()
    # account -> page path -> its customers (detection/navigation.py), oldest page first
    pages: dict[str, dict[str, tuple[str, ...]]] = {}


def grant_key(grant: Grant) -> str:
    """A grant's identity across policy reloads: its whole content."""
    return grant.model_dump_json()


def dump_state(
    closed: dict[str, datetime],
    windows: Windows,
    pages: dict[str, dict[str, list[str]]] | None = None,
) -> dict[str, Any]:
    state = _ConditionsState(
        closed_in_log=dict(sorted(closed.items())),
        windows=tuple(
            _WindowState(actor=actor, grant=grant, subjects=dict(last), quiet_until=quiet)
            for (actor, grant), (last, quiet) in sorted(windows.items())
        ),
        pages={a: {p: tuple(s) for p, s in ps.items()} for a, ps in (pages or {}).items()},
    )
    return state.model_dump(mode="json")


def load_state(
    data: Any,
) -> tuple[dict[str, datetime], Windows, dict[str, dict[str, tuple[str, ...]]]]:
    """(cases closed in the log, windows, pages); a malformed snapshot raises
    ValidationError (a ValueError)."""
    state = _ConditionsState.model_validate(data)
    windows: Windows = {
        (w.actor, w.grant): (dict(w.subjects), w.quiet_until) for w in state.windows
    }
    return dict(state.closed_in_log), windows, state.pages
