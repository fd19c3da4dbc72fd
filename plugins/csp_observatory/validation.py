"""Validate a parsed feed file: row rules in pandas, then a Great Expectations suite for the quality report.

Two kinds of check, following section 4.2.3 of the guidance ("issues with accuracy should not prevent the
supply of information"):

* :func:`apply_row_rules` sets aside only rows that cannot be used at all (a required value or key missing, a
  required code or reference invalid) and blanks optional values that are wrong, counting them.
* :func:`validate` runs a GX suite built from the schema and scores the file on the guidance's four
  qualities: completeness, accuracy, precision and currency. Its failures are findings, never errors.

Great Expectations is imported inside functions: DAG files import this package when Airflow parses them.
"""
from __future__ import annotations

import logging
from datetime import date, datetime
from typing import Any, Final

import pandas as pd

from csp_observatory import validation_gx
from csp_observatory.cleaning import normalise_codes
from csp_observatory.parsing import DTYPES, empty_rejected, rejected_frame, without_rows
from csp_observatory.schema import Datafield, FeedFile, FeedSchema
from csp_observatory.validation_gx import Check
from csp_observatory.validation_scores import blank, completeness_score, fill_rates, records_per_day

log = logging.getLogger(__name__)

# Great Britain, in British National Grid metres and in WGS84 degrees.
GB_EASTING: Final = (0, 700_000)
GB_NORTHING: Final = (0, 1_300_000)
GB_LONGITUDE: Final = (-8.75, 1.85)
GB_LATITUDE: Final = (49.8, 60.95)
EARLIEST_DATE: Final = pd.Timestamp("1900-01-01")
#: Event dates older than this many months before the supply period count against currency.
CURRENCY_MONTHS: Final = 12
QUALITIES: Final = ("completeness", "accuracy", "precision", "currency")
# Postcode written as a full unit (any case and spacing): a district alone (HX1) is not precise enough.
FULL_POSTCODE: Final = r"^\s*[A-Za-z]{1,2}[0-9][A-Za-z0-9]?\s*[0-9][A-Za-z]{2}\s*$"
# Ages given as band starts (0, 5, 10, ...) leave most values on multiples of five.
AGE_BAND_VALUES: Final = tuple(range(0, 125, 5))
PRECISION_MOSTLY: Final = 0.6
#: validate()'s JSON-ready result: file, rows, period, success, qualities, populated_percent, expectations, gx_result.
ValidationSummary = dict[str, Any]


# --- row rules (pandas) ---------------------------------------------------------------------------

def _today() -> pd.Timestamp:
    return pd.Timestamp(date.today())


def latest_date(d: Datafield, today: pd.Timestamp | None = None) -> pd.Timestamp:
    """The latest date a date datafield may hold: today, or ``future_days`` after it (a release announced ahead)."""
    return (today or _today()) + pd.Timedelta(days=d.future_days)


def _date_rule(d: Datafield) -> str:
    """The date rule in words, as the reason a partner reads."""
    if not d.future_days:
        return "is before 1900 or in the future"
    return f"is before 1900 or more than {d.future_days} days after today"


def _shown(d: Datafield, value: Any) -> str:
    return "(value withheld: personal data)" if d.personal else f"'{value}'"


def _invalid(frame: pd.DataFrame, d: Datafield, today: pd.Timestamp | None = None,
             missing: pd.Series | None = None) -> tuple[pd.Series, str]:
    """Present values of a datafield that break its schema rule, and what the rule is, in words.

    ``missing`` is ``blank(frame[d.name])`` when the caller has it already (a text column's strip is not cheap).
    """
    values = frame[d.name]
    present = ~(blank(values) if missing is None else missing)
    bad = pd.Series(False, index=frame.index)
    rule = ""
    if d.type == "code" and d.allowed_codes is not None:
        codes = normalise_codes(values, d)
        bad = present & ~codes.isin(d.allowed_codes).fillna(False)
        rule = "is not a valid code"
    elif d.pattern and pd.api.types.is_string_dtype(values.dtype):
        bad = present & ~values.str.strip().str.fullmatch(d.pattern).fillna(False)
        rule = "is not in the expected format"
    if d.type in ("integer", "float") and (d.min is not None or d.max is not None):
        lo = -float("inf") if d.min is None else d.min
        hi = float("inf") if d.max is None else d.max
        bad = bad | (present & ~values.between(lo, hi).fillna(True))
        rule = rule or f"is outside {d.min}..{d.max}"
    if d.type == "date":
        bad = bad | (present & ((values < EARLIEST_DATE) | (values > latest_date(d, today))).fillna(False))
        rule = rule or _date_rule(d)
    return bad, rule


def _coordinate_pairs(feed_file: FeedFile) -> list[tuple[str, str, tuple[float, float], tuple[float, float]]]:
    loc = feed_file.location
    pairs = []
    if loc.easting and loc.northing:
        pairs.append((loc.easting, loc.northing, GB_EASTING, GB_NORTHING))
    if loc.longitude and loc.latitude:
        pairs.append((loc.longitude, loc.latitude, GB_LONGITUDE, GB_LATITUDE))
    return pairs


def row_problems(frame: pd.DataFrame, feed_file: FeedFile, today: pd.Timestamp | None = None) -> pd.DataFrame:
    """Rows that cannot be used at all, with a plain reason: ``DataFrame[source_row, reason]``."""
    required = {d.name for d in feed_file.datafields if d.required} | set(feed_file.key)
    messages: dict[int, list[str]] = {}
    for d in feed_file.datafields:
        if d.name not in required or d.name not in frame.columns:
            continue
        missing = blank(frame[d.name])
        for i in frame.index[missing]:
            messages.setdefault(i, []).append(f"{d.name} is missing (it is required)")
        bad, rule = _invalid(frame, d, today, missing)
        if d.type == "date":
            continue   # a questionable required date is an accuracy finding, not a reason to refuse the row
        for i in frame.index[bad]:
            messages.setdefault(i, []).append(f"{d.name} {_shown(d, str(frame.at[i, d.name]).strip())} {rule}")
    rows = [int(frame.at[i, "source_row"]) for i in sorted(messages)]
    reasons = [f"row {r}: " + "; ".join(messages[i]) for r, i in zip(rows, sorted(messages))]
    return pd.DataFrame({"source_row": pd.Series(rows, dtype="int64"), "reason": pd.Series(reasons, dtype="string")})


def apply_row_rules(frame: pd.DataFrame, feed_file: FeedFile, today: pd.Timestamp | None = None
                    ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Reject unusable rows (stage "validate"); blank and count optional values that break a rule.

    A date after today (or after its ``future_days``) is such a value: blanked and counted when optional, an
    accuracy finding when required. ``today`` is the date measured against (tests fix it).
    """
    problems = row_problems(frame, feed_file, today)
    if problems.empty:
        rejected = empty_rejected()
        kept = frame.copy(deep=False)   # copy-on-write: blanking a value below copies that column only
    else:
        rejected = rejected_frame(feed_file.name, problems["source_row"].tolist(), problems["reason"].tolist(),
                                  "validate")
        # a few rows left out: the text columns are slices of the parsed ones, not a copy of every value
        kept = without_rows(frame, frame["source_row"].isin(problems["source_row"]).to_numpy())
    kept = kept.reset_index(drop=True)
    required = {d.name for d in feed_file.datafields if d.required} | set(feed_file.key)
    nulled: dict[str, int] = {}
    for d in feed_file.datafields:
        if d.name in required or d.name not in kept.columns:
            continue
        bad, _ = _invalid(kept, d, today)
        if bad.any():
            kept.loc[bad, d.name] = pd.NA
            nulled[d.name] = int(bad.sum())
    # A point outside Great Britain is wrong; blank both halves so geocoding falls back to the postcode.
    for x, y, (x0, x1), (y0, y1) in _coordinate_pairs(feed_file):
        if x not in kept.columns or y not in kept.columns:
            continue
        outside = (~kept[x].between(x0, x1) | ~kept[y].between(y0, y1)).fillna(False) & \
            (kept[x].notna() | kept[y].notna())
        if outside.any():
            kept.loc[outside, [x, y]] = pd.NA
            nulled[f"{x}/{y} outside Great Britain"] = int(outside.sum())
    return kept, rejected, nulled


# --- the GX suite ---------------------------------------------------------------------------------

def _period_bounds(period: str | None, period_format: str) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The first and last day of a supply period; None without one, or if it is not a valid period.

    Intake refuses such names; this stays robust anyway, as one bad period must never stop validation.
    """
    if not period:
        return None
    try:
        if not (period.isascii() and period.isdigit()):
            raise ValueError("not ASCII digits")
        start = pd.Timestamp(datetime.strptime(period, period_format))
    except (ValueError, OverflowError) as exc:
        log.warning("period %r is not a valid period for %s (%s): currency is measured against today",
                    period, period_format, exc)
        return None
    return start, start + pd.offsets.MonthBegin(1) - pd.Timedelta(days=1)


def build_checks(feed_file: FeedFile, schema: FeedSchema | None = None, period: str | None = None,
                 today: pd.Timestamp | None = None) -> list[Check]:
    """The suite for one feed file, from its schema: one Check per expectation, tagged with its quality."""
    today = today or _today()
    checks: list[Check] = []

    def add(quality: str, type_: str, describe: str, shown_column: str | None = None, **kwargs: Any) -> None:
        checks.append(Check(id=f"{quality}:{type_}:{kwargs.get('column', kwargs.get('column_list'))}:{len(checks)}",
                            quality=quality, type=type_, kwargs=kwargs, describe=describe,
                            shown_column=shown_column))

    for d in feed_file.datafields:
        # Completeness: every datafield; required ones must be full, optional ones are measured (mostly=0).
        add("completeness", "expect_column_values_to_not_be_null",
            f"{d.name} is populated" + (" (required)" if d.required else ""),
            column=d.name, **({} if d.required else {"mostly": 0.0}))
        if d.type == "code" and d.allowed_codes is not None:
            add("accuracy", "expect_column_values_to_be_in_set", f"{d.name} is a valid code",
                column=d.name, value_set=sorted(d.allowed_codes))
        if d.pattern:
            add("accuracy", "expect_column_values_to_match_regex", f"{d.name} matches {d.pattern}",
                column=d.name, regex=d.pattern)
        if d.type in ("integer", "float") and (d.min is not None or d.max is not None):
            add("accuracy", "expect_column_values_to_be_between", f"{d.name} within {d.min}..{d.max}",
                column=d.name, min_value=d.min, max_value=d.max)
        if d.type == "date":
            until = "today" if not d.future_days else f"{d.future_days} days after today"
            add("accuracy", "expect_column_values_to_be_between", f"{d.name} is a date from 1900 to {until}",
                column=d.name, min_value=EARLIEST_DATE.to_pydatetime(),
                max_value=latest_date(d, today).to_pydatetime())
        if d.type == "postcode":
            add("precision", "expect_column_values_to_match_regex", f"{d.name} is a full postcode, not a district",
                column=d.name, regex=FULL_POSTCODE)
        if d.role == "age":
            add("precision", "expect_column_values_to_not_be_in_set",
                f"{d.name} is in single years, not bands (most values are not multiples of 5)",
                column=d.name, value_set=list(AGE_BAND_VALUES), mostly=PRECISION_MOSTLY)

    for x, y, (x0, x1), (y0, y1) in _coordinate_pairs(feed_file):
        add("accuracy", "expect_column_values_to_be_between", f"{x} inside Great Britain", column=x,
            min_value=x0, max_value=x1)
        add("accuracy", "expect_column_values_to_be_between", f"{y} inside Great Britain", column=y,
            min_value=y0, max_value=y1)
    # A coordinate without its other half places nothing: an accuracy failure, not a silent empty.
    for x, y, _, _ in _coordinate_pairs(feed_file):
        for given, missing in ((x, y), (y, x)):
            add("accuracy", "expect_column_values_to_not_be_in_set",
                f"{missing} is given wherever {given} is (a point needs both)", shown_column=missing,
                column=_half_pair_column(given, missing), value_set=[True])
    loc = feed_file.location
    if loc.easting and loc.northing:
        add("precision", "expect_column_values_to_not_be_in_set",
            f"{loc.easting}/{loc.northing} given to 1 m, not rounded to 100 m",
            column=_rounded_column(loc.easting, loc.northing), value_set=[True], mostly=PRECISION_MOSTLY)

    if len(feed_file.key) == 1:
        add("accuracy", "expect_column_values_to_be_unique", f"{feed_file.key[0]} is unique", column=feed_file.key[0])
    elif feed_file.key:
        add("accuracy", "expect_compound_columns_to_be_unique", f"{' + '.join(feed_file.key)} is unique",
            column_list=list(feed_file.key))

    if feed_file.event_date:
        fmt = schema.period_format if schema else "%Y%m"
        bounds = _period_bounds(period, fmt)
        if bounds:
            start, end = bounds
            oldest = start - pd.DateOffset(months=CURRENCY_MONTHS)
            add("currency", "expect_column_max_to_be_between", f"latest {feed_file.event_date} is in period {period}",
                column=feed_file.event_date, min_value=start.to_pydatetime(), max_value=end.to_pydatetime())
        else:
            end = today
            oldest = today - pd.DateOffset(months=CURRENCY_MONTHS)
            unusable = f" (period {period} is not a valid period)" if period else ""
            add("currency", "expect_column_max_to_be_between",
                f"latest {feed_file.event_date} is within 2 months of today{unusable}", column=feed_file.event_date,
                min_value=(today - pd.DateOffset(months=2)).to_pydatetime(), max_value=today.to_pydatetime())
        add("currency", "expect_column_values_to_be_between",
            f"{feed_file.event_date} not older than {CURRENCY_MONTHS} months before the period",
            column=feed_file.event_date, min_value=oldest.to_pydatetime(), max_value=end.to_pydatetime(),
            mostly=0.9)
    return checks


def _rounded_column(x: str, y: str) -> str:
    return f"__{x}_{y}_rounded_to_100m"


def _half_pair_column(given: str, missing: str) -> str:
    return f"__{missing}_missing_where_{given}_given"


def _batch_frame(frame: pd.DataFrame, feed_file: FeedFile) -> pd.DataFrame:
    """What GX sees: codes read as their schema spelling, plus a derived flag column for coordinate precision."""
    out = frame.copy(deep=False)    # copy-on-write: the columns replaced below are new, the rest shared
    for d in feed_file.datafields:
        if d.name not in out.columns:
            # typed as parsing types it, so that a check on a missing number column sees numbers, not strings
            out[d.name] = pd.Series(pd.NA, index=out.index).astype(DTYPES.get(d.type, "string"))
        elif d.type == "code":
            # 028E and 28E are the same code; formatting is cleaning's job, not an accuracy problem.
            out[d.name] = normalise_codes(out[d.name], d)
    for x, y, _, _ in _coordinate_pairs(feed_file):
        for given, missing in ((x, y), (y, x)):
            out[_half_pair_column(given, missing)] = (out[given].notna() & out[missing].isna()).astype("boolean")
    loc = feed_file.location
    if loc.easting and loc.northing and loc.easting in out.columns and loc.northing in out.columns:
        e, n = out[loc.easting], out[loc.northing]
        out[_rounded_column(loc.easting, loc.northing)] = ((e % 100 == 0) & (n % 100 == 0)).astype("boolean")
    return out


def validate(frame: pd.DataFrame, feed_file: FeedFile, schema: FeedSchema | None = None,
             period: str | None = None, today: pd.Timestamp | None = None,
             rates: dict[str, dict[str, Any]] | None = None) -> ValidationSummary:
    """Score a file on completeness, accuracy, precision and currency with a GX suite; JSON-ready summary.

    ``frame`` holds the rows kept. ``rates`` (optional) are the fill rates (:func:`fill_rates`) of every parsed row,
    before rows missing a required value were set aside: the completeness score is measured on them, so that a
    required value missing counts against completeness even though its row was not loaded. Without them, the rates
    are ``frame``'s. The rates, not the rows, are passed so that a caller can free every parsed row before GX runs
    (issue 9: GX's run is a parse process's peak of memory).
    """
    checks = build_checks(feed_file, schema, period, today)
    batch = _batch_frame(frame, feed_file)
    raw = validation_gx.run_suite(batch, checks, feed_file.name)
    expectations = validation_gx.expectation_entries(raw, checks)
    expectations.sort(key=lambda e: (QUALITIES.index(e["quality"]), e["id"]))

    populated = {}
    for e in expectations:
        if e["type"] == "expect_column_values_to_not_be_null" and e["unexpected_percent"] is not None:
            populated[e["column"]] = round(100.0 - e["unexpected_percent"], 2)

    rates = fill_rates(frame, feed_file) if rates is None else rates
    scores: dict[str, Any] = {}
    for quality in QUALITIES:
        found = [e for e in expectations if e["quality"] == quality]
        if quality == "completeness":
            score = completeness_score(rates)
        else:
            values = [0.0 if e["error"] else (100.0 - e["unexpected_percent"]) if e["unexpected_percent"] is not None
                      else (100.0 if e["success"] else 0.0) for e in found]
            score = round(sum(values) / len(values), 2) if values else None
        scores[quality] = {"score": score, "expectations": len(found),
                           "failed": sum(1 for e in found if not e["success"])}
    return {
        "file": feed_file.name, "rows": int(len(frame)), "period": period,
        "success": all(e["success"] for e in expectations),
        "qualities": scores, "populated_percent": populated, "fill_rates": rates,
        "records_per_day": records_per_day(frame, feed_file), "expectations": expectations,
        "gx_result": raw,
    }
