"""Grade rules, written once: the report, the ``dq`` schema in PostGIS and the Airflow UI all call these.

A quality (section 4.2.3: completeness, accuracy, precision, currency) of a supply file gets a score from 0 to
100 and a grade:

- ``good``: score at least ``GOOD_FROM`` and no failed check;
- ``fair``: score at least ``POOR_BELOW``, or a failed check however high the score (never show a failed check
  as all clear);
- ``poor``: score under ``POOR_BELOW``;
- ``n/a``: nothing to score (no check of that quality applies to the file).

A supply's grade for a quality is the worst grade of its files. Its overall outcome (green, amber, red) is
``reporting.assess``'s, which adds what scores cannot show: rows set aside, records not placed, refused files.
"""
from __future__ import annotations

from typing import Final, Iterable

#: Grades from best to worst; "n/a" sorts last but never makes a supply worse.
GRADES: Final = ("good", "fair", "poor", "n/a")
GOOD_FROM: Final = 99.5
POOR_BELOW: Final = 90.0
GRADE_TEXT: Final = {
    "good": f"at least {GOOD_FROM}% and no failed check",
    "fair": f"at least {POOR_BELOW}%, or a check failed",
    "poor": f"under {POOR_BELOW}%",
    "n/a": "no check of this quality applies",
}


def quality_grade(score: float | None, failed: int = 0) -> str:
    """The grade of one quality of one file, from its score (0-100, or None) and its number of failed checks."""
    if score is None:
        return "n/a"
    if score < POOR_BELOW:
        return "poor"
    return "fair" if failed or score < GOOD_FROM else "good"


def worst(grades: Iterable[str]) -> str:
    """The worst of some grades (a supply's grade for a quality over its files); "n/a" if none is scored."""
    scored = [g for g in grades if g != "n/a"]
    return max(scored, key=GRADES.index) if scored else "n/a"
