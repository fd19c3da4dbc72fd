"""A large supply loaded on two connections (``loading.split_files``): the largest file on the load's own, the others
built on a second one in the loading schema, committed there, and moved and attached in the load's transaction.

The supplies here are small, given a second connection as a large one is (``pipeline_load``); the rows,
keys, indexes and readers must be what one connection gives, and a failure on either connection, or after the
second committed, must leave the earlier load whole and nothing in the loading schema.
"""
from __future__ import annotations

from contextlib import closing, contextmanager
from typing import Iterator

import psycopg2
import pytest

from csp_observatory import file_workers, loading, partitions
from csp_observatory.schema import FeedSchema

from test_loading import (PERIOD, _count, _frames, _lineage, _partition_indexes, _partitions, _rejected,
                          _validation)
from test_loading import conn, db_url, feed  # noqa: F401  (the loading tests' fixtures)

pytestmark = pytest.mark.integration

SUPPLY_SUFFIX = f"/{PERIOD}"


@pytest.fixture(autouse=True)
def two_cores(monkeypatch):
    monkeypatch.setattr(file_workers, "usable_cores", lambda: 2)


@pytest.fixture()
def connect(db_url):
    opened: list[int] = []

    @contextmanager
    def second() -> Iterator[psycopg2.extensions.connection]:
        with closing(psycopg2.connect(db_url)) as other:
            opened.append(other.get_backend_pid())
            yield other

    second.opened = opened
    return second


def _load(conn, feed: FeedSchema, frames, connect=None, in_transaction=None, lineage=None):
    return loading.load_supply(conn, feed, f"{feed.feed}{SUPPLY_SUFFIX}", PERIOD, frames, lineage or _lineage(feed),
                               rejected=_rejected(), validation=_validation(), connect=connect,
                               in_transaction=in_transaction)


def _rows(conn, feed: FeedSchema) -> dict[str, list[tuple]]:
    """Every loaded row of each table, but its fid and loaded_at, in a stable order."""
    out = {}
    with conn.cursor() as cur:
        for f in feed.files:
            cur.execute(psycopg2.sql.SQL("SELECT * FROM {} LIMIT 0").format(
                psycopg2.sql.Identifier(feed.db_schema, f.table)))
            columns = [d.name for d in cur.description if d.name not in ("fid", "loaded_at", "geom")]
            cur.execute(psycopg2.sql.SQL("SELECT {}, ST_AsText(geom) FROM {}").format(
                psycopg2.sql.SQL(", ").join(psycopg2.sql.Identifier(c) for c in columns),
                psycopg2.sql.Identifier(feed.db_schema, f.table)))
            out[f.name] = sorted(cur.fetchall(), key=repr)
    conn.rollback()
    return out


def _readers(conn, feed: FeedSchema) -> dict[str, set[str]]:
    """Each partition's readers among the observatory's roles."""
    out = {}
    with conn.cursor() as cur:
        for f in feed.files:
            for part in _partitions(conn, feed, f.table):
                cur.execute("SELECT array_agg(rolname ORDER BY rolname) FROM pg_roles WHERE rolname LIKE 'csp\\_%%' "
                            "AND has_table_privilege(oid, %s::regclass, 'SELECT')", (f"{feed.db_schema}.{part}",))
                out[f.name] = set(cur.fetchone()[0] or [])
    conn.rollback()
    return out


def _unattached(conn, feed: FeedSchema) -> list[str]:
    """This test's feed's tables in the loading schema."""
    names = _unattached_in(conn, feed)
    conn.rollback()
    return names


def _unattached_in(c, feed: FeedSchema) -> list[str]:
    tables = tuple(f.table for f in feed.files)
    with c.cursor() as cur:
        cur.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relkind = 'r'", (partitions.LOADING_SCHEMA,))
        return [r[0] for r in cur.fetchall() if r[0].startswith(tables)]


def test_the_smaller_files_go_on_a_second_connection_when_there_is_one_and_two_cores(monkeypatch):
    counts = {"offences": 1000, "offenders": 800, "victims": 1200}
    assert loading.split_files(counts) == (["victims"], ["offences", "offenders"])
    assert loading.split_files({**counts, "victims": 0}) == (["offences"], ["offenders"])
    assert loading.split_files({"offences": 5, "offenders": 0}) == (["offences"], [])
    assert loading.split_files(counts, second=False) == (["victims", "offences", "offenders"], [])
    monkeypatch.setattr(file_workers, "usable_cores", lambda: 1)
    assert loading.split_files(counts) == (["victims", "offences", "offenders"], [])


def test_two_connections_load_what_one_loads_with_the_same_keys_indexes_and_readers(conn, feed, connect):
    frames = _frames(feed, 40)      # victims (40) on the load's connection, offences and offenders on the second
    frames["offences"], frames["offenders"] = frames["offences"].iloc[:30], frames["offenders"].iloc[:20]
    lineage = _lineage(feed)
    one = _load(conn, feed, frames, lineage=lineage)
    rows_one, readers_one = _rows(conn, feed), _readers(conn, feed)
    two = _load(conn, feed, frames, connect=connect, lineage=lineage)     # the same supply again: it replaces
    assert len(connect.opened) == 1 and connect.opened[0] != conn.get_backend_pid()
    assert two.rows == one.rows and sum(two.replaced.values()) == sum(one.rows.values())
    assert _rows(conn, feed) == rows_one and _readers(conn, feed) == readers_one
    assert readers_one and all(readers_one.values())                # the partitions have readers to compare
    assert _unattached(conn, feed) == []
    with conn.cursor() as cur:
        for f in feed.files:
            (part,) = _partitions(conn, feed, f.table)
            cur.execute("SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE c.relname = %s", (part,))
            assert cur.fetchall() == [(feed.db_schema,)]
            assert _partition_indexes(cur, feed, part) == [
                (f"{part}_geom_gist", f"{f.table}_geom_gist"), (f"{part}_pkey", f"{f.table}_pkey"),
                (f"{part}_supply_key", None)]
            cur.execute("SELECT reltuples > 0 FROM pg_class WHERE oid = %s::regclass", (f"{feed.db_schema}.{part}",))
            assert cur.fetchone() == (True,)                          # analysed before it was moved
    conn.rollback()


def test_a_repeated_record_on_the_second_connection_stops_the_whole_load(conn, feed, connect):
    _load(conn, feed, _frames(feed, 10), connect=connect)
    before = _rows(conn, feed)
    dup = {k: v.copy() for k, v in _frames(feed, 12).items()}
    # offenders is not the largest file: it goes on the second connection
    assert loading.split_files({k: len(v) for k, v in dup.items()})[1].count("offenders") == 1
    dup["offenders"].loc[3, ["crime_reference", "offender_reference"]] = dup["offenders"].loc[
        2, ["crime_reference", "offender_reference"]].to_list()
    with pytest.raises(psycopg2.errors.UniqueViolation, match="_supply_key"):
        _load(conn, feed, dup, connect=connect)
    assert _rows(conn, feed) == before and _unattached(conn, feed) == []


def test_a_failure_after_the_second_connection_committed_drops_its_tables(conn, feed, connect):
    _load(conn, feed, _frames(feed, 10), connect=connect)
    before = _rows(conn, feed)
    seen: list[list[str]] = []

    def fail(c) -> None:            # in the load's transaction, after every partition was moved and attached
        seen.append(_unattached_in(c, feed))
        raise RuntimeError("the catalogue could not be written")

    with pytest.raises(RuntimeError, match="catalogue"):
        _load(conn, feed, _frames(feed, 14), connect=connect, in_transaction=fail)
    assert seen == [[]]             # nothing was left in the loading schema inside the transaction either
    assert _rows(conn, feed) == before and _unattached(conn, feed) == []
    assert all(len(_partitions(conn, feed, f.table)) == 1 for f in feed.files)


def test_a_failure_on_the_load_connection_stops_the_second_and_leaves_nothing(conn, feed, connect, monkeypatch):
    _load(conn, feed, _frames(feed, 10), connect=connect)
    before = _rows(conn, feed)
    real = loading._prepare

    def prepare(schema, file_name, *args):
        if file_name == "victims":  # the largest file: the load's own connection
            raise RuntimeError("the victims frame could not be read")
        return real(schema, file_name, *args)

    monkeypatch.setattr(loading, "_prepare", prepare)
    frames = _frames(feed, 14)
    frames["victims"] = _frames(feed, 20)["victims"]
    with pytest.raises(RuntimeError, match="victims frame could not be read"):
        _load(conn, feed, frames, connect=connect)
    assert _rows(conn, feed) == before and _unattached(conn, feed) == []


def test_what_a_killed_load_left_unattached_is_dropped_by_the_next(conn, feed, connect, db_url):
    supply_id = f"{feed.feed}{SUPPLY_SUFFIX}"
    table = feed.file("offenders").table
    # a partition the second connection committed before its load was killed: in the loading schema, marked
    with closing(psycopg2.connect(db_url)) as other, other.cursor() as cur:
        left = partitions.stage(cur, feed.db_schema, table, 3, supply_id, into=partitions.LOADING_SCHEMA)
        cur.execute(f"COMMENT ON TABLE {left.where(feed.db_schema)} IS %s",
                    (partitions.partition_comment(feed.db_schema, table, supply_id),))
        other.commit()
    assert left.name in _unattached(conn, feed)
    _load(conn, feed, _frames(feed, 10), connect=connect)
    assert left.name not in _unattached(conn, feed) and _unattached(conn, feed) == []
    assert _count(conn, feed)[table] == 10
