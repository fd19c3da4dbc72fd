"""Postcode normal form, reference loaders (real Code-Point Open and ONSPD extracts), household estimates."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from csp_observatory import postcodes as pc, postcodes_sources, postcodes_synthetic

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
#: A real TD extract holding the one TD postcode with positional quality 90 (see tests/data/README.md).
TD_EXTRACT = REPO / "tests" / "data" / "codepoint_open_2020-08_td_extract.csv"
#: The upstream reference data, beside the repository on the project's own machines only.
SHARED = REPO.parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file of ``../shared/data``, or skip: only the check that a shipped copy is unchanged needs it."""
    path = SHARED / relative
    if not path.is_file():
        pytest.skip(f"../shared is not beside the repository: {path} is absent (the shipped copy is tested alone)")
    return path


@pytest.mark.parametrize("text,expected", [
    ("HX11AA", "HX1 1AA"), ("HX1  1AA", "HX1 1AA"), (" hx1 1aa ", "HX1 1AA"), ("ec1a1bb", "EC1A 1BB"),
    ("W1A 0AX", "W1A 0AX"), ("HX1 1A", None), ("", None), (None, None), ("1HX 1AA", None), ("HX1 1AAA", None),
])
def test_normalise_postcode(text: str | None, expected: str | None) -> None:
    assert pc.normalise_postcode(text) == expected


def test_vectorised_normalise_matches_scalar_and_keeps_index() -> None:
    values = ["HX11AA", "HX1  1AA", " hx1 1aa ", None, "nonsense", "AB10 1XG", "b1 1aa"]
    s = pd.Series(values, index=[10, 11, 12, 13, 14, 15, 16])
    out = pc.normalise_postcodes(s)
    assert list(out.index) == list(s.index)
    assert [None if pd.isna(v) else v for v in out] == [pc.normalise_postcode(v) for v in values]


def test_read_codepoint_open_real_calderdale_extract() -> None:
    ref = postcodes_sources.read_codepoint_open(pc.SHIPPED_CODEPOINT)
    raw_rows = sum(1 for _ in open(pc.SHIPPED_CODEPOINT))
    assert len(ref) == raw_rows - ref.attrs["dropped_no_coordinates"]
    assert list(ref.columns) == pc.REFERENCE_COLUMNS
    assert ref["postcode"].str.startswith("HX").all() and ref["postcode"].is_unique
    first = ref.set_index("postcode").loc["HX1 1AA"]
    assert (first["easting"], first["northing"]) == (409508, 425333)
    assert first["district_code"] == "E08000033" and first["ward_code"] == "E05001386"
    assert not ref["terminated"].any() and (ref["households"] == 0).all()


def test_read_codepoint_open_drops_quality_90(tmp_path: Path) -> None:
    # The real TD extract holds TD14 9AG, positional quality 90 (no coordinates).
    ref = postcodes_sources.read_codepoint_open(TD_EXTRACT)
    assert ref.attrs["dropped_no_coordinates"] == 1 and len(ref) == 10 and "TD14 9AG" not in set(ref["postcode"])
    f = tmp_path / "cpo.csv"
    f.write_text('"HX1 1AA",10,409508,425333,"E92000001","","","","E08000033","E05001386"\n'
                 '"HX1 1ZZ",90,0,0,"E92000001","","","","E08000033","E05001386"\n')
    small = postcodes_sources.read_codepoint_open(f)
    assert small["postcode"].tolist() == ["HX1 1AA"] and small.attrs["dropped_no_coordinates"] == 1


def test_read_onspd_live_and_terminated() -> None:
    ref = postcodes_sources.read_onspd(pc.SHIPPED_ONSPD)
    raw = pd.read_csv(pc.SHIPPED_ONSPD, dtype=str, keep_default_na=False)
    assert len(ref) == len(raw) - ref.attrs["dropped_no_coordinates"]
    assert ref.attrs["dropped_no_coordinates"] == int(((raw.oseast1m == "") | (raw.osnrth1m == "")).sum())
    assert ref["terminated"].sum() == int((raw.loc[raw.oseast1m != "", "doterm"] != "").sum())
    row = ref.set_index("postcode").loc["AB1 0AA"]
    # "0801193" in the file is zero-padded.
    assert row["northing"] == 801193 and row["terminated"] and row["terminated_date"] == "1996-06"
    live = ref[~ref["terminated"]]
    assert live["terminated_date"].isna().all()


def test_shipped_onspd_is_the_real_extract() -> None:
    assert postcodes_sources.read_onspd(pc.SHIPPED_ONSPD).drop(columns="source").equals(
        postcodes_sources.read_onspd(shared_file("onspd/onspd_extract_AB.csv")).drop(columns="source"))


def test_shipped_codepoint_is_the_real_extract() -> None:
    upstream = shared_file("codepoint_open/cpo_2014-08_hx_calderdale.csv")
    assert pc.SHIPPED_CODEPOINT.read_bytes() == upstream.read_bytes()


def test_combine_prefers_live() -> None:
    a = postcodes_sources.read_onspd(pc.SHIPPED_ONSPD)
    term = a[a["terminated"]].head(3)
    revived = term.assign(terminated=False, terminated_date=pd.NA, source="newer")
    both = postcodes_sources.combine_references([term, revived])
    assert len(both) == 3 and not both["terminated"].any() and set(both["source"]) == {"newer"}


def test_household_estimates_quirks(tmp_path: Path) -> None:
    f = tmp_path / "hh.csv"
    f.write_text("Postcode,Total,Males,Females,Occupied_Households\n"
                 "HX1  1AA,40,20,20,17\n"      # two spaces
                 "HX1 1AB,120,60,60,0\n"       # communal establishment: residents, no households
                 "HX11AD,5,2,3,2\n"
                 "HX1 1AD,3,1,2,1\n"           # a postcode split over two rows is summed
                 "rubbish,1,1,0,1\n")
    hh = postcodes_sources.read_household_estimates(f)
    assert dict(zip(hh["postcode"], hh["households"])) == {"HX1 1AA": 17, "HX1 1AB": 0, "HX1 1AD": 3}
    assert hh.attrs["skipped_rows"] == 1
    ref = postcodes_sources.read_codepoint_open(pc.SHIPPED_CODEPOINT)
    with_hh = postcodes_sources.attach_households(ref, hh).set_index("postcode")["households"]
    assert with_hh["HX1 1AA"] == 17 and with_hh["HX1 1AB"] == 0
    assert with_hh["HX1 1AE"] == 0   # absent from the file: no residents


def test_household_estimates_2021_heading(tmp_path: Path) -> None:
    f = tmp_path / "hh2021.csv"
    f.write_text("postcode,Households\nHX1 1AA,9\n")
    assert postcodes_sources.read_household_estimates(f)["households"].tolist() == [9]
    g = tmp_path / "other.csv"
    g.write_text("Postcode,Residents\nHX1 1AA,9\n")
    with pytest.raises(ValueError, match="household"):
        postcodes_sources.read_household_estimates(g)
    assert postcodes_sources.read_household_estimates(g, households_column="Residents")["households"].tolist() == [9]


@pytest.mark.exact_output
def test_synthetic_households_deterministic_realistic_and_clustered(tmp_path: Path) -> None:
    ref = postcodes_sources.read_codepoint_open(pc.SHIPPED_CODEPOINT)
    a = postcodes_synthetic.synthetic_households(ref, seed=7)
    b = postcodes_synthetic.synthetic_households(ref, seed=7)
    assert a.equals(b) and not a.equals(postcodes_synthetic.synthetic_households(ref, seed=8))
    assert list(a.columns) == ["Postcode", "Total", "Males", "Females", "Occupied_Households"]
    a.to_csv(tmp_path / "hh.csv", index=False)
    hh = postcodes_sources.attach_households(ref, postcodes_sources.read_household_estimates(tmp_path / "hh.csv"))
    small = hh["households"] < 4
    assert 0.08 <= small.mean() <= 0.15
    assert hh.loc[~small, "households"].between(4, 60).all()
    assert len(a) < len(ref)                                    # no-resident postcodes are absent
    assert ((a["Occupied_Households"] == 0) & (a["Total"] > 0)).any()  # communal establishments
    # Non-residential postcodes sit where postcodes are densest (town centres).
    from scipy.spatial import cKDTree
    xy = hh[["easting", "northing"]].to_numpy(float)
    density = cKDTree(xy).query_ball_point(xy, r=200.0, return_length=True)
    assert np.median(density[small.to_numpy()]) > 1.5 * np.median(density[~small.to_numpy()])


@pytest.mark.exact_output
def test_shipped_households_file_is_the_generator_output() -> None:
    # Byte for byte, on every CPU: CI runs this again with NumPy's wide SIMD paths disabled (.ci/run).
    ref = postcodes_sources.read_codepoint_open(pc.SHIPPED_CODEPOINT)
    shipped = pc.SHIPPED_HOUSEHOLDS.read_text(encoding="utf-8")
    regenerated = postcodes_synthetic.synthetic_households_csv(ref, pc.SHIPPED_HOUSEHOLDS_SEED)
    if regenerated != shipped:
        old, new = shipped.splitlines(), regenerated.splitlines()
        differ = [f"{a!r} -> {b!r}" for a, b in zip(old, new) if a != b]
        pytest.fail(f"{len(differ)} lines of {pc.SHIPPED_HOUSEHOLDS.name} differ from the generator "
                    f"({len(old)} vs {len(new)} lines), e.g. {differ[:5]}")
    assert shipped.startswith("Postcode,Total,Males,Females,Occupied_Households\n")


def test_shipped_reference() -> None:
    ref = postcodes_sources.shipped_reference()
    live = ref[~ref["terminated"]]
    assert live["postcode"].str.startswith("HX").all() and (live["households"] >= 4).mean() > 0.85
    assert ref["terminated"].any() and (ref.loc[ref["terminated"], "source"] == "onspd_extract_AB").all()
    assert ref["postcode"].is_unique


@pytest.mark.exact_output
def test_national_synthetic_reference_small() -> None:
    ref = postcodes_synthetic.national_synthetic_reference(n_live=20_000, n_terminated=2_000, seed=3)
    assert len(ref) == 22_000 and ref["postcode"].is_unique
    assert pc.normalise_postcodes(ref["postcode"]).eq(ref["postcode"]).all()
    assert pc.inside_gb(ref["easting"].to_numpy(), ref["northing"].to_numpy()).all()
    live = ref[~ref["terminated"]]
    per_ward = live.groupby("ward_code").size()
    assert per_ward.iloc[:-1].between(100, 300).all()
    wards_per_district = live.groupby("district_code")["ward_code"].nunique()
    assert wards_per_district.iloc[:-1].between(30, 50).all()
    assert 0.08 <= (live["households"] < 4).mean() <= 0.15
    assert (ref.loc[ref["terminated"], "households"] == 0).all()
    assert ref.loc[ref["terminated"], "terminated_date"].str.match(r"^\d{4}-\d{2}$").all()
    assert postcodes_synthetic.national_synthetic_reference(n_live=1000, n_terminated=10, seed=3).equals(
        postcodes_synthetic.national_synthetic_reference(n_live=1000, n_terminated=10, seed=3))
