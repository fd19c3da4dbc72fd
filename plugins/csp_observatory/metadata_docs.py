"""What people are shown of a supply's metadata: the quality report's section and the DAG's docs in Airflow.

:func:`report_section` and :func:`shown_document` give the report the metadata without the supplier (a person's
details). :func:`doc_md_section` is the Markdown for the DAG's docs; since no database may be touched when the DAG
file is parsed, the load writes it to a small cache (:func:`write_dag_doc`, ``<reports_dir>/<feed>/supply_metadata.md``,
and the quality stamp's :func:`write_quality_doc`) that :func:`dag_doc` reads at parse time. Importing this module does
not import pandas.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Final, Mapping

from csp_observatory.metadata import KINDS, Mismatch, SupplyMetadata, coding_text


def _md(text: str) -> str:
    """Partner text made inert in Markdown: no HTML, links, images, emphasis or table breaks."""
    text = " ".join(str(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_\[\]()#!|~])", r"\\\1", text)


def doc_md_section(metadata: SupplyMetadata | None) -> str:
    """Markdown for the DAG's docs in the Airflow UI: the partner's caveats, coding systems and geographic method.

    The supplier's name and contact are left out: the Airflow UI is not the place for a person's details.
    """
    if metadata is None:
        return ""
    lines = ["## Partner's supply metadata (guidance section 3.4)", "",
             f"*From {_md(metadata.agency)}, with the supply of period {_md(metadata.period or '?')} "
             f"(supplied {metadata.date_supplied.isoformat()}).*", "", "**Caveats on use:**", ""]
    lines += [f"- {_md(c)}" for c in metadata.caveats] or ["- none given"]
    lines += ["", "**Coding systems:**", ""]
    lines += [f"- {_md(name)}: {_md(coding_text(system))}" for name, system in metadata.coding_systems.items()] \
        or ["- none given"]
    lines += ["", f"**How coordinates were made:** {_md(metadata.geographic_method or 'not given')}"]
    if metadata.conditions_of_use:
        lines += ["", f"**Conditions of use:** {_md(metadata.conditions_of_use)}"]
    return "\n".join(lines)


def report_section(metadata: SupplyMetadata | None, mismatches: list[Mismatch]) -> dict[str, Any]:
    """The quality report's metadata section: counts and plain messages only (no contact, no document)."""
    by_kind = {k: n for k in KINDS if (n := sum(1 for m in mismatches if m.kind == k))}
    if metadata is None:
        return {"supplied": False, "period": None, "date_supplied": None, "records_declared": {},
                "datafields_listed": {}, "caveats": 0, "coding_systems": 0, "geographic_method_given": False,
                "mismatch_count": len(mismatches), "mismatches_by_kind": by_kind,
                "messages": [m.message for m in mismatches], "matches": not mismatches}
    return {
        "supplied": True,
        "period": metadata.period,
        "date_supplied": metadata.date_supplied.isoformat(),
        "records_declared": {f.file: f.records for f in metadata.files},
        "datafields_listed": {f.file: len(f.datafields) for f in metadata.files},
        "caveats": len(metadata.caveats),
        "coding_systems": len(metadata.coding_systems),
        "geographic_method_given": metadata.geographic_method is not None,
        "mismatch_count": len(mismatches),
        "mismatches_by_kind": by_kind,
        "messages": [m.message for m in mismatches],
        "matches": not mismatches,
    }


def shown_document(metadata: SupplyMetadata) -> dict[str, Any]:
    """:meth:`SupplyMetadata.to_document` without the supplier (a person's details): what a report may hold."""
    doc = metadata.to_document()
    doc.pop("supplier", None)
    return doc


def from_shown_document(doc: Mapping[str, Any]) -> SupplyMetadata:
    """A :class:`SupplyMetadata` from :func:`shown_document`'s output, the supplier left blank."""
    return SupplyMetadata.from_document({**doc, "supplier": {"name": "", "contact": ""}})


# --- the DAG's docs ----------------------------------------------------------------------------------------------

#: The cache of a feed's caveats for its DAG's docs: ``<reports_dir>/<feed>/`` + this name.
DAG_DOC_NAME: Final = "supply_metadata.md"
#: The cache of a feed's latest quality stamp for its DAG's docs (``stamp_text.dag_doc_section``), beside the caveats.
QUALITY_DOC_NAME: Final = "quality_stamp.md"
#: Largest cache file :func:`dag_doc` shows (a caveats section is a few kilobytes).
MAX_DAG_DOC_BYTES: Final = 64_000
_FEED_ID: Final = re.compile(r"[A-Za-z0-9_]{1,100}")


def dag_doc_path(reports_dir: str | Path, feed: str) -> Path:
    """Where the load keeps a feed's latest caveats section for its DAG's docs (beside the feed's reports)."""
    return Path(reports_dir) / feed / DAG_DOC_NAME


def write_dag_doc(reports_dir: str | Path, feed: str, metadata: SupplyMetadata | None) -> Path:
    """Write the feed's :func:`doc_md_section` for :func:`dag_doc`, atomically (a DAG parse never reads half a
    file): a temporary file in the same folder, then a rename over the old one. Call after the load commits."""
    return _write_doc(dag_doc_path(reports_dir, feed), doc_md_section(metadata))


def write_quality_doc(reports_dir: str | Path, feed: str, text: str) -> Path:
    """Write the feed's latest quality stamp (Markdown, ``stamp_text.dag_doc_section``) for :func:`dag_doc`, atomically.
    Call after the stamp commits."""
    return _write_doc(Path(reports_dir) / feed / QUALITY_DOC_NAME, text)


def _write_doc(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(temp, 0o644)   # the DAG processor may run as another user; nothing personal is in it
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def dag_docs_dir() -> Path | None:
    """The folder :func:`dag_doc` reads from (the settings' ``reports_dir``), or None when the config cannot be
    read; never raises. A DAG file asks once per parse, not once per feed: the settings read the partner registry."""
    try:
        from csp_observatory.config import load_settings

        return Path(load_settings().reports_dir)
    except Exception:       # noqa: BLE001  (a DAG must parse whatever became of the config)
        return None


def dag_doc(feed: str, reports_dir: str | Path | None = None) -> str:
    """The partner's latest caveats and the feed's latest quality stamp for its DAG docs (Markdown), or "" when there
    are none; never raises.

    For the DAG file at parse time, when no database or network may be touched: it reads only the small caches the
    load and the report write (:func:`write_dag_doc`, :func:`write_quality_doc`) under the settings' ``reports_dir``
    (or ``reports_dir`` if given).
    """
    try:
        if not _FEED_ID.fullmatch(feed):
            return ""
        if reports_dir is None:
            reports_dir = dag_docs_dir()
            if reports_dir is None:
                return ""
        return "\n\n".join(text for name in (DAG_DOC_NAME, QUALITY_DOC_NAME)
                           if (text := _read_doc(Path(reports_dir) / feed / name)))
    except Exception:       # noqa: BLE001  (a DAG must parse whatever became of the cache or the config)
        return ""


def _read_doc(path: Path) -> str:
    """One cached section for :func:`dag_doc`: "" if it is missing or too large."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_DAG_DOC_BYTES + 1)
    except FileNotFoundError:
        return ""
    return "" if len(data) > MAX_DAG_DOC_BYTES else data.decode("utf-8")
