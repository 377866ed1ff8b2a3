"""Words and cleaning shared by every template: dates in Brussels time, data-category names,
and the functions that make a hostile value harmless text."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

from breachwatch.errors import ConfigError
from breachwatch.notifications.directory import LANGUAGES

BRUSSELS: Final = ZoneInfo("Europe/Brussels")
MAX_FIELD = 2000
MAX_LINE_FIELD = 200
MAX_CATEGORIES = 50


def clean_text(value: str, limit: int = MAX_FIELD) -> str:
    """Multi-line text: line breaks kept, other control characters dropped, cut at ``limit``."""
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    kept = "".join(
        c for c in value if c in "\n\t" or not unicodedata.category(c).startswith("C")
    ).strip()
    return kept if len(kept) <= limit else kept[: limit - 1].rstrip() + "…"


def clean_line(value: str, limit: int = MAX_LINE_FIELD) -> str:
    """One line: every control character and run of whitespace becomes one space."""
    spaced = "".join(" " if unicodedata.category(c).startswith("C") else c for c in value)
    line = " ".join(spaced.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class Labels:
    """The words from ``labels.json`` next to the templates, checked at load."""

    date_format: Mapping[str, str]
    months: Mapping[str, list[str]]
    categories: Mapping[str, Mapping[str, str]]

    @classmethod
    def parse(cls, text: str, where: str) -> Labels:
        try:
            data = json.loads(text)
            date_format = {lang: str(data["date_format"][lang]) for lang in LANGUAGES}
            months = {lang: [str(m) for m in data["months"][lang]] for lang in LANGUAGES}
            categories = {
                str(category): {lang: str(words[lang]) for lang in LANGUAGES}
                for category, words in data["categories"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            expected = "JSON with date_format, months and categories for fr, nl and en"
            raise ConfigError(where, "labels.json", f"{expected} ({err!r})") from err
        if any(len(names) != 12 for names in months.values()):
            raise ConfigError(where, "labels.json", "twelve month names per language")
        return cls(date_format, months, categories)

    def detected(self, moment: datetime, language: str) -> str:
        """The time in Brussels, with the offset that applied then (CET +01:00, CEST +02:00)."""
        local = moment.astimezone(BRUSSELS)
        offset = local.strftime("%z")
        parts = {
            "{day}": str(local.day),
            "{month}": self.months[language][local.month - 1],
            "{year}": str(local.year),
            "{time}": local.strftime("%H:%M"),
            "{offset}": f"{offset[:3]}:{offset[3:]}",
        }
        # Plain replacement, not str.format: a format string can reach attributes.
        text = self.date_format[language]
        for placeholder, value in parts.items():
            text = text.replace(placeholder, value)
        return text

    def category_words(self, categories: tuple[str, ...], language: str) -> list[str]:
        """Readable words for each category id, in order, without repeats; unknown ids as-is."""
        words: list[str] = []
        for category in categories[:MAX_CATEGORIES]:
            known = self.categories.get(category)
            label = known[language] if known else clean_line(category)
            if label and label not in words:
                words.append(label)
        return words
