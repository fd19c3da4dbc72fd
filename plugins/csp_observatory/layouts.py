"""Partner layouts: turn a partner's own file into the canonical CSV of one feed file, before parsing.

A partner's system names columns its own way and writes codes as words. A *layout* (one YAML file per
partner layout in ``include/layouts/``) declares, for one feed file, which partner header gives each canonical
datafield, which declared transforms and code maps apply on the way, which partner columns are dropped and
which rows are set aside with a reason. :func:`apply` writes a UTF-8 CSV whose header is the target's
datafield names, which :func:`csp_observatory.parsing.parse_csv` then reads as if the partner had sent it.

Nothing is guessed: only declared transforms run, a value a code map does not know is passed on unchanged for
validation to judge, a partner column neither mapped nor dropped is left out and named in the notes, and a
required datafield with no column in the file refuses the file (:class:`~csp_observatory.parsing.MalformedFile`)
with a reason naming the datafield and the header expected, never a value. See ``docs/LAYOUTS.md``.

The target is a :class:`~csp_observatory.schema.FeedFile`, or a plain list of canonical names for datasets
whose feed schema is not written yet (stop and search, A&E assaults): the YAML then names the target itself.

This module maps a file (:func:`apply`); what a layout declares is ``layouts_model.py``, reading the layout files
``layouts_loading.py``, and reading the partner's file and telling its layout (:func:`layouts_reading.detect`)
``layouts_reading.py``.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pandas as pd

from csp_observatory.layouts_loading import _schema_target
from csp_observatory.layouts_model import Generate, Layout, LayoutError, LayoutResult, Transform, _bare, key
from csp_observatory.layouts_reading import _read, _series
from csp_observatory.parsing import MalformedFile, rejected_frame
from csp_observatory.schema import FeedFile

# Dates and date-times as partners write them: ISO (xs:dateTime, police.uk's 2026-09-03T21:14:00+01:00, with a
# space instead of T) or UK day-first. Seconds, fractions and the offset are read and let go: the canonical
# time is local wall-clock HH:MM, as written (police.uk writes local time with its offset).
_ISO_DT: Final = (r"^\s*(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})"
                  r"(?:[T ]\s*(?P<H>\d{1,2}):(?P<M>\d{2})(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}:?\d{2})?)?\s*$")
_UK_DT: Final = (r"^\s*(?P<d>\d{1,2})/(?P<m>\d{1,2})/(?P<y>\d{4})"
                 r"(?:[T ]\s*(?P<H>\d{1,2}):(?P<M>\d{2})(?::\d{2}(?:\.\d+)?)?)?\s*$")
_ID_SEP: Final = "\x1f"     # a character no partner value holds, so joined keys cannot run into each other


def _keys(values: pd.Series) -> pd.Series:
    """:func:`key` over a Series."""
    return values.str.casefold().str.replace(r"[\W_]+", "", regex=True)


# --- mapping ------------------------------------------------------------------------------------------------

def _date_time(values: pd.Series, part: str) -> pd.Series:
    """The date (ISO YYYY-MM-DD) or time (HH:MM) of a date or date-time; other values unchanged.

    A value that is neither form is passed on as it is, so that parsing sets the row aside with its reason; a
    date without a time has an empty time.
    """
    out = values.copy()
    for pattern in (_ISO_DT, _UK_DT):
        parts = values.str.extract(pattern)
        hit = parts["y"].notna()
        if not hit.any():
            continue
        if part == "date":
            made = parts["y"] + "-" + parts["m"].str.zfill(2) + "-" + parts["d"].str.zfill(2)
        else:
            made = (parts["H"].str.zfill(2) + ":" + parts["M"]).fillna("")
        out = out.mask(hit, made)
    return out.fillna("").astype("string[pyarrow]")


def _transform(values: pd.Series, t: Transform) -> pd.Series:
    """One declared transform; empty values stay empty."""
    empty = values == ""
    match t.name:
        case "upper":
            out = values.str.upper()
        case "lower":
            out = values.str.lower()
        case "trim":
            out = values.str.strip()
        case "strip_prefix":
            out = values.str.replace(rf"^\s*{re.escape(t.arg)}\s*", "", case=False, regex=True)
        case "truncate":
            out = values.str.slice(0, t.arg)
        case "prefix":
            out = (t.arg + values).where(~empty, "")
        case "blank":
            out = values.mask(_keys(values).isin(t.arg), "")
        case "month_start":
            # Two regex replaces run in pyarrow; an extract would run row by row in Python.
            out = values.str.replace(r"^\s*(\d{4})-(\d{2})\s*$", r"\1-\2-01", regex=True) \
                        .str.replace(r"^\s*(\d{4})-(\d)\s*$", r"\1-0\2-01", regex=True)
        case "date_of":
            out = _date_time(values, "date")
        case "time_of":
            out = _date_time(values, "time")
        case _:
            raise LayoutError(f"unknown transform {t.name}")
    return out.fillna("").astype("string[pyarrow]")


def _code_map(values: pd.Series, codes: dict[str, str], allowed: frozenset[str] | None) -> tuple[pd.Series, int]:
    """Words (or codes) to codes; a value the map does not know is passed on unchanged, and counted."""
    lookup = dict(codes)
    for code in (allowed or frozenset(codes.values())):
        lookup.setdefault(key(code), code)      # a partner already sending the code is understood
    mapped = _keys(values).map(lookup)
    unknown = (values.str.strip() != "") & mapped.isna()
    return mapped.where(mapped.notna(), values).fillna("").astype("string[pyarrow]"), int(unknown.sum())


def _generate(frame: dict[str, pd.Series], g: Generate, n: int) -> pd.Series:
    """A stable reference: prefix + hash of the given canonical values and the row's occurrence among equals.

    Stable for a re-sent file: the same values give the same hash, and the occurrence number tells apart rows
    that share them (counted in file order; such rows are alike in those values, so which is first does not
    change what is loaded). Hex digits of SHA-256 fit every reference pattern of the schemas.
    """
    if n == 0:
        return pd.Series([], dtype="string[pyarrow]")
    # A source datafield whose column is not in the file (an optional one) counts as empty.
    parts = pd.DataFrame({s: frame[s].astype(str) if s in frame else [""] * n for s in g.sources})
    occurrence = parts.groupby(list(g.sources), sort=False, dropna=False).cumcount() + 1
    joined = parts.apply(lambda col: col.str.replace(_ID_SEP, " ", regex=False)).agg(_ID_SEP.join, axis=1) \
        if len(g.sources) > 1 else parts[g.sources[0]]
    joined = joined + _ID_SEP + occurrence.astype(str)
    digests = [hashlib.sha256(v.encode("utf-8")).hexdigest()[:g.length].upper() for v in joined]
    return _series([g.prefix + d for d in digests])


def _target(layout: Layout, target: FeedFile | Sequence[str] | None
            ) -> tuple[tuple[str, ...], frozenset[str], FeedFile | None]:
    if target is None:
        return layout.target_names, layout.required, _schema_target(layout.feed, layout.file)
    if isinstance(target, FeedFile):
        return (tuple(target.field_names),
                frozenset({d.name for d in target.datafields if d.required} | set(target.key)), target)
    names = tuple(target)
    return names, layout.required & set(names), None


def apply(layout: Layout, src: Path, dst: Path, target: FeedFile | Sequence[str] | None = None) -> LayoutResult:
    """Write the canonical CSV of ``src`` (a partner file in ``layout``) to ``dst``; what was done, in notes.

    ``target`` is the feed file (or the list of canonical names) written; by default the layout's own. Raises
    :class:`MalformedFile` when the file cannot be read or a required datafield has no column in it, and
    :class:`LayoutError` when the layout does not fit the target.
    """
    names, required, feed_file = _target(layout, target)
    if set(layout.mapped) - set(names):
        raise LayoutError(f"layout {layout.id} maps datafields the target does not have: "
                          f"{sorted(set(layout.mapped) - set(names))}")
    source = _read(Path(src).read_bytes(), layout)
    notes: list[str] = []
    if source.encoding != "utf-8":
        notes.append(f"the file was read as Windows {source.encoding}, not UTF-8: please export as CSV UTF-8")

    # Which partner column each datafield comes from; a required one with none refuses the file.
    thing = "column" if source.format == "csv" else "element"
    found: dict[str, list[str]] = {}
    missing_required: list[str] = []
    missing_optional: dict[str, str] = {}
    for c in layout.columns:
        if c.generate is not None:
            continue
        if c.sources:
            k = source.find(c.sources)
            keys = [k] if k else None
        else:
            keys = [key(h) for h in c.join] if all(key(h) in source.index for h in c.join) else None
        if keys is None:
            wanted = " or ".join(_bare(h) for h in c.sources) if c.sources else " and ".join(_bare(h) for h in c.join)
            named = c.target if c.sources == (c.target,) else f"{c.target} (from a {thing} named {wanted})"
            if c.target in required:
                missing_required.append(named)
            else:
                missing_optional[c.target] = named
        else:
            found[c.target] = keys
    if missing_required:
        where = "header" if source.format == "csv" else "submission"
        raise MalformedFile(
            f"required datafield(s) with no {thing} in the file: {'; '.join(missing_required)}. The file was read "
            f"with the layout {_bare(layout.title)}, which needs them in the {where} (names are matched in any "
            f"case and spacing)")
    if source.format == "xml" and not source.rows and not source.rejected:
        notes.append(f"the submission holds no {layout.xml.record if layout.xml else 'record'} element: no rows")

    # Rows the layout sets aside, with the reason it declares (before mapping: they are never written).
    keep = pd.Series(True, index=pd.RangeIndex(len(source.rows)))
    set_aside: list[tuple[int, str]] = list(source.rejected)
    for rule in layout.set_aside:
        k = source.find(rule.column)
        if k is None:
            continue
        hit = (source.get(k).str.strip() == "") & keep
        set_aside += [(source.rows[i], f"row {source.rows[i]}: {rule.reason}") for i in hit[hit].index]
        keep &= ~hit

    kept = keep.to_numpy()
    out: dict[str, pd.Series] = {}
    for c in layout.columns:
        if c.target not in found:
            continue
        parts = [source.get(k)[kept].reset_index(drop=True) for k in found[c.target]]
        values = parts[0]
        for p in parts[1:]:
            values = (values + c.sep + p).str.strip()
        for t in c.transforms:
            values = _transform(values, t)
        if c.codes is not None:
            allowed = feed_file.field(c.target).allowed_codes if feed_file is not None else None
            values, unknown = _code_map(values, c.codes, allowed)
            if unknown:
                notes.append(f"{c.target}: {unknown} value(s) are not in the code map of this layout and were "
                             f"passed on unchanged for validation")
        out[c.target] = values
    n = int(kept.sum())
    for c in layout.columns:
        if c.generate is not None:
            out[c.target] = _generate(out, c.generate, n)

    empty = _series([""] * n)
    frame = pd.DataFrame({name: out.get(name, empty) for name in names})
    frame.to_csv(dst, index=False, encoding="utf-8", lineterminator="\n")

    if missing_optional:
        notes.append(f"optional datafield(s) whose column is not in the file, written empty: "
                     f"{', '.join(missing_optional.values())}")
    other = [name for name in names if name not in out and name not in missing_optional]
    if other:
        notes.append(f"datafield(s) this layout does not supply, written empty: {', '.join(other)}")
    used = {k for ks in found.values() for k in ks} | {key(h) for r in layout.set_aside for h in r.column}
    dropped = {key(h) for h in layout.drop}
    unknown = [_bare(h) or f"(unnamed column {i + 1})" for i, h in enumerate(source.headers)
               if key(h) not in used and key(h) not in dropped]
    if unknown:
        # Columns nobody agreed to share may hold personal data: they are left out, and the partner is told.
        notes.append(f"{thing}(s) not in the layout were left out: {', '.join(unknown)}")
    if set_aside:
        notes.append(f"{len(set_aside)} row(s) set aside by the layout, each with its reason")
    set_aside.sort()
    rejected = rejected_frame(layout.file, [r for r, _ in set_aside], [m for _, m in set_aside], "layout")
    return LayoutResult(rows=n, notes=notes, layout=layout.id, rejected=rejected,
                        source_rows=[r for r, k in zip(source.rows, kept) if k], free_text=layout.free_text,
                        encoding=source.encoding)
