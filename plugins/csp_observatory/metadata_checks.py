"""Checking a supply's metadata against what arrived: feed, period, files, record counts and datafields.

:func:`check_against` compares a parsed :class:`metadata.SupplyMetadata` with the files received and the feed's
schema, and returns :class:`metadata.Mismatch` es (kinds in ``metadata.KINDS``) for the quality report. The parse
stage (``pipeline_parse.py``) calls it.
"""
from __future__ import annotations

from csp_observatory.metadata import (DATAFIELD_NOT_IN_FILE, DATAFIELD_NOT_IN_SCHEMA, DATAFIELD_NOT_LISTED, FEED,
                                      FILE_NOT_DESCRIBED, FILE_NOT_RECEIVED, PERIOD, RECORD_COUNT,
                                      REQUIRED_DATAFIELD_NOT_LISTED, Mismatch, SupplyMetadata, _shown, header_key)
from csp_observatory.metadata_file import _names_dataset
from csp_observatory.schema import FeedFile, FeedSchema, period_bounds


# --- checking against the supply ---------------------------------------------------------------------------------

def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _period_text(schema: FeedSchema, period: str) -> str:
    bounds = period_bounds(schema.period_format, period)
    return f"{period} ({bounds[0]:%d %B %Y} to {bounds[1]:%d %B %Y})" if bounds else period


def check_against(metadata: SupplyMetadata, schema: FeedSchema, period: str, row_counts: dict[str, int],
                  headers: dict[str, list[str]]) -> list[Mismatch]:
    """What the metadata says that the supply does not bear out: feed, period, files, record counts, datafields.

    ``row_counts`` and ``headers`` are by the schema's file name (offences...): the data rows and the header cells
    of each file received. Datafield names compare as the parser reads headers (any case, spaces as underscores).
    """
    out: list[Mismatch] = []
    if metadata.feed != schema.feed or not _names_dataset(schema, metadata.dataset):
        out.append(Mismatch(FEED, f"The metadata is for another dataset, not {schema.title}."))
    if metadata.period != period:
        if metadata.period is not None:
            said = _period_text(schema, metadata.period)
        elif metadata.period_start and metadata.period_end:
            said = f"{metadata.period_start:%d %B %Y} to {metadata.period_end:%d %B %Y}"
        else:
            said = "another period"
        out.append(Mismatch(PERIOD, f"The metadata covers {said}, but the supply is for "
                                    f"{_period_text(schema, period)}."))
    described = {f.file for f in metadata.files}
    received = set(row_counts) | set(headers)
    for f in schema.files:
        if f.name in received and f.name not in described:
            out.append(Mismatch(FILE_NOT_DESCRIBED, f"The {f.name} file arrived but the metadata does not describe "
                                                    f"it.", file=f.name))
    for fm in metadata.files:
        if fm.file not in received:
            out.append(Mismatch(FILE_NOT_RECEIVED, f"The metadata describes the {fm.file} file, which did not "
                                                   f"arrive with this supply.", file=fm.file))
            continue
        rows = row_counts.get(fm.file)
        if rows is not None and rows != fm.records:
            out.append(Mismatch(RECORD_COUNT, f"The metadata says the {fm.file} file has "
                                              f"{_count(fm.records, 'record')}; it has {_count(rows, 'row')} of data.",
                                file=fm.file))
        listed = {header_key(n): n for n in fm.field_names}
        try:
            feed_file: FeedFile | None = schema.file(fm.file)
        except KeyError:
            feed_file = None
        if fm.file in headers:
            header = {header_key(c): c for c in headers[fm.file] if c.strip()}
            for key, name in listed.items():
                if key not in header:
                    out.append(Mismatch(DATAFIELD_NOT_IN_FILE, f"The metadata lists {_shown(name)} for the {fm.file} "
                                                               f"file, but the file has no such column.",
                                        file=fm.file, datafield=_shown(name)))
            for key, cell in header.items():
                if key not in listed:
                    out.append(Mismatch(DATAFIELD_NOT_LISTED, f"The {fm.file} file has the column {_shown(cell)}, "
                                                              f"which the metadata does not list.",
                                        file=fm.file, datafield=_shown(cell)))
        if feed_file is not None:
            in_schema = {header_key(n) for n in feed_file.field_names}
            for key, name in listed.items():
                if key not in in_schema:
                    out.append(Mismatch(DATAFIELD_NOT_IN_SCHEMA, f"The metadata lists {_shown(name)} for the "
                                                                 f"{fm.file} file, which is not a datafield of "
                                                                 f"{schema.title}.",
                                        file=fm.file, datafield=_shown(name)))
            for d in feed_file.datafields:
                if d.required and header_key(d.name) not in listed:
                    out.append(Mismatch(REQUIRED_DATAFIELD_NOT_LISTED, f"The metadata does not list {d.name}, a "
                                                                       f"required datafield of the {fm.file} file.",
                                        file=fm.file, datafield=d.name))
    return out
