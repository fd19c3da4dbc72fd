"""validation_gx runs the suite on a cheaper frame and arguments: GX must find exactly what it finds on the parsed
frame with the checks as written (SUMMARY format, Python regexes, nullable numbers)."""
from __future__ import annotations

import pandas as pd
import pytest

from csp_observatory import validation, validation_gx
from csp_observatory.validation_gx import Check

pytestmark = pytest.mark.unit


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        # Python's \s takes \x1f, \x0b and (on Unicode text) a no-break space; RE2's \s does not
        "pc": pd.Series(["HX1 1AA", "HX1\x1f1AA", "hx11aa ", "HX1", None, "HX1 1AA\n", "HX1\x0b1AB"],
                        dtype="string"),
        "pc_unicode": pd.Series(["HX1\u00a01AA", "HX1 1AA", None, "HX1", "HX1 1AA", "x", "HX11AA"], dtype="string"),
        "age": pd.Series([3, 121, None, 5, 2 ** 60, -1, 40], dtype="Int64"),
        "small": pd.Series([3, 121, None, 5, 7, -1, 40], dtype="Int64"),
        "x": pd.Series([1.5, None, 700_001.0, -0.5, 0.0, 10.0, 3.0], dtype="Float64"),
        "note": pd.Series(["a long free text", None, "b", None, None, "c", "d"], dtype="string"),
        "unchecked": pd.Series(range(7), dtype="int64"),
    })


def _checks() -> list[Check]:
    def check(i: int, type_: str, **kwargs: object) -> Check:
        return Check(id=f"accuracy:{type_}:{i}", quality="accuracy", type=type_, kwargs=kwargs, describe=str(i))
    return [
        check(0, "expect_column_values_to_match_regex", column="pc", regex=validation.FULL_POSTCODE),
        check(1, "expect_column_values_to_match_regex", column="pc_unicode", regex=validation.FULL_POSTCODE),
        check(2, "expect_column_values_to_be_between", column="age", min_value=0, max_value=120),
        check(3, "expect_column_values_to_be_between", column="small", min_value=0, max_value=120),
        check(4, "expect_column_values_to_be_between", column="x", min_value=0, max_value=700_000),
        check(5, "expect_column_values_to_not_be_in_set", column="small", value_set=[5, 40], mostly=0.6),
        check(6, "expect_column_values_to_not_be_null", column="x"),
        check(7, "expect_column_values_to_not_be_null", column="note", mostly=0.5),
        check(8, "expect_column_values_to_not_be_null", column="pc"),
    ]


def _plain_gx(frame: pd.DataFrame, checks: list[Check]) -> dict:
    """GX as it ran before: the frame as parsed, the checks' own arguments, SUMMARY results."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    batch = (context.data_sources.add_pandas("plain_source").add_dataframe_asset("plain")
             .add_batch_definition_whole_dataframe("whole"))
    suite = context.suites.add(gx.ExpectationSuite(name="plain_suite", expectations=[
        validation_gx._expectation_class(gx, c.type)(**c.kwargs, meta={"check_id": c.id}) for c in checks]))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="plain", data=batch, suite=suite))
    return definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY").to_json_dict()


def test_the_cheap_run_finds_what_plain_gx_finds():
    frame, checks = _frame(), _checks()
    fast = validation_gx.expectation_entries(validation_gx.run_suite(frame, checks, "cheap"), checks)
    plain = validation_gx.expectation_entries(_plain_gx(frame, checks), checks)
    key = lambda e: e["id"]   # noqa: E731
    assert sorted(fast, key=key) == sorted(plain, key=key)
    counts = {e["id"]: e["unexpected_count"] for e in fast}
    assert counts["accuracy:expect_column_values_to_match_regex:0"] == 1          # HX1 (\s* takes a final newline)
    assert counts["accuracy:expect_column_values_to_match_regex:1"] == 2          # HX1 and x
    assert counts["accuracy:expect_column_values_to_be_between:2"] == 3           # 121, 2**60, -1
    assert counts["accuracy:expect_column_values_to_be_between:4"] == 2
    assert counts["accuracy:expect_column_values_to_not_be_null:7"] == 3
    assert {e["success"] for e in fast if e["id"].endswith(":7")} == {True}      # 4 of 7 filled, mostly 0.5


def test_gx_is_given_the_checked_columns_and_a_fill_only_column_as_its_nullness():
    frame, checks = _frame(), _checks()
    batch = validation_gx.gx_frame(frame, checks)
    assert list(batch.columns) == ["pc", "pc_unicode", "age", "small", "x", "note"]     # "unchecked" is left out
    assert batch["note"].dtype == "boolean" and batch["note"].isna().tolist() == frame["note"].isna().tolist()
    assert batch["pc"].dtype == frame["pc"].dtype                                  # a regex is checked on it too


def test_numbers_become_float64_only_when_exact():
    frame = _frame()
    assert validation_gx.numpy_numbers(frame["small"]).dtype == "float64"
    assert validation_gx.numpy_numbers(frame["small"]).isna().tolist() == frame["small"].isna().tolist()
    assert validation_gx.numpy_numbers(frame["x"]).dtype == "float64"
    assert validation_gx.numpy_numbers(frame["age"]).dtype == "Int64"               # 2**60 is not a float exactly
    pc = frame["pc"]
    assert validation_gx.numpy_numbers(pc) is pc


def test_a_regex_is_rewritten_for_ascii_values_only():
    frame = _frame()
    ascii_kwargs = validation_gx.gx_kwargs(frame, "expect_column_values_to_match_regex",
                                           {"column": "pc", "regex": r"^\s*\d$"})
    assert "\\s" not in ascii_kwargs["regex"] and "[0-9]" in ascii_kwargs["regex"]
    kept = {"column": "pc_unicode", "regex": r"^\s*\d$"}
    assert validation_gx.gx_kwargs(frame, "expect_column_values_to_match_regex", kept) == kept
    lookahead = {"column": "pc", "regex": r"^(?=H)\s*"}
    assert validation_gx.gx_kwargs(frame, "expect_column_values_to_match_regex", lookahead) == lookahead
