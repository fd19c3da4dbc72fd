"""A supply's quality report from a fixture supply, without SFTP, GnuPG or PostGIS: parse, row rules and the GX
suite as the pipeline runs them, then ``reporting.build_report``. For tests and for looking at the page.

    python -m csp_observatory.report_demo OUT_DIR    # three supplies of police recorded crime, the last one late
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from csp_observatory import fixtures, parsing, reporting, trends, validation
from csp_observatory.pipeline_supply import SupplyFile
from csp_observatory.report_html import render_text
from csp_observatory.report_writing import write_report
from csp_observatory.reporting import SupplyOutcome
from csp_observatory.schema import FeedSchema

#: A change to one file's parsed rows before the row rules (to break a quality on purpose).
Spoil = Callable[[str, pd.DataFrame], pd.DataFrame]


def outcome_for(schema: FeedSchema, period: str, reference: pd.DataFrame, *, n: int = 60,
                arrived_at: str = "", spoil: Spoil | None = None,
                today: pd.Timestamp | None = None) -> SupplyOutcome:
    """The outcome of a fixture supply of ``schema`` for ``period``: validated as the pipeline validates, loaded
    (every kept row counted as loaded), linked rows without their target flagged as the pipeline flags them."""
    supply = fixtures.make_supply(schema, period, reference, n=n, metadata=None)
    validated: dict[str, Any] = {}
    kept_frames: dict[str, pd.DataFrame] = {}
    rejected: list[dict[str, Any]] = []
    files = []
    with tempfile.TemporaryDirectory() as tmp:
        for feed_file in schema.files:
            path = Path(tmp) / f"{feed_file.name}.csv"
            path.write_text(supply.files[feed_file.name], encoding="utf-8")
            parsed = parsing.parse_csv(path, feed_file)
            frame = spoil(feed_file.name, parsed.frame) if spoil else parsed.frame
            kept, set_aside, nulled = validation.apply_row_rules(frame, feed_file, today)
            summary = validation.validate(kept, feed_file, schema, period=period, today=today,
                                          rates=validation.fill_rates(frame, feed_file))
            summary.pop("gx_result", None)
            validated[feed_file.name] = {"summary": summary, "header_problems": parsed.header_problems,
                                         "nulled_values": nulled}
            kept_frames[feed_file.name] = kept
            for r in [*parsed.rejected.itertuples(index=False), *set_aside.itertuples(index=False)]:
                rejected.append({"file": feed_file.name, "row": int(r.source_row), "reason": str(r.reason),
                                 "stage": str(r.stage)})
            files.append(SupplyFile(name=feed_file.name, remote_name=f"{feed_file.name}_{period}.csv.gpg",
                                    sha256="0" * 64, size=len(supply.files[feed_file.name]),
                                    rows_in_file=len(frame) + len(parsed.rejected)))
    flagged = []
    for feed_file in schema.files:
        if feed_file.links_to and feed_file.links_to["file"] in kept_frames:
            on, target = feed_file.links_to["column"], kept_frames[feed_file.links_to["file"]]
            linked = kept_frames[feed_file.name]
            orphan = linked[on].notna() & ~linked[on].isin(target[on].dropna())
            flagged += [{"file": feed_file.name, "row": int(r), "stage": "link",
                         "reason": f"its {on} matches no row of the {feed_file.links_to['file']} file in this supply"}
                        for r in linked.loc[orphan.to_numpy(bool), "source_row"]]
    return SupplyOutcome(
        supply_id=f"{schema.feed}/{period}", period=period, status="loaded", files=files,
        rows_loaded={f"{schema.db_schema}.{f.table}": len(kept_frames[f.name]) for f in schema.files},
        rejected=rejected, flagged=flagged, validation=validated, date_supplied=arrived_at)


def write_series(schema: FeedSchema, periods: list[str], reference: pd.DataFrame, folder: Path, *,
                 arrived: dict[str, str] | None = None, spoil: dict[str, Spoil] | None = None,
                 n: int = 60) -> list[dict[str, Any]]:
    """Reports of several supplies in order, each written to ``folder/<feed>/<period>/`` as the pipeline writes
    them, so that each report's trend and gaps see the ones before; returns the reports."""
    reports = []
    for period in periods:
        outcome = outcome_for(schema, period, reference, n=n, arrived_at=(arrived or {}).get(period, ""),
                              spoil=(spoil or {}).get(period))
        history = trends.load_history(folder, schema.feed, period)
        report = reporting.build_report(schema, outcome, history=history)
        write_report(report, folder / schema.feed / period)
        reports.append(report)
    return reports


def main(argv: list[str]) -> int:
    from csp_observatory import postcodes_sources
    from csp_observatory.schema import SCHEMA_DIR
    from csp_observatory.schema_loading import load_schema

    out = Path(argv[0] if argv else "report-demo")
    schema = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")
    reports = write_series(schema, ["202607", "202608", "202609"], postcodes_sources.shipped_reference(), out,
                           arrived={"202607": "2026-08-10T09:00:00+00:00", "202608": "2026-09-12T09:00:00+00:00",
                                    "202609": "2026-10-20T09:00:00+00:00"})
    print("\n\n".join(render_text(r) for r in reports[-1:]))
    print(sorted(str(p) for p in out.rglob("*.html"))[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
