"""The quality stamp's pure parts: rows from a report (stamp_data.py), comments and the DAG docs' section
(stamp_text.py), the view's SQL (graded_views.py)."""
from __future__ import annotations

import pytest

from csp_observatory import graded_views, stamp_data, stamp_text
from csp_observatory.grading import quality_grade
from csp_observatory.schema_loading import schema_for

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def schema():
    return schema_for("police_recorded_crime")


def _check(expectation: str, column: str, success: bool, n: int = 0, pct: float = 0.0) -> dict:
    return {"expectation": expectation, "column": column, "describe": f"{column} check", "success": success,
            "unexpected_count": n, "unexpected_percent": pct}


def _report(**quality_overrides) -> dict:
    """A report as reporting.build_report shapes it (the keys the stamp reads), with two files."""
    offences = {
        "completeness": {"score": 100.0, "passed": 2, "failed": 0,
                         "expectations": [_check("expect_column_values_to_not_be_null", "crime_reference", True),
                                          _check("expect_column_values_to_not_be_null", "ho_offence_code", True)]},
        "accuracy": {"score": 95.5, "passed": 1, "failed": 1,
                     "expectations": [_check("expect_column_values_to_be_in_set", "ho_offence_code", False, 3, 1.5),
                                      _check("expect_column_values_to_be_unique", "crime_reference", True)]},
        "precision": {"score": 99.9, "passed": 1, "failed": 0,
                      "expectations": [_check("expect_column_values_to_match_regex", "location_postcode", True)]},
        "currency": {"score": None, "passed": 0, "failed": 0, "expectations": []},
    }
    offenders = {q: dict(v) for q, v in offences.items()}
    offenders["accuracy"] = {"score": 80.0, "passed": 4, "failed": 1,
                             "expectations": [_check("expect_column_values_to_be_between", "age", False, 9, 20.0)]}
    offenders["completeness"] = {"score": 100.0, "passed": 1, "failed": 0, "expectations": [],
                                 **quality_overrides}
    return {
        "report": {"generated_at": "2026-11-29T23:00:00+00:00"},
        "supply": {"supply_id": "police_recorded_crime/202609", "feed": "police_recorded_crime", "period": "202609",
                   "status": "loaded"},
        "summary": {"rows_in_files": 100, "rows_loaded": 97, "rows_need_attention": 2,
                    "rows_loaded_with_problems": 1, "rows_withheld": 0, "files_refused": 0},
        "outcome": {"level": "amber", "text": "Loaded, with problems to look at",
                    "reasons": ["2 rows set aside (not loaded)", "1 row loaded without a location (not geocoded)"]},
        "validation": {"offences": {"qualities": offences}, "offenders": {"qualities": offenders}},
        "rejected_rows": [
            {"file": "offences", "row": 12, "stage": "validate",
             "reason": "ho_offence_code '[value withheld]' is not a valid code", "action": "x"},
            {"file": "offences", "row": 30, "stage": "parse", "reason": "committed_from_date is not a date",
             "action": "x"}],
        "flagged_rows": [{"file": "offences", "row": 7, "stage": "geocode", "reason": "no usable location",
                          "action": "x"}],
        "metadata": {"date_supplied": "2026-10-02T08:00:00+00:00"},
    }


def test_the_stamp_copies_the_report_figure_for_figure(schema):
    report = _report()
    s = stamp_data.build_stamp(report, schema, "police")
    assert s.supply["level"] == "amber" and s.supply["reasons"] == report["outcome"]["reasons"]
    assert (s.supply["rows_loaded"], s.supply["rows_set_aside"], s.supply["rows_loaded_with_problems"]) == (97, 2, 1)
    assert s.supply["partner"] == "police" and s.supply["collected_at"] == "2026-10-02T08:00:00+00:00"
    files = {(r["file_name"], r["quality"]): r for r in s.file_qualities}
    for name, v in report["validation"].items():
        for q, x in v["qualities"].items():
            row = files[(name, q)]
            assert (row["score"], row["passed"], row["failed"]) == (x["score"], x["passed"], x["failed"])
            assert row["grade"] == quality_grade(x["score"], x["failed"])
            assert row["table_name"] == f"depersonalised.{schema.file(name).table}"
    by_q = {r["quality"]: r for r in s.qualities}
    # The supply's grade is its worst file's; its score the lowest; checks summed; failed checks become caveats.
    assert by_q["accuracy"]["grade"] == "poor" == s.supply["accuracy"]       # offenders 80 < 90
    assert by_q["accuracy"]["score"] == 80.0 and (by_q["accuracy"]["passed"], by_q["accuracy"]["failed"]) == (5, 2)
    assert by_q["accuracy"]["caveats"] == [
        "offences: ho_offence_code check on ho_offence_code failed: 3 values (1.5%)",
        "offenders: age check on age failed: 9 values (20%)"]
    assert by_q["completeness"]["grade"] == "good" and by_q["currency"]["grade"] == "n/a"
    assert by_q["currency"]["score"] is None
    assert by_q["precision"]["grade"] == "good"
    # One row per check, numbered within its file.
    assert len(s.checks) == sum(len(x["expectations"]) for v in report["validation"].values()
                                for x in v["qualities"].values())
    assert sorted({(c["file_name"], c["check_no"]) for c in s.checks}) == sorted(
        (c["file_name"], c["check_no"]) for c in s.checks)
    # Rows set aside and flagged, with the field names their reasons mention.
    assert [(r["source_row"], r["loaded"], r["fields"]) for r in s.set_aside] == [
        (12, False, ["ho_offence_code"]), (30, False, ["committed_from_date"]), (7, True, [])]


def test_a_grade_the_report_carries_is_kept(schema):
    # A report that grades a file itself (reporting may): the stamp shows that grade, not a second opinion.
    s = stamp_data.build_stamp(_report(grade="fair"), schema, "police")
    row = next(r for r in s.file_qualities if (r["file_name"], r["quality"]) == ("offenders", "completeness"))
    assert row["grade"] == "fair"
    assert next(r for r in s.qualities if r["quality"] == "completeness")["grade"] == "fair"
    assert stamp_data.file_grade({"score": 100.0, "failed": 0, "grade": "bogus"}) == "good"


def test_the_reports_own_supply_figures_win(schema):
    # reporting gives the supply's figures per quality itself (fitness.supply_qualities): the stamp copies them.
    report = _report()
    report["qualities"] = {"accuracy": {"score": 81.25, "grade": "fair", "passed": 9, "failed": 1}}
    report["arrival"] = {"arrived_at": "2026-10-03T09:00", "due": "2026-10-17T00:00", "days_late": 0}
    s = stamp_data.build_stamp(report, schema, "police")
    acc = next(r for r in s.qualities if r["quality"] == "accuracy")
    assert (acc["score"], acc["grade"], acc["passed"], acc["failed"]) == (81.25, "fair", 9, 1)
    assert s.supply["accuracy"] == "fair"
    assert (s.supply["arrived_at"], s.supply["due_at"], s.supply["days_late"]) == (
        "2026-10-03T09:00", "2026-10-17T00:00", 0)
    # a quality the report does not give falls back to the same rules
    assert next(r for r in s.qualities if r["quality"] == "completeness")["grade"] == "good"


def test_a_refused_supply_has_every_quality_ungraded(schema):
    report = {"report": {"generated_at": "2026-11-29T23:00:00+00:00"},
              "supply": {"supply_id": "police_recorded_crime/202609", "period": "202609", "status": "refused"},
              "summary": {"rows_in_files": None, "rows_loaded": 0, "rows_need_attention": 0, "files_refused": 1},
              "outcome": {"level": "red", "text": "Not loaded", "reasons": ["a file was refused"]},
              "validation": {}, "rejected_rows": [], "flagged_rows": []}
    s = stamp_data.build_stamp(report, schema, "police")
    assert s.supply["level"] == "red" and s.supply["files_refused"] == 1
    assert [(r["quality"], r["grade"], r["files"]) for r in s.qualities] == [
        (q, "n/a", 0) for q in stamp_data.QUALITIES]
    assert not s.file_qualities and not s.checks and not s.set_aside


def test_fields_named_takes_whole_names_only():
    names = ["age", "age_band", "postcode"]
    assert stamp_data.fields_named("age_band is not a band", names) == ["age_band"]
    assert stamp_data.fields_named("age is over 120; the postcode is short", names) == ["age", "postcode"]
    assert stamp_data.fields_named("stage failed", names) == []


def test_a_comment_keeps_its_text_and_carries_one_stamp():
    base = "Police recorded crime: offences. Partner caveats: none."
    row = {"period": "202609", "level": "amber", "reasons": ["2 rows set aside (not loaded)"],
           "completeness": "good", "accuracy": "fair", "precision": "good", "currency": "n/a",
           "reported_at": "2026-11-29T23:00:00+00:00"}
    once = stamp_text.with_stamp(base, stamp_text.comment_stamp(row))
    assert once.startswith(base) and once.count(stamp_text.COMMENT_MARK) == 1
    assert "latest supply 202609 is amber (2 rows set aside (not loaded))" in once
    assert "completeness good, accuracy fair, precision good, currency n/a" in once
    row2 = {**row, "period": "202610", "level": "green", "reasons": []}
    twice = stamp_text.with_stamp(once, stamp_text.comment_stamp(row2))
    assert twice.count(stamp_text.COMMENT_MARK) == 1 and "202610 is green;" in twice and "202609" not in twice
    assert stamp_text.without_stamp(twice) == base and stamp_text.stamp_of(twice) == twice[len(base):]
    assert stamp_text.with_stamp(twice, None) == base and stamp_text.stamp_of(base) == ""


def test_the_dag_docs_section_shows_level_reasons_and_grades_inertly():
    row = {"supply_id": "police_recorded_crime/202609", "status": "loaded", "level": "amber",
           "level_text": "Loaded, with problems to look at", "reasons": ["<b>2</b> rows [set](x) aside"],
           "completeness": "good", "accuracy": "poor", "precision": "fair", "currency": "n/a",
           "reported_at": "2026-11-29T23:00:00+00:00"}
    qualities = [{"quality": "accuracy", "score": 80.0, "passed": 5, "failed": 2}]
    md = stamp_text.dag_doc_section(row, qualities)
    assert "**Outcome: AMBER**" in md and "| accuracy | poor | 80% | 5 | 2 |" in md
    assert "| currency | n/a | n/a |" in md
    assert "<b>" not in md and "](x)" not in md and "&lt;b&gt;" in md
    assert stamp_text.dag_doc_section(None) == ""


def test_the_view_puts_fid_first_and_changes_only_with_its_columns():
    columns = [("crime_reference", "text"), ("age", "integer"), ("supply_id", "text"),
               ("geom", "geometry(Point,27700)"), ("fid", "bigint")]
    digest, statements = graded_views.view_sql("depersonalised", "prc_offences", columns)
    body = graded_views.view_body("depersonalised", "prc_offences", ["fid", "crime_reference"])
    assert body.startswith('SELECT t."fid", t."crime_reference", s.level')
    assert 'FROM "depersonalised"."prc_offences" t LEFT JOIN dq.supplies s' in body
    assert len(statements) == 6
    same, _ = graded_views.view_sql("depersonalised", "prc_offences", list(columns))
    more, _ = graded_views.view_sql("depersonalised", "prc_offences", [*columns, ("note", "text")])
    assert digest == same != more
    assert graded_views.quote_ident('we"ird') == '"we""ird"'
    assert graded_views.view_name("prc_offences") == "prc_offences_graded"


def test_without_a_db_the_stamp_is_written_through_the_settings_services(monkeypatch, tmp_path) -> None:
    """No ``db``: ``stamp_supply`` connects with ``pipeline_supply.SettingsServices(settings).db()``; a database it
    cannot reach is logged and reported as not committed (the partner's report still goes on)."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    from csp_observatory import pipeline_supply, stamp

    settings, asked = SimpleNamespace(database_url="postgresql://nowhere/none", reports_dir=tmp_path), []

    class Unreachable:
        def __init__(self, given: object) -> None:
            asked.append(given)

        @contextmanager
        def db(self):
            raise ConnectionError("no PostGIS here")
            yield

    monkeypatch.setattr(pipeline_supply, "SettingsServices", Unreachable)
    report = {"supply": {"supply_id": "police_recorded_crime/202609", "period": "202609", "status": "loaded"}}
    assert stamp.stamp_supply(settings, schema_for("police_recorded_crime"), report, "police") is False
    assert asked == [settings]
