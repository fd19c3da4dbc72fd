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


def _spread_checks() -> list[Check]:
    """Checks on five columns, two of them named together by a compound key."""
    return [
        _check(0, "expect_column_values_to_be_between", column="n", min_value=0, max_value=10),
        _check(1, "expect_column_values_to_not_be_null", column="n"),
        _check(2, "expect_column_values_to_be_in_set", column="code", value_set=["A", "B"]),
        _check(3, "expect_compound_columns_to_be_unique", column_list=["code", "ref"]),
        _check(4, "expect_column_values_to_match_regex", column="ref", regex=r"^R\d+$"),
        _check(5, "expect_column_values_to_be_between", column="m", min_value=0, max_value=1),
        _check(6, "expect_column_values_to_be_unique", column="other"),
    ]


def _spread_frame() -> pd.DataFrame:
    return pd.DataFrame({"n": pd.Series([1, 20, None, 3, 4, 5], dtype="float64"),
                         "code": pd.Series(["A", "C", "A", None, "B", "A"], dtype="string"),
                         "ref": pd.Series(["R1", "R2", "R1", "R3", "x", "R5"], dtype="string"),
                         "m": pd.Series([0.5, 2.0, None, 0.1, 0.2, 0.3], dtype="float64"),
                         "other": pd.Series(["a", "b", "b", "c", "d", "e"], dtype="string")})


def test_checks_split_by_their_columns_find_what_one_run_finds():
    frame, checks = _spread_frame(), _spread_checks()
    one = validation_gx.run_suite(frame, checks, "one", runs=1)
    split = validation_gx.run_suite(frame, checks, "split", runs=3)
    assert _entries(split, checks) == _entries(one, checks) == _entries(_stored_run(frame, checks), checks)
    assert split["statistics"] == one["statistics"] and split["success"] is one["success"] is False
    # every check fails once at least: n 20 and a null, code C, (A, R1) twice, ref x, m 2.0, other b twice
    assert split["statistics"]["unsuccessful_expectations"] == 7
    counts = {e["id"]: e["unexpected_count"] for e in _entries(split, checks)}
    assert counts["accuracy:expect_compound_columns_to_be_unique:3"] == 2
    assert counts["accuracy:expect_column_values_to_be_unique:6"] == 2


def test_check_groups_keep_columns_named_together_in_one_group_and_every_check_once():
    checks = _spread_checks()
    groups = validation_gx.check_groups(checks, 3, {"n": 8, "code": 4, "ref": 4, "m": 8, "other": 1})
    assert len(groups) == 3
    assert sorted(c.id for _, group in groups for c in group) == sorted(c.id for c in checks)
    by_column = {col: i for i, (columns, _) in enumerate(groups) for col in columns}
    assert by_column["code"] == by_column["ref"]                    # the compound key's columns are together
    for i, (columns, group) in enumerate(groups):
        named = {col for c in group for col in (c.kwargs.get("column_list") or [c.kwargs["column"]])}
        assert named == set(columns), i                             # each run is given exactly its columns
        assert group == [c for c in checks if c in group]           # in the checks' order
    # heaviest first into the lightest group: n, code+ref, m (8 each), then other (1) with the first of them
    assert sorted(sorted(columns) for columns, _ in groups) == [["code", "ref"], ["m"], ["n", "other"]]
    # one run asked for, or a check that names no column: one group of everything
    assert validation_gx.check_groups(checks, 1) == [(["n", "code", "ref", "m", "other"], checks)]
    table = Check(id="accuracy:t:9", quality="accuracy", type="expect_table_row_count_to_be_between",
                  kwargs={"min_value": 1}, describe="t")
    assert len(validation_gx.check_groups([*checks, table], 3)) == 1
    assert validation_gx.check_groups([], 3) == []


def test_a_large_batch_is_checked_in_several_runs_a_small_one_in_one(monkeypatch):
    calls: list[list[str]] = []
    real = validation_gx._run_one

    def counted(batch, checks, name):
        calls.append(list(batch.columns))
        return real(batch.head(3), checks, name)          # the runs themselves on a few rows: this is about how many

    monkeypatch.setattr(validation_gx, "_run_one", counted)
    checks = _spread_checks()
    big = _spread_frame().sample(validation_gx.SPLIT_FROM_ROWS, replace=True, random_state=1).reset_index(drop=True)
    validation_gx.run_suite(big, checks, "big")
    assert len(calls) == min(validation_gx.SUITE_RUNS, 4)           # four column sets: n, code+ref, m, other
    assert sorted(col for cols in calls for col in cols) == sorted(["n", "code", "ref", "m", "other"])
    calls.clear()
    validation_gx.run_suite(big.head(validation_gx.SPLIT_FROM_ROWS - 1), checks, "small")
    assert len(calls) == 1


def test_a_check_of_a_column_the_batch_lacks_is_reported_alike_in_split_runs():
    frame = _spread_frame()
    checks = [*_spread_checks(), _check(7, "expect_column_values_to_be_between", column="absent", min_value=0)]
    one = _entries(validation_gx.run_suite(frame, checks, "one", runs=1), checks)
    split = _entries(validation_gx.run_suite(frame, checks, "split", runs=3), checks)
    assert split == one
    (absent,) = [e for e in split if e["column"] == "absent"]
    assert absent["success"] is False
