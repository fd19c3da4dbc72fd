"""Stage 8 of a supply, and the run's verdict: write each supply's quality report and stamp, give the partner a
copy, archive or quarantine the originals, and turn the run red or amber when a supply needs looking at."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from csp_observatory.config import Settings, load_settings
from csp_observatory.pipeline_supply import (Manifest, Services, SupplyHasProblems, SupplyNotLoaded, _delete_plaintext,
                                             _in_flight, _quarantine, _services)
from csp_observatory.schema import FeedSchema
from csp_observatory.schema_loading import schema_for

log = logging.getLogger("csp_observatory.pipeline")


# --- stage 8: report and archive --------------------------------------------------------------------

def report_and_archive(feed: str, work_dirs: list[str] | None, settings: Settings | None = None,
                       services: Services | None = None) -> dict[str, Any]:
    """Write each supply's quality report, give the partner a copy, move loaded originals to processed/."""
    from csp_observatory import intake_quarantine, report_html, report_writing, reporting, sftp

    settings = settings or load_settings()
    svc = _services(settings, services)
    schema = schema_for(feed)
    outcome: dict[str, Any] = {"feed": feed, "supplies": []}
    manifests = _in_flight(work_dirs)
    if not manifests:
        return outcome
    with svc.sftp() as client:
        for m in manifests:
            m.partner_id = m.partner_id or schema.partner.id     # a manifest from before collect recorded it
            if m.status == "collected":
                # A stage failed part-way (the task log says why); the original stays in the inbox for a re-run.
                m.status = "failed"
            if m.status == "loaded":
                for f in m.files.values():
                    intake_quarantine.archive(client, settings, m.partner, f.remote_name)
                if m.metadata is not None:
                    _archive_metadata(m, schema, settings, client, svc)
            elif m.status == "blocked":
                # Publishing it would single people out: the partner gets it back with the reason.
                reason = "; ".join(p["reason"] for p in m.problems)
                with svc.db() as conn:
                    for f in m.all_files:
                        _quarantine(settings, client, conn, m.partner, f, reason)
            report = reporting.build_report(schema, m, settings)
            folder = Path(settings.reports_dir) / feed / m.period
            json_path, html_path = report_writing.write_report(report, folder)
            # The quality stamp analysts read (dq schema) and the report in observatory.supplies, in one transaction.
            from csp_observatory.stamp import stamp_supply
            stamp_supply(settings, schema, report, m.partner, m.collected_at, db=svc.db)
            partner = report_writing.partner_view(report)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            base = f"{feed}_{m.period}_quality_{stamp}"
            reports = settings.partner_folder(m.partner, "reports")
            sftp.put_text(client, f"{reports}/{base}.html", report_html.render_html(partner))
            sftp.put_text(client, f"{reports}/{base}.json", json.dumps(partner, indent=1, default=str))
            _delete_plaintext(m)
            m.save()
            outcome["supplies"].append({"supply_id": m.supply_id, "status": m.status, "report": str(html_path),
                                        "json": str(json_path), "headline": report["headline"],
                                        **{k: report["outcome"][k] for k in ("level", "reasons")}})
    return outcome


def _archive_metadata(m: Manifest, schema: FeedSchema, settings: Settings, client: Any, svc: Services) -> None:
    """After a load: the metadata file goes to processed/, or, if it could not be read, to quarantine/ with why."""
    from csp_observatory import intake_quarantine, metadata

    refused = (m.stages.get("metadata") or {}).get("refused")
    f = m.metadata
    assert f is not None
    if not refused:
        intake_quarantine.archive(client, settings, m.partner, f.remote_name)
        return
    reason = metadata.refused_reason(schema, refused, required=False, remote_name=f.remote_name)
    with svc.db() as conn:
        _quarantine(settings, client, conn, m.partner, f, reason)
    m.problems.append({"file": f.name, "remote_name": f.remote_name, "reason": reason})


def verdict(outcome: dict[str, Any] | None) -> str:
    """The run's verdict from ``report_and_archive``'s outcome: raise unless every supply is green.

    Red (not loaded) raises SupplyNotLoaded, amber (loaded with problems) SupplyHasProblems, so that the task,
    and with it the Airflow run, shows that this is not a plain success; the message names each supply and why.
    A run that found no supply is fine: most daily polls find nothing.
    """
    supplies = (outcome or {}).get("supplies") or []
    lines = [f"{s['supply_id']}: {s.get('level', 'red').upper()}: {s.get('headline', s['status'])}"
             + "".join(f"\n  - {r}" for r in s.get("reasons") or []) for s in supplies]
    if any(s.get("level") == "red" for s in supplies):
        raise SupplyNotLoaded("\n".join(lines))
    if any(s.get("level") == "amber" for s in supplies):
        raise SupplyHasProblems("\n".join(lines))
    return "\n".join(lines) or "no supply was ready"
