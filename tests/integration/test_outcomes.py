"""Failures are visible, on the real services: the DAG run's state and the report follow what happened to a supply.

Each test uses its own month, apart from the demo's and the other tests'.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from csp_observatory import connections, demo, demo_data, postcodes_sources
from csp_observatory.schema_loading import schema_for

pytestmark = pytest.mark.integration

FEED = "police_recorded_crime"
TABLES = {"offences": "prc_offences", "offenders": "prc_offenders", "victims": "prc_victims"}


@pytest.fixture(scope="module")
def schema():
    return schema_for(FEED)


@pytest.fixture()
def month(request, db, clean_partner_folders, reference_loaded, forget_supply, schema):
    """A month of this test's own, forgotten before and after."""
    period = request.param
    db.autocommit = True
    forget_supply(db, schema, period)
    yield period
    forget_supply(db, schema, period)


def _loaded(db, period: str) -> dict[str, int]:
    with db.cursor() as cur:
        out = {}
        for name, table in TABLES.items():
            cur.execute(f"SELECT count(*) FROM depersonalised.{table} WHERE supply_id = %s", (f"{FEED}/{period}",))
            out[name] = cur.fetchone()[0]
        return out


def _supply(period: str, n: int = 60) -> dict[str, str]:
    reference = postcodes_sources.shipped_reference()
    return demo_data.make_police_recorded_crime(period, reference[~reference["terminated"]], n_offences=n).files


def _report(settings, period: str) -> dict:
    path = demo.latest_report(settings, FEED, period)
    assert path is not None, "no report was written"
    return json.loads(path.read_text())


def _states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def _without_columns(text: str, drop: set[str]) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    keep = [i for i, name in enumerate(rows[0]) if name not in drop]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([[r[i] for i in keep if i < len(r)] for r in rows])
    return out.getvalue()


@pytest.mark.parametrize("month", ["202501"], indirect=True)
def test_a_run_whose_sftp_login_fails_is_a_failed_run(month, monkeypatch, observatory_sftp, settings):
    # Nothing listens on port 1: every SFTP login fails, through the Airflow Connection the tasks and the sensor use
    # (defined here from the tests' settings, both of them, so ensure_env keeps them) and the project's own client.
    for name, value in connections.env_vars(settings).items():
        if name == connections.env_name(connections.SFTP_CONN_ID):
            value = json.dumps({**json.loads(value), "port": 1})
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(connections.SOURCE_ENV, connections.config_source())
    monkeypatch.setenv("CSP_SFTP_PORT", "1")
    run = demo.run_feed_dag(FEED, check=False)
    states = _states(run)
    assert str(run.state) == "failed", states
    assert states["wait_for_supply"] == "failed"
    assert states["stage_failed"] == "failed"


@pytest.mark.parametrize("month", ["202502"], indirect=True)
def test_a_supply_with_almost_no_usable_points_is_amber(month, settings, db, schema):
    files = _supply(month)
    # The force's export lost its latitude and postcode columns: only longitudes (and some addresses) remain.
    files["offences"] = _without_columns(files["offences"], {"latitude", "location_postcode", "easting", "northing"})
    demo.drop_demo_supply(settings, schema, month, files=files)
    run = demo.run_feed_dag(FEED)
    report = _report(settings, month)
    assert report["supply"]["status"] == "loaded"
    assert report["outcome"]["level"] == "amber"
    assert any("placed on the map" in r for r in report["outcome"]["reasons"]), report["outcome"]
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM depersonalised.prc_offences WHERE supply_id = %s "
                    "AND sanitise_rule = 'not_geocoded'", (f"{FEED}/{month}",))
        not_geocoded = cur.fetchone()[0]
    flagged = [r for r in report["flagged_rows"] if r["file"] == "offences" and r["stage"] == "geocode"]
    assert not_geocoded > 0 and len(flagged) == not_geocoded
    assert "loaded row" in report["headline"] and "with a problem to fix" in report["headline"]
    assert all(r["reason"] and r["action"] for r in flagged)
    # The engineer sees it in Airflow: the run is not green, and the verdict says why.
    states = _states(run)
    assert str(run.state) == "failed" and states["verdict"] == "failed" and states["load"] == "success"


@pytest.mark.parametrize("month", ["202503"], indirect=True)
def test_a_resend_that_would_empty_the_month_is_held_until_confirmed(month, settings, db, schema,
                                                                     observatory_sftp):
    files = _supply(month)
    demo.drop_demo_supply(settings, schema, month, files=files)
    demo.run_feed_dag(FEED)
    before = _loaded(db, month)
    assert before["offences"] > 0

    header_only = dict(files, offences=files["offences"].splitlines(keepends=True)[0])
    names = demo.drop_demo_supply(settings, schema, month, files=header_only)
    run = demo.run_feed_dag(FEED)
    assert _loaded(db, month) == before, "the month's rows must not be deleted by a header-only re-send"
    report = _report(settings, month)
    assert report["supply"]["status"] == "held" and report["outcome"]["level"] == "red"
    assert any("held for an engineer" in q["reason"] for q in report["quarantined"])
    assert str(run.state) == "failed" and _states(run)["verdict"] == "failed"
    # Nothing is lost: the re-sent files wait in the inbox for the engineer's decision.
    assert sorted(observatory_sftp.listdir("/police/inbox")) == sorted(names)

    # The engineer confirms: the re-send replaces the month (its offenders and victims now flagged).
    demo.run_feed_dag(FEED, run_conf={"confirm_replace": [month]})
    after = _loaded(db, month)
    assert after["offences"] == 0 and after["offenders"] == before["offenders"]
    report = _report(settings, month)
    assert report["supply"]["status"] == "loaded" and report["outcome"]["level"] == "amber"
    assert any(r["stage"] == "link" for r in report["flagged_rows"])
    assert observatory_sftp.listdir("/police/inbox") == []


@pytest.mark.parametrize("month", ["202504"], indirect=True)
def test_the_demo_exits_non_zero_when_its_supply_is_not_loaded(month, settings, monkeypatch, capsys):
    import gnupg

    from csp_observatory import partner

    # Every file encrypted but not signed: refused, so the demo must say so and fail.
    def unsigned(home, plain, enc, recipient_fingerprint, signer_fingerprint):
        with open(plain, "rb") as fh:
            result = gnupg.GPG(gnupghome=str(home)).encrypt_file(fh, [recipient_fingerprint], always_trust=True,
                                                                 armor=False, output=str(enc))
        assert result.ok, result.status

    monkeypatch.setattr(partner, "encrypt_and_sign", unsigned)
    rc = demo.main(["--period", month, "--offences", "40", "--keep-reference"])
    out = capsys.readouterr()
    assert rc == 1, out.out
    assert "was not loaded" in out.err


@pytest.mark.parametrize("month", ["202505"], indirect=True)
def test_a_poll_that_finds_nothing_ends_green_and_quickly(month, monkeypatch):
    monkeypatch.setenv("CSP_SENSOR_TIMEOUT_S", "8")
    monkeypatch.setenv("CSP_SENSOR_POKE_S", "2")
    run = demo.run_feed_dag(FEED)
    states = _states(run)
    assert str(run.state) == "success", states
    assert states["wait_for_supply"] == "skipped" and states["stage_failed"] == "skipped"
    assert states["verdict"] in ("success", "skipped")
