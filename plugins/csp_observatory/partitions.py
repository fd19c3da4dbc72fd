"""Feed tables as one partition per supply: loaded bare, indexed after, then attached (issue 9).

A feed table is ``PARTITION BY RANGE (fid)`` and every supply's rows are one partition of it. The partition key
is ``fid`` rather than the period because PostgreSQL requires every unique key of a partitioned table to include
the partition key: partitioned by period, the primary key would have to be ``(fid, period)``, and GDAL refuses a
primary key of two columns ("Multi-column primary key ... detected but not supported": no FID, a warning on every
open), so analysts' ``ogrinfo``/``ogr2ogr`` would lose the feature id. With ``fid`` as the partition key the parent
keeps ``PRIMARY KEY (fid)``: QGIS and GDAL take it without being told. A load reserves a block of fids from the
table's sequence (``<table>_fid_seq``, the parent's ``fid`` default), so each supply's partition is the range
``[first, first + rows)`` of fids and holds that one supply (``CHECK (supply_id = ...)``, which also lets the
planner skip the other partitions for ``WHERE supply_id = ...``).

The load of a supply (``loading.load_supply``), in its one transaction:

1. :func:`stage`: a standalone table ``LIKE`` the parent, with no index, and the CHECKs matching the partition
   bound and the supply (so that ATTACH skips its validation scan; added before the rows, which COPY checks as they
   go in, rather than after, which scans them); the rows are COPYed into it;
2. :func:`index`: its record key (``<part>_supply_key``, unique: a repeated record stops the supply), its primary
   key and GiST index (which ATTACH adopts as the parent's, building nothing);
3. :func:`swap`: the previous partition of the same supply detached and dropped (a re-send replaces it, never
   duplicates; rows of the supply in a migrated table are deleted), and the new one attached.

A large supply's smaller files are staged and indexed on a second connection (``loading.split_files``), in
:data:`LOADING_SCHEMA`, and committed there; the load's transaction moves them into the feed's schema (:func:`adopt`)
before the swap, and a failed or killed load's are dropped (``loading._drop_aside``, :func:`drop_unattached`).

Readers see the supply whole or not at all; a failure anywhere rolls back the new table too (no stray table).
ATTACH takes a SHARE UPDATE EXCLUSIVE lock on the parent, which readers do not wait for; detaching a re-sent
supply's earlier partition takes ACCESS EXCLUSIVE until the commit, so readers of that table wait for the rest of
the load's transaction (the recount by ward and month), which is why the swap comes last. A
table of an older observatory (not partitioned) becomes the first partition, ``<table>_legacy``, holding every
earlier supply with its fids (:func:`convert`). Rows come in only through the loader: an ``INSERT`` into the
parent finds no partition for a new fid. Statements are built as text with every identifier quoted here (names
come from feed schemas), and values passed as parameters. Nothing here commits.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final, Sequence

from psycopg2.extensions import TRANSACTION_STATUS_INERROR

#: One statement and its parameters.
Statement = tuple[str, tuple[Any, ...]]

FID: Final = "fid"
#: A partition's comment: how a re-send finds the partition holding its supply.
PARTITION_MARK: Final = "Rows of supply "
#: The partition an older, unpartitioned table becomes (every supply loaded before, fids kept).
LEGACY_SUFFIX: Final = "_legacy"
#: Memory for building a new partition's indexes (the sorts of its b-trees and of the GiST's sorted build).
INDEX_MEMORY: Final = "256MB"


#: Where a load's second connection builds its partitions (``loading.py``), committed but attached to nothing:
#: nobody but the loader may use it (``database.ensure_database``), and each table there is moved into its feed's
#: schema (:func:`adopt`) inside the load's transaction, or dropped (:func:`drop_unattached`).
LOADING_SCHEMA: Final = "loading"


@dataclass(frozen=True)
class Staged:
    """A partition being loaded: its table name, fid range ``[first, end)``, and the schema it is in while it is
    loaded ("": its feed's; :data:`LOADING_SCHEMA` when another connection builds it)."""

    name: str
    first: int
    end: int
    schema: str = ""

    def schema_in(self, db_schema: str) -> str:
        """The schema the table is in: ``self.schema``, else the feed's ``db_schema``."""
        return self.schema or db_schema

    def where(self, db_schema: str) -> str:
        """The table, qualified (:meth:`schema_in`)."""
        return qualified(self.schema_in(db_schema), self.name)


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, always quoted."""
    return '"' + name.replace('"', '""') + '"'


def qualified(db_schema: str, name: str) -> str:
    """``"schema"."name"``."""
    return f"{quote_ident(db_schema)}.{quote_ident(name)}"


def fid_sequence(table: str) -> str:
    """The sequence a feed table's fids come from (the parent's default, and each load's block)."""
    return f"{table}_fid_seq"


def partition_name(table: str, first: int) -> str:
    """The name of the partition whose fids start at ``first``; short enough for its index names (63 bytes)."""
    base = table if len(table) <= 30 else f"{table[:21]}_{hashlib.sha256(table.encode()).hexdigest()[:8]}"
    return f"{base}_f{first}"


def partition_comment(db_schema: str, table: str, supply_id: str) -> str:
    """A supply's partition's comment; exact, so that a re-send finds it by equality."""
    return f"{PARTITION_MARK}{supply_id} (a partition of {db_schema}.{table}; a re-send replaces it whole)"


def parent_statements(db_schema: str, table: str, column_defs: Sequence[str]) -> list[Statement]:
    """Create a partitioned feed table: the columns given (quoted SQL, in order), ``fid`` last from its sequence,
    primary key ``fid``, GiST index on ``geom`` (each partition brings its own, adopted on ATTACH)."""
    seq = qualified(db_schema, fid_sequence(table))
    parent = qualified(db_schema, table)
    return [
        (f"CREATE SEQUENCE IF NOT EXISTS {seq} AS bigint", ()),
        (f"CREATE TABLE {parent} ({', '.join(column_defs)}, {quote_ident(FID)} bigint NOT NULL DEFAULT "
         f"nextval(%s::regclass), CONSTRAINT {quote_ident(table + '_pkey')} PRIMARY KEY ({quote_ident(FID)})) "
         f"PARTITION BY RANGE ({quote_ident(FID)})", (seq,)),
        # Dropping the table drops its sequence, as it did the identity column's.
        (f"ALTER SEQUENCE {seq} OWNED BY {parent}.{quote_ident(FID)}", ()),
        (f"CREATE INDEX IF NOT EXISTS {quote_ident(table + '_geom_gist')} ON {parent} USING gist (geom)", ()),
    ]


def stage_statements(db_schema: str, table: str, staged: Staged) -> list[Statement]:
    """The standalone table a supply's rows are COPYed into: the parent's columns and NOT NULLs, no index."""
    return [(f"CREATE TABLE {staged.where(db_schema)} (LIKE {qualified(db_schema, table)})", ())]


def check_statements(db_schema: str, staged: Staged, supply_id: str) -> list[Statement]:
    """The CHECKs matching a partition's bound and its supply, which let ATTACH skip its validation scan. Added to
    the empty table before its COPY: each row is checked as it goes in, and no scan of the loaded table is needed
    (measured: adding them after the COPY scanned the 1M offences for 1.0 s, load average 6)."""
    part = staged.where(db_schema)
    fid = quote_ident(FID)
    return [
        (f"ALTER TABLE {part} ADD CONSTRAINT {quote_ident(staged.name + '_fid_range')} CHECK "
         f"({fid} >= %s AND {fid} < %s)", (staged.first, staged.end)),
        (f"ALTER TABLE {part} ADD CONSTRAINT {quote_ident(staged.name + '_supply')} CHECK (supply_id = %s)",
         (supply_id,)),
    ]


def index_statements(db_schema: str, table: str, staged: Staged, key: Sequence[str],
                     supply_id: str) -> list[Statement]:
    """A loaded partition's keys and GiST index (its CHECKs came with the table: :func:`check_statements`)."""
    part = staged.where(db_schema)
    name = staged.name
    fid = quote_ident(FID)
    return [
        ("SET LOCAL maintenance_work_mem = %s", (INDEX_MEMORY,)),
        # The record's key first: a repeated record stops the supply before the other indexes are built.
        (f"ALTER TABLE {part} ADD CONSTRAINT {quote_ident(name + '_supply_key')} UNIQUE "
         f"({', '.join(quote_ident(k) for k in key)})", ()),
        (f"ALTER TABLE {part} ADD CONSTRAINT {quote_ident(name + '_pkey')} PRIMARY KEY ({fid})", ()),
        (f"CREATE INDEX {quote_ident(name + '_geom_gist')} ON {part} USING gist (geom)", ()),
        (f"COMMENT ON TABLE {part} IS %s", (partition_comment(db_schema, table, supply_id),)),
    ]


def attach_statement(db_schema: str, table: str, staged: Staged) -> Statement:
    """ATTACH a loaded partition for its fid range."""
    return (f"ALTER TABLE {qualified(db_schema, table)} ATTACH PARTITION {qualified(db_schema, staged.name)} "
            f"FOR VALUES FROM (%s) TO (%s)", (staged.first, staged.end))


def _run(cur: Any, statements: Sequence[Statement]) -> None:
    for text, params in statements:
        cur.execute(text, params or None)


def is_partitioned(cur: Any, db_schema: str, table: str) -> bool:
    """Whether a table exists and is partitioned."""
    cur.execute("SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(%s))",
                (qualified(db_schema, table),))
    return bool(cur.fetchone()[0])


def partition_keys(cur: Any, db_schema: str, table: str) -> dict[str, list[str]]:
    """Each partition of a table and the columns of its record key (``<partition>_supply_key``; [] if none)."""
    cur.execute("""SELECT c.relname, coalesce((
                       SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_constraint con
                       CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
                       JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
                       WHERE con.conrelid = c.oid AND con.contype = 'u' AND con.conname = c.relname || '_supply_key'),
                       '{}')
                   FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                   WHERE i.inhparent = to_regclass(%s) ORDER BY c.relname""", (qualified(db_schema, table),))
    return {name: list(key) for name, key in cur.fetchall()}


def record_key(cur: Any, db_schema: str, table: str) -> list[str]:
    """The record's key of a partitioned table: the one its partitions share ([] if they differ or there are
    none yet)."""
    keys = {tuple(k) for k in partition_keys(cur, db_schema, table).values()}
    return list(keys.pop()) if len(keys) == 1 else []


def reserve_fids(cur: Any, db_schema: str, table: str, n: int) -> int:
    """Take ``n`` consecutive fids from the table's sequence; returns the first. Sequences are not transactional:
    the block stays taken even if the load rolls back (a gap, as an identity column leaves)."""
    seq = qualified(db_schema, fid_sequence(table))
    # Loads of two supplies of a feed may run at once: each takes its block whole (nextval then setval).
    lock = f"csp_observatory.fid.{db_schema}.{table}"
    cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock,))
    try:
        cur.execute("SELECT nextval(%s::regclass)", (seq,))
        first = int(cur.fetchone()[0])
        if n > 1:
            cur.execute("SELECT setval(%s::regclass, %s)", (seq, first + n - 1))
    finally:
        if cur.connection.get_transaction_status() == TRANSACTION_STATUS_INERROR:
            # No statement runs in a failed transaction: end it here, so that the lock is released now and not
            # when the connection closes (the caller rolls back anyway).
            cur.connection.rollback()
        cur.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock,))
    return first


def stage(cur: Any, db_schema: str, table: str, n: int, supply_id: str, into: str = "") -> Staged:
    """A fresh standalone table for ``n`` rows of a supply, with the CHECKs of its fids and supply; in the feed's
    schema, or in ``into`` (:data:`LOADING_SCHEMA`) for a connection other than the load's."""
    first = reserve_fids(cur, db_schema, table, n)
    staged = Staged(partition_name(table, first), first, first + n, into)
    _run(cur, [*stage_statements(db_schema, table, staged), *check_statements(db_schema, staged, supply_id)])
    return staged


def adopt(cur: Any, db_schema: str, table: str, staged: Staged) -> Staged:
    """Move a partition another connection built (in :data:`LOADING_SCHEMA`) into its feed's schema, in the load's
    transaction, with the readers its parent has (what the schema's default privileges give a table made there)."""
    if not staged.schema or staged.schema == db_schema:
        return staged
    cur.execute(f"ALTER TABLE {staged.where(db_schema)} SET SCHEMA {quote_ident(db_schema)}")
    moved = Staged(staged.name, staged.first, staged.end)
    _grant_readers(cur, qualified(db_schema, table), moved.where(db_schema))
    return moved


def drop_unattached(cur: Any, db_schema: str, tables: Sequence[str], supply_id: str) -> list[str]:
    """Drop the tables in :data:`LOADING_SCHEMA` holding a supply's rows for any of a feed's tables (what a load that
    failed or was killed after its second connection committed left there), in one catalogue query; returns their
    names."""
    cur.execute("""SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = %s AND c.relkind = 'r' AND obj_description(c.oid, 'pg_class') = ANY(%s)""",
                (LOADING_SCHEMA, [partition_comment(db_schema, table, supply_id) for table in tables]))
    names = [name for (name,) in cur.fetchall()]
    for name in names:
        cur.execute(f"DROP TABLE IF EXISTS {qualified(LOADING_SCHEMA, name)}")
    return names


def _grant_readers(cur: Any, source: str, target: str) -> None:
    """Grant SELECT on ``target`` to each of the observatory's roles that may read ``source``."""
    cur.execute("""SELECT r.rolname FROM pg_roles r WHERE r.rolname LIKE 'csp\\_%%'
                   AND has_table_privilege(r.oid, to_regclass(%s), 'SELECT')""", (source,))
    for (role,) in cur.fetchall():
        cur.execute(f"GRANT SELECT ON {target} TO {quote_ident(role)}")


def index(cur: Any, db_schema: str, table: str, staged: Staged, key: Sequence[str], supply_id: str) -> None:
    """Build a loaded partition's indexes (before it is attached)."""
    _run(cur, index_statements(db_schema, table, staged, key, supply_id))


def swap(cur: Any, db_schema: str, table: str, supply_id: str, staged: Staged | None) -> int:
    """Replace a supply's rows in a table by its loaded partition (or by nothing): drop the partition holding the
    supply, delete its rows from a legacy partition, attach the new one. Returns the rows removed."""
    cur.execute("""SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                   WHERE i.inhparent = to_regclass(%s) AND obj_description(c.oid, 'pg_class') = %s""",
                (qualified(db_schema, table), partition_comment(db_schema, table, supply_id)))
    removed = 0
    for (old,) in cur.fetchall():
        cur.execute(f"SELECT count(*) FROM {qualified(db_schema, old)}")
        removed += int(cur.fetchone()[0])
        cur.execute(f"ALTER TABLE {qualified(db_schema, table)} DETACH PARTITION {qualified(db_schema, old)}")
        cur.execute(f"DROP TABLE {qualified(db_schema, old)}")
    legacy = legacy_name(table)
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (qualified(db_schema, legacy),))
    if cur.fetchone()[0]:
        cur.execute(f"DELETE FROM {qualified(db_schema, legacy)} WHERE supply_id = %s", (supply_id,))
        removed += cur.rowcount
    if staged is not None:
        _run(cur, [attach_statement(db_schema, table, staged)])
    return removed


def legacy_name(table: str) -> str:
    """The partition an older, unpartitioned table becomes."""
    return partition_name(table, 0).removesuffix("_f0") + LEGACY_SUFFIX


def convert(cur: Any, db_schema: str, table: str) -> str:
    """Make an older, unpartitioned feed table (``fid`` identity primary key, ``<table>_supply_key``) partitioned,
    every row and fid kept: it becomes the partition ``<table>_legacy`` for fids up to its largest, under a new
    parent of the same name, columns, comments and readers. Returns the legacy partition's name."""
    legacy = legacy_name(table)
    old, part = qualified(db_schema, table), qualified(db_schema, legacy)
    cur.execute(f"ALTER TABLE {old} RENAME TO {quote_ident(legacy)}")
    for suffix in ("_pkey", "_supply_key"):
        cur.execute("SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s",
                    (part, table + suffix))
        if cur.fetchone():
            cur.execute(f"ALTER TABLE {part} RENAME CONSTRAINT {quote_ident(table + suffix)} TO "
                        f"{quote_ident(legacy + suffix)}")
    for suffix in ("_geom_gist", "_supply_idx"):
        cur.execute(f"ALTER INDEX IF EXISTS {qualified(db_schema, table + suffix)} RENAME TO "
                    f"{quote_ident(legacy + suffix)}")
    cur.execute(f"SELECT coalesce(max({quote_ident(FID)}), 0) FROM {part}")
    last = int(cur.fetchone()[0])
    # PostgreSQL 15 allows no identity column in a partitioned table; its sequence goes with it.
    cur.execute(f"ALTER TABLE {part} ALTER COLUMN {quote_ident(FID)} DROP IDENTITY IF EXISTS")
    cur.execute(f"ALTER TABLE {part} ALTER COLUMN {quote_ident(FID)} SET NOT NULL")
    seq = qualified(db_schema, fid_sequence(table))
    cur.execute(f"CREATE SEQUENCE {seq} AS bigint")
    cur.execute("SELECT setval(%s::regclass, %s, %s)", (seq, max(last, 1), last > 0))
    cur.execute(f"CREATE TABLE {old} (LIKE {part} INCLUDING COMMENTS) PARTITION BY RANGE ({quote_ident(FID)})")
    cur.execute(f"ALTER TABLE {old} ALTER COLUMN {quote_ident(FID)} SET DEFAULT nextval(%s::regclass)", (seq,))
    cur.execute(f"ALTER SEQUENCE {seq} OWNED BY {old}.{quote_ident(FID)}")
    cur.execute(f"ALTER TABLE {old} ADD CONSTRAINT {quote_ident(table + '_pkey')} PRIMARY KEY ({quote_ident(FID)})")
    cur.execute(f"CREATE INDEX {quote_ident(table + '_geom_gist')} ON {old} USING gist (geom)")
    cur.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (part,))
    cur.execute(f"COMMENT ON TABLE {old} IS %s", (cur.fetchone()[0],))
    cur.execute(f"COMMENT ON TABLE {part} IS %s", (f"Rows loaded before {db_schema}.{table} was partitioned",))
    # Readers of the old table read the new one (the schema's default privileges may not name them all).
    _grant_readers(cur, part, old)
    # A CHECK matching the bound spares ATTACH a second scan; the old rows are read once, here.
    cur.execute(f"ALTER TABLE {part} ADD CONSTRAINT {quote_ident(legacy + '_fid_range')} CHECK "
                f"({quote_ident(FID)} < %s)", (last + 1,))
    cur.execute(f"ALTER TABLE {old} ATTACH PARTITION {part} FOR VALUES FROM (MINVALUE) TO (%s)", (last + 1,))
    return legacy
