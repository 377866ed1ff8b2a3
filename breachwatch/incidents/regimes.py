"""Which notification regimes apply to an incident, and their clocks: pure functions.

| regime | applies when | clock from | deadline |
|---|---|---|---|
| gdpr_art33 | controller data, band >= authority_from_band | awareness | 72 h |
| gdpr_art34 | controller data with subjects, high risk | awareness | customer |
| gdpr_art33_2 | processor data (customers' hosted data, mail) | awareness | contract |
| eprivacy_611 | e-communications data | detection | 24 h |
| eprivacy_611_followup | the initial 611 notice was incomplete | that notice | 3 days |
| nis2_early_warning | NIS2 on and significant | awareness | 24 h |
| nis2_notification | NIS2 on and significant | awareness | 72 h |
| nis2_final_report | the NIS2 notification was sent | that notice | 1 month |

Until awareness is set, "awareness" clocks run provisionally from detection (the earlier,
conservative time); when it is set they are recomputed from it. All durations are elapsed
time in UTC, so a daylight-saving change neither adds nor removes an hour; only the NIS2
"one month" is a calendar month, counted in Europe/Brussels.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from breachwatch.detection.findings import Severity
from breachwatch.incidents.obligations import ObligationPlan
from breachwatch.incidents.severity import RiskBand

if TYPE_CHECKING:
    from breachwatch.config import ObligationsConfig

BRUSSELS = ZoneInfo("Europe/Brussels")

GDPR_ART33 = "gdpr_art33"
GDPR_ART34 = "gdpr_art34"
GDPR_ART33_2 = "gdpr_art33_2"
GDPR_ART33_5 = "gdpr_art33_5"  # the internal register: every breach, no deadline
EPRIVACY = "eprivacy_611"
EPRIVACY_FOLLOWUP = "eprivacy_611_followup"
NIS2_EARLY = "nis2_early_warning"
NIS2_NOTIFICATION = "nis2_notification"
NIS2_FINAL = "nis2_final_report"

AWARENESS, DETECTION, NOTICE = "awareness", "detection", "notice"
CLOCK_BASIS = {
    GDPR_ART33: AWARENESS,
    GDPR_ART34: AWARENESS,
    GDPR_ART33_2: AWARENESS,
    EPRIVACY: DETECTION,
    EPRIVACY_FOLLOWUP: NOTICE,
    NIS2_EARLY: AWARENESS,
    NIS2_NOTIFICATION: AWARENESS,
    NIS2_FINAL: NOTICE,
}
TITLES = {
    GDPR_ART33: "GDPR Art. 33(1) — notification to the supervisory authority",
    GDPR_ART34: "GDPR Art. 34 — communication to the data subjects",
    GDPR_ART33_2: "GDPR Art. 33(2) — processor to controller (hosting customer)",
    GDPR_ART33_5: "GDPR Art. 33(5) — internal breach register",
    EPRIVACY: "Reg. (EU) 611/2013 Art. 2 — notification to the national authority",
    EPRIVACY_FOLLOWUP: "Reg. (EU) 611/2013 Art. 2(3) — second notification",
    NIS2_EARLY: "NIS2 Art. 23(4)(a) — early warning",
    NIS2_NOTIFICATION: "NIS2 Art. 23(4)(b) — incident notification",
    NIS2_FINAL: "NIS2 Art. 23(4)(d) — final report",
}
AUTHORITY_REGIMES = frozenset(
    {GDPR_ART33, EPRIVACY, EPRIVACY_FOLLOWUP, NIS2_EARLY, NIS2_NOTIFICATION, NIS2_FINAL}
)


@dataclass(frozen=True, slots=True)
class IncidentFacts:
    categories: tuple[str, ...]
    band: RiskBand | None  # effective ENISA band (staff override included)
    special_categories: bool
    malicious: bool
    has_subjects: bool
    severity: Severity  # the operational (detection) severity
    detected_at: datetime
    aware_at: datetime | None


@dataclass(frozen=True, slots=True)
class Decision:
    regime: str
    reason: str


def _at_least(band: RiskBand | None, threshold: str) -> bool:
    return band is None or band.rank >= RiskBand(threshold).rank


def decide(facts: IncidentFacts, config: ObligationsConfig) -> list[Decision]:
    """The regimes that apply now, each with the reason, in a stable order."""
    r = config.regimes
    cats = set(facts.categories)
    known = set(r.controller_categories) | set(r.processor_categories) | set(r.ecomms_categories)
    controller = cats & set(r.controller_categories)
    unclassified = cats - known
    band = facts.band.value if facts.band else "not assessed"
    out: list[Decision] = []
    if (controller or unclassified or not cats) and _at_least(facts.band, r.authority_from_band):
        why = sorted(controller) or sorted(unclassified) or ["no category known"]
        out.append(
            Decision(
                GDPR_ART33,
                f"controller data ({', '.join(why)}); ENISA band {band} >= {r.authority_from_band}",
            )
        )
    if (controller or unclassified) and facts.has_subjects:
        if facts.band is not None and facts.band.rank >= RiskBand(r.subjects_from_band).rank:
            out.append(Decision(GDPR_ART34, f"high risk: ENISA band {band}"))
        elif facts.special_categories and r.special_categories_high_risk:
            out.append(Decision(GDPR_ART34, "special categories: high risk (EDPB 9/2022 para 102)"))
        elif facts.severity.rank >= config.notify_customers_from.rank:
            out.append(
                Decision(
                    GDPR_ART34,
                    f"configured policy: detection severity {facts.severity.value} >= "
                    f"notify_customers_from {config.notify_customers_from.value}",
                )
            )
    processor = sorted(cats & set(r.processor_categories))
    if processor:
        out.append(Decision(GDPR_ART33_2, f"customers' hosted data ({', '.join(processor)})"))
    ecomms = sorted(cats & set(r.ecomms_categories))
    if ecomms:
        out.append(Decision(EPRIVACY, f"e-communications data ({', '.join(ecomms)})"))
    if r.nis2.enabled:
        significant = ""
        if facts.malicious and r.nis2.significant_when_malicious:
            significant = "significant: data compromised by a suspected malicious action"
        elif (
            facts.band is not None
            and facts.band.rank >= RiskBand(r.nis2.significant_from_band).rank
        ):
            significant = f"significant: ENISA band {band}"
        if significant:
            out.append(Decision(NIS2_EARLY, significant))
            out.append(Decision(NIS2_NOTIFICATION, significant))
    return out


def recipient(regime: str, config: ObligationsConfig) -> str:
    r = config.regimes
    return {
        GDPR_ART33: config.authority_name,
        GDPR_ART34: "affected customers",
        GDPR_ART33_2: r.processor_recipient,
        EPRIVACY: r.ecomms_recipient,
        EPRIVACY_FOLLOWUP: r.ecomms_recipient,
        NIS2_EARLY: r.nis2.recipient,
        NIS2_NOTIFICATION: r.nis2.recipient,
        NIS2_FINAL: r.nis2.recipient,
    }[regime]


def add_month(when: datetime) -> datetime:
    """The same wall-clock time one calendar month later in Brussels (clamped to month end)."""
    local = when.astimezone(BRUSSELS)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    day = min(local.day, calendar.monthrange(year, month)[1])
    return local.replace(year=year, month=month, day=day, fold=0).astimezone(when.tzinfo)


def due_from(regime: str, start: datetime, config: ObligationsConfig) -> datetime:
    r = config.regimes
    if regime == NIS2_FINAL:
        return add_month(start)
    window = {
        GDPR_ART33: config.authority_deadline,
        GDPR_ART34: config.customer_deadline,
        GDPR_ART33_2: r.processor_deadline,
        EPRIVACY: r.ecomms_deadline,
        EPRIVACY_FOLLOWUP: r.ecomms_followup,
        NIS2_EARLY: r.nis2.early_warning,
        NIS2_NOTIFICATION: r.nis2.notification,
    }[regime]
    return start + window


def clock_start(regime: str, detected_at: datetime, aware_at: datetime | None) -> datetime:
    """Where the clock of a regime starts: awareness, or detection until awareness is set."""
    if CLOCK_BASIS.get(regime) == AWARENESS and aware_at is not None:
        return aware_at
    return detected_at


def plan(facts: IncidentFacts, config: ObligationsConfig) -> list[ObligationPlan]:
    plans = []
    for decision in decide(facts, config):
        start = clock_start(decision.regime, facts.detected_at, facts.aware_at)
        plans.append(
            ObligationPlan(
                regime=decision.regime,
                recipient=recipient(decision.regime, config),
                clock_start=start,
                due_at=due_from(decision.regime, start, config),
                release_at=facts.detected_at + config.hold
                if decision.regime == GDPR_ART34
                else None,
            )
        )
    return plans


def follow_up(
    regime: str, phase: str, sent_at: datetime, config: ObligationsConfig
) -> ObligationPlan | None:
    """The obligation a notice starts: 611 second notice after an incomplete initial one,
    the NIS2 final report one month after the notification."""
    nxt = None
    if regime == EPRIVACY and phase == "initial":
        nxt = EPRIVACY_FOLLOWUP
    elif regime == NIS2_NOTIFICATION:
        nxt = NIS2_FINAL
    if nxt is None:
        return None
    return ObligationPlan(
        regime=nxt,
        recipient=recipient(nxt, config),
        clock_start=sent_at,
        due_at=due_from(nxt, sent_at, config),
        release_at=None,
    )


def assumed_awareness(
    detected_at: datetime, triage_window: timedelta, mode: str
) -> tuple[datetime, datetime]:
    """(when the triage window ends, the awareness time then recorded) for an incident nobody
    confirmed or dismissed in time."""
    ends = detected_at + triage_window
    return ends, (detected_at if mode == "detection" else ends)


def is_late(due_at: datetime, sent_at: datetime) -> bool:
    return sent_at > due_at


def hours(delta: timedelta) -> float:
    return round(delta.total_seconds() / 3600, 2)
