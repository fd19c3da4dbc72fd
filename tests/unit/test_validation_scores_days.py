"""records_per_day counts per day before writing days as text: the same counts and order as writing every row's
day (strftime per row) and counting those."""
from __future__ import annotations

import pandas as pd
import pytest

from csp_observatory import validation_scores
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def offences():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml").file("offences")


def _per_row(values: pd.Series) -> dict[str, int]:
    days = pd.to_datetime(values, errors="coerce").dropna().dt.strftime("%Y-%m-%d")
    return {str(k): int(v) for k, v in days.value_counts().sort_index().items()}


def test_days_are_counted_as_writing_each_row_would(offences):
    column = offences.event_date
    values = pd.Series(pd.to_datetime(["2026-09-02 23:59", "2026-09-02 00:00", None, "1999-12-31 12:00",
                                       "2026-09-01 00:00", "2026-09-02 08:30", "2101-01-01 00:00", "1900-01-01 00:00"]))
    frame = pd.DataFrame({column: values})
    got = validation_scores.records_per_day(frame, offences)
    assert got == _per_row(values)
    assert list(got) == ["1900-01-01", "1999-12-31", "2026-09-01", "2026-09-02", "2101-01-01"]   # in date order
    assert got["2026-09-02"] == 3                                                              # times of one day


def test_no_event_date_column_gives_no_days(offences):
    assert validation_scores.records_per_day(pd.DataFrame({"x": [1]}), offences) == {}
    empty = pd.DataFrame({offences.event_date: pd.Series([], dtype="datetime64[ns]")})
    assert validation_scores.records_per_day(empty, offences) == {}
