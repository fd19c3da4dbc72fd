"""Gazetteer: the real OS Open Names HY20 tile, the shipped Calderdale places, and location-text matching."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from csp_observatory import gazetteer as gz
from csp_observatory import postcodes as pc, postcodes_sources

pytestmark = pytest.mark.unit

#: The real OS Open Names HY20 tile, shipped gzipped (unchanged) in include/reference.
HY20 = gz.HY20_PLACES
REPO = Path(__file__).resolve().parents[2]
#: The upstream copy, beside the repository (``../shared``) on the project's own machines only.
SHARED_HY20 = REPO.parent / "shared" / "data" / "os_open_names" / "os_open_names_HY20.csv"


@pytest.fixture(scope="module")
def hy20() -> pd.DataFrame:
    return gz.read_os_open_names(HY20)


@pytest.fixture(scope="module")
def calderdale() -> pd.DataFrame:
    return gz.shipped_places()


def test_read_real_tile_with_bom(hy20: pd.DataFrame) -> None:
    with gzip.open(HY20, "rt", encoding="utf-8-sig") as f:
        assert len(hy20) == sum(1 for _ in f)
    assert list(hy20.columns) == gz.PLACE_COLUMNS
    assert hy20["id"].iloc[0] == "osgb4000000074559490"  # the BOM did not stick to the first ID
    corston = hy20.set_index("name1").loc["Corston"]
    assert corston["type"] == "populatedPlace" and corston["county_unitary"] == "Orkney Islands"
    # A settlement keeps its named point, not the centre of its box.
    assert (corston["x"], corston["y"]) == (corston["geometry_x"], corston["geometry_y"])


def test_shipped_hy20_copy_matches(hy20: pd.DataFrame) -> None:
    if not SHARED_HY20.is_file():
        pytest.skip(f"../shared is not beside the repository: {SHARED_HY20} is absent "
                    "(the shipped copy is tested alone)")
    assert gz.read_os_open_names(SHARED_HY20).equals(hy20)


def test_area_places_get_the_box_centre(calderdale: pd.DataFrame) -> None:
    park = calderdale.set_index("name1").loc["Shibden Park"]
    assert park["x"] == pytest.approx((park["mbr_xmin"] + park["mbr_xmax"]) / 2)
    assert park["y"] == pytest.approx((park["mbr_ymin"] + park["mbr_ymax"]) / 2)


def test_shipped_places_sit_among_calderdale_postcodes(calderdale: pd.DataFrame) -> None:
    from scipy.spatial import cKDTree

    ref = postcodes_sources.read_codepoint_open(pc.SHIPPED_CODEPOINT)
    dist, _ = cKDTree(ref[["easting", "northing"]].to_numpy(float)).query(calderdale[["x", "y"]].to_numpy(float))
    assert len(calderdale) >= 12 and (dist < 500).all()
    assert calderdale["id"].str.startswith("SYNTHETIC").all()


@pytest.mark.parametrize("text,expected", [
    ("Car park, Bankfield Museum", True), ("waste ground off Kirk Road", True), ("People's Park", True),
    ("playing fields behind the school", True), ("Halifax bus station", True), ("canal towpath", True),
    ("junction of Stromness Road and Ferry Road", True), ("footpath by the river", True),
    ("Sowerby Bridge railway station", True), ("recreation ground", True), ("cemetery", True),
    ("12 Park Road", False), ("Station Road", False), ("10 Market Street, Hebden Bridge", False),
    ("Flat 2, 14 Wood Lane", False), ("", False), (None, False),
])
def test_is_non_addressable(text: str | None, expected: bool) -> None:
    assert gz.is_non_addressable(text) is expected


def test_match_calderdale_place(calderdale: pd.DataFrame) -> None:
    m = gz.match_location("Car park, Bankfield Museum", calderdale)
    place = calderdale.set_index("name1").loc["Bankfield Museum"]
    assert m is not None and m.name == "Bankfield Museum"
    assert (m.easting, m.northing) == (place["x"], place["y"])
    exact = gz.match_location("bankfield museum", calderdale)
    assert exact is not None and exact.confidence > m.confidence
    assert gz.match_location("somewhere nobody has heard of", calderdale) is None
    assert gz.match_location("car park", calderdale) is None   # a generic word alone names no place


def test_match_road_in_real_tile(hy20: pd.DataFrame) -> None:
    index = gz.PlaceIndex.build(hy20)
    m = gz.match_location("waste ground off Ferry Road", index)
    ferry = hy20[hy20["name1"] == "Ferry Road"].iloc[0]
    assert m is not None and m.name == "Ferry Road" and (m.easting, m.northing) == (ferry["x"], ferry["y"])


def test_match_junction_between_two_roads(hy20: pd.DataFrame) -> None:
    roads = hy20[(hy20["populated_place"] == "Stromness") & hy20["name1"].isin(["Ferry Road", "Ness Road"])]
    a, b = (roads[roads["name1"] == n].iloc[0] for n in ("Ferry Road", "Ness Road"))
    m = gz.match_location("junction of Ferry Road and Ness Road", hy20)
    assert m is not None and m.local_type == "Junction" and "Ferry Road" in m.name and "Ness Road" in m.name
    # The junction lies within the span of the two roads, not at either road's own point.
    assert min(a["mbr_xmin"], b["mbr_xmin"]) <= m.easting <= max(a["mbr_xmax"], b["mbr_xmax"])
    assert min(a["mbr_ymin"], b["mbr_ymin"]) <= m.northing <= max(a["mbr_ymax"], b["mbr_ymax"])


def test_ambiguous_name_settled_by_town(hy20: pd.DataFrame) -> None:
    stations = hy20[hy20["name1"] == "Station Road"]
    towns = stations["populated_place"].dropna().unique()
    assert len(stations) > 1 and len(towns) >= 1
    town = towns[-1]
    m = gz.match_location(f"footpath off Station Road, {town}", hy20)
    expected = stations[stations["populated_place"] == town].iloc[0]
    assert m is not None and (m.easting, m.northing) == (expected["x"], expected["y"])
    vague = gz.match_location("footpath off Station Road", hy20)
    assert vague is not None and vague.confidence < m.confidence and "share the name" in vague.note
    assert np.isfinite(vague.easting)
