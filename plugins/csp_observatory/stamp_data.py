"""The quality stamp's rows (guidance Box 3), built from a supply's report: pure, no database.

The report (``reporting.build_report``) is the one source: this module copies its figures, never recomputes them.
Grades come from ``grading.py`` (a report that carries its own ``grade`` keeps it), the level and its reasons from
the report's ``outcome`` (``reporting.assess``). ``stamp.py`` writes the rows to the ``dq`` tables; ``stamp_text.py``
renders a stamp for table comments and the DAG docs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final, Iterable

from csp_observatory.grading import GRADES, quality_grade, worst
from csp_observatory.report_privacy import int_or_none
from csp_observatory.schema import FeedSchema

QUALITIES: Final = ("completeness", "accuracy", "precision", "currency")


@dataclass
class Stamp:
    """The dq rows of one supply, as tuples in the tables' column order (see ``stamp._DDL``)."""

    supply: dict[str, Any]
    qualities: list[dict[str, Any]] = field(default_factory=list)
    file_qualities: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    set_aside: list[dict[str, Any]] = field(default_factory=list)


def file_grade(q: dict[str, Any]) -> str:
    """A file's grade for a quality: the report's own if it carries one, else :func:`grading.quality_grade`."""
    given = q.get("grade")
    if given in GRADES:
        return str(given)
    return quality_grade(_number(q.get("score")), int(q.get("failed") or 0))


def _number(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def fields_named(reason: str, field_names: Iterable[str]) -> list[str]:
    """The datafield names a reason mentions (whole words), in order of the names given."""
    return [n for n in field_names if re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", reason)]


def check_caveat(file_name: str, e: dict[str, Any]) -> str:
    """One failed check in words: file, check, field and how many values failed (never which)."""
    what = e.get("describe") or e.get("expectation") or "a check"
    on = f" on {e['column']}" if e.get("column") else ""
    n, pct = int_or_none(e.get("unexpected_count")), _number(e.get("unexpected_percent"))
    count = "" if n is None else f": {n:,} value{'s' if n != 1 else ''}" + ("" if pct is None else f" ({pct:g}%)")
    return f"{file_name}: {what}{on} failed{count}"


def build_stamp(report: dict[str, Any], schema: FeedSchema, partner: str, collected_at: str | None = None) -> Stamp:
    """The dq rows of a supply from its report: every figure copied, grades by ``grading.py``."""
    supply = report["supply"]
    sid = supply["supply_id"]
    outcome = report.get("outcome") or {}
    summary = report.get("summary") or {}
    stamp = Stamp(supply={})
    validation = report.get("validation") or {}
    tables = {f.name: f"{schema.db_schema}.{f.table}" for f in schema.files}
    per_quality: dict[str, list[tuple[str, dict[str, Any]]]] = {q: [] for q in QUALITIES}
    for file_name, v in validation.items():
        qualities = (v or {}).get("qualities") or {}
        check_no = 0
        for q in [*QUALITIES, *(k for k in qualities if k not in QUALITIES)]:
            block = qualities.get(q)
            if not isinstance(block, dict):
                continue
            grade = file_grade(block)
            per_quality.setdefault(q, []).append((file_name, block))
            stamp.file_qualities.append({
                "supply_id": sid, "file_name": file_name, "table_name": tables.get(file_name), "quality": q,
                "score": _number(block.get("score")), "grade": grade, "passed": int(block.get("passed") or 0),
                "failed": int(block.get("failed") or 0)})
            for e in block.get("expectations") or []:
                check_no += 1
                stamp.checks.append({
                    "supply_id": sid, "file_name": file_name, "check_no": check_no, "quality": q,
                    "expectation": str(e.get("expectation") or "expectation"), "column_name": e.get("column"),
                    "description": e.get("describe"),
                    "success": None if e.get("success") is None else bool(e["success"]),
                    "unexpected_count": int_or_none(e.get("unexpected_count")),
                    "unexpected_percent": _number(e.get("unexpected_percent"))})
    grades: dict[str, str] = {}
    # The report's own figures for the supply where it gives them (reporting: fitness.supply_qualities), else the
    # same rules here: the lowest file score, the worst file grade, the checks summed.
    given = report.get("qualities") if isinstance(report.get("qualities"), dict) else {}
    for q, blocks in per_quality.items():
        scores = [s for _, b in blocks if (s := _number(b.get("score"))) is not None]
        mine = given.get(q) if isinstance(given.get(q), dict) else {}
        grade = mine.get("grade") if mine.get("grade") in GRADES else worst(file_grade(b) for _, b in blocks)
        grades[q] = grade
        caveats = [check_caveat(name, e) for name, b in blocks for e in b.get("expectations") or []
                   if e.get("success") is False]
        stamp.qualities.append({
            "supply_id": sid, "quality": q, "score": _number(mine["score"]) if "score" in mine else (
                min(scores) if scores else None), "grade": grade,
            "passed": int(mine["passed"]) if "passed" in mine else sum(int(b.get("passed") or 0) for _, b in blocks),
            "failed": int(mine["failed"]) if "failed" in mine else sum(int(b.get("failed") or 0) for _, b in blocks),
            "files": len(blocks), "caveats": caveats})
    field_names = [d.name for f in schema.files for d in f.datafields]
    for loaded, rows in ((False, report.get("rejected_rows") or []), (True, report.get("flagged_rows") or [])):
        for r in rows:
            reason = str(r.get("reason") or "")
            stamp.set_aside.append({"supply_id": sid, "file_name": str(r.get("file") or ""),
                                    "source_row": int_or_none(r.get("row")), "stage": str(r.get("stage") or ""),
                                    "reason": reason, "fields": fields_named(reason, field_names), "loaded": loaded})
    arrival = report.get("arrival") if isinstance(report.get("arrival"), dict) else {}
    stamp.supply = {
        "supply_id": sid, "feed": supply.get("feed") or schema.feed, "period": supply["period"], "partner": partner,
        "status": supply["status"], "level": outcome.get("level") or "red", "level_text": outcome.get("text"),
        "reasons": [str(r) for r in outcome.get("reasons") or []],
        **{q: grades.get(q, "n/a") for q in QUALITIES},
        "rows_in_files": int_or_none(summary.get("rows_in_files")), "rows_loaded": int(summary.get("rows_loaded") or 0),
        "rows_set_aside": int(summary.get("rows_need_attention") or 0),
        "rows_loaded_with_problems": int(summary.get("rows_loaded_with_problems") or 0),
        "rows_withheld": int(summary.get("rows_withheld") or 0),
        "files_refused": int(summary.get("files_refused") or 0),
        "arrived_at": arrival.get("arrived_at") or None, "due_at": arrival.get("due") or None,
        "days_late": int_or_none(arrival.get("days_late")),
        "collected_at": collected_at or (report.get("metadata") or {}).get("date_supplied") or None,
        "reported_at": (report.get("report") or {}).get("generated_at")}
    return stamp

