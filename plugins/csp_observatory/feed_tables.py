"""Each feed's tables in PostGIS: made, extended or migrated from the feed schema (:func:`ensure_feed_tables`).

A feed table is partitioned by ranges of ``fid``, one partition per supply (``partitions.py``: each load fills and
indexes a fresh table, then attaches it). A record's own key within its supply (``supply_id`` and the schema's key
columns) is a ``UNIQUE`` constraint on NOT NULL columns of its partition (``<partition>_supply_key``; PostgreSQL
allows no unique key without fid on the parent), so a repeated record is refused as it always was. An older
unpartitioned table, or one whose schema's key changed, is migrated in place, every row kept. The columns come
from ``ddl.py``; a layer's counts table from ``ward_month.py``. Nothing here commits.
"""
from __future__ import annotations

from typing import Any

from psycopg2 import sql

from csp_observatory import partitions
from csp_observatory.ddl import (FID_COLUMN, NOT_NULL_COLUMNS, Column, comment_for, lock, natural_key,
                                 table_columns, table_schema)
from csp_observatory.schema import CONTENT_KEY_COLUMN, FeedFile, FeedSchema
from csp_observatory.ward_month import ensure_ward_month, has_ward_month, refresh_one, ward_month_table


def _key_name(table: str) -> str:
    return f"{table}_supply_key"


def _constraint(cur: Any, db_schema: str, table: str, contype: str, name: str | None = None) -> list[str]:
    """The columns, in order, of a table's primary key (``contype`` 'p') or of its unique constraint ``name``
    ('u'); [] if there is none or the table does not exist."""
    cur.execute("""SELECT a.attname FROM pg_constraint c
                   CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
                   JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
                   WHERE c.conrelid = to_regclass(%s) AND c.contype = %s AND (%s::text IS NULL OR c.conname = %s)
                   ORDER BY k.ord""", (f'"{db_schema}"."{table}"', contype, name, name))
    return [r[0] for r in cur.fetchall()]


def primary_key(cur: Any, db_schema: str, table: str) -> list[str]:
    """The primary key columns of a table, in order ([] if it has none or does not exist)."""
    return _constraint(cur, db_schema, table, "p")


def _unique_key(cur: Any, db_schema: str, table: str) -> list[str]:
    """The columns of a table's ``<table>_supply_key`` constraint, in order ([] if it has none); of a partitioned
    table, its partitions' record key (:func:`record_key`)."""
    if partitions.is_partitioned(cur, db_schema, table):
        return partitions.record_key(cur, db_schema, table)
    return _constraint(cur, db_schema, table, "u", _key_name(table))


def _migrate_keys(cur: Any, db_schema: str, feed_file: FeedFile, pk: list[str], unique: list[str],
                  table: str | None = None, parent: str | None = None) -> None:
    """Give an existing table the keys it has now: ``fid`` as its primary key, and the key its schema declares
    (e.g. a file that moved to ``key: content``) as ``<table>_supply_key``, in place, every row kept.

    A table from before ``fid`` had its natural key as the primary key: that becomes the unique constraint and an
    identity ``fid`` numbers the rows already there. Rows loaded before a move to a content key get a
    ``migrated-`` key from their stored values; a re-sent supply replaces them with its own keys. ``table``: a
    partition of the feed table ``parent`` (which alone may change what is NOT NULL); else the feed table itself.
    """
    I = sql.Identifier  # noqa: E741
    want = natural_key(feed_file)
    have = unique if pk == [FID_COLUMN] else pk       # the natural key the table has now
    name = table or feed_file.table
    target, columns_of = I(db_schema, name), I(db_schema, parent or name)
    if have != want and feed_file.content_key:
        cur.execute(sql.SQL(
            "UPDATE {t} SET {k} = m.k FROM (SELECT ctid AS id, 'migrated-' || md5(x::text) || '-' || "
            "row_number() OVER (PARTITION BY md5(x::text)) AS k FROM {t} x WHERE {k} IS NULL) m "
            "WHERE {t}.ctid = m.id").format(t=target, k=I(CONTENT_KEY_COLUMN)))
    if pk != [FID_COLUMN]:
        # Numbers the rows already there (PostgreSQL fills an identity column added to a table that has rows).
        cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} bigint GENERATED ALWAYS AS IDENTITY")
                    .format(target, I(FID_COLUMN)))
        if pk:
            cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(target, I(f"{name}_pkey")))
        cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
            target, I(f"{name}_pkey"), I(FID_COLUMN)))
    if unique != want:
        if unique:
            cur.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(target, I(_key_name(name))))
        # A column leaving the key keeps the NOT NULL the key gave it: drop that too (it may now be optional).
        for column in sorted(set(have) - set(want) - NOT_NULL_COLUMNS):
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(columns_of, I(column)))
        for column in want:
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(columns_of, I(column)))
        cur.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} UNIQUE ({})").format(
            target, I(_key_name(name)), sql.SQL(", ").join(I(c) for c in want)))


def _relkind(cur: Any, db_schema: str, table: str) -> str | None:
    """'r' for a plain table, 'p' for a partitioned one, None if there is none."""
    cur.execute("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(%s)", (f'"{db_schema}"."{table}"',))
    row = cur.fetchone()
    return row[0] if row else None


def record_key(cur: Any, db_schema: str, table: str) -> list[str]:
    """The columns of a feed table's record key: its partitions' (``<partition>_supply_key``, each partition holds
    one supply), or an unpartitioned table's ``<table>_supply_key``."""
    return _unique_key(cur, db_schema, table)


def _migrate_partition_keys(cur: Any, db_schema: str, feed_file: FeedFile) -> None:
    """A partitioned table whose schema now declares another record key: each partition takes it, rows kept."""
    want = natural_key(feed_file)
    for part, have in partitions.partition_keys(cur, db_schema, feed_file.table).items():
        if have != want:
            # Which columns may be null is the parent's to say (a partition cannot drop its parent's NOT NULL).
            _migrate_keys(cur, db_schema, feed_file, [FID_COLUMN], have, table=part, parent=feed_file.table)


def _up_to_date(cur: Any, db_schema: str, feed_file: FeedFile, cols: list[Column], existing: set[str],
                counts: bool) -> bool:
    if not existing or not {c.name for c in cols} | {FID_COLUMN} <= existing:
        return False
    if _relkind(cur, db_schema, feed_file.table) != "p":
        return False
    if primary_key(cur, db_schema, feed_file.table) != [FID_COLUMN]:
        return False
    key = natural_key(feed_file)
    if any(k != key for k in partitions.partition_keys(cur, db_schema, feed_file.table).values()):
        return False
    if counts:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{db_schema}"."{ward_month_table(feed_file)}"',))
        return bool(cur.fetchone()[0])
    return True


def ensure_feed_tables(conn: Any, schema: FeedSchema) -> list[str]:
    """Create (or extend, or migrate) one partitioned table per file of a feed, with keys, indexes and comments;
    no commit. An older unpartitioned table becomes its first partition, rows and fids kept (partitions.py)."""
    I = sql.Identifier  # noqa: E741
    db_schema = table_schema(schema)
    made: list[str] = []
    with conn.cursor() as cur:
        lock(cur, f"feed.{schema.feed}")
        for f in schema.files:
            table = sql.Identifier(db_schema, f.table)
            cols = table_columns(schema, f)
            cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                        "AND table_name = %s", (db_schema, f.table))
            existing = {r[0] for r in cur.fetchall()}
            key = natural_key(f)
            counts = has_ward_month(schema, f)
            if _up_to_date(cur, db_schema, f, cols, existing, counts):
                # Up to date: take no lock stronger than a read, so analysts' open queries never block a load.
                continue
            if counts:
                cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{db_schema}"."{ward_month_table(f)}"',))
                counts_there = cur.fetchone()[0]
            if not existing:
                # fid last, so the datafields keep their places (the first column is the first datafield). The
                # record's key is each partition's (a unique key of the parent would have to include fid).
                col_defs = [sql.SQL("{} {}{}").format(I(c.name), sql.SQL(c.sql_type), sql.SQL(
                    " NOT NULL" if c.name in NOT_NULL_COLUMNS or c.name in key else "")).as_string(cur)
                    for c in cols]
                for text, params in partitions.parent_statements(db_schema, f.table, col_defs):
                    cur.execute(text, params or None)
            else:
                # A schema may gain datafields after its table exists: add them, never drop (old supplies keep
                # theirs). On a partitioned table, they reach every partition.
                for c in cols:
                    cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                        table, I(c.name), sql.SQL(c.sql_type)))
                if _relkind(cur, db_schema, f.table) == "r":
                    # An older observatory's table: bring its keys up to date, then it becomes a partition.
                    _migrate_keys(cur, db_schema, f, primary_key(cur, db_schema, f.table),
                                  _unique_key(cur, db_schema, f.table))
                    partitions.convert(cur, db_schema, f.table)
                else:
                    _migrate_partition_keys(cur, db_schema, f)
            title = f"{schema.title}: {f.title}. {f.description} (guidance section {schema.guidance_section}; " \
                    f"{schema.dataset_type}; partner {schema.partner.agency})"
            cur.execute(sql.SQL("COMMENT ON TABLE {} IS %s").format(table), (title,))
            for c in [*cols, Column(FID_COLUMN, "bigint")]:
                comment = comment_for(schema, f, c.name)
                if comment:
                    cur.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS %s").format(table, I(c.name)), (comment,))
            if counts and not counts_there:
                ensure_ward_month(cur, schema, f)
                if existing:
                    refresh_one(cur, schema, f)     # an older layer's counts are there before its next load
            made.append(f"{db_schema}.{f.table}")
    return made

