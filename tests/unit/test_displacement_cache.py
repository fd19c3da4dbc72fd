"""The displacement map is kept per reference version: a supply reuses it, and a changed reference rebuilds it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from csp_observatory import postcodes_sources, sanitising, sanitising_displacement
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def reference():
    return postcodes_sources.shipped_reference()


def test_cached_map_is_the_built_map_and_is_reused(tmp_path, reference, monkeypatch):
    built = sanitising_displacement.build_displacement(reference, 4, "same_ward_first")
    first = sanitising_displacement.cached_displacement(reference, 4, "same_ward_first", tmp_path)
    pd.testing.assert_frame_equal(first.table, built.table)
    files = list(tmp_path.iterdir())
    assert len(files) == 1

    def no_build(*args, **kwargs):
        raise AssertionError("the map was built again")

    monkeypatch.setattr(sanitising_displacement, "build_displacement", no_build)
    again = sanitising_displacement.cached_displacement(reference, 4, "same_ward_first", tmp_path)
    pd.testing.assert_frame_equal(again.table, built.table)
    assert (again.threshold, again.displacement) == (4, "same_ward_first")
    # records sanitised with the kept map land exactly where the built map puts them
    ff = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml").file("offences")
    rng = np.random.default_rng(3)
    pcs = reference["postcode"].to_numpy(object)[rng.integers(0, len(reference), 500)]
    frame = pd.DataFrame({"geocode_method": "postcode", "geo_easting": np.nan, "geo_northing": np.nan,
                          "geo_postcode": pd.array(pcs, dtype="string")})
    pd.testing.assert_frame_equal(sanitising.sanitise(frame, ff, again).frame,
                                  sanitising.sanitise(frame, ff, built).frame)


def test_another_reference_threshold_or_setting_gets_its_own_map(tmp_path, reference):
    sanitising_displacement.cached_displacement(reference, 4, "nearest", tmp_path)
    sanitising_displacement.cached_displacement(reference, 8, "nearest", tmp_path)
    sanitising_displacement.cached_displacement(reference, 4, "same_ward_first", tmp_path)
    changed = reference.copy()
    changed.loc[changed.index[0], "households"] = int(changed["households"].iloc[0]) + 10
    assert sanitising_displacement.reference_digest(changed) != sanitising_displacement.reference_digest(reference)
    rebuilt = sanitising_displacement.cached_displacement(changed, 4, "nearest", tmp_path)
    pd.testing.assert_frame_equal(rebuilt.table,
                                  sanitising_displacement.build_displacement(changed, 4, "nearest").table)
    assert len(list(tmp_path.glob("map-*.parquet"))) == 4


def test_a_damaged_cache_file_is_rebuilt(tmp_path, reference):
    sanitising_displacement.cached_displacement(reference, 4, "nearest", tmp_path)
    (path,) = tmp_path.iterdir()
    path.write_bytes(b"not parquet")
    again = sanitising_displacement.cached_displacement(reference, 4, "nearest", tmp_path)
    pd.testing.assert_frame_equal(again.table,
                                  sanitising_displacement.build_displacement(reference, 4, "nearest").table)
    assert path.read_bytes()[:4] == b"PAR1"
