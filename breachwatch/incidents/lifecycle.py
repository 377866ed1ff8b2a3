"""Incident states and the transitions staff (and breachwatch) may make."""

from __future__ import annotations

from enum import StrEnum

from breachwatch.errors import StateError


class IncidentState(StrEnum):
    SUSPECTED = "suspected"
    CONFIRMED = "confirmed"
    DISMISSED = "dismissed"
    NOTIFIED = "notified"
    CLOSED = "closed"
    MERGED = "merged"  # its findings now belong to another incident (final)


ALLOWED: dict[IncidentState, frozenset[IncidentState]] = {
    IncidentState.SUSPECTED: frozenset(
        {
            IncidentState.CONFIRMED,
            IncidentState.DISMISSED,
            IncidentState.NOTIFIED,
            IncidentState.MERGED,
        }
    ),
    IncidentState.CONFIRMED: frozenset(
        {
            IncidentState.NOTIFIED,
            IncidentState.CLOSED,
            IncidentState.DISMISSED,
            IncidentState.MERGED,
        }
    ),
    IncidentState.NOTIFIED: frozenset({IncidentState.CLOSED}),
    # Reopening (back to suspected) needs a reason like every staff decision.
    IncidentState.DISMISSED: frozenset({IncidentState.SUSPECTED}),
    IncidentState.CLOSED: frozenset({IncidentState.SUSPECTED}),
    IncidentState.MERGED: frozenset(),
}
REOPENABLE = frozenset({IncidentState.DISMISSED, IncidentState.CLOSED})

# New findings may join an incident only while it is still being handled.
OPEN_STATES = frozenset({IncidentState.SUSPECTED, IncidentState.CONFIRMED})


def check_transition(current: IncidentState, target: IncidentState) -> None:
    if target not in ALLOWED[current]:
        allowed = ", ".join(sorted(ALLOWED[current])) or "none (final state)"
        raise StateError(f"cannot go from {current} to {target}; allowed: {allowed}")
