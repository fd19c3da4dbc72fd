"""The report's "Fitness for purpose" section: grades, arrival, the trend chart (inline SVG), gaps, missing links,
fill rates and every check. No scripts and no external resources: the chart reads offline and in print.
"""
from __future__ import annotations

import html
from typing import Any, Final

from csp_observatory import grading
from csp_observatory.report_html_parts import _e, _rows_html, _table
from csp_observatory.trends import LATE_ZERO_DAYS
from csp_observatory.validation_scores import OPTIONAL_WEIGHT, REQUIRED_WEIGHT

QUALITY_TEXT: Final = {
    "completeness": "required values present (optional fields shown, not scored); no gaps in the dates; linked "
                    "records present",
    "accuracy": "valid codes, formats, ranges, dates and unique keys",
    "precision": "full postcodes, coordinates to the metre, ages in single years",
    "currency": "dates within the period, and the supply on time",
}
#: Chart geometry (SVG user units).
_W_STEP, _H, _TOP, _BOTTOM, _LEFT = 84, 150, 22, 34, 40


def grade_class(grade: str) -> str:
    """The CSS class of a grade ("n/a" -> "na")."""
    return "na" if grade == "n/a" else grade


def _pct(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.1f}%"


def _period_label(period: str) -> str:
    return f"{period[:4]}-{period[4:6]}" if len(period) == 6 and period.isdigit() else period


def _card(name: str, q: dict[str, Any], cls: str = "quality") -> str:
    grade = q.get("grade", "n/a")
    return (f'<div class="{cls} {grade_class(grade)}"><div class="q">{html.escape(name.title())}</div>'
            f'<div class="score">{_pct(q["score"])}</div><div class="grade">{html.escape(grade)}</div>'
            f'<div class="sub">{q["passed"]} passed, {q["failed"]} failed</div></div>')


def trend_svg(points: list[dict[str, Any]], quality: str) -> str:
    """One quality's score over the supplies as an inline SVG line chart; each point labelled with its period and
    score; grade bands drawn at ``grading.POOR_BELOW`` and ``grading.GOOD_FROM``."""
    n = len(points)
    width = _LEFT + _W_STEP * max(n, 1) + 10
    plot = _H - _TOP - _BOTTOM
    scores = [p["qualities"].get(quality, {}).get("score") for p in points]
    # The axis starts at 80% (or the next 10 below the lowest score), so that the grade bands near 100 show.
    low = min([80.0, *(10.0 * (s // 10) for s in scores if s is not None)])

    def y(score: float) -> float:
        return _TOP + plot * (100.0 - score) / (100.0 - low)

    def x(i: int) -> float:
        return _LEFT + _W_STEP * i + _W_STEP / 2

    parts = [f'<svg class="trend" width="{width}" height="{_H}" '
             f'viewBox="0 0 {width} {_H}" role="img" aria-label="{html.escape(quality.title())} by supply">'
             f'<title>{html.escape(quality.title())}: score of each supply (lowest file), oldest first</title>']
    for level, label in ((100, "100%"), (grading.POOR_BELOW, f"{grading.POOR_BELOW:g}%"), (low, f"{low:g}%")):
        parts.append(f'<line class="axis" x1="{_LEFT}" x2="{width - 10}" y1="{y(level):.1f}" y2="{y(level):.1f}"/>'
                     f'<text class="tick" x="{_LEFT - 4}" y="{y(level) + 4:.1f}" text-anchor="end">{label}</text>')
    scored = [(i, p["qualities"][quality]) for i, p in enumerate(points)
              if p["qualities"].get(quality, {}).get("score") is not None]
    if len(scored) > 1:
        path = " ".join(f"{x(i):.1f},{y(q['score']):.1f}" for i, q in scored)
        parts.append(f'<polyline class="line" points="{path}"/>')
    for i, p in enumerate(points):
        q = p["qualities"].get(quality) or {}
        label = _period_label(p["period"])
        parts.append(f'<text class="period{" current" if p["current"] else ""}" x="{x(i):.1f}" y="{_H - 12}" '
                     f'text-anchor="middle">{html.escape(label)}{" (this)" if p["current"] else ""}</text>')
        if q.get("score") is None:
            parts.append(f'<text class="value" x="{x(i):.1f}" y="{y((100 + low) / 2):.1f}" '
                         f'text-anchor="middle">n/a</text>')
            continue
        grade = q.get("grade") or "n/a"
        parts.append(f'<circle class="pt {grade_class(grade)}{" current" if p["current"] else ""}" cx="{x(i):.1f}" '
                     f'cy="{y(q["score"]):.1f}" r="{5 if p["current"] else 4}"><title>{html.escape(label)}: '
                     f'{_pct(q["score"])} ({html.escape(grade)})</title></circle>'
                     f'<text class="value" x="{x(i):.1f}" y="{y(q["score"]) - 8:.1f}" text-anchor="middle">'
                     f'{_pct(q["score"])}</text>')
    return "".join(parts) + "</svg>"


def _trend_html(report: dict[str, Any]) -> str:
    t = report.get("trend") or {}
    points = t.get("points") or []
    earlier = len(points) - 1
    if earlier < 1:
        note = ("<p class='muted'>No earlier supply of this feed to compare with yet: the chart has this supply "
                "only.</p>")
    else:
        note = (f"<p class='note'>This supply beside the {earlier} earlier one{'s' if earlier != 1 else ''} "
                f"(from {html.escape(t.get('source', ''))}). Each point is the supply's lowest file score; its colour "
                f"is the supply's grade.</p>")
    charts = "".join(f'<figure class="chart" id="trend-{q}"><figcaption>{html.escape(q.title())}</figcaption>'
                     f'{trend_svg(points, q)}</figure>' for q in (report.get("qualities") or {}))
    return f'<h3 id="trend">Trend over the feed\'s supplies</h3>{note}<div class="charts">{charts}</div>'


def _grades_html() -> str:
    rows = [[f'<span class="grade-tag {grade_class(g)}">{html.escape(g)}</span>', html.escape(grading.GRADE_TEXT[g])]
            for g in grading.GRADES]
    return ("<details open><summary>How the grades and scores are worked out</summary>"
            + _table(["Grade", "When"], rows)
            + f"<p>A supply takes its worst file's grade; its score is its lowest file's. Completeness weighs each "
              f"required field at {REQUIRED_WEIGHT:g} and each optional field at {OPTIONAL_WEIGHT:g}, over every row "
              f"received (rows set aside for a missing required value count); it is reduced by the share of the "
              f"period's typical records that fall in a gap. Currency averages in the arrival: 100 on time, "
              f"falling to 0 at {LATE_ZERO_DAYS} days late. The overall outcome (green, amber, red) is separate: "
              f"it is about rows set aside, not placed or refused.</p></details>")


def _arrival_html(report: dict[str, Any]) -> str:
    a = report.get("arrival") or {}
    cls = "ok" if a.get("on_time") else "fail" if a.get("on_time") is False else "muted"
    return (f'<p id="arrival" class="arrival"><strong>Arrival:</strong> '
            f'<span class="{cls}">{_e(a.get("text"))}</span></p>')


def _gaps_html(report: dict[str, Any]) -> str:
    rows, compared = [], []
    for name, g in (report.get("gaps") or {}).items():
        if g is None:
            continue
        compared.append(name)
        rows += [[_e(name), _e(x["from"]), _e(x["to"]), _e(x["days"]), _e(x["expected"])] for x in g["gaps"]]
    if not compared:
        return "<p class='muted'>Gaps in the dates: nothing to compare with (no earlier supply with dated records).</p>"
    if not rows:
        return (f"<p class='ok'>No gaps: every stretch of the period has records where earlier supplies had them "
                f"({_e(', '.join(compared))}).</p>")
    return ("<p class='fail'>Stretches of the period with no records, where earlier supplies had them (typical "
            "counts per weekday):</p>" + _table(["File", "From", "To", "Days", "Records expected"], rows))


def _links_html(report: dict[str, Any]) -> str:
    links = report.get("missing_links") or {}
    if not links:
        return ""
    parts = []
    for name, link in links.items():
        if link["count"]:
            parts.append(f"<p class='fail'>{_e(link['count'])} {_e(name)} row{'s' if link['count'] != 1 else ''} "
                         f"refer{'s' if link['count'] == 1 else ''} (by {_e(link['column'])}) to a record of the "
                         f"{_e(link['links_to'])} file that is not in this supply. They were loaded, but analysts "
                         f"cannot join them until it is sent.</p>")
        else:
            parts.append(f"<p class='ok'>Every {_e(name)} row has its {_e(link['links_to'])} record in this "
                         f"supply.</p>")
    rows = [r for r in report.get("flagged_rows") or [] if r["stage"] == "link"]
    if rows:
        parts.append(_rows_html(rows, "The rows, by row number in your file, and why:"))
    return "".join(parts)


def _fill_html(v: dict[str, Any]) -> str:
    rates = v.get("fill_rates") or {}
    if not rates:
        return ""
    rows = [[f"<code>{_e(name)}</code>", "required" if r.get("required") else "optional",
             _e(r.get("percent")) + ("%" if r.get("percent") is not None else ""),
             f"{_e(r.get('filled'))} of {_e(r.get('rows'))}", _e(r.get("weight"))]
            for name, r in sorted(rates.items(), key=lambda kv: (not kv[1].get("required"), kv[0]))]
    return ("<details><summary>Fill rate of each field</summary>"
            + _table(["Field", "Expected", "Filled", "Rows with a value", "Weight in completeness"], rows)
            + "</details>")


def _file_html(file_name: str, v: dict[str, Any]) -> str:
    cards = "".join(_card(name, q) for name, q in v["qualities"].items())
    rows = []
    for name, q in v["qualities"].items():
        for e in q["expectations"]:
            mark = '<span class="pass">pass</span>' if e["success"] else \
                '<span class="fail">fail</span>' if e["success"] is False else "-"
            pct = f'{e["unexpected_percent"]:.2f}%' if e["unexpected_percent"] is not None else "-"
            check = _e(e["describe"]) + f'<br><code class="muted">{_e(e["expectation"])}</code>' \
                if e.get("describe") else _e(e["expectation"])
            rows.append([html.escape(name), _e(e["column"]), check, mark, _e(e["unexpected_count"]), pct])
    detail = _table(["Quality", "Field", "Check", "Result", "Values failing", "% of values given"], rows) \
        if rows else '<p class="muted">No checks recorded.</p>'
    extra = ""
    if v["header_problems"]:
        extra += "<p><strong>Header:</strong></p><ul>" + "".join(
            f"<li>{_e(h)}</li>" for h in v["header_problems"]) + "</ul>"
    if v["nulled_values"]:
        extra += "<p><strong>Invalid optional values left empty (the rows were kept):</strong> " + ", ".join(
            f"{_e(k)}: {_e(n)}" for k, n in v["nulled_values"].items()) + "</p>"
    return (f'<h3>{_e(file_name)}</h3><div class="qualities">{cards}</div>{extra}{_fill_html(v)}'
            f'<details><summary>All checks ({len(rows)})</summary>{detail}</details>')


def fitness_html(report: dict[str, Any]) -> str:
    """The whole "Fitness for purpose" section body."""
    supply = report.get("qualities") or {}
    head = ""
    if supply:
        head = ('<h3>This supply</h3><div class="qualities">'
                + "".join(_card(q, s, "quality supply") for q, s in supply.items()) + "</div>"
                + "<ul class='qtext'>" + "".join(f"<li><strong>{html.escape(q.title())}</strong>: "
                                                 f"{html.escape(QUALITY_TEXT[q])}</li>" for q in supply) + "</ul>")
    body = head + _arrival_html(report) + _grades_html() + _trend_html(report)
    body += '<h3 id="completeness">Completeness: gaps and missing linked records</h3>' + _gaps_html(report) \
        + _links_html(report)
    files = "".join(_file_html(name, v) for name, v in (report.get("validation") or {}).items())
    return body + ("<h3>By file</h3>" + files if files else
                   '<p class="muted">No validation results (the supply stopped before validation).</p>')
