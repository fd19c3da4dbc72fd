"""End to end (issue 9): a police recorded crime supply dropped on SFTP and run through the feed's DAG, per task and in
total (wall time, rows per second, peak memory), beside a bare COPY of the same loaded rows in the same run.

What one size does, in this order, all on the real services (PostGIS, the project's sshd, gpg, Airflow's
``dag.test()`` as ``demo.run_feed_dag`` runs it):

1. **fixed costs**, each in a fresh Python process: Python + Airflow start-up and one parse of ``dags/`` (what the
   DAG processor pays), importing Great Expectations, and one look at the inbox that finds nothing (what the
   triggerer pays per poll: ``arrival.look``, one SFTP login and listing through the connection ``csp_sftp``;
   ``trigger_look.py`` sets it beside the triggers' former paramiko look).
2. **tiny**: a 20-offence supply (the smallest ``demo_data`` makes) from the sensor's start to the report's end.
3. **N offences**: ``demo_data`` makes the supply in a child process (so its text never counts in the DAG's
   memory; over 1M offences, a million at a time into files: ``PART``), which encrypts, signs and uploads it with
   its metadata file; then the DAG runs. Per task: wall time
   (the task instance's start and end), rows per second (the supply's data rows, all three files, over the task's
   wall time) and memory: the RSS of this process, where ``dag.test`` runs every task, every 20 ms, plus the
   memory of its children, the processes a stage forks for a large supply's files (``file_workers.py``), each of
   their pages counted once: the anonymous memory charged to a memory cgroup they join as they start (as root,
   with cgroup v1 or v2's memory controller), else their private pages (``Private_Clean`` + ``Private_Dirty`` of
   ``/proc/<pid>/smaps_rollup``, every 250 ms, which slows them a little: ``ChildrenCgroup``). Pages they still
   share with this process count once, in its RSS. Each task shows the peak within its run and how much it rose over the
   memory at its start. (In a deployment each task is its own process: the rise is what the task itself needs;
   the peak also holds what earlier tasks left.)
4. **COPY**: the rows the run loaded are read back (``COPY ... TO STDOUT``, text format) and written again with
   ``COPY ... FROM STDIN`` into a scratch table with the same columns and no index (bare; three times, each into a
   fresh table, and the median counts: one COPY on a shared machine varies by a fifth from the next), then into one
   with the same indexes and constraints (``LIKE ... INCLUDING ALL``), in a scratch schema ``bench_e2e`` that is
   dropped after; only the COPY FROM and its commit are timed.

The last line reads ``marginal/COPY = R at N offences``, where the marginal cost is the N-offence run minus the
tiny run (both from the sensor's start to the report's end) and COPY is the bare COPY of the whole supply (the
median of three).

By default it uses the demo's services (``.run/observatory.yaml``: the database ``csp_observatory``, the SFTP tree
on port 2222), so that it neither waits for nor disturbs the integration tests; ``--config test`` uses the tests'
(``.run/test/observatory.yaml``: ``csp_observatory_test``, port 2223) and takes their machine-wide lock. Either
way Airflow runs with its own metadata database (``AIRFLOW_HOME=.run/bench/airflow``, migrated on first use), never
the one the tests' and the demo's ``dag.test`` runs share. Its period (``--period``, default 203001) is forgotten
before and after each run (rows, ledger, the partner's files of that period), so runs can be repeated.

    . .run/airflow.env && .venv/bin/python benchmarks/end_to_end.py                    # 100k, then 1M
    . .run/airflow.env && .venv/bin/python benchmarks/end_to_end.py --offences 1000000
    . .run/airflow.env && .venv/bin/python benchmarks/end_to_end.py --offences 10000000   # 26 min, 45 GB of disk
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

FEED = "police_recorded_crime"
TINY = 20
CONFIGS = {"test": REPO / ".run" / "test" / "observatory.yaml", "demo": REPO / ".run" / "observatory.yaml"}
STAGES = ("wait_for_supply", "collect", "decrypt_and_verify", "parse_and_validate", "clean", "geocode", "sanitise",
          "load", "report_and_archive")


def _own_airflow_home() -> None:
    """A metadata database of the benchmark's own (SQLite), so its dag.test runs never meet another's."""
    home = REPO / ".run" / "bench" / "airflow"
    os.environ["AIRFLOW_HOME"] = str(home)
    if not (home / "airflow.db").exists():
        home.mkdir(parents=True, exist_ok=True)
        print(f"migrating Airflow's metadata database in {home} (once) ...", file=sys.stderr, flush=True)
        subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True,
                       stdout=subprocess.DEVNULL)


def _use_config(name: str) -> None:
    """Point this process (and its children) at one set of services, before anything reads the settings."""
    import yaml

    path = CONFIGS[name]
    os.environ["CSP_CONFIG"] = str(path)
    url = (yaml.safe_load(path.read_text()) or {}).get("database_url")
    if url:
        os.environ["CSP_DATABASE_URL"] = url
    # Before the DAG file is parsed: a sensor that looks every second and gives up after two minutes.
    os.environ.setdefault("CSP_SENSOR_POKE_S", "1")
    os.environ.setdefault("CSP_SENSOR_TIMEOUT_S", "120")
    os.environ.setdefault("CSP_RETRY_DELAY_S", "1")


@contextmanager
def _tests_lock(name: str) -> Iterator[None]:
    """The integration tests' lock (csp_observatory.services_lock), when this run uses the tests' services."""
    from csp_observatory import services_lock

    if name != "test":
        yield
        return
    with services_lock.hold(3600, lambda holder: print(
            f"waiting for the integration tests' lock {services_lock.LOCK_FILE} (pid {holder}) ...",
            file=sys.stderr, flush=True)):
        yield


# --- the partner's side, in a child process ---------------------------------------------------------------------

#: Offences made at once: a larger supply is made in parts of this many, each written to its files as it is made.
#: The generator holds a part's columns and CSV text (a 10M supply made at once passed 17 GB before it was stopped).
PART = 1_000_000


def drop(n: int, period: str) -> dict[str, Any]:
    """Make an N-offence supply, encrypt, sign and upload it; return the timings and the data rows per file."""
    from csp_observatory import demo, demo_data, postcodes_sources
    from csp_observatory.config import load_settings
    from csp_observatory.schema_loading import schema_for

    settings, schema = load_settings(), schema_for(FEED)
    reference = postcodes_sources.shipped_reference()
    live = reference[~reference["terminated"]]
    if n > PART:
        return _drop_in_parts(n, period, settings, schema, live)
    started = time.perf_counter()
    made = demo_data.make_police_recorded_crime(period, live, n_offences=n)
    generated = time.perf_counter() - started
    rows = {name: text.count("\n") - 1 for name, text in made.files.items()}
    started = time.perf_counter()
    demo.drop_demo_supply(settings, schema, period, files=made.files)
    return {"generate_s": generated, "encrypt_upload_s": time.perf_counter() - started, "rows": rows,
            "bytes": sum(len(t) for t in made.files.values())}


def _drop_in_parts(n: int, period: str, settings: Any, schema: Any, live: Any) -> dict[str, Any]:
    """:func:`drop` for a supply larger than :data:`PART`: made a part at a time (each its own seed, its crime
    references numbered on from the last part's) into files on disk, which are encrypted and uploaded from there;
    the metadata file counts their rows."""
    import tempfile

    from csp_observatory import demo, demo_data, fixtures

    generated = 0.0
    rows: dict[str, int] = {}
    headers: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="csp-e2e-") as tmp:
        paths = {f.name: Path(tmp) / f"{f.name}.csv" for f in schema.files}
        outs = {name: open(path, "w", encoding="utf-8", newline="") for name, path in paths.items()}
        try:
            for part, first in enumerate(range(0, n, PART)):
                started = time.perf_counter()
                made = demo_data.make_police_recorded_crime(period, live, n_offences=min(PART, n - first),
                                                            seed=demo_data.DEFAULT_SEED + part,
                                                            first_offence=first + 1)
                generated += time.perf_counter() - started
                for name, text in made.files.items():
                    header, _, body = text.partition("\n")
                    if part == 0:
                        headers[name] = header + "\n"
                        outs[name].write(headers[name])
                    outs[name].write(body)
                    rows[name] = rows.get(name, 0) + body.count("\n")
                del made
        finally:
            for fh in outs.values():
                fh.close()
        metadata = fixtures.make_metadata(schema, period, headers, records=rows)
        started = time.perf_counter()
        demo.drop_demo_supply(settings, schema, period, files=paths, metadata=metadata)
        return {"generate_s": generated, "encrypt_upload_s": time.perf_counter() - started, "rows": rows,
                "bytes": sum(p.stat().st_size for p in paths.values()), "parts": -(-n // PART)}


def _child(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- fixed costs, each in a fresh process -----------------------------------------------------------------------

def fixed_cost(what: str) -> dict[str, Any]:
    """One of the fixed costs, timed in this (fresh) process."""
    started = time.perf_counter()
    if what == "parse":
        from airflow.dag_processing.dagbag import DagBag

        imported = time.perf_counter() - started
        bag = DagBag(dag_folder=str(REPO / "dags"))
        return {"import_airflow_s": imported, "parse_s": time.perf_counter() - started - imported,
                "dags": len(bag.dags), "errors": len(bag.import_errors)}
    if what == "gx":
        import great_expectations  # noqa: F401

        return {"import_s": time.perf_counter() - started}
    if what == "look":
        import asyncio

        from csp_observatory import arrival

        imported = time.perf_counter() - started
        # the triggers' look: through the Airflow Connection csp_sftp, made here from this run's settings
        from csp_observatory import connections
        from csp_observatory.config import load_settings

        connections.ensure_env(load_settings())
        found = asyncio.run(arrival.look(FEED, {}))
        first = time.perf_counter() - started - imported
        again = time.perf_counter()
        asyncio.run(arrival.look(FEED, found.sizes))
        return {"import_s": imported, "first_look_s": first, "next_look_s": time.perf_counter() - again,
                "periods": found.periods}
    raise ValueError(what)


# --- the observatory's side: the DAG run, measured --------------------------------------------------------------

class ChildrenCgroup:
    """A memory cgroup that each process this one forks joins as it starts (``os.register_at_fork``).

    A page is charged to the cgroup of the process that allocates it, or copies it on write: the anonymous memory
    charged to this one is the pages the children own, each counted once, and the pages they still share with this
    process stay in its RSS. Reading that is one small file (``memory.stat``), where summing each child's private
    pages (``smaps_rollup``) walks its page tables under its memory map's lock, and slowed the children by a tenth
    to a fifth even read every 250 ms (measured). Needs root and a memory controller: cgroup v1's, or v2's with
    ``memory`` in the root's ``cgroup.subtree_control``; :meth:`make` returns None otherwise.
    """

    def __init__(self, path: Path, key: str) -> None:
        self.path, self._key, self._open = path, key, True
        os.register_at_fork(after_in_child=self._join)      # (hooks cannot be removed: close() disarms it)

    @classmethod
    def make(cls) -> "ChildrenCgroup | None":
        name = f"csp-bench-children-{os.getpid()}"
        try:
            own = Path("/proc/self/cgroup").read_text(encoding="ascii").splitlines()
            v1 = [line.split(":", 2)[2] for line in own if "memory" in line.split(":", 2)[1].split(",")]
            if v1:
                base, key = Path("/sys/fs/cgroup/memory") / v1[0].lstrip("/"), "rss"
            elif "memory" in (Path("/sys/fs/cgroup") / "cgroup.subtree_control").read_text(encoding="ascii").split():
                base, key = Path("/sys/fs/cgroup"), "anon"
            else:
                return None
            (base / name).mkdir(exist_ok=True)
        except (OSError, IndexError):
            return None
        return cls(base / name, key)

    def _join(self) -> None:
        if self._open:
            try:
                (self.path / "cgroup.procs").write_text(str(os.getpid()), encoding="ascii")
            except OSError:
                pass

    def anon(self) -> int:
        """Bytes of anonymous memory charged to the children now."""
        with open(self.path / "memory.stat", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key == self._key:
                    return int(value)
        return 0

    def close(self) -> None:
        self._open = False
        try:
            self.path.rmdir()
        except OSError:         # a child still in it: the cgroup goes when the machine restarts
            pass


class RssSampler(threading.Thread):
    """This process's RSS plus its children's own memory every ``every`` seconds, as (time.time(), bytes).

    The children's memory is that charged to a :class:`ChildrenCgroup` where one can be made, else the private
    pages of each (``smaps_rollup``), read every ``children_every`` seconds only (see that class)."""

    def __init__(self, every: float = 0.02, children_every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.every, self.samples, self._halt = every, [], threading.Event()
        self.children_every = children_every
        self.cgroup = ChildrenCgroup.make()
        self._page = os.sysconf("SC_PAGE_SIZE")

    @property
    def method(self) -> str:
        """How the children's memory is read, for the printout."""
        return (f"anonymous memory charged to the cgroup {self.cgroup.path} that they join" if self.cgroup
                else f"Private_Clean + Private_Dirty of each one's smaps_rollup, every {self.children_every:g} s")

    @staticmethod
    def _children() -> list[int]:
        pids: list[int] = []
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/children", encoding="ascii") as fh:
                    pids.extend(int(p) for p in fh.read().split())
            except OSError:         # a thread that ended while listed
                continue
        return pids

    @staticmethod
    def _private(pid: int) -> int:
        """A process's pages that no other process maps (copied on write, or its own), in bytes."""
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
                return 1024 * sum(int(line.split()[1]) for line in fh
                                  if line.startswith(("Private_Clean:", "Private_Dirty:")))
        except OSError:             # it ended meanwhile
            return 0

    def run(self) -> None:
        private: dict[int, tuple[float, int]] = {}      # child -> (when read, bytes)
        with open("/proc/self/statm", encoding="ascii") as statm:
            while not self._halt.is_set():
                statm.seek(0)
                own = int(statm.read().split()[1]) * self._page
                now = time.time()
                if self.cgroup is not None:
                    children = self.cgroup.anon()
                else:
                    # the children listed now (one that has ended counts no more), each read again every 250 ms
                    private = {pid: private[pid] if pid in private and now - private[pid][0] < self.children_every
                               else (now, self._private(pid)) for pid in self._children()}
                    children = sum(b for _, b in private.values())
                self.samples.append((now, own + children))
                time.sleep(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        if self.cgroup is not None:
            self.cgroup.close()

    def window(self, start: float, end: float) -> tuple[int, int]:
        """(memory at the start, peak memory) between two times."""
        inside = [r for t, r in self.samples if start <= t <= end] or [0]
        before = [r for t, r in self.samples if t <= start] or inside
        return before[-1], max(inside)


def forget(settings: Any, period: str) -> None:
    """Remove a period's supply: its rows, the observatory's records of it, its files in the partner's folders and
    its staging folder."""
    import psycopg2
    from psycopg2 import sql

    from csp_observatory import partitions, sftp
    from csp_observatory.schema_loading import schema_for

    logging.getLogger("paramiko").setLevel(logging.WARNING)
    schema = schema_for(FEED)
    supply_id = f"{FEED}/{period}"
    with closing(psycopg2.connect(settings.database_url)) as conn, conn.cursor() as cur:
        # The supply's partitions dropped, as a re-send that brought nothing would (a DELETE of their rows left
        # each partition's files on disk at full size: 13 GB after a 10M run).
        for f in schema.files:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema.db_schema}.{f.table}",))
            if cur.fetchone()[0]:
                partitions.swap(cur, schema.db_schema, f.table, supply_id, None)
        partitions.drop_unattached(cur, schema.db_schema, [f.table for f in schema.files], supply_id)
        for table in ["observatory.deliveries", "observatory.supplies", "observatory.rejected_rows",
                      "observatory.validation_results", "observatory.supply_metadata"]:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
            if cur.fetchone()[0]:
                cur.execute(sql.SQL("DELETE FROM {} WHERE supply_id = %s").format(
                    sql.Identifier(*table.split("."))), (supply_id,))
        conn.commit()
    shutil.rmtree(Path(settings.staging_dir) / FEED / period, ignore_errors=True)     # what a killed run left
    with sftp.connect_observatory(settings) as client:
        for sub in ("inbox", "quarantine", "processed", "reports"):
            folder = settings.partner_folder(schema.partner.id, sub)
            for name in client.listdir(folder):
                if period in name:
                    client.remove(f"{folder}/{name}")


def run_dag(settings: Any, sampler: RssSampler, log_path: Path) -> dict[str, Any]:
    """Run the feed's DAG once; per task: state, wall time, RSS at its start and its peak."""
    from csp_observatory import demo

    with demo._stdout_to(log_path):
        run = demo.run_feed_dag(FEED, check=False)
    tasks = {}
    for ti in run.get_task_instances():
        if ti.start_date is None or ti.end_date is None:
            tasks[ti.task_id] = {"state": str(ti.state)}
            continue
        start, end = ti.start_date.timestamp(), ti.end_date.timestamp()
        at_start, peak = sampler.window(start, end)
        tasks[ti.task_id] = {"state": str(ti.state), "start": start, "end": end, "wall_s": end - start,
                             "rss_start": at_start, "rss_peak": peak}
    first, last = tasks.get("wait_for_supply", {}), tasks.get("report_and_archive", {})
    total = last["end"] - first["start"] if "start" in first and "end" in last else float("nan")
    return {"state": str(run.state), "tasks": tasks, "total_s": total}


def copy_same_rows(settings: Any, period: str, repeats: int = 3) -> dict[str, Any]:
    """COPY the supply's loaded rows into a bare table (``repeats`` times, each into a fresh table: the median is the
    figure, a shared machine's COPY varies by a fifth from one to the next) and once into one with the same indexes;
    seconds and rows."""
    import psycopg2
    from psycopg2 import sql

    from csp_observatory.ddl import FID_COLUMN, natural_key
    from csp_observatory.schema_loading import schema_for

    schema = schema_for(FEED)
    I = sql.Identifier  # noqa: E741
    out: dict[str, Any] = {"bare_runs": [0.0] * repeats, "indexed_s": 0.0, "rows": 0, "mb": 0.0}
    with closing(psycopg2.connect(settings.database_url)) as conn, conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS bench_e2e CASCADE; CREATE SCHEMA bench_e2e")
        conn.commit()
        try:
            for f in schema.files:
                cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                            "AND table_name = %s AND column_name <> %s ORDER BY ordinal_position",
                            (schema.db_schema, f.table, FID_COLUMN))
                cols = sql.SQL(", ").join(I(r[0]) for r in cur.fetchall())
                buf = io.BytesIO()
                cur.copy_expert(sql.SQL("COPY (SELECT {} FROM {} WHERE supply_id = {}) TO STDOUT").format(
                    cols, I(schema.db_schema, f.table), sql.Literal(f"{FEED}/{period}")).as_string(cur), buf)
                out["mb"] += buf.tell() / 1e6
                cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE supply_id = %s").format(
                    I(schema.db_schema, f.table)), (f"{FEED}/{period}",))
                out["rows"] += cur.fetchone()[0]
                # fid from the table's sequence (its default); the indexed copy also gets the record key, which is
                # each partition's (partitions.py), not the parent's.
                for kind, like, run in [*(("bare", "INCLUDING DEFAULTS", r) for r in range(repeats)),
                                        ("indexed", "INCLUDING ALL", 0)]:
                    target = I("bench_e2e", f"{kind}_{f.table}")
                    cur.execute(sql.SQL("CREATE TABLE {} (LIKE {} " + like + ")").format(
                        target, I(schema.db_schema, f.table)))
                    if kind == "indexed":
                        cur.execute(sql.SQL("ALTER TABLE {} ADD UNIQUE ({})").format(
                            target, sql.SQL(", ").join(I(c) for c in natural_key(f))))
                    conn.commit()
                    buf.seek(0)
                    started = time.perf_counter()
                    cur.copy_expert(sql.SQL("COPY {} ({}) FROM STDIN").format(target, cols).as_string(cur), buf)
                    conn.commit()
                    if kind == "bare":
                        out["bare_runs"][run] += time.perf_counter() - started
                    else:
                        out["indexed_s"] += time.perf_counter() - started
                    cur.execute(sql.SQL("DROP TABLE {}").format(target))     # the disk back before the next
                    conn.commit()
        finally:
            conn.rollback()
            cur.execute("DROP SCHEMA IF EXISTS bench_e2e CASCADE")
            conn.commit()
    out["bare_s"] = statistics.median(out["bare_runs"])
    return out


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def measure(n: int, period: str, settings: Any, sampler: RssSampler, log_path: Path,
            tiny: dict[str, Any]) -> float:
    """Drop and run an N-offence supply; print its table and the COPY comparison; return marginal/COPY."""
    from csp_observatory import demo

    forget(settings, period)
    dropped = _child("--drop", str(n), "--period", period)
    rows = sum(dropped["rows"].values())
    print(f"\n## {n:,} offences ({rows:,} data rows: {dropped['rows']}, {dropped['bytes'] / 1e6:.0f} MB of CSV)")
    parts = f" (in {dropped['parts']} parts of {PART:,} offences)" if dropped.get("parts") else ""
    print(f"demo_data made them in {dropped['generate_s']:.2f} s{parts}; encrypting, signing and uploading took "
          f"{dropped['encrypt_upload_s']:.2f} s", flush=True)
    started = time.time()
    result = run_dag(settings, sampler, log_path)
    report = demo.latest_report(settings, FEED, period, since=started)
    level = json.loads(report.read_text())["outcome"]["level"] if report else "no report"
    loaded = json.loads(report.read_text()).get("summary", {}).get("rows_loaded") if report else None
    print(f"run {result['state']} (amber or red fails the run by design), supply {level}; rows loaded: {loaded}")
    print("| task | state | wall s | rows/s | memory at start | peak memory | rise |")
    print("|---|---|---|---|---|---|---|")
    for task_id in (*STAGES, "verdict", "stage_failed"):
        t = result["tasks"].get(task_id, {})
        if "wall_s" not in t or t.get("state") == "skipped":
            print(f"| {task_id} | {t.get('state', '-')} | - | - | - | - | - |")
            continue
        rate = rows / t["wall_s"] if t["wall_s"] > 0 else float("inf")
        print(f"| {task_id} | {t['state']} | {t['wall_s']:.2f} | {rate:,.0f} | {_gb(t['rss_start'])} | "
              f"{_gb(t['rss_peak'])} | {_gb(t['rss_peak'] - t['rss_start'])} |")
    total = result["total_s"]
    print(f"| sensor start to report end | | {total:.2f} | {rows / total:,.0f} | | "
          f"{_gb(max(t.get('rss_peak', 0) for t in result['tasks'].values()))} | |")
    slowest = max((t for t in STAGES if "wall_s" in result["tasks"].get(t, {})),
                  key=lambda t: result["tasks"][t]["wall_s"])
    print(f"slowest stage: {slowest} ({result['tasks'][slowest]['wall_s']:.2f} s)")
    copied = copy_same_rows(settings, period)
    marginal = total - tiny["total_s"]
    runs = ", ".join(f"{t:.2f}" for t in copied["bare_runs"])
    print(f"COPY of the same {copied['rows']:,} loaded rows ({copied['mb']:.0f} MB as text), same database, same run: "
          f"bare {copied['bare_s']:.2f} s (median of {runs}), with the same indexes {copied['indexed_s']:.2f} s")
    print(f"marginal cost: {total:.2f} s - {tiny['total_s']:.2f} s (tiny supply) = {marginal:.2f} s; "
          f"load task / bare COPY = {result['tasks']['load']['wall_s'] / copied['bare_s']:.2f}")
    forget(settings, period)
    return marginal / copied["bare_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--offences", type=int, action="append",
                        help="supply size (repeatable); default 100000 and 1000000")
    parser.add_argument("--period", default="203001", help="the supply's period (forgotten before and after)")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="demo")
    parser.add_argument("--drop", type=int, help=argparse.SUPPRESS)           # child: make and upload N offences
    parser.add_argument("--fixed", help=argparse.SUPPRESS)                    # child: time one fixed cost
    args = parser.parse_args(argv)
    if args.drop or args.fixed:
        _use_config(os.environ.get("CSP_BENCH_CONFIG", "demo"))
        print(json.dumps(drop(args.drop, args.period) if args.drop else fixed_cost(args.fixed), default=str))
        return 0

    os.environ["CSP_BENCH_CONFIG"] = args.config
    _use_config(args.config)
    _own_airflow_home()
    from csp_observatory.config import load_settings

    with _tests_lock(args.config):
        settings = load_settings()
        from csp_observatory import demo

        print(f"# End to end, feed {FEED}, services: {args.config} ({CONFIGS[args.config].name}), "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(f"reference: {demo.ensure_reference(settings)}")
        forget(settings, args.period)
        parse, gx, look = _child("--fixed", "parse"), _child("--fixed", "gx"), _child("--fixed", "look")
        print(f"fixed costs, each in a fresh process: import Airflow {parse['import_airflow_s']:.2f} s, parse dags/ "
              f"{parse['parse_s']:.2f} s ({parse['dags']} DAGs); import Great Expectations {gx['import_s']:.2f} s; "
              f"a poll that finds nothing (arrival.look): imports {look['import_s']:.2f} s, first look "
              f"{look['first_look_s']:.2f} s, next look {look['next_look_s']:.2f} s", flush=True)
        log_path = Path(settings.staging_dir).parent / "logs" / "bench-end-to-end.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        sampler = RssSampler()
        sampler.start()
        print(f"memory: this process's RSS every {sampler.every:g} s, plus its children's: {sampler.method}",
              flush=True)
        try:
            _child("--drop", str(TINY), "--period", args.period)
            cold = run_dag(settings, sampler, log_path)         # the first run in this process: Airflow warms up
            forget(settings, args.period)
            print(f"tiny supply ({TINY} offences), first run in this process (imports, DAG parse, GX): sensor start "
                  f"to report end {cold['total_s']:.2f} s", flush=True)
            _child("--drop", str(TINY), "--period", args.period)
            tiny = run_dag(settings, sampler, log_path)
            forget(settings, args.period)
            walls = ", ".join(f"{k} {v['wall_s']:.2f}" for k, v in tiny["tasks"].items() if "wall_s" in v)
            print(f"tiny supply ({TINY} offences), second run: sensor start to report end {tiny['total_s']:.2f} s ({walls})",
                  flush=True)
            ratios = {n: measure(n, args.period, settings, sampler, log_path, tiny)
                      for n in (args.offences or [100_000, 1_000_000])}
        finally:
            sampler.stop()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"\nmax RSS of this process (all runs): {peak:.2f} GB; Airflow's log: {log_path}")
        for n, ratio in ratios.items():
            print(f"marginal/COPY = {ratio:.2f} at {n} offences")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
