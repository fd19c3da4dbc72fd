"""The data-quality report of a supply, as data: built from the supply's record (``pipeline_supply.Manifest``).

One report per supply, in two views: the observatory's (everything) and the partner's (no engineer-only detail,
no internal paths). Neither ever holds row content: only row numbers, field names, counts and reasons
(``report_privacy``). The sections follow the guidance: supply metadata (section 3.4, ``report_metadata``) and
fitness for purpose (section 4.2.3: completeness, accuracy, precision, currency). :func:`build_report` makes the
observatory's report and :func:`assess` its verdict; ``report_writing`` makes the partner's copy and writes the files,
``report_html`` the page and the terminal summary.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final

from csp_observatory import fitness, trends
from csp_observatory.pipeline_supply import Manifest, SupplyFile
from csp_observatory.report_metadata import metadata_section, period_text
from csp_observatory.report_privacy import counts_only, float_or_none, int_or_none, redact_reason, \
    validation_expectations
from csp_observatory.schema import FeedSchema

REPORT_VERSION: Final = 1
QUALITIES: Final = ("completeness", "accuracy", "precision", "currency")

STATUS_TEXT: Final = {
    "loaded": "Loaded into the observatory's database",
    "collected": "In progress",
    "refused": "Not loaded: a file was refused (see Refused files)",
    "malformed": "Not loaded: a file could not be read (see Refused files)",
    "blocked": "Not loaded: publishing it could identify people (see Disclosure risk)",
    "failed": "Not loaded: processing stopped; the observatory is looking into it",
    "duplicate": "Not loaded again: these files were loaded before",
    "held": "Not loaded: this re-send would remove most of the period's loaded rows; held for an engineer to confirm",
    "needs_metadata": "Not loaded: the first supply of a feed must carry a metadata file (see What to send)",
}
#: The supply's overall outcome, as the report, the Airflow run and the demo show it.
LEVEL_TEXT: Final = {"green": "Loaded, no problems found", "amber": "Loaded, with problems to look at",
                     "red": "Not loaded, or nothing useful loaded"}
#: What a partner can do about a row set aside at each stage (the reason says which field).
STAGE_ACTION: Final = {
    "parse": "Correct the value named in the reason (dates as YYYY-MM-DD or DD/MM/YYYY, whole numbers, Y/N "
             "flags) and send the corrected row with the next supply.",
    "validate": "Correct the field named in the reason in your system and send the record with the next supply.",
    "clean": "Send each record once: remove the repeated row (the first copy was kept).",
    "geocode": "Add a full postcode or coordinates for the location.",
    "link": "Send the linked record in the same supply, or correct the reference so that it matches one.",
    "disclosure": "No action needed: withheld from publication so that nobody can be identified.",
}
#: A row whose fields do not line up with the header needs a different fix from a bad value.
_SHAPE_ACTION: Final = ("Check the row has the same number of fields as the header and that text with commas is "
                        "quoted, then send the corrected row with the next supply.")
_DEFAULT_ACTION: Final = "Check the field named in the reason and send the corrected record with the next supply."


def _action(rejected: dict[str, Any]) -> str:
    """What a partner can do about one row set aside."""
    if re.search(r"\bvalues but the header has\b", str(rejected.get("reason", "")), re.I):
        return _SHAPE_ACTION
    return STAGE_ACTION.get(str(rejected.get("stage", "")), _DEFAULT_ACTION)


# --- input ---------------------------------------------------------------------------------------------

@dataclass
class SupplyOutcome:
    """Everything the stages found about one supply, as the report needs it (no row content).

    The report's derived view of the supply's record, built from the ``Manifest`` alone
    (:func:`outcome_from_manifest`): its files are the manifest's own ``SupplyFile``s (the data files; the metadata
    file is reported under ``supply_metadata``), and the rest is lifted from the manifest's stage summaries and
    rejected and flagged rows. Tests and the demo report build one directly.
    """

    supply_id: str
    period: str
    status: str
    files: list[SupplyFile] = field(default_factory=list)
    rows_loaded: dict[str, int] = field(default_factory=dict)          # "<schema>.<table>" -> rows
    rejected: list[dict[str, Any]] = field(default_factory=list)        # file, row, reason, stage
    flagged: list[dict[str, Any]] = field(default_factory=list)         # loaded rows needing attention, same shape
    validation: dict[str, Any] = field(default_factory=dict)            # file -> summary (+ header_problems...)
    geocoding: dict[str, Any] = field(default_factory=dict)             # file -> {method: count}
    sanitising: dict[str, Any] = field(default_factory=dict)            # file -> {rules, displacement_m}
    disclosure: dict[str, Any] = field(default_factory=dict)            # file -> k-anonymity report
    cleaning: dict[str, Any] = field(default_factory=dict)              # file -> change counts
    quarantined: list[dict[str, str]] = field(default_factory=list)     # file, remote_name, reason
    date_supplied: str = ""
    run_id: str = ""
    work_dir: str = ""                                                  # engineer only
    supplier_contact: str = ""
    #: the partner's metadata file as the pipeline read it (pipeline_parse._check_metadata; no supplier details)
    supply_metadata: dict[str, Any] = field(default_factory=dict)


def outcome_from_manifest(manifest: Manifest, settings: Any = None) -> SupplyOutcome:
    """A SupplyOutcome from the pipeline's Manifest (pipeline_supply.py), reading its rejected rows."""
    stages = manifest.stages or {}

    def rows_of(frame: Any) -> list[dict[str, Any]]:
        return [{"file": str(r.source_file), "row": None if r.source_row is None or r.source_row != r.source_row
                 else int(r.source_row), "reason": str(r.reason), "stage": str(r.stage)}
                for r in frame.itertuples(index=False)]

    rows = rows_of(manifest.rejected())
    flagged = rows_of(manifest.flagged()) if hasattr(manifest, "flagged") else []
    load = stages.get("load") or {}
    contact = ""
    if settings is not None:
        try:
            contact = settings.partner(manifest.partner).contact
        except (KeyError, ImportError, AttributeError):
            contact = ""
    return SupplyOutcome(
        supply_id=manifest.supply_id, period=manifest.period, status=manifest.status,
        files=list(manifest.files.values()),
        rows_loaded=dict(load.get("rows") or {}), rejected=rows, flagged=flagged,
        validation=stages.get("validation") or {}, geocoding=stages.get("geocoding") or {},
        sanitising=stages.get("sanitising") or {}, disclosure=stages.get("disclosure") or {},
        cleaning=stages.get("cleaning") or {}, quarantined=list(manifest.problems or []),
        date_supplied=manifest.collected_at, run_id=manifest.run_id, work_dir=manifest.work_dir,
        supplier_contact=contact, supply_metadata=dict(stages.get("metadata") or {}),
    )


# --- building -----------------------------------------------------------------------------------------

def _validation_section(raw: dict[str, Any]) -> dict[str, Any]:
    """Per file: the four qualities, each with a score and its expectations; plus header and nulled counts."""
    out: dict[str, Any] = {}
    for file_name, entry in raw.items():
        entry = entry if isinstance(entry, dict) else counts_only(entry)
        summary = entry.get("summary", entry)
        if hasattr(summary, "to_dict"):
            summary = summary.to_dict()
        expectations = validation_expectations(summary if isinstance(summary, dict) else {})
        given = summary.get("qualities") if isinstance(summary, dict) else None
        qualities: dict[str, Any] = {}
        for q in QUALITIES:
            mine = [{k: e[k] for k in ("expectation", "column", "describe", "success", "unexpected_count",
                                       "unexpected_percent")}
                    for e in expectations if e["quality"] == q]
            score = None
            if isinstance(given, dict) and isinstance(given.get(q), dict):
                score = float_or_none(given[q].get("score"))
            elif isinstance(given, dict):
                score = float_or_none(given.get(q))
            if score is None and mine:
                score = round(100.0 * sum(1 for e in mine if e["success"]) / len(mine), 1)
            # Failed checks first: they are what a reader needs.
            mine.sort(key=lambda e: (e["success"] is not False, e["column"] or "", e["expectation"]))
            qualities[q] = {"score": score, "passed": sum(1 for e in mine if e["success"]),
                            "failed": sum(1 for e in mine if e["success"] is False), "expectations": mine}
        header = entry.get("header_problems") or []
        rates = summary.get("fill_rates") if isinstance(summary, dict) else None
        days = summary.get("records_per_day") if isinstance(summary, dict) else None
        out[file_name] = {
            "qualities": qualities,
            "header_problems": [str(h) for h in header] if isinstance(header, list) else [str(header)],
            "nulled_values": counts_only(entry.get("nulled_values") or {}),
            # counts only: per field how many rows have a value; per day of the event date how many records
            "fill_rates": {str(k): counts_only(v) for k, v in rates.items()} if isinstance(rates, dict) else {},
            "records_per_day": {str(k): int(v) for k, v in days.items()} if isinstance(days, dict) else None,
        }
    return out


def build_report(schema: FeedSchema, outcome: SupplyOutcome | Manifest, settings: Any = None,
                 history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The full (observatory) quality report of a supply as a JSON-serialisable dict; no row content.

    ``history``: the feed's earlier reports, oldest first (``trends.load_history``), for the trend and the gaps;
    by default read from ``settings.reports_dir`` when settings are given, else none.
    """
    if not isinstance(outcome, SupplyOutcome):
        outcome = outcome_from_manifest(outcome, settings)
    if history is None:
        reports_dir = getattr(settings, "reports_dir", None)
        history = trends.load_history(reports_dir, schema.feed, outcome.period) if reports_dir else []
    field_names = {d.name for f in schema.files for d in f.datafields}
    tables = {f.name: f"{schema.db_schema}.{f.table}" for f in schema.files}

    rejected = sorted(
        ({"file": str(r.get("file", "")), "row": int_or_none(r.get("row")), "stage": str(r.get("stage", "")),
          "reason": redact_reason(str(r.get("reason", "")), field_names),
          "action": _action(r)} for r in outcome.rejected),
        key=lambda r: (r["file"], r["row"] if r["row"] is not None else -1, r["stage"]))
    attention = [r for r in rejected if r["stage"] != "disclosure"]
    withheld = len(rejected) - len(attention)
    flagged = sorted(
        ({"file": str(r.get("file", "")), "row": int_or_none(r.get("row")), "stage": str(r.get("stage", "")),
          "reason": redact_reason(str(r.get("reason", "")), field_names), "action": _action(r)}
         for r in outcome.flagged),
        key=lambda r: (r["file"], r["row"] if r["row"] is not None else -1, r["stage"]))

    counts_known = all(f.rows_in_file is not None for f in outcome.files) and outcome.files
    rows_in_files = sum(f.rows_in_file or 0 for f in outcome.files) if counts_known else None
    loaded = sum(outcome.rows_loaded.values()) if outcome.status == "loaded" else 0
    if outcome.status == "loaded":
        headline = f"Loaded {loaded:,} of {rows_in_files:,} rows" if rows_in_files is not None \
            else f"Loaded {loaded:,} rows"
        headline += f"; {len(attention):,} row{'s' if len(attention) != 1 else ''} need" \
                    f"{'s' if len(attention) == 1 else ''} attention" if attention else "; no rows need attention"
        if flagged:
            headline += f"; {_plural(len(flagged), 'loaded row')} with a problem to fix"
        if withheld:
            headline += f"; {withheld:,} withheld to protect identities"
    else:
        headline = STATUS_TEXT.get(outcome.status, f"Not loaded ({outcome.status})")
        if outcome.quarantined:
            n = len(outcome.quarantined)
            headline += f"; {n} file{'s' if n != 1 else ''} need{'s' if n == 1 else ''} attention"

    files = []
    for f in outcome.files:
        table = tables.get(f.name)
        files.append({"name": f.name, "remote_name": f.remote_name, "sha256": f.sha256, "size_bytes": f.size,
                      "signed_by": f.signer, "rows_in_file": f.rows_in_file, "table": table,
                      "rows_loaded": outcome.rows_loaded.get(table or "", 0) if outcome.status == "loaded" else 0})

    geocoding = {name: counts_only(c) for name, c in outcome.geocoding.items()}
    total: dict[str, int] = {}
    for c in geocoding.values():
        for method, n in c.items():
            if isinstance(n, int) and not isinstance(n, bool):
                total[method] = total.get(method, 0) + n

    validation = _validation_section(outcome.validation)
    arrival = trends.arrival(schema, outcome.period, outcome.date_supplied)
    links = fitness.link_counts(schema, flagged)
    gaps = fitness.apply_supply_checks(schema, outcome.period, validation, arrival, links, history)

    report = {
        "report": {"version": REPORT_VERSION, "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "title": f"Data quality report: {schema.title}, {period_text(schema, outcome.period)}",
                   "marking": "RESTRICTED: contains no personal data, but describes a restricted dataset"},
        "supply": {"supply_id": outcome.supply_id, "feed": schema.feed, "period": outcome.period,
                   "status": outcome.status, "status_text": STATUS_TEXT.get(outcome.status, outcome.status)},
        "headline": headline,
        "summary": {"rows_in_files": rows_in_files, "rows_loaded": loaded, "rows_need_attention": len(attention),
                    "rows_loaded_with_problems": len(flagged), "rows_withheld": withheld, "files": len(outcome.files),
                    "files_refused": len(outcome.quarantined)},
        "files": files,
        "rows_loaded": dict(outcome.rows_loaded),
        "rejected_rows": rejected,
        "flagged_rows": flagged,
        "quarantined": [{"file": str(q.get("file", "")), "remote_name": str(q.get("remote_name", "")),
                         "reason": redact_reason(str(q.get("reason", "")), field_names)}
                        for q in outcome.quarantined],
        "validation": validation,
        "qualities": fitness.supply_qualities(validation),
        "arrival": arrival,
        "gaps": gaps,
        "missing_links": links,
        "geocoding": {"by_file": geocoding, "total": total, "placed_share": _placed_share(schema, geocoding),
                      "expected_share": schema.geocode_min_rate},
        "sanitising": {name: counts_only(s) for name, s in outcome.sanitising.items()},
        "disclosure": {name: counts_only(d) for name, d in outcome.disclosure.items()},
        "cleaning": {name: counts_only(c) for name, c in outcome.cleaning.items()},
        "metadata": metadata_section(schema, outcome, rows_in_files),
        "engineer": {"run_id": outcome.run_id, "work_dir": outcome.work_dir,
                     "encrypted_paths": {f.name: f.encrypted_path for f in outcome.files if f.encrypted_path},
                     "signers": {f.name: f.signer for f in outcome.files},
                     "database_schema": schema.db_schema, "tables": tables},
    }
    report["outcome"] = assess(report)
    report["trend"] = trends.trend(history, report, QUALITIES)
    return json.loads(json.dumps(report, default=str))


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _placed_share(schema: FeedSchema, geocoding: dict[str, dict[str, Any]]) -> float | None:
    """Share of records placed on the map, over the files that have a location; None if there are none."""
    total = placed = 0
    for name, c in geocoding.items():
        try:
            has_location = bool(schema.file(name).location.columns)
        except KeyError:
            continue
        if has_location and isinstance(c.get("total"), int):
            total += c["total"]
            placed += c["total"] - int(c.get("unplaced", c.get("failed", 0) or 0))
    return round(placed / total, 4) if total else None


def assess(report: dict[str, Any]) -> dict[str, Any]:
    """Green, amber or red, with the reasons: the one verdict the report, the Airflow run and the demo show.

    Red: nothing (useful) was loaded. Amber: loaded, but rows were set aside, loaded without a location or with a
    missing linked record, or too few records were placed on the map. A supply is green only with none of these.
    """
    s, status = report["summary"], report["supply"]["status"]
    reasons: list[str] = []
    if status == "duplicate":
        return {"level": "amber", "text": LEVEL_TEXT["amber"],
                "reasons": ["these files are identical to a delivery already loaded: nothing new was loaded"]}
    if status != "loaded":
        reasons.append(STATUS_TEXT.get(status, status))
        reasons += [f"{q['remote_name'] or q['file']}: {q['reason']}" for q in report["quarantined"]]
        return {"level": "red", "text": LEVEL_TEXT["red"], "reasons": reasons}
    if not s["rows_loaded"]:
        return {"level": "red", "text": LEVEL_TEXT["red"], "reasons": ["the supply held no rows that could be loaded"]}
    partner = (report.get("metadata") or {}).get("partner") or {}
    if partner.get("refused"):
        reasons.append(f"the metadata file {partner.get('file')} could not be read and was returned to you; the data "
                       f"were loaded without it (see Supply metadata)")
    if partner.get("mismatch_count"):
        shown = partner["messages"][:3]
        left = partner["mismatch_count"] - len(shown)
        more = f" (and {left} more)" if left else ""
        reasons.append(f"the metadata file does not match the supply in {_plural(partner['mismatch_count'], 'way')}: "
                       + " ".join(shown) + more)
    if s["rows_need_attention"]:
        reasons.append(f"{_plural(s['rows_need_attention'], 'row')} set aside (not loaded)")
    by_stage: dict[str, int] = {}
    for r in report["flagged_rows"]:
        by_stage[r["stage"]] = by_stage.get(r["stage"], 0) + 1
    if by_stage.get("geocode"):
        reasons.append(f"{_plural(by_stage['geocode'], 'row')} loaded without a location (not geocoded)")
    if by_stage.get("link"):
        reasons.append(f"{_plural(by_stage['link'], 'row')} loaded whose linked record is missing")
    share, expected = report["geocoding"].get("placed_share"), report["geocoding"].get("expected_share")
    if share is not None and expected is not None and share < expected:
        reasons.append(f"only {share:.1%} of records were placed on the map (this feed expects at least "
                       f"{expected:.0%})")
    level = "amber" if reasons else "green"
    return {"level": level, "text": LEVEL_TEXT[level], "reasons": reasons}
