"""Benchmark: the project's Appendix 1 sanitiser against the PostGIS KNN query a GIS technician would write.

Prints figures; never a test. Example (national size, 1M records):

    CSP_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/bench \\
        .venv/bin/python benchmarks/sanitise_vs_postgis.py --records 1000000

``--postcodes M`` makes a smaller synthetic reference (M live + M/17 terminated); ``--reference CSV`` reads
a reference frame (columns as ``reference.postcodes``) instead. ``--skip-peer`` times only the sanitiser.
"""
from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from csp_observatory.sanitising import sanitise  # noqa: E402
from csp_observatory.sanitising_displacement import build_displacement  # noqa: E402
from csp_observatory.schema import SCHEMA_DIR  # noqa: E402
from csp_observatory.schema_loading import load_schema  # noqa: E402

SCHEMA = "bench_sanitise"


def peer_sql(schema: str, k: int, displacement: str = "nearest") -> str:
    """The one-statement PostGIS peer: own postcode, else the KNN nearest eligible postcode (``nearest``), or KNN
    in ward, district, anywhere (``same_ward_first``); ties by postcode."""
    eligible = f"p.households >= {int(k)} AND NOT p.terminated"
    own_ok = f"(o.households >= {int(k)} AND NOT o.terminated)"
    knn = 'ORDER BY p.geom <-> o.geom, p.postcode COLLATE "C" LIMIT 1'
    if displacement == "nearest":
        # The GiST index serves ORDER BY distance alone, not the tie-break after it: take the 16 nearest by the index,
        # then order those by (distance, postcode). Exact unless more than 16 targets tie at the nearest distance.
        return f"""
SELECT r.record_id, COALESCE(CASE WHEN {own_ok} THEN o.postcode END, a.postcode) AS target,
       CASE WHEN {own_ok} THEN 'own_postcode' ELSE 'next_nearest' END AS rule
FROM {schema}.records r
JOIN {schema}.postcodes o ON o.postcode = r.postcode
LEFT JOIN LATERAL (SELECT c.postcode FROM (
                       SELECT p.postcode, p.geom <-> o.geom AS d FROM {schema}.postcodes p
                       WHERE NOT {own_ok} AND {eligible} ORDER BY p.geom <-> o.geom LIMIT 16) c
                   ORDER BY c.d, c.postcode COLLATE "C" LIMIT 1) a ON true
"""
    return f"""
SELECT r.record_id,
       COALESCE(CASE WHEN {own_ok} THEN o.postcode END, w.postcode, d.postcode, a.postcode) AS target,
       CASE WHEN {own_ok} THEN 'own_postcode' WHEN w.postcode IS NOT NULL THEN 'same_ward'
            WHEN d.postcode IS NOT NULL THEN 'same_district' ELSE 'anywhere' END AS rule
FROM {schema}.records r
JOIN {schema}.postcodes o ON o.postcode = r.postcode
LEFT JOIN LATERAL (SELECT p.postcode FROM {schema}.postcodes p
                   WHERE NOT {own_ok} AND {eligible} AND p.ward_code = o.ward_code {knn}) w ON true
LEFT JOIN LATERAL (SELECT p.postcode FROM {schema}.postcodes p
                   WHERE NOT {own_ok} AND w.postcode IS NULL AND {eligible}
                     AND p.district_code = o.district_code {knn}) d ON true
LEFT JOIN LATERAL (SELECT p.postcode FROM {schema}.postcodes p
                   WHERE NOT {own_ok} AND w.postcode IS NULL AND d.postcode IS NULL AND {eligible} {knn}) a ON true
"""


def load_tables(conn: Any, schema: str, reference: pd.DataFrame, records: pd.DataFrame, k: int) -> float:
    """COPY the reference and the records into ``schema`` with the indexes the peer needs; returns seconds."""
    t = time.perf_counter()
    cols = ["postcode", "easting", "northing", "households", "ward_code", "district_code", "terminated"]
    with conn.cursor() as cur:
        cur.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
        cur.execute(f"""CREATE UNLOGGED TABLE {schema}.postcodes_in (postcode text, easting integer,
            northing integer, households integer, ward_code text, district_code text, terminated boolean)""")
        buf = io.StringIO()
        ref = reference[cols].copy()
        ref["households"] = pd.to_numeric(ref["households"]).fillna(0).astype("int64")
        ref.to_csv(buf, index=False, header=False)
        buf.seek(0)
        cur.copy_expert(f"COPY {schema}.postcodes_in FROM STDIN WITH (FORMAT csv)", buf)
        cur.execute(f"""CREATE TABLE {schema}.postcodes AS SELECT *,
            ST_SetSRID(ST_MakePoint(easting, northing), 27700)::geometry(Point, 27700) AS geom
            FROM {schema}.postcodes_in; DROP TABLE {schema}.postcodes_in;
            ALTER TABLE {schema}.postcodes ADD PRIMARY KEY (postcode)""")
        cond = f"WHERE households >= {int(k)} AND NOT terminated"
        cur.execute(f"CREATE INDEX ON {schema}.postcodes USING gist (geom)")
        cur.execute(f"CREATE INDEX ON {schema}.postcodes USING gist (geom) {cond}")
        cur.execute(f"CREATE INDEX ON {schema}.postcodes (ward_code) {cond}")
        cur.execute(f"CREATE INDEX ON {schema}.postcodes (district_code) {cond}")
        cur.execute(f"CREATE UNLOGGED TABLE {schema}.records (record_id integer PRIMARY KEY, postcode text)")
        buf = io.StringIO()
        records[["record_id", "postcode"]].to_csv(buf, index=False, header=False)
        buf.seek(0)
        cur.copy_expert(f"COPY {schema}.records FROM STDIN WITH (FORMAT csv)", buf)
        cur.execute(f"ANALYZE {schema}.postcodes; ANALYZE {schema}.records")
    conn.commit()
    return time.perf_counter() - t


def run_peer(conn: Any, schema: str, k: int, displacement: str = "nearest") -> pd.DataFrame:
    """Run the peer statement and fetch (record_id, target, rule) for every record."""
    buf = io.StringIO()
    with conn.cursor() as cur:
        cur.execute("SET max_parallel_workers_per_gather = 2")
        cur.copy_expert(f"COPY ({peer_sql(schema, k, displacement)}) TO STDOUT WITH (FORMAT csv)", buf)
    conn.commit()
    buf.seek(0)
    return pd.read_csv(buf, header=None, names=["record_id", "target", "rule"], dtype={"target": str, "rule": str})


def make_records(reference: pd.DataFrame, n: int, k: int, seed: int = 1) -> pd.DataFrame:
    """n records in random postcodes, half of them in postcodes under k households (or terminated)."""
    rng = np.random.default_rng(seed)
    hh = pd.to_numeric(reference["households"]).fillna(0).to_numpy()
    small = np.flatnonzero((hh < k) | reference["terminated"].to_numpy(bool))
    live = np.flatnonzero(~reference["terminated"].to_numpy(bool))
    pick = np.where(rng.random(n) < 0.5, small[rng.integers(0, len(small), n)], live[rng.integers(0, len(live), n)])
    pcs = reference["postcode"].to_numpy(object)[pick]
    e = pd.to_numeric(reference["easting"]).to_numpy(float)[pick] + rng.integers(-25, 26, n)
    nn = pd.to_numeric(reference["northing"]).to_numpy(float)[pick] + rng.integers(-25, 26, n)
    return pd.DataFrame({"record_id": np.arange(n), "postcode": pcs,
                         "geo_easting": e, "geo_northing": nn, "geo_postcode": pd.array(pcs, dtype="string"),
                         "geocode_method": pd.array(["supplied"] * n, dtype="string")})


def run_sanitiser(reference: pd.DataFrame, records: pd.DataFrame, k: int,
                  displacement: str = "nearest") -> tuple[pd.DataFrame, dict[str, float]]:
    """build_displacement + sanitise (map lookup) over the records; returns the result and timings."""
    feed_file = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml").file("offences")
    t0 = time.perf_counter()
    pmap = build_displacement(reference, threshold=k, displacement=displacement)
    t1 = time.perf_counter()
    out = sanitise(records, feed_file, pmap).frame
    t2 = time.perf_counter()
    # Again with the same map: the first lookup in a process also builds the map's hash index of postcodes (kept on
    # the map), so this is the "sanitising 1M records once the map exists".
    again = sanitise(records, feed_file, pmap).frame
    t3 = time.perf_counter()
    assert again.equals(out), "a second sanitise with the same map gave other records"
    return out, {"build_s": t1 - t0, "sanitise_s": t2 - t1, "total_s": t2 - t0, "again_s": t3 - t2}


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--postcodes", type=int, default=1_700_000, help="live postcodes in the synthetic reference")
    ap.add_argument("--reference", type=Path, help="reference CSV instead of the synthetic one")
    ap.add_argument("--threshold", type=int, default=4)
    ap.add_argument("--displacement", choices=("nearest", "same_ward_first"), default="nearest",
                    help="how a small postcode finds its target (the feed schema's sanitising.displacement)")
    ap.add_argument("--db", default=os.environ.get("CSP_DATABASE_URL"))
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--no-tracemalloc", action="store_true", help="skip the second, traced sanitiser run")
    a = ap.parse_args(argv)
    k = a.threshold

    t = time.perf_counter()
    if a.reference:
        reference = pd.read_csv(a.reference, dtype={"postcode": str, "ward_code": str, "district_code": str})
        reference["terminated"] = reference["terminated"].astype(str).str.lower().isin(["true", "t", "1"])
    else:
        from csp_observatory.postcodes_synthetic import national_synthetic_reference
        reference = national_synthetic_reference(n_live=a.postcodes, n_terminated=max(a.postcodes // 17, 1))
    records = make_records(reference, a.records, k)
    print(f"reference: {len(reference):,} postcodes ({int(reference['terminated'].sum()):,} terminated); "
          f"records: {len(records):,}; data generated in {time.perf_counter() - t:.1f} s", flush=True)

    out, times = run_sanitiser(reference, records, k, a.displacement)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"sanitiser: build_displacement {times['build_s']:.2f} s + sanitise {times['sanitise_s']:.2f} s "
          f"= {times['total_s']:.2f} s; max RSS so far {rss_mb:,.0f} MB", flush=True)
    print(f"sanitise again with the same map (its postcode index built by the first): {times['again_s']:.2f} s "
          f"for {len(records):,} records", flush=True)
    if not a.no_tracemalloc:
        del out
        tracemalloc.start()
        out, traced = run_sanitiser(reference, records, k, a.displacement)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        print(f"sanitiser tracemalloc peak {peak:,.0f} MB (traced run took {traced['total_s']:.1f} s: tracing is slow)")
    print(f"rules: {out['sanitise_rule'].value_counts().to_dict()}", flush=True)

    if a.skip_peer or not a.db:
        print("peer: skipped" + ("" if a.db else " (no --db / CSP_DATABASE_URL)"))
        print(f"max RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
        return
    import psycopg2

    conn = psycopg2.connect(a.db)
    load_s = load_tables(conn, SCHEMA, reference, records, k)
    print(f"PostGIS load (not timed against either side): {load_s:.1f} s", flush=True)
    t = time.perf_counter()
    peer = run_peer(conn, SCHEMA, k, a.displacement)
    peer_s = time.perf_counter() - t
    print(f"peer (PostGIS KNN LATERAL query): {peer_s:.2f} s", flush=True)
    print(f"ratio peer / sanitiser: {peer_s / times['total_s']:.1f}x")

    mine = pd.DataFrame({"record_id": records["record_id"].to_numpy(),
                         "mine": out["sanitised_postcode"].astype(str).to_numpy()})
    joined = mine.merge(peer, on="record_id", how="outer")
    same = (joined["mine"] == joined["target"]).to_numpy()
    print(f"agreement: {same.mean():.6%} of {len(joined):,} records assigned the same postcode")
    if not same.all():
        ref = reference.set_index("postcode")
        bad = joined[~same].merge(records[["record_id", "postcode"]], on="record_id")
        origin = ref.loc[bad["postcode"], ["easting", "northing"]].to_numpy(float)
        d_mine = np.hypot(*(ref.loc[bad["mine"], ["easting", "northing"]].to_numpy(float) - origin).T)
        d_peer = np.hypot(*(ref.reindex(bad["target"])[["easting", "northing"]].to_numpy(float) - origin).T)
        ties = d_mine == d_peer
        print(f"disagreements: {len(bad):,} ({int(ties.sum()):,} equal-distance ties)")
        print(bad.assign(d_mine=d_mine, d_peer=d_peer)[~ties].head(20).to_string())
    print(f"max RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    with conn.cursor() as cur:
        cur.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    conn.commit()
    conn.close()


if __name__ == "__main__":
    main()
