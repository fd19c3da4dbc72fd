"""Geocoding on the real Calderdale Code-Point extract, ONSPD terminated postcodes and the gazetteer."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from csp_observatory import gazetteer as gz
from csp_observatory import geocoding as geo
from csp_observatory import postcodes_sources
from csp_observatory.schema import LocationFields

pytestmark = pytest.mark.unit


class FeedFile:
    """The one attribute geocode() needs of a schema FeedFile."""

    location = LocationFields(address="addr", postcode="pc", easting="e", northing="n",
                              longitude="lon", latitude="lat")


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return postcodes_sources.shipped_reference()


@pytest.fixture(scope="module")
def places() -> pd.DataFrame:
    return gz.shipped_places()


def _frame(rows: list[dict]) -> pd.DataFrame:
    cols = {"addr": "string", "pc": "string", "e": "Int64", "n": "Int64", "lon": "Float64", "lat": "Float64"}
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows]).astype(cols)


def test_caister_water_tower_published_pair() -> None:
    # OS "Transformations and OSGM15 user guide", annexe: ETRS89 (~WGS84) 1.716073973 E, 52.658007833 N
    # -> OSGB36 National Grid 651409.804 E, 313177.450 N (OSTN15). Without the OSTN15 grid file PROJ uses
    # the Helmert transformation, good to a few metres.
    e, n = geo.wgs84_to_bng(np.array([1.716073973]), np.array([52.658007833]))
    assert abs(e[0] - 651409.804) < 4 and abs(n[0] - 313177.450) < 4


def test_methods_in_order(reference: pd.DataFrame, places: pd.DataFrame) -> None:
    hx = reference.set_index("postcode")
    term = reference[reference["terminated"]].iloc[0]
    frame = _frame([
        {"e": 409000, "n": 425000, "pc": "hx1 1ab"},            # supplied wins over the postcode
        {"e": 409000, "n": 425000},                             # supplied, no postcode: nearest live one
        {"lon": -1.8614, "lat": 53.7211},                       # Halifax in WGS84
        {"pc": "HX1  1AA"},                                     # live postcode
        {"pc": term["postcode"].replace(" ", "")},              # terminated postcode
        {"addr": "Car park, Bankfield Museum"},                 # non-addressable place
        {"addr": "12 Acacia Avenue"},                           # addressable text, nothing else: failed
        {"pc": "ZZ9 9ZZ"},                                      # well-formed but unknown
        {"pc": "not a postcode"},
        {"e": 5_000_000, "n": 5, "pc": "HX1 1AA"},              # supplied outside GB: falls back to postcode
    ])
    out = geo.geocode(frame, FeedFile(), reference, places)
    f = out.frame
    assert len(f) == len(frame) and list(f.columns[-5:]) == list(geo.GEO_COLUMNS)
    assert f["geocode_method"].tolist() == ["supplied", "supplied", "wgs84", "postcode", "terminated_postcode",
                                            "gazetteer", "failed", "failed", "failed", "postcode"]
    assert (f.loc[0, "geo_easting"], f.loc[0, "geo_postcode"]) == (409000, "HX1 1AB")
    live = reference[~reference["terminated"]]
    d = np.hypot(live["easting"] - 409000, live["northing"] - 425000)
    assert f.loc[1, "geo_postcode"] == live["postcode"].iloc[int(np.argmin(d))]
    assert 408500 < f.loc[2, "geo_easting"] < 410000 and 424500 < f.loc[2, "geo_northing"] < 425500
    assert (f.loc[3, "geo_easting"], f.loc[3, "geo_northing"]) == (hx.loc["HX1 1AA", "easting"],
                                                                   hx.loc["HX1 1AA", "northing"])
    assert f.loc[4, "geo_easting"] == term["easting"] and f.loc[4, "geo_postcode"] == term["postcode"]
    assert f.loc[4, "geocode_note"] == (f"postcode terminated {term['terminated_date']}; "
                                        "centroid of the terminated postcode used")
    museum = places.set_index("name1").loc["Bankfield Museum"]
    assert (f.loc[5, "geo_easting"], f.loc[5, "geo_northing"]) == (museum["x"], museum["y"])
    assert "Bankfield Museum" in f.loc[5, "geocode_note"]
    assert f.loc[6:8, "geo_easting"].isna().all()
    assert "not in the postcode reference" in f.loc[7, "geocode_note"]
    assert "not a UK postcode" in f.loc[8, "geocode_note"]
    assert "outside Great Britain" in f.loc[9, "geocode_note"]
    assert out.counts == {"supplied": 2, "wgs84": 1, "postcode": 2, "terminated_postcode": 1, "gazetteer": 1,
                          "outside_coverage": 0, "failed": 3, "total": 10}


def test_a_point_outside_the_references_coverage_is_flagged_not_moved(reference: pd.DataFrame) -> None:
    live = reference[~reference["terminated"]]
    e0, n0 = int(live["easting"].min()), int(live["northing"].min())
    west = live.loc[live["easting"].idxmin()]
    frame = _frame([
        {"e": e0 - 5000, "n": n0 - 5000},          # 7 km from every Calderdale postcode: outside the extract
        {"e": int(west["easting"]) - 400, "n": int(west["northing"])},   # 400 m past the edge: placed
        {"e": e0 - 5000, "n": n0 - 5000, "pc": live["postcode"].iloc[0]},   # its postcode is known: trusted
    ])
    out = geo.geocode(frame, FeedFile(), reference, None, coverage_max_m=1000)
    f = out.frame
    assert f["geocode_method"].tolist() == ["outside_coverage", "supplied", "supplied"]
    assert pd.isna(f.loc[0, "geo_easting"]) and pd.isna(f.loc[0, "geo_postcode"])
    assert "outside the reference's coverage" in f.loc[0, "geocode_note"]
    assert f.loc[1, "geo_postcode"] is not pd.NA and out.counts["outside_coverage"] == 1
    # A wider coverage distance, set per feed, places the same point.
    wide = geo.geocode(frame, FeedFile(), reference, None, coverage_max_m=50_000).frame
    assert wide.loc[0, "geocode_method"] == "supplied"


def test_problem_reasons_hold_no_values(reference: pd.DataFrame) -> None:
    frame = _frame([{"pc": "ZZ9 9ZZ"}, {"pc": "not a postcode"}, {"e": 5_000_000, "n": 5, "pc": "QQ1 1QQ"}, {}])
    f = geo.geocode(frame, FeedFile(), reference, None).frame
    reasons = geo.problem_reasons(f["geocode_note"]).tolist()
    assert reasons == ["the postcode is not in the postcode reference", "the postcode is not a valid UK postcode",
                       "the postcode is not in the postcode reference; the easting/northing is outside Great "
                       "Britain", "no coordinates, postcode or recognised place"]
    assert not any(v in r for r in reasons for v in ("ZZ9", "not a postcode", "QQ1", "5000000"))


def test_without_places_and_without_location_columns(reference: pd.DataFrame) -> None:
    class NoLocation:
        location = LocationFields()

    frame = pd.DataFrame({"x": [1, 2]})
    out = geo.geocode(frame, NoLocation(), reference)
    assert out.frame["geocode_method"].tolist() == ["failed", "failed"] and out.counts["failed"] == 2
    only_text = _frame([{"addr": "Car park, Bankfield Museum"}])
    assert geo.geocode(only_text, FeedFile(), reference, None).frame["geocode_method"].iloc[0] == "failed"


def test_every_real_postcode_geocodes_to_its_centroid(reference: pd.DataFrame) -> None:
    live = reference[~reference["terminated"]]
    frame = _frame([{"pc": p.lower().replace(" ", "")} for p in live["postcode"]])
    out = geo.geocode(frame, FeedFile(), reference).frame
    assert (out["geocode_method"] == "postcode").all()
    assert np.array_equal(out["geo_easting"].to_numpy(float), live["easting"].to_numpy(float))
    assert out["geo_postcode"].tolist() == live["postcode"].tolist()


def test_geocoded_wgs84_postcode_centroids_round_trip(reference: pd.DataFrame) -> None:
    from pyproj import Transformer

    live = reference[~reference["terminated"]].head(200)
    lon, lat = Transformer.from_crs(27700, 4326, always_xy=True).transform(
        live["easting"].to_numpy(float), live["northing"].to_numpy(float))
    out = geo.geocode(_frame([{"lon": a, "lat": b} for a, b in zip(lon, lat)]), FeedFile(), reference).frame
    assert (out["geocode_method"] == "wgs84").all()
    assert np.allclose(out["geo_easting"].to_numpy(float), live["easting"].to_numpy(float), atol=0.01)
    # A point at a postcode's centroid is given that postcode (or one sharing the very same centroid).
    chosen = reference.set_index("postcode").loc[out["geo_postcode"].tolist()]
    assert np.allclose(chosen["easting"].to_numpy(float), live["easting"].to_numpy(float))
    assert np.allclose(chosen["northing"].to_numpy(float), live["northing"].to_numpy(float))


def test_a_known_non_addressable_place_wins_over_supplied_coordinates(reference: pd.DataFrame,
                                                                      places: pd.DataFrame) -> None:
    # Appendix 1: a park or car park is placed at the place's centre point (and is exempt from the household
    # rule), even when the partner also sent coordinates; an addressable text with coordinates keeps them.
    frame = _frame([
        {"addr": "Car park, Bankfield Museum, Halifax", "e": 409000, "n": 425000, "pc": "HX1 1AA"},
        {"addr": "12 Park Road, Halifax", "e": 409000, "n": 425000},
        {"addr": "Unknown Park, Nowhere", "e": 409000, "n": 425000},   # no gazetteer match: coordinates kept
    ])
    f = geo.geocode(frame, FeedFile(), reference, places).frame
    assert f["geocode_method"].tolist() == ["gazetteer", "supplied", "supplied"]
    museum = places.set_index("name1").loc["Bankfield Museum"]
    assert (f.loc[0, "geo_easting"], f.loc[0, "geo_northing"]) == (museum["x"], museum["y"])
    assert f.loc[1, "geo_easting"] == 409000


def test_house_names_in_bridge_towns_are_not_places_and_homes_never_are(reference: pd.DataFrame,
                                                                       places: pd.DataFrame) -> None:
    # "Sowerby Bridge" is a town: an address there with a postcode is geocoded by its postcode, not taken for
    # the railway station; and a person's home address is never looked up in the gazetteer at all.
    class Home:
        location = LocationFields(address="addr", postcode="pc", easting="e", northing="n", kind="home")

    frame = _frame([
        {"addr": "Rose Cottage, Queens Road, Sowerby Bridge", "pc": "HX1 1AA"},
        {"addr": "Sowerby Bridge Railway Station"},
    ])
    assert geo.geocode(frame, FeedFile(), reference, places).frame["geocode_method"].tolist() == [
        "postcode", "gazetteer"]
    assert geo.geocode(frame, Home(), reference, places).frame["geocode_method"].tolist() == [
        "postcode", "failed"]


def test_gazetteer_hints_in_re2_find_the_rows_python_finds():
    """The RE2 pass over plain ASCII values agrees with Python's ``re`` (word edges, any space, case, lines)."""
    from csp_observatory import textkernels

    texts = pd.Series(["Car park", "car  park rear", "CAR\tPARK", "car\x0bpark", "car\x1cpark", "multi-storey",
                       "multi \t storey car", "lay-by", "LAY BY", "Park Road", "Parks Lane", "the park, Halifax",
                       "ParkRoad", "park_", "_park", "park1", "carpark", "Sowerby Bridge", "5 Bridge St", None, "",
                       "Station", "stations", "junction of A and B", "corner of High St", "caf\u00e9 park",
                       "park\u00e9", "park\nroad", "\u212aing's park", "waste ground", "wasteground", "rec ground"],
                      dtype="string")
    for pattern in (gz.STRONG_HINT, gz.NON_ADDRESSABLE_HINT):
        expected = textkernels.contains_distinct(texts, pattern)
        assert expected.any() and not expected.all()
        np.testing.assert_array_equal(textkernels.contains(texts, pattern), expected)
