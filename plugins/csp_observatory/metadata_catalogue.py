"""The supply metadata catalogue in PostGIS, and the partner's caveats in the feed tables' comments.

:func:`ensure_catalogue` makes ``observatory.supply_metadata`` (every supply's metadata, engineers only: it holds the
supplier's contact) and the view ``reference.feed_caveats`` (the latest caveats per feed, for analysts);
:func:`record` and :func:`latest` write and read it, :func:`first_supply_needs_metadata` says whether a feed's next
supply must carry a metadata file. :func:`apply_comments` puts the caveats and explanations in the comments of the
feed's tables and columns, which QGIS shows. Functions that take a connection never commit: the load's transaction
commits (or rolls back) with the data.
"""
from __future__ import annotations

import json
from typing import Any, Final

from psycopg2 import sql

from csp_observatory import database, ddl, feed_tables
from csp_observatory.metadata import Mismatch, SupplyMetadata, coding_text, header_key
from csp_observatory.schema import FeedFile, FeedSchema

CATALOGUE: Final = ("observatory", "supply_metadata")
CAVEATS_VIEW: Final = ("reference", "feed_caveats")
#: Bumped when the view's definition changes, so :func:`ensure_catalogue` replaces it.
CATALOGUE_VERSION: Final = "supply-metadata v1"


# --- the catalogue -------------------------------------------------------------------------------------------------

def _lock(cur: Any) -> None:
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("csp_observatory.metadata.catalogue",))


def _existing_roles(cur: Any, roles: tuple[str, ...]) -> list[str]:
    cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) ORDER BY rolname", (list(roles),))
    return [r[0] for r in cur.fetchall()]


def ensure_catalogue(conn: Any) -> None:
    """The catalogue table and the caveats view, with their grants; safe to run again; no commit.

    Run after ``database.ensure_database`` (it makes the schemas and roles). Engineers read the catalogue; analysts
    read only ``reference.feed_caveats`` (the catalogue holds the supplier's contact details).
    """
    I = sql.Identifier  # noqa: E741
    table, view = I(*CATALOGUE), I(*CAVEATS_VIEW)
    with conn.cursor() as cur:
        cur.execute("SELECT to_regnamespace('observatory') IS NOT NULL AND to_regnamespace('reference') IS NOT NULL")
        if not cur.fetchone()[0]:
            raise RuntimeError("the observatory and reference schemas do not exist: run database.ensure_database first")
        cur.execute("SELECT obj_description(to_regclass('reference.feed_caveats'), 'pg_class')")
        row = cur.fetchone()
        if row and row[0] and CATALOGUE_VERSION in row[0]:
            return      # up to date: no lock, so concurrent loads of different feeds never wait here
        _lock(cur)
        cur.execute(sql.SQL("""
            CREATE TABLE IF NOT EXISTS {} (
                supply_id text PRIMARY KEY,
                feed text NOT NULL,
                period text NOT NULL,
                received_at timestamptz NOT NULL DEFAULT now(),
                document jsonb NOT NULL,
                mismatches jsonb NOT NULL DEFAULT '[]'::jsonb
            )""").format(table))
        cur.execute(sql.SQL("CREATE INDEX IF NOT EXISTS supply_metadata_feed_idx ON {} (feed, received_at DESC)")
                    .format(table))
        cur.execute(sql.SQL("COMMENT ON TABLE {} IS %s").format(table),
                    ("Supply metadata (guidance section 3.4) as each partner sent it, one row per supply, with the "
                     "mismatches found against the data. Holds the supplier's contact details: engineers only",))
        cur.execute(sql.SQL("""
            CREATE OR REPLACE VIEW {} AS
            SELECT DISTINCT ON (m.feed)
                   m.feed,
                   m.document->>'agency' AS agency,
                   m.period,
                   m.supply_id,
                   m.received_at,
                   (SELECT string_agg(c.value, E'\\n' ORDER BY c.ord)
                      FROM jsonb_array_elements_text(m.document->'caveats') WITH ORDINALITY AS c(value, ord))
                       AS caveats,
                   m.document->'coding_systems' AS coding_systems,
                   m.document->>'geographic_method' AS geographic_method,
                   m.document->>'conditions_of_use' AS conditions_of_use
              FROM {} AS m
             ORDER BY m.feed, m.received_at DESC, m.supply_id DESC""").format(view, table))
        cur.execute(sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(table))
        cur.execute(sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(view))
        for role in _existing_roles(cur, ("csp_analyst", "csp_personal_reader")):
            cur.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(table, I(role)))
        for role in _existing_roles(cur, ("csp_engineer",)):
            cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(table, I(role)))
        for role in _existing_roles(cur, ("csp_analyst", "csp_engineer")):
            cur.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(view, I(role)))
        cur.execute(sql.SQL("COMMENT ON VIEW {} IS %s").format(view),
                    (f"The latest caveats, coding systems and geographic method each partner gave for its feed "
                     f"(supply metadata, guidance section 3.4) [{CATALOGUE_VERSION}]",))


def record(conn: Any, supply_id: str, metadata: SupplyMetadata, mismatches: list[Mismatch],
           period: str | None = None) -> None:
    """Keep a supply's metadata and mismatches in the catalogue, replacing a re-sent supply's; no commit.

    ``period`` is the supply's (by default the part of a ``<feed>/<period>`` supply id after the slash, else the
    metadata's own), so a supply is catalogued under its period even when the metadata names another.
    """
    if period is None:
        feed_part, sep, tail = supply_id.partition("/")
        period = tail if sep and feed_part == metadata.feed else (metadata.period or "")
    catalogue = sql.Identifier(*CATALOGUE)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("""
            INSERT INTO {} (supply_id, feed, period, received_at, document, mismatches)
            VALUES (%s, %s, %s, now(), %s::jsonb, %s::jsonb)
            ON CONFLICT (supply_id) DO UPDATE
               SET feed = EXCLUDED.feed, period = EXCLUDED.period, received_at = EXCLUDED.received_at,
                   document = EXCLUDED.document, mismatches = EXCLUDED.mismatches""").format(catalogue),
                    (supply_id, metadata.feed, period, json.dumps(metadata.to_document()),
                     json.dumps([m.to_dict() for m in mismatches])))


def latest(conn: Any, feed: str) -> SupplyMetadata | None:
    """The metadata most recently received for a feed, or None if none is catalogued."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('observatory.supply_metadata') IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        cur.execute("SELECT document FROM observatory.supply_metadata WHERE feed = %s "
                    "ORDER BY received_at DESC, supply_id DESC LIMIT 1", (feed,))
        row = cur.fetchone()
    return SupplyMetadata.from_document(row[0]) if row else None


def first_supply_needs_metadata(conn: Any, feed: str) -> bool:
    """True if the catalogue holds no metadata for the feed yet: its next supply must carry a metadata file."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('observatory.supply_metadata') IS NOT NULL")
        if not cur.fetchone()[0]:
            return True
        cur.execute("SELECT NOT EXISTS (SELECT 1 FROM observatory.supply_metadata WHERE feed = %s)", (feed,))
        return bool(cur.fetchone()[0])


def table_comment(schema: FeedSchema, feed_file: FeedFile, metadata: SupplyMetadata | None = None) -> str:
    """A feed table's comment: the schema's own (as ``feed_tables.ensure_feed_tables`` writes it), then the partner's."""
    base = (f"{schema.title}: {feed_file.title}. {feed_file.description} (guidance section "
            f"{schema.guidance_section}; {schema.dataset_type}; partner {schema.partner.agency})")
    if metadata is None:
        return base
    text = base
    if metadata.caveats:
        text += ". Partner caveats: " + " ".join(c if c.endswith(".") else f"{c}." for c in metadata.caveats)
    if metadata.geographic_method:
        text = f"{text.rstrip('.')}. Partner's coordinates: {metadata.geographic_method}"
    return (f"{text.rstrip('.')}. (Supply metadata of period {metadata.period or metadata.period_start}, "
            f"supplied {metadata.date_supplied.isoformat()})")


def column_comment(schema: FeedSchema, feed_file: FeedFile, column: str,
                   metadata: SupplyMetadata | None = None) -> str | None:
    """A datafield column's comment: the schema's label, then "Partner: <explanation>" and its coding system."""
    base = ddl.comment_for(schema, feed_file, column)  # noqa: SLF001  (the one source of the schema's labels)
    if metadata is None:
        return base
    try:
        fm = metadata.file(feed_file.name)
    except KeyError:
        return base
    key = header_key(column)
    extra = []
    if explanation := fm.explanations.get(key):
        extra.append(f"Partner: {explanation}")
    coding = {header_key(k): v for k, v in metadata.coding_systems.items()}
    if key in coding and key in {header_key(n) for n in fm.field_names}:
        extra.append(f"Coding: {coding_text(coding[key])}")
    if not extra:
        return base
    head = (base or column).rstrip(".")
    return ". ".join([head, *(e.rstrip(".") for e in extra)])


def apply_comments(conn: Any, schema: FeedSchema, metadata: SupplyMetadata) -> list[str]:
    """Put the partner's caveats and explanations in the comments of the feed's tables and columns; no commit.

    Each comment keeps the schema's own label first ("<schema label>. Partner: <explanation>"), is recomputed
    from the schema each time (so a later supply replaces, never stacks, the partner's text) and is written only
    when it changed. Tables that do not exist yet are skipped. Returns the tables commented.
    """
    I = sql.Identifier  # noqa: E741
    done: list[str] = []
    with conn.cursor() as cur:
        for f in schema.files:
            cur.execute("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = %s AND c.relname = %s", (schema.db_schema, f.table))
            row = cur.fetchone()
            if row is None:
                continue
            oid = row[0]
            table = I(schema.db_schema, f.table)
            cur.execute("SELECT obj_description(%s, 'pg_class')", (oid,))
            current = cur.fetchone()[0]
            # The quality stamp at the end of the comment (stamp.py) stays until the report replaces it.
            wanted = table_comment(schema, f, metadata) + _stamp_part(current)
            if current != wanted:
                cur.execute(sql.SQL("COMMENT ON TABLE {} IS %s").format(table), (wanted,))
            cur.execute("SELECT attname, col_description(attrelid, attnum) FROM pg_attribute "
                        "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped", (oid,))
            current = dict(cur.fetchall())
            for d in f.datafields:
                if d.name not in current:
                    continue        # dropped on sanitising: no column
                comment = column_comment(schema, f, d.name, metadata)
                if comment is not None and comment != current[d.name]:
                    cur.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS %s").format(table, I(d.name)), (comment,))
            done.append(f"{schema.db_schema}.{f.table}")
    return done


def _stamp_part(comment: str | None) -> str:
    """The quality stamp a table comment ends with (``stamp_text.COMMENT_MARK`` on), or ""."""
    from csp_observatory.stamp_text import stamp_of

    return stamp_of(comment)
