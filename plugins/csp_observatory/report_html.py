"""The report's HTML page and terminal summary, from a report dict (``reporting.build_report``).

Self-contained: inline CSS and inline SVG, no scripts, no external resources, so that it reads offline and in a
partner's mail client. Every value shown is escaped here.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from string import Template
from typing import Any, Final

from csp_observatory.report_html_parts import _e, _rows_html, _table
from csp_observatory.report_quality_html import fitness_html
from csp_observatory.sanitising_displacement import MOVED_RULES
from csp_observatory.schema import DISPLACEMENT_TEXT

TEMPLATE: Final = Path(__file__).resolve().parent / "templates" / "report.html"

#: The note over the files the partner must act on, by the supply's status (default: refused files).
PROBLEM_SECTION: Final = {
    "held": ("Held files", "Nothing of this supply was loaded. Your files stay in inbox/ until an engineer has "
                           "checked the re-send with you."),
    "needs_metadata": ("What to send", "Nothing of this supply was loaded. Your files stay in inbox/: upload the "
                                       "metadata file named here and the whole supply is taken again."),
    "loaded": ("Refused files", "Each file here was moved to your quarantine folder with a .reason.txt beside it. "
                                "The rest of the supply was loaded."),
}
_REFUSED_SECTION: Final = ("Refused files", "A refused file was moved to your quarantine folder with a .reason.txt "
                                            "beside it. Nothing of this supply was loaded: fix the file and upload "
                                            "the whole supply again.")
#: What sanitise_other_location counts for each further location of a record, in display order.
OTHER_LOCATION_OUTCOMES: Final = ("own_postcode", "moved", "postcode_unknown", "no_postcode")


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


# --- rendering -----------------------------------------------------------------------------------------

def _section(title: str, body: str, anchor: str, note: str = "") -> str:
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{note_html}{body}</section>'


def _fingerprint(fp: str | None) -> str:
    if not fp:
        return _e(None)
    tail = " ".join(fp[i:i + 4] for i in range(max(len(fp) - 16, 0), len(fp), 4))
    return f'<code class="nowrap" title="{_e(fp)}">&hellip;{_e(tail)}</code>'


def _rejected_html(report: dict[str, Any]) -> str:
    rows = [r for r in report["rejected_rows"] if r["stage"] != "disclosure"]
    if not rows:
        return '<p class="ok">Every row could be used.</p>'
    return _rows_html(rows, "Row numbers count data rows in your file, not the header: row 1 is the first line "
                            "after the header. These rows were not loaded.")


def _flagged_html(report: dict[str, Any]) -> str:
    return _rows_html(report.get("flagged_rows") or [],
                      "These rows were loaded, but without a location on the map or without the record they refer "
                      "to. Analysts will miss them in maps and joins until they are corrected.")


def _outcome_html(report: dict[str, Any]) -> str:
    o = report.get("outcome") or {}
    if not o.get("reasons"):
        return ""
    return (f'<div class="outcome {_e(o.get("level"))}"><strong>{_e(o.get("text"))}:</strong><ul>'
            + "".join(f"<li>{_e(r)}</li>" for r in o["reasons"]) + "</ul></div>")


DISCLOSURE_LABELS: Final = {
    "quasi_identifiers": "Combination checked", "k_threshold": "Threshold k", "records": "Records",
    "groups": "Distinct combinations", "k": "Smallest group (k)", "small_cells": "Combinations under the threshold",
    "records_in_small_cells": "Records in those combinations", "sensitive": "Sensitive field (for l)",
    "points": "Distinct points", "min_l": "Fewest categories at one point (l)",
    "points_with_l1": "Points with a single category (l = 1)",
}


def _matrix(by_file: dict[str, dict[str, Any]], first: str, labels: dict[str, str] | None = None) -> str:
    keys: list[str] = []
    for c in by_file.values():
        keys += [k for k, v in c.items() if k not in keys and not isinstance(v, dict)]
    if not keys:
        return '<p class="muted">Nothing recorded.</p>'
    labels = labels or {}
    return _table([first, *by_file.keys()],
                  [[_e(labels.get(k, k)), *(_e(c.get(k)) for c in by_file.values())] for k in keys])


def _sanitising_html(report: dict[str, Any]) -> str:
    if not report["sanitising"]:
        return '<p class="muted">Nothing recorded.</p>'
    rules = {name: s.get("rules", {}) for name, s in report["sanitising"].items()}
    settings = {s.get("displacement") for s in report["sanitising"].values() if s.get("displacement")}
    named = "".join(f"<p>A point in a postcode with too few households moved to the "
                    f"{_e(DISPLACEMENT_TEXT.get(d, d))}.</p>" for d in sorted(settings))
    body = named + "<h3>How each record's point was chosen</h3>" + _matrix(rules, "Rule")
    others = [[_e(name), _e(place), *(_e(c.get(k, 0)) for k in OTHER_LOCATION_OUTCOMES)]
              for name, s in report["sanitising"].items() for place, c in (s.get("other_locations") or {}).items()]
    if others:
        body += ("<h3>Other locations in the records (sanitised to postcode level)</h3>"
                 + _table(["File", "Location", "Postcode kept", "Moved to a postcode with enough households",
                           "Postcode not in the reference (removed)", "No postcode"], others))
    for name, s in report["sanitising"].items():
        d = s.get("displacement_m") or {}
        hist = d.get("histogram") or {}
        top = max([v for v in hist.values() if isinstance(v, int)] or [0]) or 1
        bars = "".join(
            f'<div class="bar"><span class="lbl">{_e(k)} m</span><span class="track">'
            f'<span class="fill" style="width:{100 * v / top:.1f}%"></span></span><span class="n">{_e(v)}</span></div>'
            for k, v in hist.items() if isinstance(v, int))
        stats = " &middot; ".join(f"{k} {_e(d[k])} m" for k in ("min", "median", "p90", "p99", "max") if k in d)
        body += (f"<h3>Distance moved: {_e(name)}</h3><p>{_e(d.get('records'))} records moved to a postcode "
                 f"centroid. {stats}</p><div class='hist'>{bars}</div>")
    return body + _scrubbed_html(report["sanitising"])


#: Columns of the scrubbing table, in the order scrubbing.py applies them.
_SCRUB_KINDS: Final = ("postcode", "address", "date", "phone", "email", "name")


def _scrubbed_html(sanitising: dict[str, Any]) -> str:
    """Per file and column, how many of each kind of personal data were replaced in free text (never values)."""
    rows = []
    for name, s in sanitising.items():
        for col, counts in (s.get("scrubbed") or {}).items():
            if isinstance(counts, dict):
                rows.append([_e(name), f"<code>{_e(col)}</code>",
                             *(_e(counts[k]) if k in counts else "&ndash;" for k in _SCRUB_KINDS)])
    if not rows:
        return ""
    return ("<h3>Personal data scrubbed from free text</h3><p>How many of each were found and replaced by a "
            "marker such as [name] (the values are never kept). &ndash;: not looked for in that column (address "
            "text keeps its sanitised postcode and loses house numbers by the rules above).</p>"
            + _table(["File", "Column", *(k.capitalize() for k in _SCRUB_KINDS)], rows))


def _metadata_html(md: dict[str, Any]) -> str:
    items = [("Agency supplying the information", md["agency"]),
             ("Supplier", md["supplier"] + (f" ({md['supplier_contact']})" if md.get("supplier_contact") else "")),
             ("Dataset name", md["dataset_name"]), ("Guidance section", md["guidance_section"]),
             ("Dataset type", md["dataset_type"]), ("Time period covered", md["time_period_covered"]),
             ("Supply cycle", md["supply_cycle"]), ("File format", md["file_format"]),
             ("Number of records supplied", md["number_of_records_supplied"]),
             ("Date supplied", md["date_supplied"]), ("Caveats", md["caveats"]),
             ("Geographic coordinates", md["geographic_method"]), ("Conditions of use", md["conditions_of_use"])]
    dl = "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>"
    fields = _table(["File", "Datafield", "Explanation", "Partner's explanation", "Type", "Required", "Codes",
                     "In the observatory"],
                    [[_e(f["file"]), f"<code>{_e(f['name'])}</code>", _e(f["explanation"]),
                      _e(f.get("partner_explanation")), _e(f["type"]), _e(f["required"]), _e(f["codes"]),
                      _e(f["in_observatory"])] for f in md["datafields"]])
    return _partner_metadata_html(md.get("partner")) + "<h3>The feed as the observatory describes it</h3>" + dl \
        + "<h3>Datafields</h3>" + fields


def _partner_metadata_html(p: dict[str, Any] | None) -> str:
    """The partner's metadata file: what it said, and each difference from the supply."""
    if p is None:
        return ""
    if not p["supplied"]:
        need = " The first supply of a feed must carry one." if p.get("required") else ""
        return (f"<h3>Your metadata file</h3><p>None came with this supply (expected name: "
                f"<code>{_e(p.get('expected_file'))}</code>).{need} Send one whenever its caveats, coding systems or "
                f"coordinates change.</p>")
    head = f"<h3>Your metadata file <code>{_e(p.get('file'))}</code></h3>"
    if p["refused"]:
        return head + ("<p class='fail'>It could not be read, and was returned to your quarantine folder:</p><ul>"
                       + "".join(f"<li>{_e(x)}</li>" for x in p["refused"]) + "</ul>")
    items = [("Agency", p.get("agency")), ("Period covered", p.get("period") or
                                           f"{p.get('period_start')} to {p.get('period_end')}"),
             ("Date supplied", p.get("date_supplied")), ("File format", p.get("file_format")),
             ("Records declared", ", ".join(f"{k}: {v:,}" for k, v in p["records_declared"].items())),
             ("How coordinates were made", p.get("geographic_method")),
             ("Conditions of use", p.get("conditions_of_use")),
             ("Kept in the catalogue", p.get("catalogued"))]
    body = "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>"
    body += "<p><strong>Caveats on use:</strong></p><ul>" + ("".join(f"<li>{_e(c)}</li>" for c in p["caveats"])
                                                             or "<li class='muted'>none given</li>") + "</ul>"
    if p["coding_systems"]:
        body += "<p><strong>Coding systems:</strong></p><ul>" + "".join(
            f"<li><code>{_e(k)}</code>: {_e(v)}</li>" for k, v in p["coding_systems"].items()) + "</ul>"
    if p["mismatches"]:
        body += ("<p class='fail'>It does not match the supply:</p>"
                 + _table(["File", "Datafield", "Difference"],
                          [[_e(m["file"]), _e(m["datafield"]), _e(m["message"])] for m in p["mismatches"]]))
    else:
        body += "<p class='ok'>It matches the supply: record counts, period and datafields.</p>"
    return head + body


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page of a report (inline CSS and SVG, no scripts, no external resources)."""
    s = report["summary"]
    cards = [("Rows in files", s["rows_in_files"]), ("Rows loaded", s["rows_loaded"]),
             ("Rows set aside", s["rows_need_attention"]),
             ("Loaded rows with a problem", s.get("rows_loaded_with_problems", 0)),
             ("Files refused", s["files_refused"])]
    if s.get("rows_withheld"):
        cards.insert(3, ("Rows withheld (disclosure)", s["rows_withheld"]))
    cards_html = "".join(f'<div class="card"><div class="n">{_e(v)}</div><div class="l">{html.escape(k)}</div></div>'
                         for k, v in cards)
    files = _table(["File", "Your file name", "Size (bytes)", "Rows in file", "Rows loaded", "Table",
                    "Signed by key", "SHA-256"],
                   [[_e(f["name"]), _e(f["remote_name"]), _e(f["size_bytes"]), _e(f["rows_in_file"]),
                     _e(f["rows_loaded"]), _e(f["table"]),
                     _fingerprint(f["signed_by"]),
                     f'<code class="nowrap" title="{_e(f["sha256"])}">{_e((f["sha256"] or "")[:12])}&hellip;</code>']
                    for f in report["files"]])
    sections = [
        _section("Rows that need attention", _outcome_html(report) + _rejected_html(report), "rows"),
    ]
    if report.get("flagged_rows"):
        sections.append(_section("Rows loaded with a problem", _flagged_html(report), "flagged"))
    if report["quarantined"]:
        title, note = PROBLEM_SECTION.get(report["supply"]["status"], _REFUSED_SECTION)
        sections.append(_section(
            title, _table(["File", "Your file name", "Reason and what to do"],
                          [[_e(q["file"]), _e(q["remote_name"]), _e(q["reason"])]
                           for q in report["quarantined"]]), "refused", note))
    sections += [
        _section("Files received", files, "files"),
        _section("Fitness for purpose", fitness_html(report), "quality",
                 "The four qualities of section 4.2.3 of the guidance. Accuracy and completeness problems do not "
                 "stop a supply; they are reported so that users of the data are aware of them."),
        _section("Geocoding", _matrix(report["geocoding"]["by_file"], "Method"), "geocoding",
                 "How each record was placed on the map. 'terminated_postcode': the postcode is no longer in use "
                 "and its last centroid was used. 'failed': no usable location; the record is kept without a point."),
        _section("Sanitising (Appendix 1)", _sanitising_html(report), "sanitising",
                 "Each record is shown at the centroid of a postcode with enough households that no address "
                 "can be singled out; house numbers and names are removed. Free text is scrubbed of names, "
                 "addresses, postcodes, dates, phone numbers and e-mail addresses, or dropped."),
        _section("Disclosure risk", _matrix(report["disclosure"], "Measure", DISCLOSURE_LABELS), "disclosure",
                 "k: the fewest records sharing the same place, month and category (larger is safer). "
                 "l: the fewest distinct categories at one point."),
        _section("Supply metadata (guidance section 3.4)", _metadata_html(report["metadata"]), "metadata"),
    ]
    if "engineer" in report:
        eng = report["engineer"]
        rows = [[_e(k), f"<code>{_e(json.dumps(v) if not isinstance(v, str) else v)}</code>"]
                for k, v in eng.items()]
        sections.append(_section("Observatory only", _table(["Item", "Value"], rows), "engineer",
                                 "Not in the partner's copy."))
    page = Template(TEMPLATE.read_text(encoding="utf-8"))
    return page.substitute(
        title=_e(report["report"]["title"]), marking=_e(report["report"]["marking"]),
        status_class={"green": "ok", "amber": "warn"}.get((report.get("outcome") or {}).get("level"), "bad"),
        status_text=_e(report["supply"]["status_text"]), headline=_e(report["headline"]),
        supply_id=_e(report["supply"]["supply_id"]), generated_at=_e(report["report"]["generated_at"]),
        cards=cards_html, sections="".join(sections),
    )


def render_text(report: dict[str, Any]) -> str:
    """A few lines for a terminal: headline, per-table counts and the first rows needing attention."""
    outcome = report.get("outcome") or {}
    lines = [report["report"]["title"], report["headline"],
             f"Outcome: {str(outcome.get('level', '?')).upper()} ({outcome.get('text', '')})"]
    lines += [f"  - {r}" for r in outcome.get("reasons", [])]
    for table, n in report["rows_loaded"].items():
        lines.append(f"  {table}: {n:,} rows")
    for q in report["quarantined"]:
        lines.append(f"  refused {q['remote_name'] or q['file']}: {q['reason']}")
    partner = (report.get("metadata") or {}).get("partner")
    if partner and partner.get("read"):
        said = "matches the supply" if partner["matches"] else \
            f"differs from the supply in {_plural(partner['mismatch_count'], 'way')}"
        lines.append(f"Metadata {partner['file']}: {said}; {_plural(len(partner['caveats']), 'caveat')}"
                     + ("; catalogued, caveats in the table comments" if partner.get("catalogued") else ""))
        lines += [f"  - {m}" for m in partner["messages"]]
    files = report.get("files") or []
    if files:
        lines.append("Files taken: " + ", ".join(f"{f['remote_name']} ({f.get('rows_in_file') or 0:,} rows)"
                                                 for f in files))
    for name, s in (report.get("sanitising") or {}).items():
        rules = s.get("rules") or {}
        moved = {r: rules[r] for r in MOVED_RULES if rules.get(r)}
        d = s.get("displacement_m") or {}
        how = ", ".join(f"{r.replace('_', ' ')} {n:,}" for r, n in moved.items()) or "none"
        lines.append(f"  sanitised {name}: {sum(moved.values()):,} of {s.get('records', 0):,} records moved to a "
                     f"postcode with enough households ({how}; displacement: {s.get('displacement', 'nearest')}); "
                     f"displacement median {d.get('median')} m, max {d.get('max')} m")
        found = {col: {k: n for k, n in c.items() if n} for col, c in (s.get("scrubbed") or {}).items()
                 if isinstance(c, dict)}
        if any(found.values()):
            lines.append(f"  scrubbed from {name} free text: " + "; ".join(
                f"{col} " + ", ".join(f"{n:,} {k}" for k, n in c.items()) for col, c in found.items() if c))
    if report.get("qualities"):
        lines.append("Fitness for purpose: " + ", ".join(
            f"{q} {x.get('grade', 'n/a')} ({'n/a' if x.get('score') is None else str(x['score']) + '%'})"
            for q, x in report["qualities"].items()))
    if (report.get("arrival") or {}).get("text"):
        lines.append(report["arrival"]["text"])
    for name, v in (report.get("validation") or {}).items():
        scores = ", ".join(f"{q} {'n/a' if x.get('score') is None else str(x['score']) + '%'}"
                           for q, x in (v.get("qualities") or {}).items())
        lines.append(f"  quality {name}: {scores}")
    for name, g in (report.get("gaps") or {}).items():
        for x in (g or {}).get("gaps", []):
            lines.append(f"  gap in {name}: no records {x['from']} to {x['to']} ({x['days']} days)")
    attention = [r for r in report["rejected_rows"] if r["stage"] != "disclosure"]
    if attention:
        lines.append("Rows set aside, and why:")
    for r in attention[:10]:
        lines.append(f"  {r['file']} row {r['row']}: {r['reason']}")
    if len(attention) > 10:
        lines.append(f"  ... and {len(attention) - 10:,} more (see the report)")
    return "\n".join(lines)
