"""What a supply's report compares with: when it was due, the feed's earlier supplies, and gaps in its dates.

* Arrival: when the supply came (``Manifest.collected_at``) against ``FeedSchema.supply_due(period)``; lateness
  counts in the currency quality (:func:`arrival_score`).
* History: the observatory's own earlier report JSONs (``<reports_dir>/<feed>/<period>/*.json``, written by
  ``report_writing.write_report``), the newest report of each earlier period whose supply was loaded. The reports, not
  PostGIS, because they hold each supply's scores and grades exactly as they were reported (checks, arrival and
  gaps included; ``observatory.validation_results`` keeps the checks but not the scores), and its records per day,
  and because reading them needs no database connection, so the report is built and tested the same way
  everywhere.
* Gaps: runs of days of the period with no records where the earlier supplies' typical count for those weekdays
  adds up to at least ``GAP_MIN_EXPECTED`` records (by chance alone, with Poisson counts, that happens with
  probability about e^-10).

Nothing here reads row content: only counts per day, scores and dates.
"""
from __future__ import annotations

import json
import logging
import math
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from statistics import median
from typing import Any, Final

from csp_observatory.schema import FeedSchema, period_bounds

log = logging.getLogger(__name__)

#: Earlier supplies shown in the trend and used for the typical counts.
HISTORY_MAX: Final = 12
#: A run of empty days is a gap when the earlier supplies would lead one to expect at least this many records in it.
GAP_MIN_EXPECTED: Final = 10.0
#: A supply this many days late scores 0 for its arrival (on time: 100; linear in between): where the arrival is a
#: file's only currency check (a file without an event date) a week late is poor, up to 6 days fair.
LATE_ZERO_DAYS: Final = 60
WEEKDAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


# --- arrival --------------------------------------------------------------------------------------------

def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def days_late(arrived: datetime, due: datetime) -> int:
    """Whole days (rounded up) after the due time; 0 when on time."""
    late = (arrived - due).total_seconds()
    return 0 if late <= 0 else math.ceil(late / 86400)


def arrival_score(late: int) -> float:
    """The arrival's part of the currency score: 100 on time, 0 at ``LATE_ZERO_DAYS`` or more days late."""
    return round(max(0.0, 100.0 * (1 - late / LATE_ZERO_DAYS)), 2)


def arrival(schema: FeedSchema, period: str, arrived_at: str | None) -> dict[str, Any]:
    """When the supply arrived against when it was due: ``arrived_at``, ``due``, ``days_late``, ``on_time``,
    ``score`` (None when there is no due date or no arrival time) and ``text``."""
    due = schema.supply_due(period)
    arrived = _parse_time(arrived_at)
    out: dict[str, Any] = {"arrived_at": arrived.isoformat(timespec="minutes") if arrived else None,
                           "due": due.isoformat(timespec="minutes") if due else None,
                           "due_days": schema.due_days, "days_late": None, "on_time": None, "score": None}
    when = f"Arrived {arrived:%Y-%m-%d %H:%M} UTC" if arrived else "Arrival time not recorded"
    if due is None:
        out["text"] = f"{when}; this feed is supplied as and when, with no due date."
        return out
    # supply_due is midnight after the due day: the last day a supply is on time is the day before.
    due_day = (due - timedelta(days=1)).date().isoformat()
    if arrived is None:
        out["text"] = f"{when}; due by {due_day} ({schema.due_days} days after the period ends)."
        return out
    late = days_late(arrived, due)
    out.update(days_late=late, on_time=late == 0, score=arrival_score(late))
    verdict = "on time" if late == 0 else f"{late} day{'s' if late != 1 else ''} late"
    out["text"] = f"{when}; due by {due_day} ({schema.due_days} days after the period ends): {verdict}."
    return out


# --- history --------------------------------------------------------------------------------------------

def load_history(reports_dir: Path | str, feed: str, period: str, limit: int = HISTORY_MAX) -> list[dict[str, Any]]:
    """The feed's earlier reports, oldest first: for each period before ``period``, the newest report whose supply
    was loaded; at most ``limit`` periods. A report that cannot be read is skipped (and logged)."""
    folder = Path(reports_dir) / feed
    newest: dict[str, tuple[str, dict[str, Any]]] = {}
    if not folder.is_dir():
        return []
    for path in folder.glob("*/*.json"):
        if path.parent.name >= period:
            continue
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            supply, stamp = report["supply"], str(report["report"]["generated_at"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping report %s in the trend: %s", path, exc)
            continue
        if supply.get("status") != "loaded" or supply.get("feed") != feed or supply.get("period") != path.parent.name:
            continue
        if path.parent.name not in newest or stamp > newest[path.parent.name][0]:
            newest[path.parent.name] = (stamp, report)
    return [newest[p][1] for p in sorted(newest)[-limit:]]


def _supply_scores(report: dict[str, Any], qualities: tuple[str, ...]) -> dict[str, Any]:
    """A report's supply-level score and grade per quality (its ``qualities`` key, or worked out from its files)."""
    from csp_observatory import grading

    given = report.get("qualities")
    if isinstance(given, dict) and all(q in given for q in qualities):
        return {q: {"score": given[q].get("score"), "grade": given[q].get("grade")} for q in qualities}
    out = {}
    for q in qualities:   # a report from before supply-level scores: the lowest file score, the worst file grade
        files = [v["qualities"][q] for v in (report.get("validation") or {}).values() if q in v.get("qualities", {})]
        scores = [f["score"] for f in files if f.get("score") is not None]
        out[q] = {"score": min(scores) if scores else None,
                  "grade": grading.worst(f.get("grade") or grading.quality_grade(f.get("score"), f.get("failed", 0))
                                         for f in files)}
    return out


def trend(history: list[dict[str, Any]], current: dict[str, Any], qualities: tuple[str, ...]) -> dict[str, Any]:
    """The trend section: one point per supply (the earlier ones, then this one) with its score and grade per
    quality; where the figures come from."""
    points = []
    for r in [*history, current]:
        points.append({"period": r["supply"]["period"], "generated_at": r["report"]["generated_at"],
                       "current": r is current, "qualities": _supply_scores(r, qualities)})
    return {"source": "the observatory's earlier quality reports of this feed (the newest loaded report of each "
                      "period)", "points": points}


# --- gaps -----------------------------------------------------------------------------------------------

def typical_weekday_counts(history: list[dict[str, Any]], file_name: str, period_format: str = "%Y%m"
                           ) -> dict[int, float] | None:
    """Per weekday (0 = Monday), the median over earlier supplies of that supply's mean records on that weekday;
    None when no earlier supply recorded records per day for the file."""
    per_supply: list[dict[int, float]] = []
    for r in history:
        days = ((r.get("validation") or {}).get(file_name) or {}).get("records_per_day")
        bounds = period_bounds(period_format, r["supply"]["period"])
        if not isinstance(days, dict) or bounds is None:
            continue
        totals, seen = [0] * 7, [0] * 7
        d = bounds[0]
        while d <= bounds[1]:
            totals[d.weekday()] += int(days.get(d.isoformat(), 0))
            seen[d.weekday()] += 1
            d += timedelta(days=1)
        per_supply.append({w: totals[w] / seen[w] for w in range(7) if seen[w]})
    if not per_supply:
        return None
    return {w: float(median(s[w] for s in per_supply if w in s)) for w in range(7)
            if any(w in s for s in per_supply)}


def find_gaps(records_per_day: dict[str, int], start: date, end: date, typical: dict[int, float],
              min_expected: float = GAP_MIN_EXPECTED) -> list[dict[str, Any]]:
    """Runs of days from ``start`` to ``end`` with no records whose typical counts add up to ``min_expected`` or
    more: ``from``, ``to`` (ISO dates), ``days`` and ``expected`` (records the earlier supplies suggest)."""
    gaps: list[dict[str, Any]] = []
    run: list[date] = []

    def close() -> None:
        expected = sum(typical.get(d.weekday(), 0.0) for d in run)
        if run and expected >= min_expected:
            gaps.append({"from": run[0].isoformat(), "to": run[-1].isoformat(), "days": len(run),
                         "expected": round(expected, 1)})
        run.clear()

    d = start
    while d <= end:
        if int(records_per_day.get(d.isoformat(), 0)) == 0:
            run.append(d)
        else:
            close()
        d += timedelta(days=1)
    close()
    return gaps


def gap_share(gaps: list[dict[str, Any]], start: date, end: date, typical: dict[int, float]) -> float:
    """The share of the period's typical records that fall in the gaps (0 to 1): what completeness loses."""
    total = 0.0
    d = start
    while d <= end:
        total += typical.get(d.weekday(), 0.0)
        d += timedelta(days=1)
    missing = sum(g["expected"] for g in gaps)
    return min(1.0, missing / total) if total else 0.0


def gaps_for_file(schema: FeedSchema, period: str, file_name: str, records_per_day: dict[str, int] | None,
                  history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A file's gaps against the earlier supplies, or None when there is nothing to compare (no event date, no
    records per day, an unreadable period, or no earlier supply with counts)."""
    bounds = period_bounds(schema.period_format, period)
    if records_per_day is None or bounds is None:
        return None
    typical = typical_weekday_counts(history, file_name, schema.period_format)
    if typical is None:
        return None
    gaps = find_gaps(records_per_day, bounds[0], bounds[1], typical)
    return {"gaps": gaps, "share": round(gap_share(gaps, bounds[0], bounds[1], typical), 4),
            "compared_with": len([r for r in history if file_name in (r.get("validation") or {})]),
            "typical_per_weekday": {WEEKDAYS[w]: round(n, 1) for w, n in sorted(typical.items())}}
