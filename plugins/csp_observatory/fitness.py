"""Fitness for purpose of a whole supply (guidance section 4.2.3): the file scores of ``validation.validate``
plus the checks only the supply can answer, and the grades (``grading.py``).

Per file, on top of its GX checks:

* currency: the supply arrived by its due date (``trends.arrival``). Its score (100 on time, 0 at
  ``trends.LATE_ZERO_DAYS`` days late) is averaged in with the file's currency checks; a late supply fails the
  check, so the grade is at most fair;
* completeness: no gap in the event dates where earlier supplies had records (``trends.gaps_for_file``): the
  fill-rate score is multiplied by the share of the typical records not in a gap, and a gap fails the check;
* completeness: every row of a linked file (offenders, victims) has its linked record (the offence) in the supply:
  a missing one fails the check with the number of rows; the rows are listed, with numbers and reasons, among the
  rows loaded with a problem (stage ``link``). The score is unchanged: the row's own fields are filled.
"""
from __future__ import annotations

from typing import Any, Final

from csp_observatory import grading, trends
from csp_observatory.schema import FeedSchema

QUALITIES: Final = ("completeness", "accuracy", "precision", "currency")


def _check(expectation: str, column: str | None, describe: str, success: bool, unexpected: int | None,
           percent: float | None = None) -> dict[str, Any]:
    return {"expectation": expectation, "column": column, "describe": describe, "success": success,
            "unexpected_count": unexpected, "unexpected_percent": percent, "supply_check": True}


def _add(quality: dict[str, Any], check: dict[str, Any], score: float | None) -> None:
    """Add a supply check to a file's quality; failed checks first, as in the rest of the list."""
    quality["expectations"].insert(0 if not check["success"] else len(quality["expectations"]), check)
    quality["passed" if check["success"] else "failed"] += 1
    quality["score"] = score


def link_counts(schema: FeedSchema, flagged: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per linked file of the schema: the rows whose linked record is missing (row numbers), and what they link to."""
    out: dict[str, dict[str, Any]] = {}
    for f in schema.files:
        if not f.links_to:
            continue
        rows = [r["row"] for r in flagged if r["file"] == f.name and r["stage"] == "link"]
        out[f.name] = {"column": f.links_to["column"], "links_to": f.links_to["file"], "count": len(rows),
                       "rows": rows}
    return out


def apply_supply_checks(schema: FeedSchema, period: str, validation: dict[str, Any], arrival: dict[str, Any],
                        links: dict[str, dict[str, Any]], history: list[dict[str, Any]]) -> dict[str, Any]:
    """Add the supply's own checks to each validated file's qualities (in place) and grade every quality;
    returns the gaps per file (None where there was nothing to compare with)."""
    gaps: dict[str, Any] = {}
    for name, v in validation.items():
        q = v["qualities"]
        if arrival.get("score") is not None:
            cur = q["currency"]
            n = max(len(cur["expectations"]), 1)
            score = arrival["score"] if cur["score"] is None else \
                round((cur["score"] * n + arrival["score"]) / (n + 1), 2)
            late = arrival["days_late"]
            _add(cur, _check("supply_arrived_by_due_date", None,
                             f"the supply arrived by its due date ({arrival['due'][:10]} 00:00 UTC); values failing: "
                             f"days late", late == 0, late), score)
        try:
            feed_file = schema.file(name)
        except KeyError:
            feed_file = None
        found = trends.gaps_for_file(schema, period, name, v.get("records_per_day"), history) \
            if feed_file is not None and feed_file.event_date else None
        gaps[name] = found
        comp = q["completeness"]
        if found is not None:
            days = sum(g["days"] for g in found["gaps"])
            score = None if comp["score"] is None else round(comp["score"] * (1 - found["share"]), 2)
            _add(comp, _check("no_gap_in_event_dates", feed_file.event_date,  # type: ignore[union-attr]
                              f"records on every stretch of the period where the {found['compared_with']} earlier "
                              f"supplies had them; values failing: days in a gap", not found["gaps"], days), score)
        if name in links:
            link = links[name]
            rows = max((r.get("rows") or 0 for r in v.get("fill_rates", {}).values()), default=0)
            pct = round(100.0 * link["count"] / rows, 3) if rows else None
            _add(comp, _check("linked_record_in_supply", link["column"],
                              f"every row's {link['column']} matches a row of the {link['links_to']} file in this "
                              f"supply", link["count"] == 0, link["count"], pct), comp["score"])
        for quality in q.values():
            quality["grade"] = grading.quality_grade(quality["score"], quality["failed"])
    return gaps


def supply_qualities(validation: dict[str, Any]) -> dict[str, Any]:
    """Per quality, the supply's grade (its worst file's) and score (its lowest file's), with the grade's rule."""
    out: dict[str, Any] = {}
    for q in QUALITIES:
        files = {name: v["qualities"][q] for name, v in validation.items() if q in v["qualities"]}
        scores = [f["score"] for f in files.values() if f["score"] is not None]
        grade = grading.worst(f.get("grade", "n/a") for f in files.values())
        out[q] = {"score": min(scores) if scores else None, "grade": grade, "grade_text": grading.GRADE_TEXT[grade],
                  "failed": sum(f["failed"] for f in files.values()),
                  "passed": sum(f["passed"] for f in files.values())}
    return out
