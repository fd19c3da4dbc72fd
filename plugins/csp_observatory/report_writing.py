"""A built quality report, delivered: the partner's copy (no engineer-only detail, no internal path) and the JSON and
HTML files written side by side. The report itself is built by ``reporting.build_report``; the page by
``report_html``.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Final

from csp_observatory.report_html import render_html

_PATH: Final = re.compile(r"(?<![\w.])/(?:[\w.@-]+/)+[\w.@-]*")


def partner_view(report: dict[str, Any]) -> dict[str, Any]:
    """The partner's copy: without engineer-only detail, and with any internal path withheld."""
    out = copy.deepcopy(report)
    out.pop("engineer", None)

    def scrub(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: scrub(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [scrub(v) for v in obj]
        if isinstance(obj, str):
            return _PATH.sub("[internal path]", obj)
        return obj

    out = scrub(out)
    out["report"]["view"] = "partner"
    return out


def write_report(report: dict[str, Any], folder: Path | str) -> tuple[Path, Path]:
    """Write the report as JSON and HTML side by side; returns (json_path, html_path)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = report["report"]["generated_at"].replace("-", "").replace(":", "").replace("+0000", "Z")
    stem = f"{report['supply']['feed']}_{report['supply']['period']}_quality_{stamp}"
    json_path, html_path = folder / f"{stem}.json", folder / f"{stem}.html"
    json_path.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path
