"""The end-to-end demo: a partner drops a month of police recorded crime, with its metadata file, on SFTP; the
feed's DAG runs.

Run by ``scripts/demo.sh`` after set-up. Everything it uses is real: the project's PostGIS, its sshd, gpg
keys, and Airflow's ``dag.test()``. Only the crime records are made up (on real Calderdale postcodes).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import sys
import time
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import yaml

from csp_observatory.config import Settings, load_settings
from csp_observatory.schema import REPO_ROOT, FeedSchema

FEED = "police_recorded_crime"


def last_month(today: date | None = None) -> str:
    """The month before ``today`` (UTC) as YYYYMM: the supply a monthly partner would be sending now."""
    today = today or datetime.now(timezone.utc).date()
    return (today.replace(day=1) - timedelta(days=1)).strftime("%Y%m")


#: The demo's month: last month, so that the report's arrival line judges the supply as a partner's real one
#: (on time until its due day, late after it), not a fixed month that grows later every day.
DEMO_PERIOD = last_month()


def demo_config() -> dict[str, Any]:
    """What only the demo and the tests know: the partner's own keys."""
    path = Path(os.environ.get("CSP_CONFIG", REPO_ROOT / ".run" / "observatory.yaml")).with_name("demo.yaml")
    return yaml.safe_load(path.read_text())


def ensure_reference(settings: Settings, force: bool = False) -> dict[str, int]:
    """Load the shipped postcode reference and gazetteer into PostGIS, unless already there."""
    from csp_observatory import database, gazetteer, postcodes_postgis, postcodes_sources
    from csp_observatory.pipeline_supply import SettingsServices

    with SettingsServices(settings).db() as conn:
        database.ensure_database(conn)
        conn.commit()
        counts = {}
        with conn.cursor() as cur:
            for table in ("reference.postcodes", "reference.places"):
                cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
                if cur.fetchone()[0]:
                    cur.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 (fixed names)
                    counts[table] = cur.fetchone()[0]
        if all(counts.get(t) for t in ("reference.postcodes", "reference.places")) and not force:
            return {"postcodes": counts["reference.postcodes"], "places": counts["reference.places"]}
        frame = postcodes_sources.shipped_reference()
        postcodes_postgis.load_reference(conn, frame)
        places = gazetteer.shipped_places()
        gazetteer.load_places(conn, places)
        conn.commit()
        return {"postcodes": len(frame), "places": len(places)}


def drop_demo_supply(settings: Settings, schema: FeedSchema, period: str = DEMO_PERIOD,
                     n_offences: int = 600, files: dict[str, str | Path] | None = None,
                     signer_home: str | None = None, signer_fingerprint: str | None = None,
                     metadata: str | bool = True, partner_id: str | None = None) -> list[str]:
    """As the partner: make a month of records, encrypt and sign each file, and upload it with .part + rename.

    ``files`` (schema file name -> CSV text, or the path of a CSV file too large to hold as text, sent as it is)
    replaces the made-up police recorded crime. ``metadata``: True sends a metadata file (guidance section 3.4) that
    matches the files (``fixtures.make_metadata``, from their text: with paths, pass the metadata's text or False),
    a string sends that text as the metadata file, False sends none. The feed's own demo partner
    (``schema.partner.id``) sends it, or ``partner_id`` (a partner whose inbox serves several feeds).
    """
    from csp_observatory import demo_data, fixtures, metadata as supply_metadata, partner, postcodes_sources, sftp

    demo = demo_config()
    keys = partner_keys(demo, partner_id or schema.partner.id)
    if files is None:
        reference = postcodes_sources.shipped_reference()
        files = demo_data.make_police_recorded_crime(period, reference[~reference["terminated"]],
                                                     n_offences=n_offences).files
    uploads = {fixtures.remote_name(schema.file(name), period): text for name, text in files.items()}
    if metadata is not False:
        text = fixtures.make_metadata(schema, period, files) if metadata is True else metadata
        uploads[supply_metadata.metadata_file_name(schema, period)] = text
    names = []
    with tempfile.TemporaryDirectory() as tmp, sftp.connect(
            settings.sftp_host, settings.sftp_port, keys["sftp_user"], Path(keys["ssh_key"]),
            settings.sftp_host_key) as client:
        for remote, text in uploads.items():
            if isinstance(text, Path):
                plain = text
            else:
                plain = Path(tmp) / remote.removesuffix(".gpg")
                plain.write_text(text, encoding="utf-8")
            enc = Path(tmp) / remote
            partner.encrypt_and_sign(signer_home or keys["gnupg_home"], plain, enc,
                                     recipient_fingerprint=demo["observatory_fingerprint"],
                                     signer_fingerprint=signer_fingerprint or keys["fingerprint"])
            partner.upload(client, enc, "/inbox", remote)
            names.append(remote)
    return names


def partner_keys(demo: dict[str, Any], partner_id: str) -> dict[str, str]:
    """A demo partner's SFTP user, SSH key, keyring and signing fingerprint, from demo.yaml (setup.sh wrote it)."""
    try:
        keys = demo["partners"][partner_id]
    except KeyError:
        raise KeyError(f"demo.yaml has no keys for partner {partner_id!r}: run scripts/setup.sh") from None
    return {"sftp_user": keys.get("sftp_user", partner_id), "ssh_key": keys["ssh_key"],
            "gnupg_home": keys["gnupg_home"], "fingerprint": keys["fingerprint"]}


#: Tasks that judge the supply: they fail by design when it is amber or red (the report says why).
JUDGING_TASKS = frozenset({"verdict", "stage_failed"})


@contextmanager
def parsing_for(dag_id: str) -> Iterator[None]:
    """Airflow's parsing context naming ``dag_id`` (``airflow.sdk.get_parsing_context``), as a task's process parses
    DAG files in, for this block only. Airflow's own context manager leaves the variable set when it was not set
    before: a deployment started from this process later would then parse one feed's DAG and no other."""
    from airflow.sdk.definitions.context import _AIRFLOW_PARSING_CONTEXT_DAG_ID as name   # pinned Airflow

    before = os.environ.get(name)
    os.environ[name] = dag_id
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def run_feed_dag(feed: str = FEED, run_conf: dict[str, Any] | None = None, check: bool = True) -> Any:
    """Run the feed's DAG once, in-process, with Airflow's dag.test(); with ``check``, raise if a stage failed.

    The run itself ends failed whenever a supply is amber or red: read the report for the supply's outcome.
    """
    from airflow.dag_processing.dagbag import DagBag

    from csp_observatory import connections

    # The DAG's tasks reach SFTP and PostGIS through the Airflow Connections csp_sftp and csp_postgis: defined here
    # from the settings (CSP_CONFIG) unless the environment already defines them from the same settings file, or an
    # operator defined them (connections.ensure_env).
    connections.ensure_env(load_settings())
    # Before the DAG file is parsed: quick retries, and a sensor that gives up in a minute if nothing arrives.
    os.environ.setdefault("CSP_RETRY_DELAY_S", "1")
    os.environ.setdefault("CSP_SENSOR_TIMEOUT_S", "60")
    os.environ.setdefault("CSP_SENSOR_POKE_S", "5")
    dag_id = f"feed_{feed}"
    # Parse for this DAG only, as a task's process does (dags/feeds.py then builds only it): dag.test() parses the
    # folder again and writes what it found to the metadata DB, and the other feeds' DAGs are not needed for this run.
    with parsing_for(dag_id):
        bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
        if bag.import_errors:
            raise RuntimeError(f"DAG import errors: {bag.import_errors}")
        dag = bag.dags[dag_id]
        # No scheduler judges deadlines in dag.test(), and Airflow 3.3.2's cannot end a successful run of a DAG with
        # a deadline alert (DagRun.update_state looks the alerts up by id, which dag.test's own copy lacks): drop the
        # late-supply alert (csp_observatory.alerts) for this in-process run.
        dag.deadline = None
        run = dag.test(run_conf=run_conf)
    if run is None:
        raise RuntimeError(f"the DAG run of feed_{feed} did not start")
    tasks = run.get_task_instances()
    failed = [ti.task_id for ti in tasks
              if str(ti.state) in ("failed", "upstream_failed") and ti.task_id not in JUDGING_TASKS]
    if any(ti.task_id == "load" and str(ti.state) == "success" for ti in tasks):
        # In a deployment the load's asset event starts the refresh DAG (dags/refresh.py); no scheduler runs here,
        # so the demo recounts the feed's counts by ward and month as that DAG would.
        from csp_observatory import summaries

        summaries.refresh([feed])
    if failed and check:
        raise RuntimeError(f"the DAG run of feed_{feed} ended {run.state}; failed tasks: {failed}")
    return run


def latest_report(settings: Settings, feed: str, period: str, since: float = 0.0) -> Path | None:
    """The JSON report written last for a supply (at or after ``since``, a time.time() value), or None."""
    report_dir = Path(settings.reports_dir) / feed / period
    reports = sorted((p for p in report_dir.glob("*.json") if p.stat().st_mtime >= since),
                     key=lambda p: p.stat().st_mtime)
    return reports[-1] if reports else None


def summarise(settings: Settings, feed: str = FEED, period: str = DEMO_PERIOD, since: float = 0.0) -> str:
    """What happened to the supply, for a person: from the report the run wrote."""
    path = latest_report(settings, feed, period, since)
    if path is None:
        return f"No report was written for {feed}/{period}: see the task logs."
    from csp_observatory import report_html

    report = json.loads(path.read_text())
    return "\n".join([report_html.render_text(report), "", f"Full report: {path.with_suffix('.html')}"])


def how_to_look(settings: Settings) -> str:
    """How to open the Airflow UI on these DAGs, and QGIS on the PostGIS layers."""
    demo = demo_config()
    return f"""
Open the Airflow UI on these DAGs:
    {REPO_ROOT}/scripts/airflow start     (and 'scripts/airflow stop' when done: nothing is left running)
    then browse to http://127.0.0.1:8080, user admin, password in
    {REPO_ROOT}/.run/airflow/simple_auth_manager_passwords.json.generated; the DAG is 'feed_{FEED}'.

Connect QGIS to the PostGIS layers (the demo's analyst, a named login: scripts/people adds yours):
    Layer > Add Layer > Add PostGIS Layers > New connection
    Host {demo.get('analyst_host', '127.0.0.1')}  Port {demo.get('analyst_port', 5433)}  Database {demo.get('analyst_database', 'csp_observatory')}
    SSL mode verify-full, with the CA certificate {demo.get('analyst_sslrootcert', '/etc/csp-observatory/tls/ca.crt')}
    (docs/ANALYSTS.md: QGIS's authentication settings, or ~/.postgresql/root.crt)
    User {demo.get('analyst_user', 'demo_analyst')}  Password: in {REPO_ROOT}/.run/demo.yaml (analyst_password)
    Layers: depersonalised.prc_offences, depersonalised.prc_offenders, depersonalised.prc_victims (EPSG:27700),
            reference.postcodes. From a shell: psql with the analyst_url in .run/demo.yaml.
    Or open one file with every layer and the counts by ward and month (no password is written in it):
        {REPO_ROOT}/scripts/qgis_project --demo-config {REPO_ROOT}/.run/demo.yaml --out csp-observatory.qgs
    The partner's caveats (its metadata file, guidance section 3.4) are in each layer's and field's description
    (Layer Properties > Information, Fields) and in the table reference.feed_caveats; the DAG's page shows them too.
    The quality stamp of every supply is in dq.supplies (and dq.qualities, dq.checks); each layer has a
    <table>_graded view giving every record its month's grades (docs/ANALYSTS.md).
"""


@contextmanager
def _stdout_to(path: Path) -> Iterator[None]:
    """Send file descriptor 1 (where Airflow's task logging writes) to a file, so the terminal shows the summary."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(path, "a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--period", default=DEMO_PERIOD)
    parser.add_argument("--offences", type=int, default=600)
    parser.add_argument("--keep-reference", action="store_true",
                        help="use the postcode reference and gazetteer already in PostGIS (e.g. a national one) "
                             "instead of loading the shipped Calderdale extract")
    args = parser.parse_args(argv)

    from csp_observatory.schema_loading import schema_for

    settings = load_settings()
    schema = schema_for(FEED)
    print(f"Reference: {ensure_reference(settings, force=not args.keep_reference)}")
    names = drop_demo_supply(settings, schema, args.period, args.offences)
    print(f"Partner '{schema.partner.id}' uploaded (encrypted + signed): {', '.join(names)}")
    log_path = Path(settings.staging_dir).parent / "logs" / "demo-airflow.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"Running the DAG feed_{FEED} with dag.test() (Airflow's log: {log_path}) ...", flush=True)
    started = time.time()
    try:
        with _stdout_to(log_path):
            run_feed_dag(FEED)
    except RuntimeError as failed:
        print(f"FAILED: {failed}. See {log_path}.", file=sys.stderr)
    print(summarise(settings, FEED, args.period, since=started))
    print(how_to_look(settings))
    path = latest_report(settings, FEED, args.period, since=started)
    level = json.loads(path.read_text())["outcome"]["level"] if path else None
    if level not in ("green", "amber"):
        print(f"The supply {FEED}/{args.period} was not loaded.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
