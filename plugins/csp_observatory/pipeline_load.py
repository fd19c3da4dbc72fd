"""Stage 7 of a supply: load it into PostGIS in one transaction, with its metadata catalogued and its files marked
loaded in the ledger in the same commit; a re-send that would remove most of a period's rows is held."""
from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from csp_observatory import staging
from csp_observatory.config import Settings, load_settings
from csp_observatory.pipeline_parse import _check_metadata
from csp_observatory.pipeline_supply import (Manifest, Services, _in_flight, _one_supply, _refuse, _services,
                                             supply_schema)
from csp_observatory.schema import FeedSchema

log = logging.getLogger("csp_observatory.pipeline")


# --- stage 7: load ----------------------------------------------------------------------------------

def load(work_dirs: list[str], settings: Settings | None = None, confirmed: list[str] | None = None,
         services: Services | None = None) -> list[str]:
    """Load each supply in one transaction; the ledger marks its files loaded in the same commit.

    A re-sent period that would remove more than the feed's ``resend_max_loss`` of the rows loaded for it (a
    header-only file, a partial extract) is held, not loaded, until an engineer confirms it by triggering the
    feed's DAG with ``{"confirm_replace": ["<period>"]}``; the files stay in the inbox for that run.
    """
    from csp_observatory import database, feed_tables, ledger, loading, metadata, metadata_catalogue, metadata_docs, metadata_file

    settings = settings or load_settings()
    svc = _services(settings, services)
    for m in _in_flight(work_dirs):
        with _one_supply(m, "load", alone=len(work_dirs) <= 1):
            if not m.ok:
                continue
            schema = supply_schema(m)
            # Read one file at a time while it is loaded, never all at once (memory at 1M offences: issue 9).
            tables = loading.LazyFrames(m.files, lambda name, m=m: m.read_frame("sanitised", name),
                                        shape=lambda name, m=m: staging.frame_shape(m.frame_path("sanitised", name)))
            shas = [f.sha256 for f in m.files.values()]
            # Read at parse time; a manifest from before metadata was read (an older run) is read now.
            checked = m.stages.get("metadata") or _check_metadata(m, schema, {})
            m.stages["metadata"] = checked
            with svc.db() as conn:
                database.ensure_database(conn)
                feed_tables.ensure_feed_tables(conn, schema)
                metadata_catalogue.ensure_catalogue(conn)
                conn.commit()
                # The feed's first supply must bring its metadata (section 3.4): without it nothing is loaded and
                # the files stay in the inbox until it arrives.
                checked["required"] = metadata_catalogue.first_supply_needs_metadata(conn, schema.feed)
                md = None
                if m.metadata is not None and not checked.get("refused"):
                    with staging.local_file(m.metadata.plaintext_path or "") as plain:
                        md = metadata_file.read_metadata(plain, schema)
                if checked["required"] and md is None:
                    if m.metadata is None:
                        m.status = "needs_metadata"
                        m.problems.append({"file": "metadata", "remote_name": checked["expected"],
                                           "reason": metadata.missing_reason(schema, m.period)})
                        log.warning("%s not loaded: the feed's first supply carries no metadata file", m.supply_id)
                    else:
                        with svc.sftp() as client:
                            _refuse(m, settings, client, m.metadata, metadata.refused_reason(
                                schema, checked["refused"], required=True, remote_name=m.metadata.remote_name),
                                "refused", conn)
                    m.save()
                    continue
                losses = loading.resend_losses(loading.loaded_counts(conn, schema, m.supply_id),
                                               {name: tables.shape(name)[1] for name in tables}, schema.resend_max_loss)
                if losses and m.period not in (confirmed or []):
                    m.status = "held"
                    for name, (was, now) in losses.items():
                        m.problems.append({"file": name, "remote_name": m.files[name].remote_name, "reason": (
                            f"this re-sent {name} file has {now:,} usable rows where {was:,} are loaded for the "
                            f"period: loading it would remove {was - now:,} of them. It is held for an engineer to "
                            f"confirm; if it is a mistake, send the full file again.")})
                    log.warning("%s held: a re-send would remove most of the loaded rows %s; confirm with the DAG "
                                "param confirm_replace=[%r]", m.supply_id, losses, m.period)
                    m.save()
                    continue
                if md is not None:
                    shas.append(m.metadata.sha256)      # type: ignore[union-attr]  # md came from it
                shown: list[Any] = []

                def catalogue(c: Any, md: Any = md, sid: str = m.supply_id, found: Any = checked["mismatches"],
                              shown: list[Any] = shown) -> None:
                    shown.append(_catalogue(c, schema, sid, md, found))

                result = loading.load_supply(
                    conn, schema, m.supply_id, m.period, tables,
                    lineage={name: f.sha256 for name, f in m.files.items()},
                    rejected=m.rejected(),
                    validation={k: v["summary"] for k, v in m.stages.get("validation", {}).items()},
                    on_commit_ledger=lambda c, shas=shas, sid=m.supply_id: ledger.mark_loaded(c, shas, sid),
                    in_transaction=catalogue,
                    connect=svc.db if _two_connections(settings, m) else None,
                )
            m.status = "loaded"
            m.stages["load"] = result.to_dict() if hasattr(result, "to_dict") else asdict(result)
            checked["recorded"] = md is not None
            m.save()
            try:
                metadata_docs.write_dag_doc(settings.reports_dir, schema.feed, shown[0] if shown else None)
            except OSError:
                log.exception("%s loaded, but the DAG docs' caveats could not be written", m.supply_id)
    return work_dirs


def _two_connections(settings: Settings, m: Manifest) -> bool:
    """Whether the load may share a supply's files between two connections: when ``load_connections`` allows it
    (the default does), for a supply as large as the stages share between processes (``file_workers_min_mb``);
    ``loading.split_files`` then keeps them on one on a machine of one core."""
    staged = sum(m.staged_sizes("sanitised").values())
    return settings.load_connections > 1 and staged >= max(settings.file_workers_min_mb << 20, 1)


def loaded_supplies(work_dirs: list[str] | None) -> list[dict[str, Any]]:
    """What the load committed, per supply: ``{"supply_id", "feed", "period", "rows": {table: n}}`` for each supply of
    the run whose status is ``loaded`` (none for a held, refused or failed one). The DAG layer puts it in the asset
    events of the feed's tables, so that the refreshes downstream know which feed and period changed."""
    out = []
    for m in _in_flight(work_dirs):
        if m.status != "loaded":
            continue
        rows = (m.stages.get("load") or {}).get("rows") or {}
        out.append({"supply_id": m.supply_id, "feed": m.feed, "period": m.period,
                    "rows": {str(k): int(v) for k, v in rows.items()}})
    return out


def _catalogue(conn: Any, schema: FeedSchema, supply_id: str, md: Any, mismatches: list[dict[str, Any]]) -> Any:
    """Inside the load's transaction: catalogue the supply's metadata (if it has any), and put the feed's latest
    caveats and explanations in its tables' and columns' comments (``ensure_feed_tables`` may just have written
    the schema's own over them). Returns the latest metadata, for the DAG's docs once the load has committed."""
    from csp_observatory import metadata, metadata_catalogue

    if md is not None:
        metadata_catalogue.record(conn, supply_id, md, [metadata.Mismatch(**x) for x in mismatches])
    latest = metadata_catalogue.latest(conn, schema.feed)
    if latest is not None:
        metadata_catalogue.apply_comments(conn, schema, latest)
    return latest
