"""What a partner layout declares: the column maps, transforms, generated fields, rows set aside and XML shape.

:class:`Layout` is one layout file of ``include/layouts/`` as read (``layouts_loading.py`` reads it);
:class:`LayoutResult` is what mapping a file gave (``layouts.apply``). :func:`key` is how headers, element names and
code words are compared (case-, space- and punctuation-insensitive). See ``docs/LAYOUTS.md``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pandas as pd

from csp_observatory.parsing import empty_rejected

_QUOTES: Final = "'\"`\u2018\u2019\u201c\u201d"


class LayoutError(ValueError):
    """A layout file is not valid, or does not fit its target (an observatory mistake, not the partner's)."""


def key(text: str) -> str:
    """A header, element name or code word as a lookup key: case-, space- and punctuation-insensitive.

    ``Crime ID``, ``crime_id`` and ``CRIME-ID`` are one key; so are the ISB 1594 data element
    ``SITE CODE (OF TREATMENT)`` and its XML element ``<SiteCodeOfTreatment>``: the CSV and XML forms of one
    data set then share one mapping.
    """
    return re.sub(r"[\W_]+", "", text.casefold())


def _bare(text: str) -> str:
    # Reports withhold anything in quote marks as if it were a value: a header named in a reason carries none.
    return "".join(ch for ch in text if ch not in _QUOTES).strip()


# --- the layout --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Transform:
    """One declared transform of a value: ``name`` (see docs/LAYOUTS.md) and its argument, if any."""

    name: str
    arg: Any = None


@dataclass(frozen=True)
class Generate:
    """A generated reference: a hash of canonical values plus the row's occurrence among rows sharing them."""

    sources: tuple[str, ...]
    prefix: str
    length: int = 16


@dataclass(frozen=True)
class ColumnMap:
    """How one canonical datafield is made from the partner's file."""

    target: str
    #: Alternative partner headers: the first present in the file is used.
    sources: tuple[str, ...] = ()
    #: Partner headers joined with ``sep`` into one value (for example a date and a time column).
    join: tuple[str, ...] = ()
    sep: str = " "
    generate: Generate | None = None
    transforms: tuple[Transform, ...] = ()
    #: Code map by :func:`key` of the word: partner word (or code) -> the target's code.
    codes: dict[str, str] | None = None
    #: Carried for the sanitising stage: the value is free text that can hold personal data.
    free_text: bool = False

    @property
    def inputs(self) -> tuple[str, ...]:
        """Every partner header this datafield may be read from."""
        return self.sources + self.join


@dataclass(frozen=True)
class SetAside:
    """Rows whose ``column`` is empty are not mapped; each is reported with ``reason``."""

    column: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class XmlShape:
    """Where the records of an XML submission are: accepted root element names and the record element."""

    roots: tuple[str, ...]
    record: str


@dataclass(frozen=True)
class Layout:
    """One partner layout of one feed file."""

    id: str
    title: str
    feed: str
    file: str
    formats: tuple[str, ...]
    columns: tuple[ColumnMap, ...]
    drop: tuple[str, ...] = ()
    set_aside: tuple[SetAside, ...] = ()
    caveats: str = ""
    xml: XmlShape | None = None
    #: The canonical names written, in order: the schema's datafields, or the YAML's ``target.names``.
    target_names: tuple[str, ...] = ()
    #: Canonical datafields a file cannot go without.
    required: frozenset[str] = frozenset()
    #: Extra headers that must be present for :func:`detect` to pick this layout.
    detect_headers: tuple[str, ...] = ()
    source_path: Path = field(compare=False, default=Path())

    @property
    def free_text(self) -> tuple[str, ...]:
        """Canonical datafields this layout marks as free text (for the sanitising stage)."""
        return tuple(c.target for c in self.columns if c.free_text)

    @property
    def mapped(self) -> tuple[str, ...]:
        return tuple(c.target for c in self.columns)

    def column(self, target: str) -> ColumnMap:
        for c in self.columns:
            if c.target == target:
                return c
        raise KeyError(target)

    def header_groups(self) -> list[tuple[str, ...]]:
        """For :func:`detect`: the partner headers that must be present, each as a group of alternatives."""
        groups: list[tuple[str, ...]] = []
        for c in self.columns:
            if c.target in self.required:
                if c.sources:
                    groups.append(c.sources)
                groups.extend((h,) for h in c.join)
        groups.extend((h,) for h in self.detect_headers)
        return groups


@dataclass
class LayoutResult:
    """What :func:`apply` wrote and what the partner (or the observatory) should know about it."""

    rows: int
    notes: list[str]
    layout: str = ""
    #: Rows the layout set aside, in parsing's contract (source_file, source_row, reason, stage "layout").
    rejected: pd.DataFrame = field(default_factory=empty_rejected)
    #: The partner's row number of each written row: parsing's row k is the partner's ``source_rows[k - 1]``.
    source_rows: list[int] = field(default_factory=list)
    free_text: tuple[str, ...] = ()
    encoding: str = "utf-8"
