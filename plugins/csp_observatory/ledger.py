"""The deliveries ledger: every file a partner sent, by SHA-256, and what became of it.

A file's hash is its identity: the same bytes delivered twice are one delivery, so a supply is never loaded
twice. These functions take a psycopg2 connection and never commit; the caller decides the transaction (the
loader marks files loaded inside its own load transaction, so "loaded" is true exactly when the rows are).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

STATUSES = ("received", "quarantined", "loaded", "duplicate")

DDL = """
CREATE TABLE IF NOT EXISTS observatory.deliveries (
    sha256      text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    feed        text NOT NULL,
    file_name   text NOT NULL,
    supply_id   text NOT NULL,
    size_bytes  bigint NOT NULL CHECK (size_bytes >= 0),
    received_at timestamptz NOT NULL DEFAULT now(),
    status      text NOT NULL DEFAULT 'received'
                CHECK (status IN ('received', 'quarantined', 'loaded', 'duplicate')),
    reason      text,
    loaded_at   timestamptz
);
CREATE INDEX IF NOT EXISTS deliveries_supply_idx ON observatory.deliveries (supply_id);
COMMENT ON TABLE observatory.deliveries IS
    'Every file a partner delivered, by SHA-256 of the encrypted bytes, and what became of it.';
"""

_COLUMNS = "sha256, feed, file_name, supply_id, size_bytes, received_at, status, reason, loaded_at"


@dataclass(frozen=True)
class Delivery:
    """One row of the ledger."""

    sha256: str
    feed: str
    file_name: str
    supply_id: str
    size_bytes: int
    received_at: datetime
    status: str
    reason: str | None
    loaded_at: datetime | None


def ensure_ledger(conn: Any) -> None:
    """Create the ``observatory`` schema and the deliveries table if they are missing (no commit)."""
    with conn.cursor() as cur:
        # Serialise concurrent first runs: CREATE ... IF NOT EXISTS can still race on the catalog.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('observatory.deliveries'))")
        # CREATE ... IF NOT EXISTS still needs CREATE privilege, which the loader's role may rightly lack.
        cur.execute("SELECT to_regclass('observatory.deliveries') IS NOT NULL")
        if cur.fetchone()[0]:
            return
        cur.execute("SELECT to_regnamespace('observatory') IS NOT NULL")
        if not cur.fetchone()[0]:
            cur.execute("CREATE SCHEMA observatory")
        cur.execute(DDL)


def find(conn: Any, sha256: str) -> Delivery | None:
    """The ledger row for a file's hash, or None if those bytes were never delivered."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM observatory.deliveries WHERE sha256 = %s", (sha256,))
        row = cur.fetchone()
    return Delivery(*row) if row else None


def record_received(conn: Any, sha256: str, feed: str, file_name: str, supply_id: str, size_bytes: int) -> Delivery:
    """Record a downloaded file as received; a re-delivery of bytes not yet loaded starts again as received."""
    with conn.cursor() as cur:
        # A loaded row is never reset: those bytes are in PostGIS and a second copy is a duplicate.
        cur.execute(
            f"""INSERT INTO observatory.deliveries (sha256, feed, file_name, supply_id, size_bytes)
                VALUES (%s, %s, %s, %s, %s)
                ON CONFLICT (sha256) DO UPDATE SET
                    feed = EXCLUDED.feed, file_name = EXCLUDED.file_name, supply_id = EXCLUDED.supply_id,
                    size_bytes = EXCLUDED.size_bytes, received_at = now(), status = 'received', reason = NULL
                WHERE observatory.deliveries.status <> 'loaded'
                RETURNING {_COLUMNS}""",
            (sha256, feed, file_name, supply_id, size_bytes))
        row = cur.fetchone()
    if row is None:
        raise ValueError(f"delivery {sha256[:12]} ({file_name}) is already loaded; it is a duplicate")
    return Delivery(*row)


def mark_quarantined(conn: Any, sha256: str, reason: str) -> None:
    """Record that a delivery was refused and moved to the partner's quarantine, and why."""
    with conn.cursor() as cur:
        cur.execute("UPDATE observatory.deliveries SET status = 'quarantined', reason = %s "
                    "WHERE sha256 = %s AND status <> 'loaded'", (reason, sha256))


def mark_loaded(conn: Any, sha256s: Iterable[str], supply_id: str) -> int:
    """Mark a supply's deliveries loaded (call inside the load transaction); returns the rows marked."""
    shas = list(sha256s)
    with conn.cursor() as cur:
        cur.execute("UPDATE observatory.deliveries SET status = 'loaded', reason = NULL, loaded_at = now(), "
                    "supply_id = %s WHERE sha256 = ANY(%s)", (supply_id, shas))
        marked = cur.rowcount
    if marked != len(set(shas)):
        # Loading bytes the ledger never received would break "loaded exactly once": stop the transaction.
        raise ValueError(f"{len(set(shas)) - marked} of the supply's files are not in the ledger")
    return marked


def for_supply(conn: Any, supply_id: str) -> list[Delivery]:
    """Every delivery recorded for a supply, oldest first."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM observatory.deliveries WHERE supply_id = %s ORDER BY received_at, "
                    "file_name", (supply_id,))
        return [Delivery(*r) for r in cur.fetchall()]
