"""Which customer a web page is about when its URL names none: the one of the page it was
opened from.

A web application often addresses things by their own number (``/panel/bills/B-2025-900001``,
``POST .../collection``) and shows the customer only on the page that led there: the customer's
page, or a helpdesk case (whose customer the case index knows). The access log keeps that link
in the Referer. A route configured with ``subject: referer`` (parsers/web_routes.py) asks for
exactly this: its request takes the customer of the page its Referer names: as that page was
seen earlier in the log by the same account, else as the Referer's own route names it (the web
parser tags ``referer_subject:N`` or ``referer_case_id:N``; a case is resolved to its
customer through the case index, so the page need not be in the log at all). Requests of other
routes are only remembered (``path:`` tag, own customer or case), never changed: a search or a
list stays a search or a list, wherever it was opened from.

State: per account, the last pages with their customers (bounded); it is part of the
conditions' snapshot, so a restart judges the next request as an uninterrupted run would.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace

from breachwatch.detection.casework import CaseIndex, Casework
from breachwatch.detection.reference import Holder
from breachwatch.events import AccessEvent

WEB_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
MAX_ACCOUNTS = 1024  # bounds the committed snapshot too
MAX_PAGES = 16  # per account: a Referer names a page seen moments before
INHERIT_TAG = "subject:referer"  # set by the web parser for routes with ``subject: referer``
INHERITED_TAG = "subject_via_referer"  # on an event whose customer came from its Referer


class Navigation:
    """``navigation(event) -> event``: see the module docstring."""

    def __init__(self, casework: Casework | None, cases: Holder[CaseIndex] | None) -> None:
        self._case_tag = f"{casework.case_id_column}:" if casework is not None else None
        self._cases = cases
        self._pages: OrderedDict[str, OrderedDict[str, tuple[str, ...]]] = OrderedDict()

    def __call__(self, event: AccessEvent) -> AccessEvent:
        if event.command not in WEB_METHODS or not event.actor:
            return event
        path = referer = None
        cases: list[str] = []
        referer_subjects: list[str] = []
        referer_cases: list[str] = []
        case_tag = self._case_tag
        for tag in event.tags:
            if tag.startswith("path:"):
                path = tag[5:]
            elif tag.startswith("referer:"):
                referer = tag[8:]
            elif tag.startswith("referer_subject:"):
                referer_subjects.append(tag[16:])
            elif case_tag is not None and tag.startswith(case_tag):
                cases.append(tag[len(case_tag) :])
            elif case_tag is not None and tag.startswith("referer_" + case_tag):
                referer_cases.append(tag[8 + len(case_tag) :])
        if path is None:
            return event
        subjects = event.subjects or self._case_subjects(cases)
        if not event.subjects and INHERIT_TAG in event.tags and referer is not None:
            # the page as this account saw it earlier; else what the Referer's own route
            # names (a customer, or a case whose customer the case index knows)
            pages = self._pages.get(event.actor)
            inherited = pages.get(referer, ()) if pages is not None else ()
            inherited = (
                inherited
                or tuple(dict.fromkeys(referer_subjects))
                or self._case_subjects(referer_cases)
            )
            if inherited:
                event = _with_subjects(event, inherited)
                subjects = inherited
        if subjects:
            self._remember(event.actor, path, subjects)
        return event

    def _case_subjects(self, cases: list[str]) -> tuple[str, ...]:
        if not cases or self._cases is None:
            return ()
        index = self._cases.current
        found = (index.by_case.get(c) for c in cases)
        return tuple(dict.fromkeys(c.subject for c in found if c is not None))

    def _remember(self, actor: str, path: str, subjects: tuple[str, ...]) -> None:
        pages = self._pages.get(actor)
        if pages is None:
            pages = self._pages[actor] = OrderedDict()
            while len(self._pages) > MAX_ACCOUNTS:
                self._pages.popitem(last=False)
        self._pages.move_to_end(actor)
        pages[path] = subjects
        pages.move_to_end(path)
        while len(pages) > MAX_PAGES:
            pages.popitem(last=False)

    def snapshot(self) -> dict[str, dict[str, list[str]]]:
        return {
            actor: {path: list(subjects) for path, subjects in pages.items()}
            for actor, pages in self._pages.items()
        }

    def restore(self, data: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
        self._pages = OrderedDict(
            (actor, OrderedDict((path, tuple(map(str, s))) for path, s in pages.items()))
            for actor, pages in data.items()
        )


def _with_subjects(event: AccessEvent, subjects: tuple[str, ...]) -> AccessEvent:
    return replace(event, subjects=subjects, tags=event.tags | {INHERITED_TAG})
