"""run_suite runs GX's validator without the context's stores: it must find what a validation definition run
with ``add_expectation`` finds, duplicates left out the same way, and no run may see another run's data."""
from __future__ import annotations

import pandas as pd
import pytest

from csp_observatory import validation_gx
from csp_observatory.validation_gx import Check

pytestmark = pytest.mark.unit


def _check(i: int, type_: str, **kwargs: object) -> Check:
    return Check(id=f"accuracy:{type_}:{i}", quality="accuracy", type=type_, kwargs=kwargs, describe=str(i))


def _checks() -> list[Check]:
    return [
        _check(0, "expect_column_values_to_be_between", column="n", min_value=0, max_value=10),
        _check(1, "expect_column_values_to_not_be_null", column="n", mostly=0.5),
        _check(2, "expect_column_values_to_be_between", column="n", min_value=0, max_value=10),   # same as 0
        _check(3, "expect_column_values_to_be_in_set", column="code", value_set=["A", "B"]),
        _check(4, "expect_column_values_to_be_unique", column="code"),
    ]


def _stored_run(frame: pd.DataFrame, checks: list[Check]) -> dict:
    """The suite as run_suite ran it before: add_expectation one by one, stored, run by a validation definition."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    batch = (context.data_sources.add_pandas("stored_source").add_dataframe_asset("stored")
             .add_batch_definition_whole_dataframe("whole"))
    suite = gx.ExpectationSuite(name="stored_suite")
    for c in checks:
        suite.add_expectation(validation_gx._expectation_class(gx, c.type)(
            **c.kwargs, meta={"check_id": c.id, "quality": c.quality}))
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="stored", data=batch, suite=suite))
    return definition.run(batch_parameters={"dataframe": frame}, result_format="BASIC").to_json_dict()


def _entries(raw: dict, checks: list[Check]) -> list[dict]:
    return sorted(validation_gx.expectation_entries(raw, checks), key=lambda e: e["id"])


def test_a_run_finds_what_a_stored_validation_definition_finds_duplicates_left_out_alike():
    frame = pd.DataFrame({"n": pd.Series([1, 20, None, 3], dtype="float64"),
                          "code": pd.Series(["A", "C", "A", None], dtype="string")})
    checks = _checks()
    raw = validation_gx.run_suite(frame, checks, "direct")
    assert len(raw["results"]) == 4                       # check 2 equals check 0 but for its meta: left out
    assert _entries(raw, checks) == _entries(_stored_run(frame, checks), checks)
    counts = {e["id"]: e["unexpected_count"] for e in _entries(raw, checks)}
    assert counts["accuracy:expect_column_values_to_be_between:0"] == 1
    assert counts["accuracy:expect_column_values_to_be_in_set:3"] == 1
    assert raw["meta"]["batch_parameters"] == {"dataframe": "<DATAFRAME>"}     # the frame itself is never kept
    # nor GX's fingerprint of it, which nothing reads (and GX leaves out itself for a frame of 1 GB or more)
    assert "pandas_data_fingerprint" not in raw["meta"]["batch_markers"]


def test_runs_of_one_file_name_in_one_process_see_only_their_own_frame():
    checks = _checks()
    first = pd.DataFrame({"n": pd.Series([1.0, 2.0, 30.0]), "code": pd.Series(["A", "B", "B"], dtype="string")})
    second = pd.DataFrame({"n": pd.Series([50.0, 60.0, None, 1.0]),
                           "code": pd.Series(["Z", "A", "B", "Y"], dtype="string")})
    a = _entries(validation_gx.run_suite(first, checks, "same"), checks)
    b = _entries(validation_gx.run_suite(second, checks, "same"), checks)
    assert a == _entries(_stored_run(first, checks), checks)
    assert b == _entries(_stored_run(second, checks), checks)
    assert [e["element_count"] for e in b] == [4] * 4 and a != b
