"""The quality stamp in words: the end of a feed table's comment (:func:`comment_stamp`, after
:data:`COMMENT_MARK`) and the feed's DAG docs section (:func:`dag_doc_section`), from a ``dq.supplies`` row.
"""
from __future__ import annotations

import re
from typing import Any, Final

from csp_observatory.graded_views import VIEW_SUFFIX
from csp_observatory.grading import GRADE_TEXT
from csp_observatory.stamp_data import QUALITIES

#: Where a table's comment turns to the stamp: what comes before is the schema's and the partner's text.
COMMENT_MARK: Final = " | Quality stamp: "


def grades_text(row: dict[str, Any]) -> str:
    """"completeness good, accuracy fair, ..." from a dq.supplies row."""
    return ", ".join(f"{q} {row.get(q) or 'n/a'}" for q in QUALITIES)


def comment_stamp(row: dict[str, Any]) -> str:
    """The stamp a feed table's comment ends with (after :data:`COMMENT_MARK`): its latest loaded supply's."""
    reported = str(row.get("reported_at") or "")[:10]
    reasons = row.get("reasons") or []
    why = f" ({'; '.join(reasons[:3])}{'; ...' if len(reasons) > 3 else ''})" if reasons else ""
    return (f"latest supply {row['period']} is {row['level']}{why}; {grades_text(row)} (reported {reported}; "
            f"per record in the {VIEW_SUFFIX} view, detail in dq.supplies and dq.qualities)")


def with_stamp(comment: str | None, stamp_text: str | None) -> str:
    """A table comment with its stamp replaced (or removed, with ``stamp_text`` None); the rest is kept."""
    base = without_stamp(comment)
    return base + (COMMENT_MARK + stamp_text if stamp_text else "")


def without_stamp(comment: str | None) -> str:
    """A table comment without its stamp: the schema's and the partner's text."""
    return (comment or "").split(COMMENT_MARK, 1)[0]


def stamp_of(comment: str | None) -> str:
    """The stamp part of a table comment (from :data:`COMMENT_MARK` on), or ""."""
    text = comment or ""
    i = text.find(COMMENT_MARK)
    return text[i:] if i >= 0 else ""


def _md(text: Any) -> str:
    text = " ".join(str(text).split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_\[\]()#!|~])", r"\\\1", text)


def dag_doc_section(row: dict[str, Any] | None, qualities: list[dict[str, Any]] | None = None) -> str:
    """Markdown for the feed's DAG docs: the latest supply's level, reasons and grades (one line per quality)."""
    if not row:
        return ""
    lines = ["## Latest quality stamp (dq schema)", "",
             f"*Supply {_md(row['supply_id'])}, {_md(row['status'])}, reported "
             f"{_md(str(row.get('reported_at') or '')[:19])}.*", "",
             f"**Outcome: {_md(str(row['level']).upper())}** ({_md(row.get('level_text') or '')})", ""]
    lines += [f"- {_md(r)}" for r in row.get("reasons") or []] or ["- no problems found"]
    lines += ["", "| Quality | Grade | Score | Checks passed | Checks failed |", "|---|---|---|---|---|"]
    by_q = {q["quality"]: q for q in qualities or []}
    for q in QUALITIES:
        x = by_q.get(q, {})
        score = "n/a" if x.get("score") is None else f"{x['score']:g}%"
        lines.append(f"| {q} | {_md(row.get(q) or 'n/a')} | {score} | {x.get('passed', '')} | {x.get('failed', '')} |")
    lines += ["", "Grades: " + "; ".join(f"{g}: {_md(t)}" for g, t in GRADE_TEXT.items()) + "."]
    return "\n".join(lines)
