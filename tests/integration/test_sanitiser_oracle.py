"""Oracle: the sanitiser's displacement map agrees record for record with a PostGIS KNN query."""
from __future__ import annotations

import os
import uuid

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def conn():
    url = os.environ.get("CSP_DATABASE_URL")
    if not url:
        pytest.skip("CSP_DATABASE_URL is not set: the oracle needs a PostGIS database to compare against")
    import psycopg2

    c = psycopg2.connect(url)
    yield c
    c.close()


def oracle_reference() -> pd.DataFrame:
    """20k synthetic postcodes, with empty wards and districts and exact ties added on purpose."""
    from csp_observatory.postcodes_synthetic import national_synthetic_reference

    ref = national_synthetic_reference(n_live=20_000, n_terminated=1_500, seed=11)
    ref["households"] = pd.to_numeric(ref["households"]).astype("int64")
    rng = np.random.default_rng(2)
    d0 = ref["district_code"].iloc[0]
    wards = ref.loc[ref["district_code"] != d0, "ward_code"].dropna().unique()
    # wards with no eligible postcode push records to the district level; one whole district to "anywhere"
    emptied = rng.choice(wards, 12, replace=False)
    for w in emptied:
        ref.loc[ref["ward_code"] == w, "households"] = ref.loc[ref["ward_code"] == w, "households"].clip(upper=3)
    ref.loc[ref["district_code"] == d0, "households"] = ref.loc[ref["district_code"] == d0, "households"].clip(upper=3)
    # exact ties: twins of eligible postcodes at the same centroid, under other postcode strings
    ok = ref[(ref["households"] >= 4) & ~ref["terminated"]].sample(300, random_state=4)
    twins = ok.assign(postcode=[f"ZZ{i % 90 + 10} {i % 9}AA" if i < 90 else f"ZY{i:03d} 1AB"
                                for i in range(len(ok))])
    # and postcodes placed symmetrically (same distance, different points) around small ones
    small = ref[(ref["households"] < 4) & ~ref["terminated"] & (ref["district_code"] != d0)
                & ~ref["ward_code"].isin(emptied)].sample(100, random_state=5)
    mirror = pd.concat([small.assign(postcode=[f"YA{i:03d} 2BB" for i in range(len(small))],
                                     easting=small["easting"] + 7, households=9, terminated=False),
                        small.assign(postcode=[f"YB{i:03d} 2BB" for i in range(len(small))],
                                     easting=small["easting"] - 7, households=9, terminated=False)])
    return pd.concat([ref, twins, mirror], ignore_index=True)


@pytest.mark.parametrize("displacement", ["nearest", "same_ward_first"])
def test_sanitiser_and_postgis_knn_assign_the_same_postcode_to_every_record(conn, displacement):
    from benchmarks.sanitise_vs_postgis import load_tables, make_records, run_peer, run_sanitiser

    ref = oracle_reference()
    records = make_records(ref, 5_000, k=4, seed=3)
    # put the first records where the hard cases are: mirrored ties, an emptied district, emptied wards
    small = ref[(ref["households"] < 4) & ~ref["terminated"]]
    mirrored = ref.loc[ref["postcode"].str.startswith("YA"), ["easting", "northing"]].merge(
        small, left_on=["easting", "northing"], right_on=[small["easting"] + 7, small["northing"]])["postcode"]
    in_d0 = small.loc[small["district_code"] == ref["district_code"].iloc[0], "postcode"].head(50)
    eligible = ref[(ref["households"] >= 4) & ~ref["terminated"]]
    empty_ward = small[~small["ward_code"].isin(eligible["ward_code"])
                       & small["district_code"].isin(eligible["district_code"])]["postcode"].head(50)
    chosen = pd.concat([mirrored, in_d0, empty_ward]).to_numpy(object)
    records.loc[: len(chosen) - 1, "postcode"] = chosen
    records["geo_postcode"] = pd.array(records["postcode"], dtype="string")

    schema = f"oracle_{uuid.uuid4().hex[:8]}"
    try:
        load_tables(conn, schema, ref, records, k=4)
        peer = run_peer(conn, schema, k=4, displacement=displacement)
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.commit()
    mine, _ = run_sanitiser(ref, records, k=4, displacement=displacement)
    got = pd.DataFrame({"record_id": records["record_id"], "mine": mine["sanitised_postcode"].astype(str),
                        "my_rule": mine["sanitise_rule"].astype(str)}).merge(peer, on="record_id")
    assert len(got) == len(records)
    rules = set(got["rule"])
    expected = {"own_postcode", "next_nearest"} if displacement == "nearest" else \
        {"own_postcode", "same_ward", "same_district", "anywhere"}
    assert rules == expected, rules
    disagree = got[(got["mine"] != got["target"]) | (got["my_rule"] != got["rule"])]
    assert disagree.empty, disagree.head(20).to_string()
