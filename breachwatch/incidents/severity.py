"""ENISA (2013) personal-data-breach severity, as a pure function of the incident's facts.

    SE = DPC × EI + CB

DPC (data processing context) is the highest score among the incident's data categories
(simple 1, behavioural 2, financial 3, sensitive 4, each adjustable in the config with a written
reason; credentials score as the categories they unlock). EI (ease of identification) is the
highest among the categories (0.25, 0.5, 0.75, 1). CB (circumstances of breach) adds loss of
confidentiality, integrity and availability (0 / 0.25 / 0.5 each) and malicious intent (0.5),
read from the rules that fired. Bands: < 2 low, < 3 medium, < 4 high, else very high.

Every factor carries its reason, so the assessment can be shown to a DPO or an auditor as is.
Staff may override the band, only with a recorded justification; the computed value stays.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from breachwatch.config import CategoryRisk, RiskConfig

METHOD = "ENISA 2013 (SE = DPC x EI + CB)"
DPC_BASE = {"simple": 1, "behavioural": 2, "financial": 3, "sensitive": 4}
EI_WORDS = {0.25: "negligible", 0.5: "limited", 0.75: "significant", 1.0: "maximum"}


class RiskBand(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    VERY_HIGH = "very_high"

    @property
    def rank(self) -> int:
        return list(RiskBand).index(self) + 1


def band_of(score: float) -> RiskBand:
    if score < 2:
        return RiskBand.LOW
    if score < 3:
        return RiskBand.MEDIUM
    if score < 4:
        return RiskBand.HIGH
    return RiskBand.VERY_HIGH


@dataclass(frozen=True, slots=True)
class Factor:
    name: str  # dpc, ei, confidentiality, integrity, availability, malicious
    value: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class RiskInputs:
    """What the assessment is computed from: the incident's categories and findings."""

    categories: tuple[str, ...]
    rules: tuple[str, ...]  # rule ids of the incident's findings (repeats allowed)
    subjects: int  # distinct affected data subjects known
    count_unknown: bool = False  # an unbounded read or export: the real number is unknown
    unintelligible: bool = False  # declared by staff (e.g. encrypted with a safe key)


@dataclass(frozen=True, slots=True)
class Assessment:
    dpc: Factor
    ei: Factor
    circumstances: tuple[Factor, ...]
    score: float
    band: RiskBand
    over_100: bool
    count_unknown: bool
    unintelligible: bool
    special_categories: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "score": self.score,
            "band": self.band.value,
            "dpc": self.dpc.to_json(),
            "ei": self.ei.to_json(),
            "circumstances": [f.to_json() for f in self.circumstances],
            "formula": f"{self.dpc.value:g} x {self.ei.value:g} + "
            f"{sum(f.value for f in self.circumstances):g} = {self.score:g}",
            "flags": {
                "more_than_100_individuals": self.over_100,
                "number_unknown": self.count_unknown,
                "data_unintelligible": self.unintelligible,
                "special_categories": list(self.special_categories),
            },
        }


def _category(name: str, config: RiskConfig) -> CategoryRisk:
    return config.categories.get(name, config.unmapped)


def _dpc_of(name: str, config: RiskConfig, seen: frozenset[str] = frozenset()) -> Factor:
    entry = _category(name, config)
    mapped = "" if name in config.categories else " (not in the severity map: default used)"
    if entry.kind == "credentials":
        unlocked = [u for u in entry.unlocks if u not in seen | {name}]
        if not unlocked:
            return Factor("dpc", 1, f"{name}: credentials unlocking nothing scored")
        best = max((_dpc_of(u, config, seen | {name}) for u in unlocked), key=lambda f: f.value)
        return Factor(
            "dpc", best.value, f"{name}: credentials score as what they unlock; {best.reason}"
        )
    base = DPC_BASE[entry.kind]
    if entry.dpc is not None and entry.dpc != base:
        return Factor(
            "dpc",
            entry.dpc,
            f"{name}: {entry.kind} data, base {base} adjusted to {entry.dpc}: {entry.reason}"
            f"{mapped}",
        )
    return Factor("dpc", base, f"{name}: {entry.kind} data, base {base}{mapped}")


def _ei_of(name: str, config: RiskConfig) -> float:
    entry = _category(name, config)
    if entry.kind == "credentials":
        return float(
            max([_category(u, config).ease_of_identification for u in entry.unlocks] or [1.0])
        )
    return float(entry.ease_of_identification)


def _special(categories: Iterable[str], config: RiskConfig) -> tuple[str, ...]:
    return tuple(
        c
        for c in categories
        if _category(c, config).special or _category(c, config).kind == "sensitive"
    )


def _rule_factor(
    name: str, rules: tuple[str, ...], table: dict[str, float], none_reason: str
) -> Factor:
    hits = sorted({r for r in rules if r in table}, key=lambda r: (-table[r], r))
    if not hits:
        return Factor(name, 0, none_reason)
    return Factor(name, table[hits[0]], f"rule {hits[0]} fired")


def assess(inputs: RiskInputs, config: RiskConfig) -> Assessment:
    categories = tuple(dict.fromkeys(inputs.categories)) or ("(none known)",)
    dpcs = [_dpc_of(c, config) for c in categories]
    dpc = max(dpcs, key=lambda f: f.value)
    others = [f.reason.split(":")[0] for f in dpcs if f is not dpc]
    if others:
        dpc = Factor("dpc", dpc.value, f"{dpc.reason} (highest of: {', '.join(others)} too)")
    ei_values = {c: _ei_of(c, config) for c in categories}
    ei_cat = max(ei_values, key=lambda c: ei_values[c])
    ei_value = ei_values[ei_cat]
    ei = Factor(
        "ei",
        ei_value,
        f"{EI_WORDS.get(ei_value, str(ei_value))}: highest for {ei_cat} (configured per category)",
    )
    rules = tuple(inputs.rules)
    unknown = sorted(set(rules) & set(config.unknown_recipient_rules))
    if unknown:
        conf = Factor("confidentiality", 0.5, f"unknown number of recipients: rule {unknown[0]}")
    else:
        conf = Factor("confidentiality", 0.25, "known recipients: data seen by identified accounts")
    integrity = _rule_factor(
        "integrity", rules, dict(config.integrity_rules), "no alteration observed"
    )
    availability = _rule_factor(
        "availability", rules, dict(config.availability_rules), "no loss of availability observed"
    )
    malicious_rules = sorted(set(rules) & set(config.malicious_rules))
    malicious = (
        Factor("malicious", 0.5, f"malicious intent suspected: rule {malicious_rules[0]}")
        if malicious_rules
        else Factor("malicious", 0, "no rule indicating malicious intent fired")
    )
    circumstances = (conf, integrity, availability, malicious)
    score = round(dpc.value * ei.value + sum(f.value for f in circumstances), 4)
    return Assessment(
        dpc=dpc,
        ei=ei,
        circumstances=circumstances,
        score=score,
        band=band_of(score),
        over_100=inputs.subjects > 100,
        count_unknown=inputs.count_unknown,
        unintelligible=inputs.unintelligible,
        special_categories=_special(inputs.categories, config),
    )


def with_override(
    assessment: dict[str, Any], band: RiskBand, by: str, at: datetime, reason: str
) -> dict[str, Any]:
    """The stored assessment with a staff override; the computation is kept beside it."""
    if not reason.strip():
        raise ValueError("an override needs a justification")
    return {
        **assessment,
        "override": {"band": band.value, "by": by, "at": at.isoformat(), "reason": reason},
    }


def effective_band(assessment: dict[str, Any] | None) -> RiskBand | None:
    if not assessment:
        return None
    override = assessment.get("override")
    return RiskBand(override["band"] if override else assessment["band"])
