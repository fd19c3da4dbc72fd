"""Appendix 1 sanitising: displacement map against a brute-force oracle, the column contract, invariants."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from csp_observatory.postcodes import SHIPPED_CODEPOINT
from csp_observatory.sanitising import sanitise
from csp_observatory.sanitising_checks import check_sanitised
from csp_observatory.sanitising_displacement import build_displacement
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit

#: The real Calderdale Code-Point Open extract shipped in include/postcodes.
CPO = SHIPPED_CODEPOINT


def calderdale_reference(seed: int = 7) -> pd.DataFrame:
    """Real Calderdale postcode centroids with SYNTHETIC household counts (fixed seed)."""
    raw = pd.read_csv(CPO, header=None, usecols=[0, 2, 3, 8, 9],
                      names=["postcode", "easting", "northing", "district_code", "ward_code"])
    rng = np.random.default_rng(seed)
    raw["postcode"] = raw["postcode"].str.replace(r"\s+", " ", regex=True).str.strip()
    raw = raw[raw["easting"] > 0].reset_index(drop=True)
    raw["households"] = rng.choice([0, 1, 2, 3, 4, 5, 8, 12, 20], size=len(raw))
    raw["terminated"] = rng.random(len(raw)) < 0.05
    raw["source"] = "codepoint-open-2014 + synthetic households"
    return raw


def brute_force(ref: pd.DataFrame, threshold: int, displacement: str = "same_ward_first"
                ) -> dict[str, tuple[str, str]]:
    """The Appendix 1 rule written the slow, obvious way: sort candidates by (distance, postcode)."""
    ok = ref[(~ref["terminated"]) & (ref["households"] >= threshold)]
    out = {}
    for row in ref.itertuples():
        if not row.terminated and row.households >= threshold:
            out[row.postcode] = (row.postcode, "own_postcode")
            continue
        levels = (("next_nearest", ok),) if displacement == "nearest" else (
            ("same_ward", ok[ok["ward_code"] == row.ward_code]),
            ("same_district", ok[ok["district_code"] == row.district_code]),
            ("anywhere", ok))
        for rule, cand in levels:
            if len(cand):
                d = np.hypot(cand["easting"] - row.easting, cand["northing"] - row.northing)
                best = sorted(zip(d, cand["postcode"]))[0]
                out[row.postcode] = (best[1], rule)
                break
    return out


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return calderdale_reference()


@pytest.fixture(scope="module")
def pmap(reference):
    return build_displacement(reference, threshold=4)


@pytest.fixture(scope="module")
def offences():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml").file("offences")


@pytest.fixture(scope="module")
def victims():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml").file("victims")


@pytest.mark.parametrize("threshold", [4, 8])   # 4: Appendix 1; 8: data.police.uk's eight addresses
def test_map_matches_brute_force_on_calderdale(reference, threshold):
    # a subset keeps the brute force quick; some wards lose all targets so every level is exercised
    ref = reference.sample(900, random_state=3).reset_index(drop=True)
    wards = ref["ward_code"].unique()[:3]
    ref.loc[ref["ward_code"].isin(wards), "households"] = \
        ref.loc[ref["ward_code"].isin(wards), "households"].clip(upper=threshold - 1)
    ref.loc[ref.index[:40], "ward_code"] = None
    ref.loc[ref.index[:20], "district_code"] = "E08999999"
    got = build_displacement(ref, threshold=threshold, displacement="same_ward_first").table
    expected = brute_force(ref, threshold)
    assert len(got) == len(ref)
    mismatched = [pc for pc, (target, rule) in expected.items()
                  if (got.loc[pc, "target_postcode"], got.loc[pc, "rule"]) != (target, rule)]
    assert mismatched == []
    assert set(got["rule"]) == {"own_postcode", "same_ward", "same_district", "anywhere"}
    hh = ref.set_index("postcode")["households"]
    assert (hh.loc[got["target_postcode"]].to_numpy() >= threshold).all()


@pytest.mark.parametrize("threshold", [4, 8])
def test_the_default_is_appendix_1s_next_nearest_postcode(reference, threshold):
    ref = reference.sample(900, random_state=4).reset_index(drop=True)
    ref.loc[ref.index[:40], "ward_code"] = None        # wards play no part in the default rule
    pmap = build_displacement(ref, threshold=threshold)
    assert pmap.displacement == "nearest"
    got = pmap.table
    expected = brute_force(ref, threshold, displacement="nearest")
    mismatched = [pc for pc, (target, rule) in expected.items()
                  if (got.loc[pc, "target_postcode"], got.loc[pc, "rule"]) != (target, rule)]
    assert mismatched == []
    assert set(got["rule"]) == {"own_postcode", "next_nearest"}
    # never further than the ward-first rule would move a record, and sometimes nearer (across a ward edge)
    ward = build_displacement(ref, threshold=threshold, displacement="same_ward_first").table
    assert (got["distance_m"] <= ward["distance_m"] + 1e-9).all()
    assert (got["distance_m"] < ward["distance_m"] - 1e-9).any()


def test_levels_ties_and_terminated_on_a_hand_made_reference():
    ref = pd.DataFrame({
        "postcode": ["AA1 1AA", "AA1 1AB", "AA1 1AC", "AA1 1AD", "AA1 1AE", "AA1 1AF", "AA1 1AG"],
        "easting": [1000, 1100, 900, 1000, 5000, 9000, 1001],
        "northing": [1000, 1000, 1000, 1300, 5000, 9000, 1000],
        "households": [1, 10, 10, 50, 2, 3, 40],
        "ward_code": ["W1", "W1", "W1", "W1", "W2", "W3", "W1"],
        "district_code": ["D1", "D1", "D1", "D1", "D1", "D2", "D1"],
        "terminated": [False, False, False, False, False, False, True],
        "source": "test",
    })
    m = build_displacement(ref, threshold=4, displacement="same_ward_first").table
    # AA1 1AB and AA1 1AC are both exactly 100 m away: the smaller postcode string wins
    assert m.loc["AA1 1AA", "target_postcode"] == "AA1 1AB"
    assert m.loc["AA1 1AA", "rule"] == "same_ward"
    assert m.loc["AA1 1AA", "distance_m"] == pytest.approx(100.0)
    # a terminated postcode is never a target, even with households: AA1 1AG (1 m away) is skipped
    assert "AA1 1AG" not in set(m["target_postcode"])
    assert m.loc["AA1 1AG", "target_postcode"] == "AA1 1AB"  # 99 m vs 101 m
    # W2 has no target: nearest in district D1 (AA1 1AD at (1000,1300) is nearer to (5000,5000) than 1AB/1AC)
    assert tuple(m.loc["AA1 1AE", ["target_postcode", "rule"]]) == ("AA1 1AD", "same_district")
    # W3/D2 has no target at all
    assert m.loc["AA1 1AF", "rule"] == "anywhere"
    assert m.loc["AA1 1AD", "rule"] == "own_postcode"


def test_many_way_tie_wider_than_the_first_query():
    # ten targets on a circle of radius 500 around one small postcode: all tie, the smallest string wins
    angles = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    names = [f"ZZ9 9{chr(ord('Z') - i)}Z" for i in range(10)]
    ref = pd.DataFrame({
        "postcode": ["ZZ1 1AA", *names],
        "easting": [10000, *(10000 + np.round(500 * np.cos(angles)).astype(int))],
        "northing": [10000, *(10000 + np.round(500 * np.sin(angles)).astype(int))],
        "households": [0, *[9] * 10], "ward_code": "W", "district_code": "D", "terminated": False, "source": "t",
    })
    # round() breaks exact ties for some angles: compute the expected winner independently
    d2 = (ref["easting"][1:] - 10000) ** 2 + (ref["northing"][1:] - 10000) ** 2
    expected = min(zip(d2, ref["postcode"][1:]))[1]
    assert build_displacement(ref).table.loc["ZZ1 1AA", "target_postcode"] == expected
    exact = pd.DataFrame({"postcode": ["ZZ1 1AA", "ZZ9 9DD", "ZZ9 9CC", "ZZ9 9BB", "ZZ9 9AA", "ZZ9 9EE",
                                       "ZZ9 9FF", "ZZ9 9GG", "ZZ9 9HH", "ZZ9 9JJ"],
                          "easting": [0, 300, -300, 0, 0, 400, -400, 400, -400, 500],
                          "northing": [0, 400, 400, 500, -500, 300, 300, -300, -300, 0],
                          "households": [0] + [5] * 9, "ward_code": "W", "district_code": "D",
                          "terminated": False, "source": "t"})
    assert build_displacement(exact).table.loc["ZZ1 1AA", "target_postcode"] == "ZZ9 9AA"


def _records(reference: pd.DataFrame, n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pcs = reference.sample(n, replace=True, random_state=seed).reset_index(drop=True)
    e = pcs["easting"] + rng.integers(-30, 30, n)
    nn = pcs["northing"] + rng.integers(-30, 30, n)
    return pd.DataFrame({
        "crime_reference": pd.array([f"CR{i:06d}" for i in range(n)], dtype="string"),
        "ho_offence_code": pd.array(["28/1"] * n, dtype="string"),
        "committed_from_date": pd.to_datetime(["2026-09-15"] * n),
        "location_address": pd.array([f"{i % 90 + 1} King Cross Road, Halifax {p}"
                                      for i, p in enumerate(pcs["postcode"])], dtype="string"),
        "location_postcode": pd.array(pcs["postcode"], dtype="string"),
        "easting": pd.array(e, dtype="Int64"), "northing": pd.array(nn, dtype="Int64"),
        "longitude": pd.array([None] * n, dtype="Float64"), "latitude": pd.array([None] * n, dtype="Float64"),
        "geo_easting": e.astype(float), "geo_northing": nn.astype(float),
        "geo_postcode": pd.array(pcs["postcode"], dtype="string"),
        "geocode_method": pd.array(["supplied"] * n, dtype="string"),
        "geocode_note": pd.array([None] * n, dtype="string"),
    })


def test_sanitise_offences_column_contract_and_points(reference, pmap, offences):
    frame = _records(reference, 2000)
    frame.loc[5, ["geocode_method"]] = "gazetteer"
    frame.loc[5, "location_address"] = "Car park, Bankfield Museum"
    frame.loc[5, ["geo_easting", "geo_northing"]] = [408000.0, 426000.0]
    frame.loc[6, "geocode_method"] = "failed"
    frame.loc[6, ["geo_easting", "geo_northing"]] = np.nan
    frame.loc[6, "geo_postcode"] = pd.NA
    res = sanitise(frame, offences, pmap)
    out = res.frame
    for col in ("easting", "northing", "longitude", "latitude", "geo_easting", "geo_northing", "geo_postcode"):
        assert col not in out
    for col in ("sanitised_postcode", "sanitised_easting", "sanitised_northing", "sanitise_rule", "displacement_m"):
        assert col in out
    assert check_sanitised(out, pmap, offences) == []
    # every postcode-rule record sits on the centroid of its map target, which has >= 4 households
    hh = reference.set_index("postcode")["households"]
    moved = out[~out["sanitise_rule"].isin(["non_addressable", "not_geocoded"])]
    assert (hh.loc[moved["sanitised_postcode"]].to_numpy() >= 4).all()
    expect = pmap.table.loc[frame.loc[moved.index, "geo_postcode"].astype(str)]
    assert (moved["sanitised_postcode"].to_numpy() == expect["target_postcode"].to_numpy()).all()
    assert (moved["sanitise_rule"].to_numpy() == expect["rule"].to_numpy()).all()
    d = np.hypot(moved["sanitised_easting"].astype(float) - frame.loc[moved.index, "geo_easting"],
                 moved["sanitised_northing"].astype(float) - frame.loc[moved.index, "geo_northing"])
    assert np.allclose(moved["displacement_m"].astype(float), d)
    # the postcode field now holds the sanitised postcode; the address has no house number
    assert (out.loc[moved.index, "location_postcode"] == moved["sanitised_postcode"]).all()
    assert not out.loc[moved.index, "location_address"].str.contains(r"^\d", regex=True).any()
    small = frame["geo_postcode"].map(hh) < 4
    assert (out.loc[small[small].index.intersection(moved.index), "sanitise_rule"] != "own_postcode").all()
    # gazetteer point kept, failed geocode has no point
    assert out.loc[5, "sanitise_rule"] == "non_addressable"
    assert (out.loc[5, "sanitised_easting"], out.loc[5, "sanitised_northing"]) == (408000.0, 426000.0)
    assert out.loc[5, "location_address"] == "Car park, Bankfield Museum"
    assert out.loc[6, "sanitise_rule"] == "not_geocoded" and pd.isna(out.loc[6, "sanitised_easting"])
    assert pd.isna(out.loc[6, "location_postcode"])
    s = res.summary
    assert sum(s["rules"].values()) == len(frame)
    assert s["rules"]["not_geocoded"] == 1 and s["rules"]["non_addressable"] == 1
    assert sum(s["displacement_m"]["histogram"].values()) == s["displacement_m"]["records"] == len(moved)
    assert s["displacement_m"]["min"] <= s["displacement_m"]["median"] <= s["displacement_m"]["p90"] \
        <= s["displacement_m"]["p99"] <= s["displacement_m"]["max"]


def test_point_without_known_postcode_goes_to_nearest_live_postcode_first(reference, pmap, offences):
    frame = _records(reference, 3)
    frame["geo_postcode"] = pd.array([pd.NA, "ZZ99 9ZZ", pd.NA], dtype="string")
    frame["geocode_method"] = "wgs84"
    res = sanitise(frame, offences, pmap).frame
    live = reference[~reference["terminated"]]
    for i in range(3):
        d = np.hypot(live["easting"] - frame.loc[i, "geo_easting"], live["northing"] - frame.loc[i, "geo_northing"])
        nearest = live["postcode"].to_numpy()[np.argmin(d.to_numpy())]
        assert res.loc[i, "sanitised_postcode"] == pmap.table.loc[nearest, "target_postcode"]


def test_victims_drop_name_and_date_of_birth_and_derive_age(reference, pmap, victims):
    pcs = reference["postcode"].iloc[:4]
    frame = pd.DataFrame({
        "crime_reference": pd.array(["CR1", "CR2", "CR3", "CR4"], dtype="string"),
        "victim_reference": pd.array(["V1", "V1", "V1", "V1"], dtype="string"),
        "victim_name": pd.array(["Ann Smith", "Bob Jones", None, "Cy Doe"], dtype="string"),
        "gender": pd.array(["F", "M", "F", "X"], dtype="string"),
        "date_of_birth": pd.to_datetime(["1990-09-30", "1990-10-01", None, "2000-02-29"]),
        "age": pd.array([None, None, 41, 7], dtype="Int64"),
        "home_address": pd.array(["Flat 2, 3 Gibbet Street", None, "Rose Cottage, Moor Lane", "9 Clare Road"],
                                 dtype="string"),
        "home_postcode": pd.array(pcs, dtype="string"),
        "home_easting": pd.array(reference["easting"].iloc[:4], dtype="Int64"),
        "home_northing": pd.array(reference["northing"].iloc[:4], dtype="Int64"),
        "geo_easting": reference["easting"].iloc[:4].astype(float).to_numpy(),
        "geo_northing": reference["northing"].iloc[:4].astype(float).to_numpy(),
        "geo_postcode": pd.array(pcs, dtype="string"),
        "geocode_method": pd.array(["supplied"] * 4, dtype="string"),
    })
    out = sanitise(frame, victims, pmap, period_end="2026-09-30").frame
    assert "victim_name" not in out and "date_of_birth" not in out
    # 30 Sep 2026: 36 on the birthday itself, 35 the day before it; supplied age kept without DOB;
    # a DOB wins over a supplied age
    assert list(out["age"]) == [36, 35, 41, 26]
    assert list(out["home_address"].fillna("<NA>")) == ["Gibbet Street", "<NA>", "Moor Lane", "Clare Road"]
    assert check_sanitised(out, pmap, victims) == []
    ev = sanitise(frame, victims, pmap, event_dates=pd.Series(pd.to_datetime(["2026-09-29"] * 4)),
                  period_end="2026-09-30").frame
    assert list(ev["age"]) == [35, 35, 41, 26]


def test_check_sanitised_finds_unsafe_points_addresses_and_personal_columns(reference, pmap, offences):
    out = sanitise(_records(reference, 50), offences, pmap).frame
    bad = out.copy()
    small = reference[(reference["households"] < 4) & ~reference["terminated"]].iloc[0]
    bad.loc[0, ["sanitised_easting", "sanitised_northing"]] = [float(small.easting), float(small.northing)]
    bad.loc[0, "sanitised_postcode"] = small.postcode
    bad.loc[1, "location_address"] = "Flat 3, King Cross Road"
    bad.loc[2, "location_address"] = "14 King Cross Road"
    bad["easting"] = 1
    problems = check_sanitised(bad, pmap, offences)
    assert any("centroid" in p for p in problems)
    assert any("2 address(es)" in p for p in problems)
    assert any("easting" in p for p in problems)
    nudged = out.copy()
    nudged.loc[3, "sanitised_easting"] = float(nudged.loc[3, "sanitised_easting"]) + 1
    assert any("centroid" in p for p in check_sanitised(nudged, pmap, offences))


def test_text_taken_for_a_place_is_still_cleaned_of_house_names(reference, pmap, offences):
    # Defence in depth: if a house address were ever matched to the gazetteer, its house name must not survive.
    frame = _records(reference, 3)
    frame.loc[0, "geocode_method"] = "gazetteer"
    frame.loc[0, "location_address"] = "Rose Cottage, Queens Road, Sowerby Bridge"
    out = sanitise(frame, offences, pmap).frame
    assert out.loc[0, "sanitise_rule"] == "non_addressable"
    assert out.loc[0, "location_address"] == "Queens Road, Sowerby Bridge"


#: Personal data a partner typed into free text: a name, a house number and street, a postcode, a date of birth.
TYPED = {"name": "Mr John Smith", "address": "12 Acacia Avenue", "postcode": "HX1 2AB", "date": "12/03/1985"}


def _typed(template: str) -> str:
    return template.format(**TYPED)


def test_personal_data_typed_into_free_text_never_survives_sanitising(reference, pmap, offences):
    frame = _records(reference, 6)
    frame["method_of_entry"] = pd.array([
        _typed("Rear door forced by {name} of {address}, {postcode}, DOB {date}"),
        _typed("Window smashed; {name} (born {date}) saw it"), "Insecure door", None,
        _typed("front door, call 07700 900123 or jo@example.com"), "Lock snapped"], dtype="string")
    frame["property_stolen"] = pd.array([
        _typed("Laptop belonging to {name}"), _typed("post addressed to {address} {postcode}"), "Cash", None,
        "Bicycle", _typed("Passport, DOB {date}")], dtype="string")
    frame["weapon_used"] = pd.array(["Knife", None, None, None, None, "Hands/feet"], dtype="string")
    res = sanitise(frame, offences, pmap)
    out = res.frame
    for col in ("method_of_entry", "property_stolen"):
        text = " ".join(out[col].dropna())
        for kind, value in TYPED.items():
            assert value not in text, (col, kind)
        assert "Smith" not in text and "Acacia" not in text and "1985" not in text
    assert out.loc[0, "method_of_entry"] == "Rear door forced by [name] of [address], [postcode], [date]"
    assert out.loc[4, "method_of_entry"] == "front door, call [phone] or [email]"
    assert out.loc[2, "method_of_entry"] == "Insecure door" and pd.isna(out.loc[3, "method_of_entry"])
    assert out["weapon_used"].tolist()[0] == "Knife"
    assert res.summary["scrubbed"]["method_of_entry"] == {"email": 1, "postcode": 1, "phone": 1, "date": 2,
                                                          "address": 1, "name": 2}
    assert res.summary["scrubbed"]["property_stolen"] == {"email": 0, "postcode": 1, "phone": 0, "date": 1,
                                                          "address": 1, "name": 1}
    assert sum(res.summary["scrubbed"]["weapon_used"].values()) == 0
    assert set(res.summary["scrubbed"]) == {"location_address", "method_of_entry", "property_stolen", "weapon_used"}
    assert check_sanitised(out, pmap, offences) == []


def test_occupation_of_offenders_and_victims_is_scrubbed_too(reference, pmap):
    prc = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")
    pcs = reference["postcode"].iloc[:3]
    for file_name, name_col in (("offenders", "offender_name"), ("victims", "victim_name")):
        feed_file = prc.file(file_name)
        ref_col = "offender_reference" if file_name == "offenders" else "victim_reference"
        frame = pd.DataFrame({
            "crime_reference": pd.array(["CR1", "CR2", "CR3"], dtype="string"),
            ref_col: pd.array(["P1", "P1", "P1"], dtype="string"),
            name_col: pd.array(["John Smith", None, "Ann Lee"], dtype="string"),
            "date_of_birth": pd.to_datetime(["1985-03-12", None, "1990-01-01"]),
            "occupation": pd.array([_typed("works for {name}, lives {address} {postcode}, dob {date}"),
                                    "retired", _typed("carer; {name}'s phone 01422 123456")], dtype="string"),
            "home_address": pd.array(["3 Gibbet Street, jo@example.com", None, "Flat 2, 9 Clare Road"],
                                     dtype="string"),
            "home_postcode": pd.array(pcs, dtype="string"),
            "geo_easting": reference["easting"].iloc[:3].astype(float).to_numpy(),
            "geo_northing": reference["northing"].iloc[:3].astype(float).to_numpy(),
            "geo_postcode": pd.array(pcs, dtype="string"),
            "geocode_method": pd.array(["postcode"] * 3, dtype="string"),
        })
        res = sanitise(frame, feed_file, pmap, period_end="2026-09-30")
        out = res.frame
        occ = " ".join(out["occupation"].dropna())
        assert not any(v in occ for v in TYPED.values()) and "01422" not in occ and "Smith" not in occ
        assert out.loc[1, "occupation"] == "retired"
        assert res.summary["scrubbed"]["occupation"] == {"email": 0, "postcode": 1, "phone": 1, "date": 1,
                                                         "address": 1, "name": 2}
        assert out.loc[0, "home_address"] == "Gibbet Street, [email]"
        assert res.summary["scrubbed"]["home_address"]["email"] == 1
        assert name_col not in out and "date_of_birth" not in out
        assert check_sanitised(out, pmap, feed_file) == []


def test_check_sanitised_flags_personal_data_left_in_free_text_and_addresses(reference, pmap, offences):
    out = sanitise(_records(reference, 8), offences, pmap).frame
    leaky = out.copy()
    # what the pipeline loaded before issue 6: free text exactly as the partner typed it
    leaky["method_of_entry"] = pd.array([_typed("forced by {name}"), _typed("at {address}"), None, "Lock snapped",
                                         None, None, None, None], dtype="string")
    leaky["property_stolen"] = pd.array([_typed("post for {postcode}"), _typed("passport, DOB {date}"),
                                         "Cash", None, None, None, None, None], dtype="string")
    leaky.loc[5, "location_address"] = "King Cross Road, c/o jo@example.com"
    other = next(p for p in pmap.targets().index if p != out.loc[6, "sanitised_postcode"])
    leaky.loc[6, "location_address"] = f"King Cross Road, Halifax {other}"
    problems = check_sanitised(leaky, pmap, offences)
    joined = " | ".join(problems)
    for expected in ("method_of_entry still hold a name", "method_of_entry still hold a address",
                     "property_stolen still hold a postcode", "property_stolen still hold a date",
                     "location_address still hold a email", "postcode other than the record's sanitised postcode"):
        assert expected in joined, expected
    # row labels and column names only: never the values
    for value in (*TYPED.values(), "jo@example.com", other):
        assert value not in joined
    clean = out.copy()
    clean["method_of_entry"] = pd.array(["Lock snapped"] * 8, dtype="string")
    assert check_sanitised(clean, pmap, offences) == []


def test_check_sanitised_needs_the_feed_file_and_flags_dropped_and_unruled_columns(reference, pmap, offences):
    import dataclasses
    import inspect

    assert inspect.signature(check_sanitised).parameters["feed_file"].default is inspect.Parameter.empty
    out = sanitise(_records(reference, 4), offences, pmap).frame
    dropped = dataclasses.replace(offences, datafields=tuple(
        dataclasses.replace(d, free_text="drop") if d.name == "weapon_used" else d for d in offences.datafields))
    # a column the schema drops is gone after sanitise; one that survives is flagged
    assert "weapon_used" not in sanitise(_records(reference, 4).assign(weapon_used="Knife"), dropped, pmap).frame
    assert any("weapon_used" in p for p in check_sanitised(out.assign(weapon_used="Knife"), pmap, dropped))
    unruled = dataclasses.replace(offences, datafields=tuple(
        dataclasses.replace(d, free_text=None) if d.name == "weapon_used" else d for d in offences.datafields))
    assert any("without a sanitising rule" in p for p in check_sanitised(out.assign(weapon_used="Knife"), pmap,
                                                                           unruled))


# --- several locations in one file (issue 7): council ASB's incident and the vehicle keeper's address -----------

def _asb_schema():
    from csp_observatory.schema_loading import parse_schema

    field = lambda name, type_, role, **kw: {"name": name, "type": type_, "role": role, **kw}  # noqa: E731
    return parse_schema({
        "feed": "asb", "title": "Council ASB", "guidance_section": "3.2.3", "dataset_type": "depersonalised",
        "partner": {"id": "council", "agency": "Council", "name": "Calderdale"},
        "supply_cycle": {"schedule": "@monthly", "description": "monthly"},
        "files": {"incidents": {
            "pattern": r"^asb_(?P<period>\d{6})\.csv\.gpg$", "table": "asb_incidents", "key": ["incident_reference"],
            "location": {"address": "location_address", "easting": "easting", "northing": "northing"},
            "other_locations": {"vehicle_keeper": {"kind": "home", "address": "vehicle_address",
                                                   "postcode": "vehicle_postcode"}},
            "datafields": [field("incident_reference", "string", "reference_number", required=True),
                           field("location_address", "string", "address"),
                           field("easting", "integer", "easting"), field("northing", "integer", "northing"),
                           field("vehicle_address", "string", "address"),
                           field("vehicle_postcode", "postcode", "postcode")]}}})


def test_a_second_location_is_sanitised_to_postcode_level(reference, pmap):
    ff = _asb_schema().file("incidents")
    live = reference[~reference["terminated"]]
    small = live[live["households"] < 4]["postcode"].iloc[0]
    big = live[live["households"] >= 4]["postcode"].iloc[0]
    frame = pd.DataFrame({
        "incident_reference": ["A1", "A2", "A3", "A4"],
        "location_address": ["Car park, Bull Green", None, None, None],
        "vehicle_address": [f"12 Acacia Avenue, Halifax {small}", f"Flat 3, 7 Rose Street, {big}",
                            "Rose Cottage, Moor Lane, ZZ9 9ZZ", None],
        "vehicle_postcode": pd.array([small, big, "ZZ9 9ZZ", None], dtype="string"),
        "geocode_method": pd.array(["failed"] * 4, dtype="string"),
    })
    out = sanitise(frame, ff, pmap)
    f = out.frame
    target = pmap.table.loc[small, "target_postcode"]
    assert target != small and f["vehicle_postcode"].tolist()[:2] == [target, big]
    assert pd.isna(f.loc[2, "vehicle_postcode"]) and pd.isna(f.loc[3, "vehicle_postcode"])
    assert not f["vehicle_address"].str.contains(r"\b(?:12|7|3)\b|Flat|Acacia Avenue, Halifax " + small,
                                                 regex=True, na=False).any()
    assert small not in " ".join(f["vehicle_address"].dropna()) and "ZZ9" not in " ".join(f["vehicle_address"].dropna())
    assert out.summary["other_locations"]["vehicle_keeper"] == {"own_postcode": 1, "moved": 1,
                                                               "postcode_unknown": 1, "no_postcode": 1}
    assert check_sanitised(f, pmap, ff) == []
    # the same frame with the keeper's postcode left as sent is caught
    leaked = f.assign(vehicle_postcode=frame["vehicle_postcode"])
    assert any("vehicle_postcode (vehicle_keeper)" in p for p in check_sanitised(leaked, pmap, ff))


def test_the_lint_refuses_an_address_no_rule_covers():
    from csp_observatory.schema import SchemaError
    from csp_observatory.schema_loading import parse_schema

    assert {"vehicle_address", "vehicle_postcode"} <= _asb_schema().file("incidents").location_columns
    doc = {
        "feed": "asb", "title": "T", "guidance_section": "3.2.3", "dataset_type": "depersonalised",
        "partner": {"id": "c", "agency": "A", "name": "N"},
        "supply_cycle": {"schedule": "@monthly", "description": "monthly"},
        "files": {"incidents": {"pattern": r"^a_(?P<period>\d{6})\.csv\.gpg$", "table": "a", "key": ["ref"],
                                "location": {"address": "addr"},
                                "datafields": [{"name": "ref", "type": "string", "role": "reference_number"},
                                               {"name": "addr", "type": "string", "role": "address"},
                                               {"name": "keeper_address", "type": "string", "role": "address"}]}}}
    with pytest.raises(SchemaError, match="no sanitising rule covers incidents.keeper_address"):
        parse_schema(doc)
    doc["dataset_type"] = "personalised"       # stored whole, apart: nothing to sanitise
    parse_schema(doc)


# --- several people in one row (issue 7): the offender's and the victim's dates of birth --------------------------

@pytest.mark.parametrize("feed", ["btp_crimes", "tram_train_incidents", "bus_incidents"])
def test_every_date_of_birth_becomes_its_own_persons_age(reference, pmap, feed):
    ff = load_schema(SCHEMA_DIR / f"{feed}.yaml").file("offences")
    assert ff.age_pairs == (("offender_date_of_birth", "offender_age"), ("victim_date_of_birth", "victim_age"))
    pcs = reference[~reference["terminated"]]["postcode"].iloc[:3]
    frame = _records(reference, 3).drop(columns=["ho_offence_code", "committed_from_date", "longitude", "latitude"])
    frame = frame.assign(
        offence_type=pd.array(["Assault", "Theft", "Criminal damage"], dtype="string"),
        incident_date=pd.to_datetime(["2026-09-15", None, "2026-09-01"]),
        route=pd.array(["576", None, "Calder Valley line"], dtype="string"),
        location_postcode=pd.array(pcs, dtype="string"), geo_postcode=pd.array(pcs, dtype="string"),
        offender_age=pd.array([None, 44, None], dtype="Int64"),
        offender_date_of_birth=pd.to_datetime(["2000-09-15", None, "1970-01-01"]),
        victim_age=pd.array([None, None, 63], dtype="Int64"),
        victim_date_of_birth=pd.to_datetime(["1961-09-16", "2010-09-30", None]),
    )
    out = sanitise(frame, ff, pmap, period_end="2026-09-30").frame
    # at the incident (row 1: no incident date, so the end of the period), each from its own date of birth;
    # an age sent stands where there is no date of birth
    assert list(out["offender_age"]) == [26, 44, 56]
    assert list(out["victim_age"]) == [64, 16, 63]
    assert not {"offender_date_of_birth", "victim_date_of_birth"} & set(out.columns)
    assert check_sanitised(out, pmap, ff) == []
    # a date of birth left in is caught, whichever person it is
    for dob in ("offender_date_of_birth", "victim_date_of_birth"):
        assert any(dob in p for p in check_sanitised(out.assign(**{dob: frame[dob]}), pmap, ff))


def test_a_date_of_birth_the_lint_cannot_pair_with_an_age_is_refused():
    from csp_observatory.schema import SchemaError
    from csp_observatory.schema_loading import parse_schema

    def doc(*fields: dict, dataset_type: str = "depersonalised") -> dict:
        return {"feed": "t", "title": "T", "guidance_section": "3.2.15", "dataset_type": dataset_type,
                "partner": {"id": "c", "agency": "A", "name": "N"},
                "supply_cycle": {"schedule": "@monthly", "description": "monthly"},
                "files": {"offences": {"pattern": r"^t_(?P<period>\d{6})\.csv\.gpg$", "table": "t", "key": ["ref"],
                                       "datafields": [{"name": "ref", "type": "string", "role": "reference_number"},
                                                      *fields]}}}

    dob = lambda name, **kw: {"name": name, "type": "date", "role": "date_of_birth", **kw}  # noqa: E731
    age = lambda name: {"name": name, "type": "integer", "role": "age"}  # noqa: E731
    # one of each pairs by default; two people need age_field
    assert parse_schema(doc(dob("dob"), age("age"))).file("offences").age_pairs == (("dob", "age"),)
    with pytest.raises(SchemaError, match="no age datafield for offender_dob, victim_dob"):
        parse_schema(doc(dob("offender_dob"), age("offender_age"), dob("victim_dob"), age("victim_age")))
    with pytest.raises(SchemaError, match="no age datafield for victim_dob"):
        parse_schema(doc(dob("offender_dob", age_field="offender_age"), age("offender_age"), dob("victim_dob")))
    with pytest.raises(SchemaError, match="no age datafield for dob"):
        parse_schema(doc(dob("dob")))
    with pytest.raises(SchemaError, match="age_field 'victim_dob' is not an age datafield"):
        parse_schema(doc(dob("offender_dob", age_field="victim_dob"), dob("victim_dob"), age("age")))
    with pytest.raises(SchemaError, match="several dates of birth feed age"):
        parse_schema(doc(dob("a_dob", age_field="age"), dob("b_dob", age_field="age"), age("age")))
    with pytest.raises(SchemaError, match="age_field names the age a date of birth becomes"):
        parse_schema(doc(dob("dob"), {**age("age"), "age_field": "age"}))
    # a personalised feed keeps its dates of birth whole: nothing to pair
    parse_schema(doc(dob("offender_dob"), dob("victim_dob"), dataset_type="personalised"))


def test_target_rows_are_the_eligible_targets_and_nothing_else(reference, pmap):
    """``PostcodeMap.target_rows`` (the check's lookup) finds exactly the postcodes ``targets()`` lists."""
    targets = pmap.targets()
    too_few = pmap.table.index[pmap.table["rule"] != "own_postcode"]
    asked = pd.Series([targets.index[0], too_few[0], None, "ZZ9 9ZZ", "not a postcode", targets.index[-1]],
                      dtype="string")
    rows = pmap.target_rows(asked)
    assert [r >= 0 for r in rows] == [True, False, False, False, False, True]
    assert list(pmap.table.index[rows[rows >= 0]]) == [targets.index[0], targets.index[-1]]
    everything = pd.Series(pmap.table.index, dtype="string")
    np.testing.assert_array_equal(pmap.target_rows(everything) >= 0,
                                  targets.index.get_indexer(pmap.table.index) >= 0)
