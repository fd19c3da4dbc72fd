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
  value; pandas still falls back to ``re`` where a value holds a newline.
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
        columns = c.kwargs.get("column_list") or [c.kwargs.get("column")]
        for column in columns:
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


def run_suite(frame: pd.DataFrame, checks: list[Check], name: str) -> dict[str, Any]:
    """Run the checks as one GX suite on an ephemeral context; the GX result as a JSON-ready dict.

    GX's own validator runs the suite on the batch, as ``ValidationDefinition.run`` has it do, without what a
    one-off run never reads: the suite, the validation definition and the result are not serialised into the
    context's stores, and the suite is built in one pass rather than by ``add_expectation``, whose check for an
    equal expectation already added builds two dicts per pair (its duplicates are still left out, see
    :func:`_unique`). Each run gets its own context and data source, so its execution engine's metric and batch
    caches start empty: a reused engine would answer a file's metrics from the cache of an earlier batch of
    the same asset, and would keep that batch's frame alive.
    """
    import_gx()
    import great_expectations as gx
    from great_expectations.constants import DATAFRAME_REPLACEMENT_STR
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.validator.v1_validator import Validator

    batch = gx_frame(frame, checks)
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
