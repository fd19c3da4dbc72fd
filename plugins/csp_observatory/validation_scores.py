"""The completeness side of a file's quality report: how full each datafield is, and the weighted score.

Counts only: nothing here keeps a value (the report outlives the plaintext).
"""
from __future__ import annotations

from typing import Any, Final

import pandas as pd

from csp_observatory.schema import FeedFile

#: How much a datafield's fill rate counts in the completeness score. Required datafields (and key fields) count
#: fully. Optional ones count not at all: the guidance's minimum dataset lists many a partner may not hold, and a
#: location comes in one of several forms (address, postcode, coordinates), so an empty optional field is often
#: empty by design. Every field's fill rate is still shown, marked required or optional (docs/ARCHITECTURE.md).
REQUIRED_WEIGHT: Final = 1.0
OPTIONAL_WEIGHT: Final = 0.0


def blank(values: pd.Series) -> pd.Series:
    """Missing values, and in a text column empty or all-whitespace ones."""
    if pd.api.types.is_string_dtype(values.dtype):
        return values.isna() | (values.str.strip() == "").fillna(True)
    return values.isna()


def fill_rates(frame: pd.DataFrame, feed_file: FeedFile) -> dict[str, dict[str, Any]]:
    """Per datafield: rows, rows with a value, percent filled, whether it is required, and its completeness weight."""
    required = {d.name for d in feed_file.datafields if d.required} | set(feed_file.key)
    rows = int(len(frame))
    out: dict[str, dict[str, Any]] = {}
    for d in feed_file.datafields:
        filled = int((~blank(frame[d.name])).sum()) if d.name in frame.columns else 0
        out[d.name] = {"rows": rows, "filled": filled,
                       "percent": round(100.0 * filled / rows, 2) if rows else None,
                       "required": d.name in required, "guidance": d.guidance,
                       "weight": REQUIRED_WEIGHT if d.name in required else OPTIONAL_WEIGHT}
    return out


def completeness_score(rates: dict[str, dict[str, Any]]) -> float | None:
    """The weighted share of values present (``REQUIRED_WEIGHT``, ``OPTIONAL_WEIGHT``); None with nothing to weigh."""
    expected = sum(r["weight"] * r["rows"] for r in rates.values())
    if not expected:
        return None
    return round(100.0 * sum(r["weight"] * r["filled"] for r in rates.values()) / expected, 2)


def records_per_day(frame: pd.DataFrame, feed_file: FeedFile) -> dict[str, int]:
    """Records per day of the file's event date (``YYYY-MM-DD`` -> count): counts only, for the report's gaps."""
    if not feed_file.event_date or feed_file.event_date not in frame.columns:
        return {}
    # Counted per day first, then only the distinct days written as text (strftime per row took a second at 1M).
    days = pd.to_datetime(frame[feed_file.event_date], errors="coerce").dropna().dt.normalize()
    return {day.strftime("%Y-%m-%d"): int(n) for day, n in days.value_counts().sort_index().items()}
