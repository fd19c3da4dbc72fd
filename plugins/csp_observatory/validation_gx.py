"""Run a file's expectations as one Great Expectations suite, and read GX's results back as the report's entries.

GX is imported inside :func:`run_suite`: DAG files import this package when Airflow parses them, and a process
that never validates a file never pays GX's import (several seconds).

What GX finds is what it would find on the frame as parsed, but it is asked for less and given columns it
evaluates in bulk (issue 9: the suite took about 50 s of the parse-and-validate task at 1M offences):

* results are asked for in GX's ``BASIC`` format: element and unexpected counts and percentages, which are all
  the report reads. ``SUMMARY`` also lists the unexpected rows' index and a query for them, each a copy of the
  whole frame's rows per expectation, and those samples were thrown away unread;
* GX is given only the columns a check names, and a column checked only for being filled as a flag missing
  where the column is (GX copies the whole batch to a column's non-null rows for each column expectation);
* nullable ``Int64``/``Float64`` columns are handed over as ``float64`` (NaN where missing) when every value is
  exactly a float: GX compares numpy numbers in one step but calls a Python function per value for any other
  dtype, and a missing value is missing either way;
* a regex on a column whose values are all ASCII is written as RE2 reads it the same way (``\\s`` as Python's
  ASCII whitespace, ``\\d`` as ``[0-9]``), so that pandas runs it in Arrow rather than through ``re`` value by
  value; pandas still falls back to ``re`` where a value holds a newline;
* a large batch is checked in a few runs of GX (:data:`SUITE_RUNS`), each on a share of its columns with the
  checks of those columns. GX copies the batch's columns to each checked column's filled rows, and keeps each
  check's row-wise result until its run ends: a run on a quarter of the columns copies and keeps about a quarter.
  Measured at 1M offences, the offences' and victims' suites took 1.1-1.8 s against 1.8-3.3 s in one run, and
  their memory rose 60-105 MB against 165-185 MB (``validate`` is a parse process's peak). A run costs about
  40 ms to set up, which only a small batch notices: one of fewer than :data:`SPLIT_FROM_ROWS` rows is one run.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow.compute as pac

from csp_observatory import textkernels

#: What GX samples of the offending values; they may be names or dates of birth, so they are never stored.
SAMPLED: Final = ("partial_unexpected_list", "partial_unexpected_index_list", "partial_unexpected_counts",
                  "unexpected_list", "unexpected_index_list", "unexpected_rows")
#: The largest magnitude below which every integer is exactly a float64.
_EXACT_FLOAT_INT: Final = 2 ** 53
#: GX's result format: counts and percentages only (see the module docstring).
RESULT_FORMAT: Final = "BASIC"
#: A batch of at least SPLIT_FROM_ROWS rows is checked in SUITE_RUNS runs of GX, each on a share of its columns.
SPLIT_FROM_ROWS: Final = 100_000
SUITE_RUNS: Final = 4


@dataclass(frozen=True)
class Check:
    """One expectation of the suite, and which quality of the guidance it measures."""

    id: str
    quality: str
    type: str
    kwargs: dict[str, Any]
    describe: str
    shown_column: str | None = None     # what the report names, when GX checks a derived column


def _quiet_gx() -> None:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    for name in ("great_expectations", "great_expectations.core", "great_expectations.data_context"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _no_batch_fingerprint() -> None:
    """Stop GX fingerprinting each batch (``batch_markers.pandas_data_fingerprint``: an MD5 over pandas' hash of every
    value, about 0.7 s per million rows). Nothing reads it: the observatory keeps only the expectations' results, and
    the file's identity is its SHA-256 in the ledger. GX itself skips it for a frame of 1 GB or more
    (``HASH_THRESHOLD``, read as each batch is made; pinned GX), so a large supply never had one."""
    from great_expectations.execution_engine import pandas_execution_engine

    pandas_execution_engine.HASH_THRESHOLD = 0


def import_gx() -> None:
    """Import what a GX run needs, quietly and without its batch fingerprint; cheap once done in the process (or
    in the Celery worker a task process is forked from, ``worker_preload``)."""
    _quiet_gx()
    import great_expectations  # noqa: F401
    import great_expectations.constants  # noqa: F401
    import great_expectations.core.run_identifier  # noqa: F401
    import great_expectations.data_context.types.base  # noqa: F401
    import great_expectations.validator.v1_validator  # noqa: F401

    _no_batch_fingerprint()


def columns_of(check: Check) -> list[Any]:
    """The columns a check names (``column_list``, or its one ``column``: None for a table-level check)."""
    return list(check.kwargs.get("column_list") or [check.kwargs.get("column")])


def _result_key(type_: str, kwargs: dict[str, Any]) -> tuple[str, str]:
    column = kwargs.get("column", kwargs.get("column_list"))
    return type_, str(column)


def numpy_numbers(values: pd.Series) -> pd.Series:
    """A nullable number column as ``float64`` with NaN for missing, when that keeps every value exactly.

    Anything else (another dtype; an ``Int64`` column holding a value of 2**53 or more) is returned unchanged.
    """
    if isinstance(values.dtype, pd.Float64Dtype):
        return pd.Series(values.to_numpy(dtype="float64", na_value=np.nan), index=values.index, name=values.name)
    if isinstance(values.dtype, pd.Int64Dtype):
        present = values.dropna()
        if len(present) and int(present.abs().max()) >= _EXACT_FLOAT_INT:
            return values
        return pd.Series(values.to_numpy(dtype="float64", na_value=np.nan), index=values.index, name=values.name)
    return values


def gx_frame(frame: pd.DataFrame, checks: list[Check]) -> pd.DataFrame:
    """The batch as GX is given it: only the columns a check names; nullable number columns as ``float64``
    (:func:`numpy_numbers`); a column checked for nothing but being filled as a flag that is missing where it is.

    GX copies every column of the batch to a column's non-null rows for each column expectation: columns nobody
    checks, and the text of a column whose only check is its fill rate, are copied for nothing (most of a file's
    text is free text and addresses).
    """
    named: dict[str, set[str]] = {}
    for c in checks:
        for column in columns_of(c):
            named.setdefault(column, set()).add(c.type)
    out: dict[str, pd.Series] = {}
    for column in frame.columns:
        if column not in named:
            continue
        values = frame[column]
        if named[column] == {"expect_column_values_to_not_be_null"}:
            out[column] = pd.Series(True, index=values.index, dtype="boolean").mask(values.isna())
        else:
            out[column] = numpy_numbers(values)
    return pd.DataFrame(out, index=frame.index, copy=False)


def gx_kwargs(frame: pd.DataFrame, type_: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """An expectation's arguments as GX is given them: a regex over all-ASCII values in its RE2 spelling."""
    column = kwargs.get("column")
    if type_ != "expect_column_values_to_match_regex" or column not in frame.columns:
        return kwargs
    values = frame[column]
    if not pd.api.types.is_string_dtype(values.dtype):
        return kwargs
    if pac.all(pac.string_is_ascii(textkernels.arrow_strings(values))).as_py() is False:
        return kwargs      # Python's \s and \d also match Unicode spaces and digits
    try:
        regex = textkernels.re2_pattern(kwargs["regex"])
    except ValueError:
        return kwargs      # a look-around or back-reference: Python's re it is
    return {**kwargs, "regex": regex}


def run_suite(frame: pd.DataFrame, checks: list[Check], name: str, runs: int | None = None) -> dict[str, Any]:
    """Run the checks as a GX suite on ephemeral contexts; the GX result as a JSON-ready dict.

    ``runs`` (default: :data:`SUITE_RUNS` for a batch of :data:`SPLIT_FROM_ROWS` rows or more, else 1) splits the
    checks by the columns they name (:func:`check_groups`) into that many runs of GX, each given only its columns;
    their results are returned as one suite's (results in run order, success and statistics over them all).

    GX's own validator runs each suite on the batch, as ``ValidationDefinition.run`` has it do, without what a
    one-off run never reads: the suite, the validation definition and the result are not serialised into the
    context's stores, and the suite is built in one pass rather than by ``add_expectation``, whose check for an
    equal expectation already added builds two dicts per pair (its duplicates are still left out, see
    :func:`_unique`). Each run gets its own context and data source, so its execution engine's metric and batch
    caches start empty: a reused engine would answer a file's metrics from the cache of an earlier batch of
    the same asset, and would keep that batch's frame alive.
    """
    import_gx()
    batch = gx_frame(frame, checks)
    if runs is None:
        runs = SUITE_RUNS if len(batch) >= SPLIT_FROM_ROWS else 1
    weights = ({column: int(batch[column].memory_usage(index=False, deep=False)) for column in batch.columns}
               if runs > 1 else None)
    groups = check_groups(checks, runs, weights)
    if len(groups) <= 1:
        return _run_one(batch, checks, name)
    # A column a check names but the batch lacks is left for GX to report, as one run would.
    return _merged([_run_one(batch[[c for c in columns if c in batch.columns]], group, name)
                    for columns, group in groups])


def check_groups(checks: list[Check], runs: int, weights: dict[str, int] | None = None
                 ) -> list[tuple[list[str], list[Check]]]:
    """The checks split into at most ``runs`` groups, as (the columns a group's batch needs, its checks in their
    order): checks that name a column in common share a group; groups are filled heaviest column set first into
    the lightest group (``weights``: a column's bytes; 1 each if not given). One group when a check names no
    column (a table-level check needs every column)."""
    named = [columns_of(c) for c in checks]
    every: list[str] = list(dict.fromkeys(col for cols in named for col in cols))
    if runs <= 1 or any(col is None for cols in named for col in cols):
        return [(every, list(checks))] if checks else []
    # Columns named by one check together are one set (a union-find over the columns).
    parent = {col: col for col in every}

    def root(col: str) -> str:
        while parent[col] != col:
            parent[col] = parent[parent[col]]
            col = parent[col]
        return col

    for cols in named:
        for col in cols[1:]:
            parent[root(col)] = root(cols[0])
    sets: dict[str, list[str]] = {}
    for col in every:
        sets.setdefault(root(col), []).append(col)
    weight = {r: sum((weights or {}).get(col, 1) for col in cols) for r, cols in sets.items()}
    loads = [0] * min(runs, len(sets))
    group_of: dict[str, int] = {}
    for r in sorted(sets, key=lambda r: -weight[r]):      # stable: equal weights keep the columns' order
        i = loads.index(min(loads))
        group_of[r], loads[i] = i, loads[i] + weight[r]
    out: list[tuple[list[str], list[Check]]] = [([], []) for _ in loads]
    for col in every:
        out[group_of[root(col)]][0].append(col)
    for check, cols in zip(checks, named):
        out[group_of[root(cols[0])]][1].append(check)
    return [group for group in out if group[1]]


def _run_one(batch: pd.DataFrame, checks: list[Check], name: str) -> dict[str, Any]:
    """One GX run of ``checks`` on ``batch`` (already as :func:`gx_frame` makes it), on a context of its own."""
    import great_expectations as gx
    from great_expectations.constants import DATAFRAME_REPLACEMENT_STR
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.validator.v1_validator import Validator

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    batch_definition = (context.data_sources.add_pandas(f"{name}_source").add_dataframe_asset(name)
                        .add_batch_definition_whole_dataframe("whole_file"))
    expectations = [_expectation_class(gx, check.type)(**gx_kwargs(batch, check.type, check.kwargs),
                                                       meta={"check_id": check.id, "quality": check.quality})
                    for check in checks]
    suite = gx.ExpectationSuite(name=f"{name}_suite", expectations=_unique(expectations))
    validator = Validator(batch_definition=batch_definition, batch_parameters={"dataframe": batch},
                          result_format=RESULT_FORMAT)
    results = validator.validate_expectation_suite(suite)
    run_id = RunIdentifier(run_time=datetime.now(timezone.utc))
    results.meta.update({"run_id": run_id, "validation_time": run_id.run_time,
                         "batch_parameters": {"dataframe": DATAFRAME_REPLACEMENT_STR}})
    result = results.to_json_dict()
    for r in result.get("results", []):
        for key in SAMPLED:
            (r.get("result") or {}).pop(key, None)
    return result


def _merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs' results as one suite's: the first run's suite name and meta, every run's results, and the
    success and statistics GX gives a suite of them all."""
    results = [r for part in parts for r in part.get("results", [])]
    passed = sum(1 for r in results if r.get("success"))
    return {**parts[0], "success": all(part.get("success") for part in parts), "results": results,
            "statistics": {"evaluated_expectations": len(results), "successful_expectations": passed,
                           "unsuccessful_expectations": len(results) - passed,
                           "success_percent": 100.0 * passed / len(results) if results else None}}


def _unique(expectations: list[Any]) -> list[Any]:
    """The expectations less any equal to an earlier one, as ``ExpectationSuite.add_expectation`` leaves them out
    (same type and arguments; id, notes, meta and rendered content not compared), each compared once."""
    exclude = {"id", "rendered_content", "notes", "meta"}
    kept: list[Any] = []
    seen: list[tuple[str, dict[str, Any]]] = []
    for e in expectations:
        key = (e.expectation_type, e.dict(exclude=exclude))
        if key not in seen:
            seen.append(key)
            kept.append(e)
    return kept


def _expectation_class(gx: Any, type_: str) -> Any:
    camel = "".join(part.capitalize() for part in type_.split("_"))
    return getattr(gx.expectations, camel)


def expectation_entries(raw: dict[str, Any], checks: list[Check]) -> list[dict[str, Any]]:
    """GX's results as the report's entries, one per check GX answered for (in GX's order)."""
    by_id = {c.id: c for c in checks}
    by_key: dict[tuple[str, str], list[Check]] = {}
    for c in checks:
        by_key.setdefault(_result_key(c.type, c.kwargs), []).append(c)
    expectations: list[dict[str, Any]] = []
    for r in raw.get("results", []):
        config = r.get("expectation_config", {})
        type_, kwargs, meta = config.get("type"), config.get("kwargs", {}), config.get("meta") or {}
        # Results come back in no fixed order: match on type and column, and on our id where two share them.
        candidates = by_key.get(_result_key(type_, kwargs), [])
        check = by_id.get(meta.get("check_id")) if meta.get("check_id") in by_id else None
        check = check or (candidates[0] if len(candidates) == 1 else None)
        if check is None:
            continue
        result = r.get("result") or {}
        raised = _raised(r.get("exception_info"))
        element_count = result.get("element_count")
        unexpected = result.get("unexpected_count")
        if check.type == "expect_column_values_to_not_be_null":
            percent = (100.0 * unexpected / element_count) if element_count else 0.0
        else:
            percent = result.get("unexpected_percent")
        expectations.append({
            "id": check.id, "type": check.type,
            "column": check.shown_column or check.kwargs.get("column", check.kwargs.get("column_list")),
            "quality": check.quality, "describe": check.describe, "success": bool(r.get("success")),
            "unexpected_count": None if unexpected is None else int(unexpected),
            "unexpected_percent": None if percent is None else round(float(percent), 3),
            "element_count": element_count, "observed_value": _plain(result.get("observed_value")),
            "error": bool(raised),
        })
    return expectations


def _raised(info: Any) -> bool:
    # GX 1.x gives either one {"raised_exception": ...} dict or one such dict per metric.
    if not isinstance(info, dict):
        return False
    if "raised_exception" in info:
        return bool(info["raised_exception"])
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
