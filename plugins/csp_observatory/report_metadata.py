"""The report's supply metadata section (guidance section 3.4): what the feed's metadata must say, and what the
partner's metadata file said and how it compared with the supply (never the supplier's details)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from csp_observatory.schema import DISPLACEMENT_TEXT, PERSONAL_ROLES, POINT_ROLES, FeedSchema


def period_text(schema: FeedSchema, period: str) -> str:
    try:
        start = datetime.strptime(period, schema.period_format)
    except ValueError:
        return period
    return start.strftime("%B %Y") if schema.period_format == "%Y%m" else start.date().isoformat()


def partner_metadata(raw: dict[str, Any]) -> dict[str, Any] | None:
    """What the partner's metadata file said (caveats, coding, coordinates; never the supplier's details) and how it
    compared with the supply; None when the pipeline has not looked for one."""
    from csp_observatory import metadata_docs as M

    if not raw:
        return None
    doc = raw.get("document")
    md = M.from_shown_document(doc) if doc else None
    mismatches = [M.Mismatch(**x) for x in raw.get("mismatches") or []]
    out = M.report_section(md, mismatches)
    # the texts themselves, where report_section counts them: the partner's words are the point here
    out.update({
        "supplied": bool(raw.get("supplied")), "read": md is not None, "file": raw.get("file"),
        "expected_file": raw.get("expected"), "refused": [str(p) for p in raw.get("refused") or []],
        "required": raw.get("required"), "catalogued": bool(raw.get("recorded")),
        "mismatches": [m.to_dict() for m in mismatches],
        "agency": None, "dataset": None, "file_format": None, "period_start": None, "period_end": None,
        "caveats": [], "coding_systems": {}, "geographic_method": None, "conditions_of_use": None,
        "explanations": {},
    })
    if md is not None:
        out.update({
            "agency": md.agency, "dataset": md.dataset, "file_format": md.file_format,
            "period_start": md.period_start.isoformat() if md.period_start else None,
            "period_end": md.period_end.isoformat() if md.period_end else None,
            "caveats": list(md.caveats),
            "coding_systems": {name: M.coding_text(system) for name, system in md.coding_systems.items()},
            "geographic_method": md.geographic_method, "conditions_of_use": md.conditions_of_use,
            "explanations": {f.file: dict(f.explanations) for f in md.files},
        })
    return out


def metadata_section(schema: FeedSchema, outcome: Any, records: int | None) -> dict[str, Any]:
    """Section 3.4 of the guidance: what a supply's metadata must say; and what the partner's metadata file said."""
    from csp_observatory.metadata import header_key

    partner = partner_metadata(outcome.supply_metadata)
    explained = (partner or {}).get("explanations") or {}
    fields = []
    for f in schema.files:
        for d in f.datafields:
            # the roles dropped or rewritten are listed once, in schema.py; each says here what became of it
            if schema.personalised:
                kept = "kept (personal table, restricted access)"
            elif d.role in PERSONAL_ROLES:
                kept = "removed" + (" (age at the event kept instead)" if d.role == "date_of_birth" else "")
            elif d.role in POINT_ROLES:
                kept = "replaced by the sanitised point (Appendix 1)"
            elif d.role == "address":
                kept = ("house numbers and names removed (Appendix 1); e-mail addresses, phone numbers, dates "
                        "and titled names scrubbed")
            elif d.role == "postcode":
                kept = "replaced by the sanitised postcode (Appendix 1)"
            elif d.free_text == "drop":
                kept = "removed (free text)"
            elif d.free_text == "scrub":
                kept = ("free text, scrubbed: postcodes, house numbers with a street, dates, phone numbers, e-mail "
                        "addresses and names replaced by markers (counts under Sanitising)")
            elif d.dropped_on_sanitising:
                kept = "removed"
            else:
                kept = "kept"
            codes = None
            if d.codes is not None:
                codes = ", ".join(d.codes)
            elif d.codes_file:
                codes = f"code list {d.codes_file}"
            fields.append({"file": f.name, "name": d.name, "explanation": d.label,
                           "partner_explanation": (explained.get(f.name) or {}).get(header_key(d.name)),
                           "type": d.type, "required": d.required, "codes": codes, "in_observatory": kept})
    return {
        "agency": schema.partner.agency,
        "supplier": schema.partner.name,
        "supplier_contact": outcome.supplier_contact,
        "dataset_name": schema.title,
        "guidance_section": schema.guidance_section,
        "dataset_type": schema.dataset_type,
        "time_period_covered": period_text(schema, outcome.period),
        "supply_cycle": schema.supply_cycle,
        "file_format": "CSV (UTF-8, header row), encrypted and signed with OpenPGP",
        "number_of_records_supplied": records,
        "date_supplied": outcome.date_supplied,
        "datafields": fields,
        "caveats": schema.caveats,
        "geographic_method": "Points in British National Grid (EPSG:27700): the supplied easting/northing, "
                             "else WGS84 converted, else the postcode centroid; a point in a postcode with fewer than "
                             f"{schema.household_threshold} households then moves to the "
                             f"{DISPLACEMENT_TEXT[schema.displacement]}.",
        "conditions_of_use": "Use in line with the information sharing protocol. Even depersonalised, these data "
                             "are restricted: intelligence products made from them must be marked 'restricted'.",
        "partner": partner,
    }
