"""The small pieces of HTML the report's page is built from (``report_html.py``) and its "Fitness for purpose"
section (``report_quality_html.py``): escaped values, tables, and the rows a partner should fix. Both modules import
them from here, so neither imports the other's helpers back."""
from __future__ import annotations

import html
from typing import Any, Final

#: Rows shown in the HTML table; the JSON report always lists them all.
HTML_ROW_LIMIT: Final = 500


def _e(v: Any) -> str:
    if v is None:
        return '<span class="muted">-</span>'
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, list):
        return html.escape(", ".join(str(x) for x in v))
    return html.escape(str(v))


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; cells are already escaped HTML."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _rows_html(rows: list[dict[str, Any]], intro: str) -> str:
    """Rows to fix (file, row number, what is wrong, what to do), at most HTML_ROW_LIMIT; the JSON has all."""
    shown = rows[:HTML_ROW_LIMIT]
    table = _table(["File", "Row", "What is wrong", "What to do"],
                   [[_e(r["file"]), _e(r["row"]), _e(r["reason"]), _e(r["action"])] for r in shown], "rows")
    more = f'<p class="note">{len(rows) - len(shown):,} more rows are listed in the JSON report.</p>' \
        if len(rows) > len(shown) else ""
    return f"<p>{intro}</p>{table}{more}"
