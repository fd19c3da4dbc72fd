"""How long a layer's counts by ward and month take to refresh, against a plain view that would count on every read.

Makes a throwaway depersonalised layer shaped like police recorded crime's offences (its own table names), fills it
with N synthetic records on the reference's live postcodes with enough households (1% at a place with no
postcode, which takes the nearest postcode's ward, and 1% with no point), spread over 12 monthly supplies and the
Home Office offence codes, then times:

- **refresh**: ``ward_month.refresh_ward_month`` (lock, delete, recount, insert), what every load of the feed adds
  to its transaction; median of ``--repeat`` runs, each committed;
- **plain view**: the same counting query alone, which a plain view would run each time an analyst opens it (or
  QGIS asks for its features, its extent or its row count);
- **read**: reading the counts table whole, what an analyst waits for instead.

The layer and its counts are dropped at the end. Run with the loader's URL (the tests' database by default):

    .venv/bin/python benchmarks/ward_month_refresh.py --records 1000000
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg2
from psycopg2 import sql

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

from csp_observatory import database, feed_tables, ward_month  # noqa: E402
from csp_observatory.schema import SCHEMA_DIR  # noqa: E402
from csp_observatory.schema_loading import load_schema  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--config", type=Path, default=REPO / ".run" / "test" / "observatory.yaml")
    parser.add_argument("--url", help="the loader's database URL (default: the config's)")
    args = parser.parse_args()
    url = args.url
    if not url:
        from csp_observatory.config import load_settings
        url = load_settings(args.config).database_url

    real = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")
    tag = uuid.uuid4().hex[:8]
    offences = dataclasses.replace(real.file("offences"), table=f"bench{tag}_prc_offences")
    schema = dataclasses.replace(real, feed=f"bench_{tag}", files=(offences,))
    layer = sql.Identifier("depersonalised", offences.table)
    counts = sql.Identifier("depersonalised", ward_month.ward_month_table(offences))
    codes = sorted(offences.field("ho_offence_code").allowed_codes or ())
    conn = psycopg2.connect(url)
    try:
        database.ensure_database(conn)
        feed_tables.ensure_feed_tables(conn, schema)
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cur:
            # Feed tables take rows only into partitions (partitions.py): one for every fid, for these made-up rows.
            cur.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM (MINVALUE) TO (MAXVALUE)").format(
                sql.Identifier("depersonalised", f"{offences.table}_all"), layer))
            cur.execute(sql.SQL("""
                WITH pc AS (SELECT array_agg(postcode ORDER BY postcode) AS a, array_agg(geom ORDER BY postcode) AS g,
                                   count(*) AS n
                              FROM reference.postcodes WHERE households >= 4 AND NOT terminated)
                INSERT INTO {layer} (crime_reference, ho_offence_code, committed_from_date, sanitised_postcode,
                                     sanitise_rule, supply_id, period, source_sha256, loaded_at, geom)
                SELECT 'CR' || i, (%s::text[])[1 + i %% %s], date '2026-01-01' + (i %% 365)::integer,
                       CASE WHEN i %% 100 > 1 THEN pc.a[1 + (i * 7919) %% pc.n] END,
                       CASE WHEN i %% 100 = 0 THEN 'not_geocoded' WHEN i %% 100 = 1 THEN 'non_addressable'
                            ELSE 'own_postcode' END,
                       'bench/2026' || lpad((1 + i %% 12)::text, 2, '0'), '2026' || lpad((1 + i %% 12)::text, 2, '0'),
                       'bench', now(),
                       CASE WHEN i %% 100 = 0 THEN NULL
                            WHEN i %% 100 = 1 THEN ST_Translate(pc.g[1 + (i * 7919) %% pc.n], 40, 40)
                            ELSE pc.g[1 + (i * 7919) %% pc.n] END
                  FROM generate_series(1::bigint, %s) AS i, pc""").format(layer=layer),
                (codes, len(codes), args.records))
            cur.execute(sql.SQL("ANALYZE {}").format(layer))
        conn.commit()
        print(f"layer depersonalised.{offences.table}: {args.records:,} records made in "
              f"{time.perf_counter() - started:.1f} s (not counted)")
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM reference.postcodes")
            print(f"reference.postcodes: {cur.fetchone()[0]:,} postcodes")
        conn.rollback()

        refresh, view, read = [], [], []
        rows = 0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            written = ward_month.refresh_ward_month(conn, schema)
            conn.commit()
            refresh.append(time.perf_counter() - t0)
            rows = sum(written.values())
            with conn.cursor() as cur:
                # The plain view's work: the counting query alone, its rows fetched.
                t0 = time.perf_counter()
                cur.execute(ward_month.ward_month_query(schema, offences))
                cur.fetchall()
                view.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                cur.execute(sql.SQL("SELECT * FROM {}").format(counts))
                cur.fetchall()
                read.append(time.perf_counter() - t0)
            conn.rollback()
        print(f"counts table: {rows:,} rows (ward x month x offence code)")
        print(f"refresh (in the load's transaction): median {statistics.median(refresh):.3f} s "
              f"(runs: {', '.join(f'{x:.3f}' for x in refresh)})")
        print(f"plain view, per read: median {statistics.median(view):.3f} s")
        print(f"reading the counts table: median {statistics.median(read) * 1000:.1f} ms")
    finally:
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}").format(layer, counts))
        conn.commit()
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
