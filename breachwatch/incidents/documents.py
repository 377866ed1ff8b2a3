"""Documents an incident produces: authority notice drafts (GDPR Art. 33(3), Reg. 611/2013
Annex I, NIS2 Art. 23(4)) in French, Dutch or English as Markdown and JSON, and the Art. 33(5)
register. Pure: they take a dossier (plain data read from the store by `dossier()`) and `now`.

A draft is a starting point for people: every field the regime requires is present, filled
from the store where breachwatch knows the answer, and marked "to complete" where it cannot.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from breachwatch.config import DaemonConfig
from breachwatch.incidents import regimes
from breachwatch.incidents.chain import load_rows
from breachwatch.incidents.service import subject_count
from breachwatch.store.schema import FindingRow, Incident, Obligation, OutboxMessage

LANGS = ("fr", "nl", "en")
DRAFT_REGIMES = (
    regimes.GDPR_ART33,
    regimes.EPRIVACY,
    regimes.EPRIVACY_FOLLOWUP,
    regimes.NIS2_EARLY,
    regimes.NIS2_NOTIFICATION,
    regimes.NIS2_FINAL,
)

L: dict[str, dict[str, str]] = {
    "title": {
        "en": "Personal data breach — draft notice",
        "fr": "Violation de données à caractère personnel — projet de notification",
        "nl": "Inbreuk in verband met persoonsgegevens — ontwerp van melding",
    },
    "todo": {"en": "[to complete]", "fr": "[à compléter]", "nl": "[in te vullen]"},
    "yes": {"en": "yes", "fr": "oui", "nl": "ja"},
    "no": {"en": "no", "fr": "non", "nl": "neen"},
    "unknown_more": {
        "en": "at least {n}; the exact number is not known from the logs",
        "fr": "au moins {n} ; le nombre exact n'est pas connu par les journaux",
        "nl": "minstens {n}; het juiste aantal blijkt niet uit de logbestanden",
    },
    "sec_entity": {"en": "Notifying entity", "fr": "Entité notifiante", "nl": "Meldende entiteit"},
    "sec_breach": {"en": "The breach", "fr": "La violation", "nl": "De inbreuk"},
    "sec_assessment": {"en": "Assessment", "fr": "Évaluation", "nl": "Beoordeling"},
    "sec_measures": {"en": "Measures", "fr": "Mesures", "nl": "Maatregelen"},
    "sec_timeline": {"en": "Timeline", "fr": "Chronologie", "nl": "Tijdlijn"},
    "sec_s1": {
        "en": "Annex I, section 1 — initial notification",
        "fr": "Annexe I, section 1 — notification initiale",
        "nl": "Bijlage I, deel 1 — eerste kennisgeving",
    },
    "sec_s2": {
        "en": "Annex I, section 2 — further information",
        "fr": "Annexe I, section 2 — informations complémentaires",
        "nl": "Bijlage I, deel 2 — aanvullende informatie",
    },
    "organisation": {"en": "Organisation", "fr": "Organisation", "nl": "Organisatie"},
    "reference": {
        "en": "Internal reference",
        "fr": "Référence interne",
        "nl": "Interne referentie",
    },
    "recipient": {"en": "Recipient", "fr": "Destinataire", "nl": "Ontvanger"},
    "contact": {
        "en": "DPO or other contact point (Art. 33(3)(b))",
        "fr": "DPO ou autre point de contact (art. 33(3)(b))",
        "nl": "DPO of ander contactpunt (art. 33(3)(b))",
    },
    "nature": {
        "en": "Nature of the breach (Art. 33(3)(a))",
        "fr": "Nature de la violation (art. 33(3)(a))",
        "nl": "Aard van de inbreuk (art. 33(3)(a))",
    },
    "what_happened": {
        "en": "What was observed",
        "fr": "Ce qui a été constaté",
        "nl": "Wat werd vastgesteld",
    },
    "subject_categories": {
        "en": "Categories of data subjects",
        "fr": "Catégories de personnes concernées",
        "nl": "Categorieën van betrokkenen",
    },
    "subjects_approx": {
        "en": "Approximate number of data subjects",
        "fr": "Nombre approximatif de personnes concernées",
        "nl": "Geschat aantal betrokkenen",
    },
    "record_categories": {
        "en": "Categories of personal data records",
        "fr": "Catégories d'enregistrements de données",
        "nl": "Categorieën van persoonsgegevensregisters",
    },
    "records_approx": {
        "en": "Approximate number of records (accesses observed)",
        "fr": "Nombre approximatif d'enregistrements (accès constatés)",
        "nl": "Geschat aantal registers (vastgestelde toegangen)",
    },
    "consequences": {
        "en": "Likely consequences (Art. 33(3)(c))",
        "fr": "Conséquences probables (art. 33(3)(c))",
        "nl": "Waarschijnlijke gevolgen (art. 33(3)(c))",
    },
    "risk": {
        "en": "Severity (ENISA method)",
        "fr": "Gravité (méthode ENISA)",
        "nl": "Ernst (ENISA-methode)",
    },
    "measures": {
        "en": "Measures taken or proposed (Art. 33(3)(d))",
        "fr": "Mesures prises ou proposées (art. 33(3)(d))",
        "nl": "Genomen of voorgestelde maatregelen (art. 33(3)(d))",
    },
    "first_event": {"en": "First access", "fr": "Premier accès", "nl": "Eerste toegang"},
    "last_event": {"en": "Last access", "fr": "Dernier accès", "nl": "Laatste toegang"},
    "detected": {"en": "Detected", "fr": "Détectée", "nl": "Gedetecteerd"},
    "aware": {"en": "Awareness", "fr": "Prise de connaissance", "nl": "Kennisname"},
    "deadline": {"en": "Deadline", "fr": "Échéance", "nl": "Termijn"},
    "phased": {
        "en": "Information given in phases (Art. 33(4))",
        "fr": "Informations fournies de manière échelonnée (art. 33(4))",
        "nl": "Informatie in fasen verstrekt (art. 33(4))",
    },
    "phased_text": {
        "en": "initial notice; further information will follow without undue delay",
        "fr": "notification initiale ; les informations complémentaires suivront sans retard",
        "nl": "eerste melding; verdere informatie volgt zonder onnodige vertraging",
    },
    "delay": {
        "en": "Reasons for the delay (Art. 33(1))",
        "fr": "Motifs du retard (art. 33(1))",
        "nl": "Redenen voor de vertraging (art. 33(1))",
    },
    "which_notice": {
        "en": "First or second notification",
        "fr": "Première ou deuxième notification",
        "nl": "Eerste of tweede kennisgeving",
    },
    "first": {"en": "first (initial)", "fr": "première (initiale)", "nl": "eerste"},
    "second": {"en": "second (follow-up)", "fr": "deuxième (suivi)", "nl": "tweede (vervolg)"},
    "incident_time": {
        "en": "Date and time of the incident",
        "fr": "Date et heure de l'incident",
        "nl": "Datum en tijd van het incident",
    },
    "detection_time": {
        "en": "Date and time of detection",
        "fr": "Date et heure de la détection",
        "nl": "Datum en tijd van de ontdekking",
    },
    "circumstances": {
        "en": "Circumstances of the breach",
        "fr": "Circonstances de la violation",
        "nl": "Omstandigheden van de inbreuk",
    },
    "data_content": {
        "en": "Nature and content of the personal data concerned",
        "fr": "Nature et contenu des données à caractère personnel concernées",
        "nl": "Aard en inhoud van de betrokken persoonsgegevens",
    },
    "tech_measures": {
        "en": "Technical and organisational measures applied",
        "fr": "Mesures techniques et organisationnelles appliquées",
        "nl": "Toegepaste technische en organisatorische maatregelen",
    },
    "other_providers": {
        "en": "Relevant use of other providers",
        "fr": "Recours à d'autres fournisseurs",
        "nl": "Relevant gebruik van andere aanbieders",
    },
    "summary": {
        "en": "Summary of the incident",
        "fr": "Résumé de l'incident",
        "nl": "Samenvatting van het incident",
    },
    "subscribers": {
        "en": "Number of subscribers or individuals concerned",
        "fr": "Nombre d'abonnés ou de personnes concernés",
        "nl": "Aantal betrokken abonnees of personen",
    },
    "subscriber_notice": {
        "en": "Notification to subscribers or individuals (content, means, number)",
        "fr": "Notification aux abonnés ou personnes (contenu, moyen, nombre)",
        "nl": "Kennisgeving aan abonnees of personen (inhoud, middel, aantal)",
    },
    "cross_border": {
        "en": "Cross-border impact",
        "fr": "Impact transfrontière",
        "nl": "Grensoverschrijdende impact",
    },
    "malicious": {
        "en": "Suspected unlawful or malicious act",
        "fr": "Acte illicite ou malveillant suspecté",
        "nl": "Vermoedelijk onrechtmatige of kwaadwillige handeling",
    },
    "impact": {
        "en": "Initial assessment: severity and impact",
        "fr": "Évaluation initiale : gravité et impact",
        "nl": "Eerste beoordeling: ernst en impact",
    },
    "ioc": {
        "en": "Indicators of compromise",
        "fr": "Indicateurs de compromission",
        "nl": "Indicatoren van compromittering",
    },
    "description": {
        "en": "Detailed description, severity and impact",
        "fr": "Description détaillée, gravité et impact",
        "nl": "Gedetailleerde beschrijving, ernst en impact",
    },
    "root_cause": {
        "en": "Type of threat or root cause",
        "fr": "Type de menace ou cause première",
        "nl": "Soort dreiging of grondoorzaak",
    },
    "mitigation": {
        "en": "Mitigation measures applied and ongoing",
        "fr": "Mesures d'atténuation appliquées et en cours",
        "nl": "Toegepaste en lopende beperkende maatregelen",
    },
    "lang_note": {
        "en": "Note: the Belgian APD/GBA accepts notices in French, Dutch or German only.",
        "fr": "",
        "nl": "",
    },
}


def t(key: str, lang: str) -> str:
    return L[key][lang]


# ---- the dossier (store -> plain data) ---------------------------------------------------
def dossier(session: Session, incident: Incident, config: DaemonConfig) -> dict[str, Any]:
    findings = list(
        session.scalars(
            select(FindingRow).where(FindingRow.incident_id == incident.id).order_by(FindingRow.id)
        )
    )
    obligations = list(
        session.scalars(
            select(Obligation).where(Obligation.incident_id == incident.id).order_by(Obligation.id)
        )
    )
    notices = []
    for ob in obligations:
        for m in session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.obligation_id == ob.id)
            .order_by(OutboxMessage.id)
        ):
            notices.append(
                {
                    "regime": ob.regime,
                    "recipient": m.recipient_id,
                    "channel": m.channel,
                    "state": m.state,
                    "attempts": m.attempts,
                    "message_id": m.message_id,
                    "receipt": m.receipt,
                    "error": m.last_error,
                    "created_at": m.created_at.isoformat(),
                    "sent_at": m.sent_at.isoformat() if m.sent_at else None,
                }
            )
    n = config.notifications
    return {
        "organisation": n.organisation,
        "contact": {"name": n.contact_name, "email": n.contact_email, "phone": n.contact_phone},
        "texts": {lang: texts.model_dump() for lang, texts in n.texts.items()},
        "incident": {
            "ref": incident.ref,
            "state": incident.state,
            "severity": incident.severity,
            "actor": incident.actor,
            "person": incident.person,
            "store": incident.store,
            "categories": list(incident.categories),
            "subjects": subject_count(session, incident.id),
            "detected_at": incident.detected_at.isoformat(),
            "aware_at": incident.aware_at.isoformat() if incident.aware_at else None,
            "aware_source": incident.aware_source,
            "first_event_at": incident.first_event_at.isoformat(),
            "last_event_at": incident.last_event_at.isoformat(),
            "assignee": incident.assignee,
            "merged_into": incident.merged_into,
        },
        "risk": incident.risk_assessment or {},
        "findings": [
            {
                "id": f.id,
                "rule": f.rule,
                "severity": f.severity,
                "time": f.time.isoformat(),
                "objects": f.objects,
                "subjects": f.subjects,
                "categories": f.categories,
                "explanation": f.explanation,
                "controls": f.controls,
                "evidence": f.evidence,
            }
            for f in findings
        ],
        "obligations": [
            {
                "regime": o.regime,
                "recipient": o.recipient,
                "state": o.state,
                "clock_basis": o.clock_basis,
                "clock_start": o.clock_start.isoformat(),
                "due_at": o.due_at.isoformat(),
                "done_at": o.done_at.isoformat() if o.done_at else None,
                "overdue_since": o.overdue_since.isoformat() if o.overdue_since else None,
                "notes": o.notes or {},
            }
            for o in obligations
        ],
        "notices": notices,
        "history": [r.to_json() for r in load_rows(session, incident.id)],
    }


# ---- drafts (pure) -----------------------------------------------------------------------
def _text(d: dict[str, Any], lang: str, key: str) -> str | None:
    texts = d["texts"].get(lang) or d["texts"].get("en") or {}
    value = texts.get(key)
    return str(value) if value else None


def _field(key: str, lang: str, value: object) -> dict[str, Any]:
    missing = value is None or value == "" or value == []
    return {
        "key": key,
        "label": t(key, lang),
        "value": t("todo", lang) if missing else value,
        "complete": not missing,
    }


def _observed(d: dict[str, Any]) -> str:
    rules: dict[str, int] = {}
    for f in d["findings"]:
        rules[f["rule"]] = rules.get(f["rule"], 0) + 1
    objects = sorted({o for f in d["findings"] for o in f["objects"]})
    inc = d["incident"]
    return (
        f"{len(d['findings'])} finding(s) ({', '.join(f'{r} x{n}' for r, n in rules.items())}) "
        f"by account {inc['actor']} on {inc['store']}: {', '.join(objects)}"
    )


def _subjects(d: dict[str, Any], lang: str) -> str:
    n = d["incident"]["subjects"]
    if d["risk"].get("flags", {}).get("number_unknown"):
        return t("unknown_more", lang).format(n=n)
    return str(n)


def _risk(d: dict[str, Any]) -> str | None:
    risk = d["risk"]
    if not risk:
        return None
    text = f"{risk['band']} (SE {risk['formula']})"
    if risk.get("override"):
        o = risk["override"]
        text += f"; set to {o['band']} by {o['by']}: {o['reason']}"
    return text


def _obligation(d: dict[str, Any], regime: str) -> dict[str, Any] | None:
    return next((o for o in d["obligations"] if o["regime"] == regime), None)


def _malicious(d: dict[str, Any], lang: str) -> str:
    hit = any(
        c["name"] == "malicious" and c["value"] > 0 for c in d["risk"].get("circumstances", [])
    )
    return t("yes" if hit else "no", lang)


def draft(d: dict[str, Any], regime: str, lang: str, now: datetime) -> dict[str, Any]:
    if lang not in LANGS:
        raise ValueError(f"language is one of {', '.join(LANGS)}")
    if regime not in DRAFT_REGIMES:
        raise ValueError(f"drafts exist for {', '.join(DRAFT_REGIMES)}")
    inc = d["incident"]
    contact = ", ".join(v for v in d["contact"].values() if v)
    obligation = _obligation(d, regime)
    entity = [
        _field("organisation", lang, d["organisation"]),
        _field("reference", lang, inc["ref"]),
        _field("recipient", lang, obligation["recipient"] if obligation else None),
        _field("contact", lang, contact),
    ]
    timeline = [
        _field("first_event", lang, inc["first_event_at"]),
        _field("last_event", lang, inc["last_event_at"]),
        _field("detected", lang, inc["detected_at"]),
        _field("aware", lang, inc["aware_at"]),
        _field("deadline", lang, obligation["due_at"] if obligation else None),
    ]
    sections: list[tuple[str, list[dict[str, Any]]]] = [("sec_entity", entity)]
    cats = ", ".join(inc["categories"])
    if regime == regimes.GDPR_ART33:
        sections += [
            (
                "sec_breach",
                [
                    _field("nature", lang, _text(d, lang, "nature")),
                    _field("what_happened", lang, _observed(d)),
                    _field("subject_categories", lang, "customers"),
                    _field("subjects_approx", lang, _subjects(d, lang)),
                    _field("record_categories", lang, cats),
                    _field("records_approx", lang, len(d["findings"])),
                ],
            ),
            (
                "sec_assessment",
                [
                    _field("consequences", lang, _text(d, lang, "likely_consequences")),
                    _field("risk", lang, _risk(d)),
                ],
            ),
            ("sec_measures", [_field("measures", lang, _text(d, lang, "measures_taken"))]),
            ("sec_timeline", [*timeline, _field("phased", lang, t("phased_text", lang))]),
        ]
        if obligation and regimes.is_late(datetime.fromisoformat(obligation["due_at"]), now):
            sections.append(
                ("sec_timeline", [_field("delay", lang, obligation["notes"].get("late_reason"))])
            )
    elif regime in (regimes.EPRIVACY, regimes.EPRIVACY_FOLLOWUP):
        second = regime == regimes.EPRIVACY_FOLLOWUP
        s1 = [
            _field("which_notice", lang, t("second" if second else "first", lang)),
            _field("incident_time", lang, inc["first_event_at"]),
            _field("detection_time", lang, inc["detected_at"]),
            _field("circumstances", lang, _observed(d)),
            _field("data_content", lang, cats),
            _field("tech_measures", lang, _text(d, lang, "measures_taken")),
            _field("other_providers", lang, None),
        ]
        sections.append(("sec_s1", s1))
        if second:
            sent = [n for n in d["notices"] if n["state"] == "sent"]
            sections.append(
                (
                    "sec_s2",
                    [
                        _field("summary", lang, _text(d, lang, "nature")),
                        _field("data_content", lang, cats),
                        _field("subscribers", lang, _subjects(d, lang)),
                        _field("consequences", lang, _text(d, lang, "likely_consequences")),
                        _field("tech_measures", lang, _text(d, lang, "measures_taken")),
                        _field(
                            "subscriber_notice",
                            lang,
                            f"e-mail, {len(sent)} sent" if sent else None,
                        ),
                        _field("cross_border", lang, None),
                    ],
                )
            )
        sections.append(("sec_timeline", timeline))
    else:
        ioc = f"account {inc['actor']}; objects and times in the findings ({_observed(d)})"
        body = {
            regimes.NIS2_EARLY: [
                _field("malicious", lang, _malicious(d, lang)),
                _field("cross_border", lang, None),
            ],
            regimes.NIS2_NOTIFICATION: [
                _field("malicious", lang, _malicious(d, lang)),
                _field("impact", lang, f"{_risk(d)}; {_subjects(d, lang)} data subjects"),
                _field("ioc", lang, ioc),
                _field("cross_border", lang, None),
            ],
            regimes.NIS2_FINAL: [
                _field("description", lang, f"{_observed(d)}; {_risk(d)}"),
                _field("root_cause", lang, None),
                _field("mitigation", lang, _text(d, lang, "measures_taken")),
                _field("cross_border", lang, None),
            ],
        }[regime]
        sections += [("sec_breach", body), ("sec_timeline", timeline)]
    note = t("lang_note", lang) if regime == regimes.GDPR_ART33 else ""
    fields = [f for _, fs in sections for f in fs]
    return {
        "regime": regime,
        "regime_title": regimes.TITLES[regime],
        "language": lang,
        "title": t("title", lang),
        "incident": inc["ref"],
        "generated_at": now.isoformat(),
        "complete": all(f["complete"] for f in fields),
        "to_complete": [f["key"] for f in fields if not f["complete"]],
        "note": note or None,
        "sections": [{"title": t(key, lang), "fields": fs} for key, fs in sections],
    }


def draft_markdown(doc: dict[str, Any]) -> str:
    lines = [f"# {doc['title']}", "", f"**{doc['regime_title']}** — {doc['incident']}", ""]
    if doc.get("note"):
        lines += [f"> {doc['note']}", ""]
    for section in doc["sections"]:
        lines += [f"## {section['title']}", ""]
        for f in section["fields"]:
            lines.append(f"- **{f['label']}**: {f['value']}")
        lines.append("")
    lines.append(f"_Draft generated by breachwatch at {doc['generated_at']}; not legal advice._")
    return "\n".join(lines) + "\n"


# ---- the Art. 33(5) register -------------------------------------------------------------
REGISTER_COLUMNS = (
    "ref",
    "state",
    "detected_at",
    "aware_at",
    "first_event_at",
    "last_event_at",
    "categories",
    "subjects",
    "risk_band",
    "risk_score",
    "facts",
    "effects",
    "remedial_action",
    "authority_notice",
    "subject_notice",
    "other_notices",
    "late_reasons",
    "exemptions",
    "assignee",
)


def register_row(d: dict[str, Any]) -> dict[str, Any]:
    inc, risk = d["incident"], d["risk"]

    def state_of(regime: str) -> str:
        o = _obligation(d, regime)
        if o is None:
            return "not applicable"
        return f"{o['state']} {o['done_at'] or ''} (due {o['due_at']})".replace("  ", " ")

    others = [
        f"{o['regime']}: {o['state']}"
        for o in d["obligations"]
        if o["regime"] not in (regimes.GDPR_ART33, regimes.GDPR_ART34)
    ]
    comments = [h["detail"].get("text", "") for h in d["history"] if h["action"] == "comment"]
    return {
        "ref": inc["ref"],
        "state": inc["state"],
        "detected_at": inc["detected_at"],
        "aware_at": inc["aware_at"] or "",
        "first_event_at": inc["first_event_at"],
        "last_event_at": inc["last_event_at"],
        "categories": " ".join(inc["categories"]),
        "subjects": inc["subjects"],
        "risk_band": (risk.get("override") or {}).get("band") or risk.get("band", ""),
        "risk_score": risk.get("score", ""),
        "facts": _observed(d),
        "effects": _text(d, "en", "likely_consequences") or "",
        "remedial_action": "; ".join([_text(d, "en", "measures_taken") or "", *comments]).strip(
            "; "
        ),
        "authority_notice": state_of(regimes.GDPR_ART33),
        "subject_notice": state_of(regimes.GDPR_ART34),
        "other_notices": "; ".join(others),
        "late_reasons": "; ".join(
            f"{o['regime']}: {o['notes']['late_reason']}"
            for o in d["obligations"]
            if o["notes"].get("late_reason")
        ),
        "exemptions": "; ".join(
            f"{o['regime']}: {o['notes']['exemption']['ground']} "
            f"({o['notes']['exemption']['reason']})"
            for o in d["obligations"]
            if o["notes"].get("exemption")
        ),
        "assignee": inc["assignee"] or "",
    }


def register_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=REGISTER_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return out.getvalue()
