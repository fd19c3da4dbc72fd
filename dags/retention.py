"""The governance DAG: daily, deletes what feeds keep past their retention, reviews the agreements register, and
writes last month's report of access to personal data.

Thin: the work is ``csp_observatory.retention.apply`` (rows per supply in one transaction, originals in partners'
processed/, reports; each deletion in ``observatory.retention_log``), ``csp_observatory.agreements``
(docs/GOVERNANCE.md) and ``csp_observatory.access_audit_report.write_monthly`` (docs/AUDIT.md: once a month, the
first run after it ends, into ``<reports_dir>/access/``). It starts paused: deleting is for good, so an engineer
unpauses it once the feeds' retention periods are agreed with the partners (until then no access report is written
either: ``scripts/access_report`` writes one by hand).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Final

from airflow.sdk import dag, task

from csp_observatory import agreements

OWNER: Final = "observatory-data-engineering"


@dag(
    dag_id="retention",
    dag_display_name="Governance: retention, agreements and access report",
    description="Deletes supplies, originals and reports past each feed's retention; reviews sharing agreements; "
                "writes last month's access report",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,
    default_args={"owner": OWNER, "retries": 2, "retry_delay": timedelta(minutes=5)},
    # Read at parse time from the register's files only (no database, no network): agreements due for review first.
    doc_md=__doc__ + "\n\nEach feed's retention is in its schema (`retention:`, every datafield of a supply's rows "
                     "goes together) or the defaults of `schema.RETENTION_DEFAULTS`.\n\n" + agreements.doc_md(),
    tags=["governance", "retention", "agreements", "audit"],
)
def retention_dag() -> None:
    @task
    def review_agreements() -> list[str]:
        """Log a warning for each agreement past its review date (also listed in this DAG's docs)."""
        import logging

        due = agreements.review_due()
        for a in due:
            logging.getLogger(__name__).warning("information sharing agreement %s was due for review on %s "
                                                "(partners %s; feeds %s)", a.title(), a.review_date,
                                                ", ".join(a.partners), ", ".join(a.feeds))
        return [a.id for a in due]

    @task
    def apply_retention(run_id: str | None = None) -> dict:
        from csp_observatory import retention
        from csp_observatory.hooks import HookServices

        # PostGIS and SFTP through the Airflow Connections csp_postgis and csp_sftp, as the feeds' tasks
        out = retention.apply(run_id=run_id or "manual", services=HookServices())
        return {k: out[k] for k in ("today", "deleted", "supplies_past_rows_retention")}

    @task
    def access_report() -> list[str]:
        """Last month's report of reads of personal data for the DLO, once (a month written is kept as it is)."""
        from csp_observatory import access_audit_report

        return [str(p) for p in access_audit_report.write_monthly()]

    review_agreements() >> apply_retention()
    access_report()


retention_dag()
