"""A feed schema in words for the Airflow UI: the Markdown its DAG's docs start with (:func:`doc_md`).

``dags/feeds.py`` adds the partner's latest caveats and quality stamp (``metadata_docs.dag_doc``) after it.
"""
from __future__ import annotations

from csp_observatory.schema import DISPLACEMENT_TEXT, REWRITTEN_ON_SANITISING, Datafield, FeedFile, FeedSchema


def _on_sanitising(schema: FeedSchema, f: FeedFile, d: Datafield) -> str:
    """What sanitising does to a datafield, in the table's words."""
    if schema.personalised:
        return "kept (restricted)"
    if d.name in dict(f.age_pairs):
        return f"dropped (becomes `{dict(f.age_pairs)[d.name]}`)"
    if d.dropped_on_sanitising:
        return "dropped"
    if d.role in REWRITTEN_ON_SANITISING:
        return "rewritten (Appendix 1)"
    return "scrubbed" if d.free_text == "scrub" else "kept"


def doc_md(schema: FeedSchema) -> str:
    """A feed's DAG docs in the Airflow UI (Markdown): source agency, schedule, datafields and caveats."""
    lines = [
        f"# {schema.title}",
        "",
        f"*Guidance section {schema.guidance_section}; {schema.dataset_type} data.*",
        "",
        f"- **Source agency:** {schema.partner.agency} ({schema.partner.name}; SFTP account `{schema.partner.id}`)",
        f"- **Supply cycle:** {schema.supply_cycle}",
        "- **Started by:** " + (
            "the supply's arrival in the partner's inbox (asset `supply_" + schema.feed + "`), waiting up to "
            f"{schema.wait_hours:g} h for the rest of a supply" if schema.on_arrival else
            f"the schedule `{schema.schedule}` (UTC), waiting up to {schema.wait_hours:g} h for the supply"),
        "- **Supply due:** " + ("no due date (as and when)" if schema.due_days is None else
                                f"{schema.due_days} days after its period ends" + (
                                    " (no alert: the DAG runs only on arrival)" if schema.on_arrival else
                                    "; a supply not loaded by then raises the late-supply deadline alert "
                                    "(Airflow's *Deadlines*, and `observatory.alerts`)")),
        f"- **Household threshold (Appendix 1):** {schema.household_threshold}; a point in a smaller postcode "
        f"moves to the {DISPLACEMENT_TEXT[schema.displacement]}",
        f"- **Schema file:** `include/schemas/{schema.source_path.name}`",
        "",
        f"**Caveats:** {schema.caveats}",
    ]
    for f in schema.files:
        lines += ["", f"## {f.title} (`{f.pattern}` -> `{schema.db_schema}.{f.table}`)", "",
                  f.description, "",
                  f"Key: {'a hash of each row (no reference number)' if f.content_key else ', '.join(f.key)}",
                  "", "| datafield | meaning | type | required | role | in the guidance | on sanitising |",
                  "|---|---|---|---|---|---|---|"]
        for d in f.datafields:
            type_ = f"{d.type}, up to {d.future_days} days ahead" if d.future_days else d.type
            lines.append(f"| `{d.name}` | {d.label} | {type_} | {'yes' if d.required else ''} | {d.role} | "
                         f"{'yes' if d.guidance else 'no (optional)'} | {_on_sanitising(schema, f, d)} |")
    return "\n".join(lines)
