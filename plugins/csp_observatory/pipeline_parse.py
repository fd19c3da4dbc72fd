"""Stage 3 of a supply: read each file against its feed schema (through a declared partner layout if it is in
one), set aside the rows that cannot be used, run the Great Expectations suite, and check the supply's metadata
file against what was read."""
from __future__ import annotations

import csv
import io
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from csp_observatory import staging
from csp_observatory.config import Settings, load_settings
from csp_observatory.pipeline_supply import (Manifest, Services, SupplyFile, _delete_plaintext, _in_flight, _one_supply,
                                             _refuse, _services, each_file, supply_schema)
from csp_observatory.schema import FeedSchema


# --- stage 3: parse and validate --------------------------------------------------------------------

def parse_and_validate(work_dirs: list[str], settings: Settings | None = None,
                       services: Services | None = None) -> list[str]:
    """Read each CSV against its schema; set aside rows that cannot be used; run the GX suite."""
    from csp_observatory import validation_gx

    settings = settings or load_settings()
    svc = _services(settings, services)
    for m in _in_flight(work_dirs):
        with _one_supply(m, "parse and validate", alone=len(work_dirs) <= 1):
            if not m.ok:
                continue
            schema = supply_schema(m)
            # Each file in a process of its own for a large supply (file_workers.py): they share nothing. GX is
            # imported here first, so that those processes fork with it rather than each import it (2-3 s).
            validation_gx.import_gx()
            done = each_file(settings, m, None, {f.name: partial(_parse_file, m, f, schema) for f in m.files.values()})
            summaries: dict[str, Any] = {}
            headers: dict[str, list[str]] = {}
            for f in m.files.values():
                result = done[f.name]
                if "malformed" in result:
                    with svc.sftp() as client, svc.db() as conn:
                        _refuse(m, settings, client, f, result["malformed"], "malformed", conn)
                    continue
                f.rows_in_file = result["rows_in_file"]
                headers[f.name] = result["header"]
                summaries[f.name] = result["summary"]
            m.stages["validation"] = summaries
            if m.ok:
                m.stages["metadata"] = _check_metadata(m, schema, headers)
            else:
                _delete_plaintext(m)
            m.save()
    return work_dirs


def _parse_file(m: Manifest, f: SupplyFile, schema: FeedSchema) -> dict[str, Any]:
    """One file's parse and validation: its kept rows staged (``parsed``), its rows set aside recorded; returns what
    the manifest records of it (``{"malformed": reason}`` for a file that cannot be read)."""
    from csp_observatory import parsing, validation

    feed_file = schema.file(f.name)
    try:
        # a remote store's plaintext is read from a private copy on this worker (the canonical copy of
        # a partner layout is written beside it and goes with it)
        with staging.local_file(f.plaintext_path or "") as plain:
            source, mapped = _in_canonical_layout(m, f.name, plain, feed_file)
            parsed = parsing.parse_csv(source, feed_file)
            header = _header(source)
    except parsing.MalformedFile as bad:
        return {"malformed": bad.reason}
    if mapped is not None:
        # Row numbers are the partner's own, in their file, not the canonical copy's.
        parsed.frame["source_row"] = _partner_rows(parsed.frame["source_row"], mapped.source_rows)
        parsed.rejected["source_row"] = _partner_rows(parsed.rejected["source_row"], mapped.source_rows)
        parsed.header_problems[:0] = [f"read as the declared layout '{mapped.layout}'", *mapped.notes]
    m.set_rejected("layout", f.name, mapped.rejected if mapped is not None else None)
    rows_in_file = len(parsed.frame) + len(parsed.rejected) + (len(mapped.rejected) if mapped else 0)
    m.set_rejected("parse", f.name, parsed.rejected)
    read, header_problems = parsed.frame, parsed.header_problems
    del parsed
    kept, rejected, nulled = validation.apply_row_rules(read, feed_file)
    m.set_rejected("validate", f.name, rejected)
    # Completeness counts every row read: its rates are taken now, and the rows read are let go before GX runs, so
    # that the columns apply_row_rules copied (rows left out, values blanked) are freed (60 MB at 1M offences).
    rates = validation.fill_rates(read, feed_file)
    del read
    summary = validation.validate(kept, feed_file, schema, period=m.period, rates=rates)
    summary.pop("gx_result", None)  # GX samples values; the manifest outlives the plaintext
    m.write_frame("parsed", f.name, kept)
    return {"rows_in_file": rows_in_file, "header": header,
            "summary": {"summary": summary, "header_problems": header_problems, "nulled_values": nulled}}


def _header(path: Path) -> list[str]:
    """The header cells of a CSV file the parser has read (its first non-blank record)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = head.decode("cp1252", errors="replace")      # as the parser falls back; names only
    for record in csv.reader(io.StringIO(text, newline="")):
        if any(c.strip() for c in record):
            return record
    return []


def _check_metadata(m: Manifest, schema: FeedSchema, headers: dict[str, list[str]]) -> dict[str, Any]:
    """The supply's metadata file read and checked against its files (counts, period, datafields), for the load
    and the report.

    Nothing personal is kept: the manifest outlives the plaintext, so the supplier's name and contact are left out
    (the load reads the file again to catalogue it). Headers are those the parser read: the canonical copy's for
    a file in a declared partner layout, whose datafields the metadata names as the schema does.
    """
    from csp_observatory import metadata, metadata_checks, metadata_docs, metadata_file

    out: dict[str, Any] = {"file": None, "expected": metadata.metadata_file_name(schema, m.period),
                           "supplied": m.metadata is not None, "refused": [], "document": None, "mismatches": []}
    if m.metadata is None:
        return out
    out["file"] = m.metadata.remote_name
    try:
        with staging.local_file(m.metadata.plaintext_path or "") as plain:
            md = metadata_file.read_metadata(plain, schema)
    except metadata.MetadataError as bad:
        out["refused"] = list(bad.problems)
        return out
    counts = {name: f.rows_in_file for name, f in m.files.items() if f.rows_in_file is not None}
    out["document"] = metadata_docs.shown_document(md)
    out["mismatches"] = [x.to_dict() for x in metadata_checks.check_against(md, schema, m.period, counts, headers)]
    return out


def _in_canonical_layout(m: Manifest, file_name: str, plaintext: Path, feed_file: Any) -> tuple[Path, Any]:
    """The file to parse: the partner's own if it is in the canonical layout, else its canonical copy.

    A feed file with declared partner layouts (include/layouts/) is matched to one by its header or root element,
    and rewritten to the schema's datafield names and codes beside the plaintext (deleted with it). Returns the
    path and the layout's result (None for the canonical layout). A file in no known layout is malformed.
    """
    from csp_observatory import layouts, layouts_loading, layouts_reading, parsing

    candidates = layouts_loading.layouts_for(m.feed, file_name, feed_file=feed_file)
    if len(candidates) <= 1:
        return plaintext, None
    chosen = layouts_reading.detect(plaintext, candidates)
    if chosen is None:
        known = "; ".join(lay.title for lay in candidates)
        raise parsing.MalformedFile(f"the file's columns match none of the layouts the observatory knows for this "
                                    f"file ({known}). Send it in one of them, or ask the observatory to declare yours.")
    if chosen.id == "canonical":
        return plaintext, None
    canonical = plaintext.with_name(f"{file_name}.canonical.csv")
    return canonical, layouts.apply(chosen, plaintext, canonical, feed_file)


def _partner_rows(rows: pd.Series, source_rows: list[int]) -> pd.Series:
    """Canonical-copy row numbers (1-based) as the partner's row numbers."""
    lookup = np.asarray(source_rows, dtype=np.int64)
    values = pd.to_numeric(rows).to_numpy(dtype=np.int64)
    return pd.Series(lookup[values - 1] if len(values) else values, index=rows.index, dtype=rows.dtype)
