"""What a quality report may hold: never row content, only row numbers, field names, counts and reasons.

The report (``reporting.build_report``) and the load's validation summary (``loading.py``) pass what the stages found
through these helpers: sampled values are dropped from Great Expectations results, quoted values withheld from reasons,
and stage summaries cut down to their numbers.
"""
from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any, Final, Iterable

#: GX result keys that hold sampled values from the data (possibly personal): never stored or reported.
_ROW_CONTENT_KEYS: Final = re.compile(
    r"unexpected_list|unexpected_index|unexpected_counts|unexpected_rows|unexpected_values|observed_value|"
    r"partial_unexpected|details|value_counts|unexpected_index_query", re.I)
_QUOTED: Final = re.compile(r"""(['"\u2018\u201c])(.*?)(['"\u2019\u201d])""")


def strip_row_content(obj: Any) -> Any:
    """A copy of a (GX) result with every key that can hold sampled data values removed."""
    if isinstance(obj, dict):
        return {k: strip_row_content(v) for k, v in obj.items() if not _ROW_CONTENT_KEYS.search(str(k))}
    if isinstance(obj, (list, tuple)):
        return [strip_row_content(v) for v in obj]
    return obj


_ROW_PREFIX = re.compile(r"^\s*row \d+:\s*", re.I)


def redact_reason(reason: str, field_names: Iterable[str] = ()) -> str:
    """A reason with any quoted value withheld; quoted field names stay (they are the point of the reason).

    A leading "row N:" is dropped: reports show the row number in its own column.
    """
    keep = set(field_names)
    reason = _ROW_PREFIX.sub("", reason, count=1)

    def sub(m: re.Match[str]) -> str:
        return m.group(0) if m.group(2) in keep or not m.group(2) else f"{m.group(1)}[value withheld]{m.group(3)}"

    return _QUOTED.sub(sub, reason)

def validation_expectations(summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per-expectation results from a validation summary, in one flat shape, without sampled values.

    Accepts the summary of ``validation.validate`` as a dict: a list under ``expectations`` or ``results``, or
    lists per quality under ``qualities.<quality>.expectations``.
    """
    if not summary:
        return []
    items: list[tuple[str | None, dict[str, Any]]] = []
    for key in ("expectations", "results"):
        if isinstance(summary.get(key), list):
            items += [(None, e) for e in summary[key] if isinstance(e, dict)]
    qualities = summary.get("qualities")
    if not items and isinstance(qualities, dict):
        for q, block in qualities.items():
            if isinstance(block, dict) and isinstance(block.get("expectations"), list):
                items += [(q, e) for e in block["expectations"] if isinstance(e, dict)]
    out = []
    for quality, e in items:
        kind = e.get("type") or e.get("expectation_type") or e.get("expectation") or "expectation"
        kwargs = e.get("kwargs") if isinstance(e.get("kwargs"), dict) else {}
        column = e.get("column") or kwargs.get("column") or kwargs.get("column_list")
        if isinstance(column, (list, tuple)):
            column = " + ".join(str(c) for c in column)
        out.append({
            "expectation": str(kind), "column": column, "describe": e.get("describe"),
            "quality": e.get("quality") or quality,
            "success": None if e.get("success") is None else bool(e["success"]),
            "unexpected_count": int_or_none(e.get("unexpected_count")),
            "unexpected_percent": float_or_none(e.get("unexpected_percent")),
            "raw": strip_row_content(e),
        })
    return out

def int_or_none(v: Any) -> int | None:
    """``v`` as a whole number, or None when it is none or not a number."""
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


def float_or_none(v: Any) -> float | None:
    """``v`` rounded to four places, or None when it is none or not a number."""
    try:
        return None if v is None else round(float(v), 4)
    except (TypeError, ValueError):
        return None

def counts_only(obj: Any) -> dict[str, Any]:
    """Only the numbers (and short labels) of a stage summary: never a value list that could be row content."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    elif hasattr(obj, "as_dict"):          # disclosure.DisclosureReport
        obj = obj.as_dict()
    elif hasattr(obj, "__dataclass_fields__"):
        obj = asdict(obj)
    if not isinstance(obj, dict):
        return {}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, bool) or v is None:
            out[str(k)] = v
        elif isinstance(v, (int, float)):
            out[str(k)] = round(v, 2) if isinstance(v, float) else v
        elif isinstance(v, dict):
            inner = counts_only(v)
            if inner:
                out[str(k)] = inner
        elif isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v) and len(v) <= 20 \
                and k in ("quasi_identifiers", "sensitive", "columns"):
            out[str(k)] = list(v)
        elif isinstance(v, str) and k in ("sensitive", "sensitive_column", "mode", "note", "displacement"):
            out[str(k)] = v
    return out
