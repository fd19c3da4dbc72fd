"""Disclosure checks on hand-made frames whose answers are counted independently (collections.Counter)."""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest

from csp_observatory.disclosure import DisclosureBlocked, enforce_min_k, k_anonymity, quasi_identifiers_for
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit

PRC = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")


def incidents(n: int = 300, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pts = np.array([[409000, 425000], [409100, 425000], [409100, 425100], [410000, 426000]], dtype=float)
    which = rng.integers(0, len(pts), n)
    return pd.DataFrame({
        "sanitised_easting": pts[which, 0], "sanitised_northing": pts[which, 1],
        "committed_from_date": pd.to_datetime("2026-08-01") + pd.to_timedelta(rng.integers(0, 60, n), unit="D"),
        "ho_offence_code": rng.choice(["28/1", "30/1", "58A", "8N"], n, p=[0.6, 0.3, 0.08, 0.02]),
    }, index=pd.RangeIndex(1000, 1000 + n))


def test_quasi_identifiers_from_roles():
    assert quasi_identifiers_for(PRC.file("offences")) == [
        "sanitised_easting", "sanitised_northing", "committed_from_date:month", "ho_offence_code"]
    assert quasi_identifiers_for(PRC.file("victims")) == ["sanitised_postcode", "age", "gender", "ethnicity"]


def test_k_anonymity_of_incidents_matches_a_plain_count():
    f = incidents()
    qis = quasi_identifiers_for(PRC.file("offences"))
    r = k_anonymity(f, qis, k_threshold=5, sensitive="ho_offence_code")
    keys = [(e, n, d.strftime("%Y-%m"), c) for e, n, d, c in
            zip(f["sanitised_easting"], f["sanitised_northing"], f["committed_from_date"], f["ho_offence_code"])]
    counts = Counter(keys)
    assert r.k == min(counts.values())
    assert r.groups == len(counts)
    assert r.small_cells == sum(1 for v in counts.values() if v < 5)
    assert r.records_in_small_cells == sum(v for v in counts.values() if v < 5)
    assert r.small_cells > 0  # the rare categories make small cells, so the check is not vacuous
    assert [int(x) for x in r.group_size] == [counts[k] for k in keys]
    cats = defaultdict(set)
    for (e, n, _, c) in keys:
        cats[(e, n)].add(c)
    assert r.points == len(cats)
    assert r.min_l == min(len(v) for v in cats.values())
    assert r.points_with_l1 == sum(1 for v in cats.values() if len(v) == 1)


def test_l_diversity_flags_a_point_where_everyone_has_one_category():
    f = pd.DataFrame({"sanitised_easting": [1.0, 1.0, 1.0, 2.0, 2.0, np.nan],
                      "sanitised_northing": [1.0, 1.0, 1.0, 2.0, 2.0, np.nan],
                      "category": ["a", "a", "a", "a", "b", "c"]})
    r = k_anonymity(f, ["sanitised_easting", "sanitised_northing"], k_threshold=3, sensitive="category")
    assert (r.points, r.min_l, r.points_with_l1) == (2, 1, 1)
    # groups: (1,1) x3, (2,2) x2, (no point) x1
    assert (r.k, r.groups, r.small_cells, r.records_in_small_cells) == (1, 3, 2, 3)


def test_people_quasi_identifiers_and_enforce_rows():
    f = pd.DataFrame({
        "sanitised_postcode": ["HX1 1AA"] * 4 + ["HX1 1AB"] * 3,
        "age": pd.array([30, 30, 30, 30, 30, 31, 30], dtype="Int64"),
        "gender": ["F", "F", "F", "F", "M", "M", "M"],
        "ethnicity": ["IC1"] * 7,
    }, index=list("abcdefg"))
    r = k_anonymity(f, quasi_identifiers_for(PRC.file("victims")), k_threshold=3)
    assert (r.k, r.small_cells, r.records_in_small_cells) == (1, 2, 3)
    pub, held = enforce_min_k(f, r, min_k=2)
    assert list(pub.index) == ["a", "b", "c", "d", "e", "g"] and list(held.index) == ["f"]
    assert "group of 1" in held.loc["f", "reason"] and "at least 2" in held.loc["f", "reason"]
    pub, held = enforce_min_k(f, r, min_k=3)
    assert list(pub.index) == ["a", "b", "c", "d"] and sorted(held.index) == ["e", "f", "g"]
    pub, held = enforce_min_k(f, r, min_k=None)
    assert len(pub) == 7 and len(held) == 0


def test_enforce_supply_mode_blocks_with_a_clear_message():
    f = incidents()
    r = k_anonymity(f, quasi_identifiers_for(PRC.file("offences")), k_threshold=5)
    with pytest.raises(DisclosureBlocked, match="min_k is 5"):
        enforce_min_k(f, r, min_k=5, mode="supply")
    pub, held = enforce_min_k(f, r, min_k=1, mode="supply")
    assert len(pub) == len(f) and held.empty
    with pytest.raises(ValueError):
        enforce_min_k(f, r, min_k=5, mode="everything")


def test_empty_frame_and_unknown_column():
    empty = incidents().iloc[0:0]
    r = k_anonymity(empty, ["ho_offence_code"])
    assert (r.records, r.k, r.k_threshold) == (0, None, 5)
    with pytest.raises(KeyError):
        k_anonymity(incidents(), ["no_such_column"])
