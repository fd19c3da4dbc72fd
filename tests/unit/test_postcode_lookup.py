"""Looking postcodes up by integer codes gives exactly Arrow's ``index_in`` (issue 9)."""
from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pac
import pytest

from csp_observatory.postcodes import PostcodeLookup, pack_postcodes
from csp_observatory.postcodes_sources import shipped_reference

pytestmark = pytest.mark.unit


def _index_in(query: list, keys: list) -> list[int]:
    found = pac.index_in(pa.array(query, pa.string()), value_set=pa.array(keys, pa.string()))
    return pac.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64).tolist()


def _queries(keys: list[str], seed: int) -> list[str | None]:
    rng = random.Random(seed)
    odd = [None, "", " ", "HX1 1AA ", "hx1 1aa", "HX1  1AA", "HX11AA", "HX1 1AA\x00", "HX1\x00", "É1 1AA",
           "AB12 3CDX", "ZZ99 9ZZ", "A", "\x00", "HX1 1A"]
    return [rng.choice(keys) if rng.random() < 0.7 else rng.choice(odd) for _ in range(5000)]


@pytest.mark.parametrize("seed", range(3))
def test_lookup_matches_index_in_on_the_reference(seed):
    keys = shipped_reference()["postcode"].astype(str).tolist()
    keys += keys[::7]         # repeats, as in a reference with a live and a terminated row: the first row wins
    query = _queries(keys, seed)
    got = PostcodeLookup(pa.array(keys, pa.string())).positions(pa.array(query, pa.string()))
    assert got.tolist() == _index_in(query, keys)
    assert (got >= 0).sum() > 1000


def test_lists_that_do_not_pack_fall_back_to_index_in():
    keys = ["HX1 1AA", "LONGER THAN 8", None, "HX1 1AA", "É1 1AA", ""]
    query = ["HX1 1AA", "LONGER THAN 8", None, "É1 1AA", "", "nope"]
    assert PostcodeLookup(pa.array(keys, pa.string())).positions(pa.array(query, pa.string())).tolist() == \
        _index_in(query, keys)
    assert PostcodeLookup(pa.array([], pa.string())).positions(pa.array(query, pa.string())).tolist() == [-1] * 6


def test_packing_keeps_order_and_equality():
    values = ["A1 1AA", "A1 1AB", "AB1 1AA", "B1", "", "ZZ99 9ZZ"]
    codes, ok = pack_postcodes(pa.array(values))
    assert ok.all() and len(set(codes.tolist())) == len(values)
    assert np.argsort(codes).tolist() == sorted(range(len(values)), key=values.__getitem__)
    _, ok = pack_postcodes(pa.array(["HX1 1AA", None, "HX1\x00", "123456789", "é"]))
    assert ok.tolist() == [True, False, False, False, False]


def _old_sanitised_columns(frame, postcode_map):
    """The sanitiser's location columns as the previous implementation computed them (a DataFrame lookup)."""
    import pandas as pd

    idx = frame.index
    method = frame["geocode_method"].astype("string").fillna("failed")
    geo_e = pd.to_numeric(frame["geo_easting"], errors="coerce").astype(float)
    geo_n = pd.to_numeric(frame["geo_northing"], errors="coerce").astype(float)
    geo_pc = frame["geo_postcode"].astype("string")
    gazetteer = (method == "gazetteer").to_numpy(bool)
    has_point = geo_e.notna().to_numpy() & geo_n.notna().to_numpy()
    addressable = ~gazetteer & ~method.isin(["failed"]).to_numpy(bool)
    pos = postcode_map.positions(geo_pc)
    need_nearest = addressable & (pos < 0) & has_point
    if need_nearest.any():
        geo_pc = geo_pc.copy()
        geo_pc.iloc[np.flatnonzero(need_nearest)] = postcode_map.nearest_live(
            geo_e.to_numpy()[need_nearest], geo_n.to_numpy()[need_nearest])
        pos = None
    m = postcode_map.lookup(geo_pc, pos)
    mapped = addressable & m["target_postcode"].notna().to_numpy()
    s_e = np.where(mapped, m["target_easting"].to_numpy(float, na_value=np.nan), np.nan)
    s_n = np.where(mapped, m["target_northing"].to_numpy(float, na_value=np.nan), np.nan)
    s_e = np.where(gazetteer & has_point, geo_e.to_numpy(), s_e)
    s_n = np.where(gazetteer & has_point, geo_n.to_numpy(), s_n)
    s_pc = pd.Series(m["target_postcode"].to_numpy(object), index=idx, dtype="string")
    s_pc[~(mapped | gazetteer)] = pd.NA
    rules = np.where(mapped, m["rule"].to_numpy(object, na_value=""), "not_geocoded").astype(object)
    rules[gazetteer & has_point] = "non_addressable"
    from_e = np.where(has_point, geo_e.to_numpy(), m["easting"].to_numpy(float, na_value=np.nan))
    from_n = np.where(has_point, geo_n.to_numpy(), m["northing"].to_numpy(float, na_value=np.nan))
    disp = np.where(mapped, np.hypot(s_e - from_e, s_n - from_n), np.nan)
    disp[gazetteer & has_point] = 0.0
    return pd.DataFrame({"sanitised_postcode": s_pc, "sanitised_easting": pd.array(s_e, dtype="Float64"),
                         "sanitised_northing": pd.array(s_n, dtype="Float64"),
                         "sanitise_rule": pd.array(rules, dtype="string"),
                         "displacement_m": pd.array(disp, dtype="Float64")}, index=idx)


@pytest.mark.parametrize("displacement", ["nearest", "same_ward_first"])
def test_sanitise_places_every_record_as_the_previous_lookup_did(displacement):
    import pandas as pd

    from csp_observatory import sanitising, sanitising_displacement
    from csp_observatory.schema import SCHEMA_DIR
    from csp_observatory.schema_loading import load_schema

    reference = shipped_reference()
    pmap = sanitising_displacement.build_displacement(reference, 4, displacement)
    rng = np.random.default_rng(5)
    n = 4000
    pcs = reference["postcode"].to_numpy(object)[rng.integers(0, len(reference), n)].astype(object)
    pcs[rng.random(n) < 0.1] = None
    pcs[rng.random(n) < 0.05] = "ZZ99 9ZZ"
    e = reference["easting"].to_numpy(float)[rng.integers(0, len(reference), n)] + rng.integers(-40, 40, n)
    nn = reference["northing"].to_numpy(float)[rng.integers(0, len(reference), n)] + rng.integers(-40, 40, n)
    no_point = rng.random(n) < 0.4
    e[no_point], nn[no_point] = np.nan, np.nan
    method = rng.choice(["postcode", "supplied", "wgs84", "gazetteer", "failed", "terminated_postcode"], n)
    frame = pd.DataFrame({"geocode_method": pd.array(method, dtype="string"), "geo_easting": e,
                          "geo_northing": nn, "geo_postcode": pd.array(pcs, dtype="string")},
                         index=pd.RangeIndex(100, 100 + n))
    ff = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml").file("offences")
    got = sanitising.sanitise(frame, ff, pmap).frame
    expected = _old_sanitised_columns(frame, pmap)
    pd.testing.assert_frame_equal(got[list(expected.columns)], expected)
    assert set(expected["sanitise_rule"]) >= {"own_postcode", "not_geocoded", "non_addressable"}


def test_summary_counts_as_the_previous_string_comparison_did():
    import pandas as pd

    from csp_observatory import sanitising, sanitising_displacement

    rng = np.random.default_rng(8)
    rules = rng.choice([*sanitising_displacement.RULES, None, "other"], 5000).astype(object)
    disp = np.where(rng.random(5000) < 0.1, np.nan, np.round(rng.random(5000) * 2000, 1))
    frame = pd.DataFrame({"sanitise_rule": pd.array(rules, dtype="string"),
                          "displacement_m": pd.array(disp, dtype="Float64")})
    old_rules = frame["sanitise_rule"].astype(str)
    counts = {r: int((old_rules == r).sum()) for r in sanitising_displacement.RULES}
    moved = frame.loc[old_rules.isin(sanitising_displacement.POSTCODE_RULES).to_numpy(), "displacement_m"]
    summary = sanitising.summarise(frame)
    assert summary["rules"] == counts and sum(counts.values()) > 0
    assert summary["displacement_m"]["records"] == int(moved.astype(float).dropna().size)
