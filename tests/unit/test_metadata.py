"""Supply metadata (guidance section 3.4): the file name, parsing, the checks against a supply, what is shown."""
from __future__ import annotations

import dataclasses
import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from csp_observatory import ddl, metadata as M, metadata_catalogue, metadata_checks, metadata_docs, metadata_file
from csp_observatory.schema import REPO_ROOT, SCHEMA_DIR, FeedSchema, period_bounds
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit

EXAMPLE = REPO_ROOT / "include" / "examples" / "police_recorded_crime_metadata.yaml"
PERIOD = "202609"
#: A value no message may ever quote back.
SECRET = "Jo Bloggs 07700 900123"


@pytest.fixture(scope="module")
def prc() -> FeedSchema:
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    with open(EXAMPLE, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def example(prc) -> M.SupplyMetadata:
    return metadata_file.parse_metadata(EXAMPLE.read_text(encoding="utf-8"), prc)


def _dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def _problems(text: str, schema: FeedSchema) -> str:
    with pytest.raises(M.MetadataError) as exc:
        metadata_file.parse_metadata(text, schema)
    return str(exc.value)


def _headers(schema: FeedSchema) -> dict[str, list[str]]:
    return {f.name: list(f.field_names) for f in schema.files}


def _counts(md: M.SupplyMetadata) -> dict[str, int]:
    return {f.file: f.records for f in md.files}


def _kinds(mismatches: list[M.Mismatch]) -> list[str]:
    return [m.kind for m in mismatches]


# --- the file name ---------------------------------------------------------------------------------------------------

def test_metadata_name_is_derived_from_the_feeds_file_names(prc):
    assert M.metadata_prefix(prc) == "prc"
    assert M.metadata_file_name(prc, PERIOD) == "prc_metadata_202609.yaml.gpg"
    assert M.match_metadata(prc, "prc_metadata_202609.yaml.gpg") == PERIOD
    assert M.match_metadata(prc, "prc_metadata_202609.json.gpg") == PERIOD
    assert M.match_metadata(prc, "prc_metadata_202609.yml.gpg") == PERIOD
    for name in ("prc_metadata_202609.yaml", "prc_metadata_202609.yaml.gpg\n", "xprc_metadata_202609.yaml.gpg",
                 "prc_metadata_2026091.yaml.gpg", "prc_offences_202609.csv.gpg", "fire_metadata_202609.yaml.gpg"):
        assert M.match_metadata(prc, name) is None, name


def test_metadata_name_is_no_data_file_and_no_data_file_is_metadata(prc):
    for f in prc.files:
        assert prc.classify(M.metadata_file_name(prc, PERIOD)) is None
        assert M.match_metadata(prc, f"{M.metadata_prefix(prc)}_{f.name}_{PERIOD}.csv.gpg") is None


def test_metadata_pattern_keeps_the_files_period_sub_pattern(prc):
    daily = dataclasses.replace(prc, files=tuple(
        dataclasses.replace(f, pattern=f.pattern.replace(r"\d{6}", r"(?:19|20)\d{6}")) for f in prc.files))
    pattern = M.metadata_pattern(daily)
    assert "(?P<period>(?:19|20)\\d{6})" in pattern
    assert M.match_metadata(daily, "prc_metadata_20260901.yaml.gpg") == "20260901"
    assert M.match_metadata(daily, "prc_metadata_30260901.yaml.gpg") is None


def test_single_file_feed_keeps_its_whole_prefix_and_odd_patterns_fall_back_to_the_feed_id(prc):
    one = dataclasses.replace(prc, feed="fire_incidents", files=(
        dataclasses.replace(prc.files[0], pattern=r"^fire_incidents_(?P<period>\d{6})\.csv\.gpg$"),))
    assert M.metadata_file_name(one, PERIOD) == "fire_incidents_metadata_202609.yaml.gpg"
    odd = dataclasses.replace(prc, feed="odd_feed", files=(
        dataclasses.replace(prc.files[0], pattern=r"^(?:a|b)_x_(?P<period>\d{6})\.csv\.gpg$"),))
    assert M.metadata_file_name(odd, PERIOD) == "odd_feed_metadata_202609.yaml.gpg"
    apart = dataclasses.replace(prc, feed="apart", files=(
        dataclasses.replace(prc.files[0], pattern=r"^abc_(?P<period>\d{6})\.csv\.gpg$"),
        dataclasses.replace(prc.files[1], pattern=r"^xyz_(?P<period>\d{6})\.csv\.gpg$")))
    assert M.metadata_prefix(apart) == "apart"
    # offences and offenders share "prc_offe": the prefix stops at the last separator they share
    two = dataclasses.replace(prc, files=prc.files[:2])
    assert M.metadata_prefix(two) == "prc"


# --- the example and good files ----------------------------------------------------------------------------------

def test_example_parses_with_every_section_3_4_item(example, prc):
    assert example.feed == prc.feed
    assert example.agency == "Local police force"
    assert example.supplier.name and "@" in example.supplier.contact
    assert example.period == PERIOD
    assert (example.period_start, example.period_end) == (date(2026, 9, 1), date(2026, 9, 30))
    assert example.file_format.startswith("CSV")
    assert example.date_supplied == date(2026, 10, 12)
    assert [f.file for f in example.files] == [f.name for f in prc.files]
    assert all(f.records > 0 for f in example.files)
    assert len(example.caveats) == 4
    assert example.coding_systems["ethnicity"]["IC1"] == "White - North European"
    assert "gazetteer" in (example.geographic_method or "")
    assert example.file("offenders").explanations["age"].startswith("Age in years")
    assert "location_postcode" not in example.file("offences").explanations     # no explanation given


def test_example_lists_exactly_the_police_schemas_datafields(example, prc):
    for f in prc.files:
        assert example.file(f.name).field_names == f.field_names, f.name


def test_example_matches_a_supply_that_has_what_it_says(example, prc):
    assert metadata_checks.check_against(example, prc, PERIOD, _counts(example), _headers(prc)) == []


def test_json_is_accepted_and_reads_the_same(raw, prc, example):
    as_json = json.dumps(raw, default=str, indent="\t")
    assert metadata_file.parse_metadata(as_json, prc) == example


def test_period_as_start_and_end_dates(raw, prc):
    doc = {**raw, "period": {"start": "2026-09-01", "end": date(2026, 9, 30)}}
    md = metadata_file.parse_metadata(_dump(doc), prc)
    assert md.period == PERIOD and md.period_start == date(2026, 9, 1)
    # a span that is not one period of the feed: no period id, and the check says so
    doc = {**raw, "period": {"start": "2026-09-01", "end": "2026-09-15"}}
    md = metadata_file.parse_metadata(_dump(doc), prc)
    assert md.period is None
    [m] = metadata_checks.check_against(md, prc, PERIOD, _counts(md), _headers(prc))
    assert m.kind == M.PERIOD and "01 September 2026 to 15 September 2026" in m.message


def test_lenient_forms_a_partner_may_write_by_hand(raw, prc):
    doc = dict(raw)
    doc["period"] = 202609                                              # unquoted
    doc["caveats"] = "One caveat only"                                  # one sentence, not a list
    files = json.loads(json.dumps(raw["files"]))
    files["offences"]["records"] = "1,240"                              # thousands separator
    files["prc_victims_202609.csv.gpg"] = files.pop("victims")          # keyed by the file's own name
    files["offenders"]["datafields"] = [                                # a list, not a mapping
        n if i % 2 else {n: "explained"} for i, n in enumerate(files["offenders"]["datafields"])]
    doc["files"] = files
    md = metadata_file.parse_metadata(_dump(doc), prc)
    assert md.period == PERIOD and md.caveats == ("One caveat only",)
    assert md.file("offences").records == 1240 and md.file("victims").records == raw["files"]["victims"]["records"]
    assert md.file("offenders").explanations["crime_reference"] == "explained"
    assert "offender_reference" not in md.file("offenders").explanations


def test_decrypted_bytes_are_read_as_utf8(prc, example):
    assert metadata_file.parse_metadata(b"\xef\xbb\xbf" + EXAMPLE.read_bytes(), prc) == example       # with a BOM too
    assert "not UTF-8" in _problems(EXAMPLE.read_bytes().replace(b"Local", b"L\xf6cal"), prc)


def test_caveats_may_be_none_but_must_be_said(raw, prc):
    assert metadata_file.parse_metadata(_dump({**raw, "caveats": []}), prc).caveats == ()
    assert "caveats is missing" in _problems(_dump({k: v for k, v in raw.items() if k != "caveats"}), prc)


def test_document_round_trip_keeps_every_order(example):
    doc = json.loads(json.dumps(example.to_document()))
    back = M.SupplyMetadata.from_document(doc)
    assert back == example
    # jsonb sorts an object's keys: the order of files, datafields and codes must not live in object keys
    doc = json.loads(json.dumps(example.to_document(), sort_keys=True))
    back = M.SupplyMetadata.from_document(doc)
    assert [f.file for f in back.files] == [f.file for f in example.files]
    assert list(back.coding_systems) == list(example.coding_systems)
    assert list(back.coding_systems["ethnicity"]) == list(example.coding_systems["ethnicity"])


# --- bad files ---------------------------------------------------------------------------------------------------

REQUIRED = {
    "agency": "agency is missing", "supplier": "supplier is missing", "dataset": "dataset is missing",
    "period": "period is missing", "file_format": "file_format is missing",
    "date_supplied": "date_supplied is missing", "files": "files is missing", "caveats": "caveats is missing",
    "geographic_method": "geographic_method is missing",
}


@pytest.mark.parametrize("key", sorted(REQUIRED))
def test_each_missing_required_item_is_named(raw, prc, key):
    doc = {k: v for k, v in raw.items() if k != key}
    text = _problems(_dump(doc), prc)
    assert REQUIRED[key] in text
    assert sum(text.count(v) for v in REQUIRED.values()) == 1, text      # only that one


@pytest.mark.parametrize("path, said", [
    (("supplier", "name"), "supplier: name is missing"),
    (("supplier", "contact"), "supplier: contact is missing"),
    (("files", "victims", "records"), "files: victims: records is missing"),
    (("files", "offenders", "datafields"), "files: offenders: datafields is missing"),
    (("files", "offences"), "files: offences is missing"),
])
def test_missing_nested_items_are_named(raw, prc, path, said):
    doc = json.loads(json.dumps(raw, default=str))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    assert said in _problems(_dump(doc), prc)


def test_geographic_method_is_needed_only_when_coordinates_are_listed(raw, prc):
    doc = json.loads(json.dumps(raw, default=str))
    del doc["geographic_method"]
    for f in prc.files:
        doc["files"][f.name]["datafields"] = {
            n: e for n, e in doc["files"][f.name]["datafields"].items()
            if f.field(n).role not in {"easting", "northing", "longitude", "latitude"}}
    md = metadata_file.parse_metadata(_dump(doc), prc)
    assert md.geographic_method is None


def test_unknown_keys_are_named_and_the_allowed_ones_listed(raw, prc):
    doc = {**raw, "agncy": "x", "notes": "y"}
    doc["supplier"] = {**raw["supplier"], "phone": "z"}
    text = _problems(_dump(doc), prc)
    assert "unknown key(s) agncy, notes" in text and "the keys are agency, supplier" in text
    assert "supplier: unknown key(s) phone" in text


def test_an_unknown_key_that_is_not_a_name_is_not_quoted(raw, prc):
    text = _problems(_dump({**raw, SECRET + " <b>@": 1}), prc)
    assert SECRET not in text and "(a name that cannot be shown)" in text


def test_dataset_of_another_feed_is_refused_without_quoting_it(raw, prc):
    text = _problems(_dump({**raw, "dataset": "Fire and rescue incidents " + SECRET}), prc)
    assert "dataset names another dataset" in text and "police_recorded_crime" in text
    assert SECRET not in text and "Fire" not in text
    # its title, in any case and spacing, is this feed
    assert (metadata_file.parse_metadata(_dump({**raw, "dataset": "police recorded-crime"}), prc).dataset
            == "police recorded-crime")


@pytest.mark.parametrize("edit, said", [
    ({"period": "2026-09"}, "period must be the period as in the file names (YYYYMM, for example 202609)"),
    ({"period": "202613"}, "period must be"),
    ({"period": {"start": "2026-09-30", "end": "2026-09-01"}}, "period: start is after end"),
    ({"period": {"start": "2026-09-01"}}, "period needs both start and end"),
    ({"date_supplied": "12/10/2026"}, "date_supplied must be a date written YYYY-MM-DD"),
    ({"caveats": {"a": 1}}, "caveats must be a list of sentences"),
    ({"agency": ["a", "b"]}, "agency must be text"),
    ({"supplier": "Demo Constabulary"}, "supplier must give name: and contact:"),
    ({"coding_systems": ["IC1"]}, "coding_systems must map a datafield name"),
])
def test_wrong_values_are_explained(raw, prc, edit, said):
    assert said in _problems(_dump({**raw, **edit}), prc)


def test_bad_file_entries(raw, prc):
    doc = json.loads(json.dumps(raw, default=str))
    doc["files"]["offences"]["records"] = SECRET
    doc["files"]["offences"]["rows"] = 3
    doc["files"]["offenders"]["datafields"] = {"gender": None, "GENDER": "again"}
    doc["files"]["victims"]["datafields"] = "crime_reference, victim_reference"
    doc["files"]["arrests"] = {"records": 1, "datafields": ["x"]}
    text = _problems(_dump(doc), prc)
    assert "files: offences: records must be a whole number" in text
    assert "files: offences: unknown key(s) rows" in text
    assert "files: offenders: datafields: GENDER is listed more than once" in text
    assert "files: victims: datafields must be a list of datafield names" in text
    assert "files: arrests is not a file of Police recorded crime; its files are offences, offenders, victims" in text
    assert SECRET not in text


def test_a_file_described_twice_is_refused(raw, prc):
    doc = json.loads(json.dumps(raw, default=str))
    doc["files"]["prc_offences_202609.csv.gpg"] = json.loads(json.dumps(doc["files"]["offences"]))
    assert "files: the offences file is described twice" in _problems(_dump(doc), prc)


def test_every_problem_is_listed_at_once(raw, prc):
    with pytest.raises(M.MetadataError) as exc:
        metadata_file.parse_metadata(_dump({"agency": "x", "dataset": "police_recorded_crime"}), prc)
    # supplier, period, file_format, date_supplied, files, caveats (no coordinates listed: no geographic method)
    assert len(exc.value.problems) == 6, exc.value.problems
    assert not any(p.startswith(("agency", "dataset")) for p in exc.value.problems)


def test_malformed_yaml_gives_the_place_not_the_content(prc):
    text = _problems(f"agency: Local police force\nsupplier:\n  name: {SECRET}\n\tcontact: [x\n", prc)
    assert "not valid YAML (line 4, column 1)" in text
    assert SECRET not in text and "Bloggs" not in text


def test_malformed_json_gives_the_place_not_the_content(prc):
    text = _problems('{"agency": "Local police force",\n "supplier": {"name": "' + SECRET + '" "contact": 1}}', prc)
    assert "not valid JSON (line 2" in text and SECRET not in text


@pytest.mark.parametrize("text, said", [
    ("- agency\n- supplier\n", "must be a set of keys and values"),
    ("", "must be a set of keys and values"),
    ("a: &x [1, 2]\nb: *x\n", "anchors and aliases"),
    ("agency: " + "x" * (M.MAX_BYTES + 1), "larger than"),
])
def test_not_a_metadata_document(prc, text, said):
    assert said in _problems(text, prc)


# --- mismatches: each kind ------------------------------------------------------------------------------------------

def test_feed_mismatch(example, prc):
    other = dataclasses.replace(example, feed="fire_incidents", dataset="fire_incidents")
    ms = metadata_checks.check_against(other, prc, PERIOD, _counts(example), _headers(prc))
    assert _kinds(ms) == [M.FEED] and "not Police recorded crime" in ms[0].message


def test_period_mismatch(example, prc):
    [m] = metadata_checks.check_against(example, prc, "202610", _counts(example), _headers(prc))
    assert m.kind == M.PERIOD
    assert m.message == ("The metadata covers 202609 (01 September 2026 to 30 September 2026), but the supply is "
                         "for 202610 (01 October 2026 to 31 October 2026).")


def test_record_count_mismatch(example, prc):
    counts = {**_counts(example), "offenders": 411}
    [m] = metadata_checks.check_against(example, prc, PERIOD, counts, _headers(prc))
    assert (m.kind, m.file) == (M.RECORD_COUNT, "offenders")
    assert m.message == "The metadata says the offenders file has 412 records; it has 411 rows of data."


def test_file_received_but_not_described_and_described_but_not_received(example, prc):
    fewer = dataclasses.replace(example, files=example.files[:2])
    ms = metadata_checks.check_against(fewer, prc, PERIOD, _counts(example), _headers(prc))
    assert [(m.kind, m.file) for m in ms] == [(M.FILE_NOT_DESCRIBED, "victims")]
    counts = {k: v for k, v in _counts(example).items() if k != "victims"}
    headers = {k: v for k, v in _headers(prc).items() if k != "victims"}
    ms = metadata_checks.check_against(example, prc, PERIOD, counts, headers)
    assert [(m.kind, m.file) for m in ms] == [(M.FILE_NOT_RECEIVED, "victims")]


def test_datafield_listed_but_not_in_the_file(example, prc):
    headers = _headers(prc)
    headers["offences"] = [h for h in headers["offences"] if h != "weapon_used"]
    [m] = metadata_checks.check_against(example, prc, PERIOD, _counts(example), headers)
    assert (m.kind, m.file, m.datafield) == (M.DATAFIELD_NOT_IN_FILE, "offences", "weapon_used")
    assert m.message == "The metadata lists weapon_used for the offences file, but the file has no such column."


def test_column_in_the_file_but_not_listed(example, prc):
    headers = _headers(prc)
    headers["victims"] = [*headers["victims"], "Victim Phone", SECRET + "<x>", "  "]
    ms = metadata_checks.check_against(example, prc, PERIOD, _counts(example), headers)
    assert _kinds(ms) == [M.DATAFIELD_NOT_LISTED, M.DATAFIELD_NOT_LISTED]
    assert ms[0].message == "The victims file has the column Victim Phone, which the metadata does not list."
    assert SECRET not in ms[1].message and "(a name that cannot be shown)" in ms[1].message


def test_datafield_listed_that_the_schema_does_not_have(example, prc):
    fm = example.file("offences")
    extra = dataclasses.replace(fm, datafields=(*fm.datafields, ("beat_code", "Police beat")))
    md = dataclasses.replace(example, files=(extra, *example.files[1:]))
    headers = _headers(prc)
    headers["offences"] = [*headers["offences"], "beat_code"]
    [m] = metadata_checks.check_against(md, prc, PERIOD, _counts(md), headers)
    assert (m.kind, m.datafield) == (M.DATAFIELD_NOT_IN_SCHEMA, "beat_code")
    assert "not a datafield of Police recorded crime" in m.message


def test_required_datafield_not_listed(example, prc):
    required = next(d.name for d in prc.file("offences").datafields if d.required)
    fm = example.file("offences")
    fewer = dataclasses.replace(fm, datafields=tuple(d for d in fm.datafields if d[0] != required))
    md = dataclasses.replace(example, files=(fewer, *example.files[1:]))
    headers = _headers(prc)
    headers["offences"] = [h for h in headers["offences"] if h != required]
    [m] = metadata_checks.check_against(md, prc, PERIOD, _counts(md), headers)
    assert (m.kind, m.file, m.datafield) == (M.REQUIRED_DATAFIELD_NOT_LISTED, "offences", required)
    assert m.message == f"The metadata does not list {required}, a required datafield of the offences file."
    # an optional datafield neither sent nor listed is no mismatch
    optional = next(d.name for d in prc.file("offences").datafields if not d.required)
    fewer = dataclasses.replace(fm, datafields=tuple(d for d in fm.datafields if d[0] != optional))
    md = dataclasses.replace(example, files=(fewer, *example.files[1:]))
    headers["offences"] = [h for h in _headers(prc)["offences"] if h != optional]
    assert metadata_checks.check_against(md, prc, PERIOD, _counts(md), headers) == []


def test_headers_compare_as_the_parser_reads_them(example, prc):
    headers = {name: [h.upper().replace("_", " ") for h in cells] for name, cells in _headers(prc).items()}
    assert metadata_checks.check_against(example, prc, PERIOD, _counts(example), headers) == []


# --- shown to people -------------------------------------------------------------------------------------------------

def test_column_comment_keeps_the_schema_label_first(example, prc):
    offenders = prc.file("offenders")
    label = ddl.comment_for(prc, offenders, "ethnicity")
    comment = metadata_catalogue.column_comment(prc, offenders, "ethnicity", example)
    assert comment.startswith(f"{label}. Partner: Officer-defined ethnicity")
    assert "Coding: IC1 = White - North European; IC2" in comment
    # no explanation and no coding system: the schema's label alone
    assert (metadata_catalogue.column_comment(prc, offenders, "home_postcode", example)
            == ddl.comment_for(prc, offenders, "home_postcode"))
    assert metadata_catalogue.column_comment(prc, offenders, "ethnicity") == label


def test_table_comment_adds_caveats_and_geographic_method(example, prc):
    f = prc.file("offences")
    base = metadata_catalogue.table_comment(prc, f)
    comment = metadata_catalogue.table_comment(prc, f, example)
    assert comment.startswith(base + ". Partner caveats: Offenders are people")
    assert "Partner's coordinates: Offence locations" in comment
    assert comment.endswith("(Supply metadata of period 202609, supplied 2026-10-12)")
    assert example.supplier.contact not in comment


def test_doc_md_section_shows_caveats_coding_and_geography_but_not_the_supplier(example):
    md = metadata_docs.doc_md_section(example)
    assert md.startswith("## Partner's supply metadata")
    assert "- Ages of offenders and victims may be estimates" in md
    assert "ethnicity: IC1 = White - North European" in md
    assert "**How coordinates were made:** Offence locations" in md
    assert example.supplier.contact not in md and example.supplier.name not in md
    assert metadata_docs.doc_md_section(None) == ""


def test_doc_md_section_makes_partner_text_inert(example):
    md = metadata_docs.doc_md_section(dataclasses.replace(
        example, caveats=("<script>alert(1)</script> [link](http://x) *bold* | pipe",)))
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "[link](http" not in md and "\\[link\\]\\(http" in md and "\\*bold\\*" in md and "\\|" in md


def test_report_section_counts_and_messages_only(example, prc):
    ms = metadata_checks.check_against(example, prc, "202610", {**_counts(example), "offences": 1}, _headers(prc))
    section = metadata_docs.report_section(example, ms)
    assert section["supplied"] is True and section["matches"] is False
    assert section["mismatch_count"] == 2 and section["mismatches_by_kind"] == {M.PERIOD: 1, M.RECORD_COUNT: 1}
    assert section["messages"] == [m.message for m in ms]
    assert section["records_declared"] == {"offences": 1240, "offenders": 412, "victims": 1105}
    assert section["datafields_listed"]["offences"] == 20 and section["caveats"] == 4
    text = json.dumps(section)
    assert example.supplier.contact not in text and example.supplier.name not in text
    assert not any(c in text for c in example.caveats)
    none = metadata_docs.report_section(None, [])
    assert none["supplied"] is False and none["matches"] is True and none["records_declared"] == {}


def test_period_bounds():
    assert period_bounds("%Y%m", "202602") == (date(2026, 2, 1), date(2026, 2, 28))
    assert period_bounds("%Y%m%d", "20260905") == (date(2026, 9, 5), date(2026, 9, 5))
    assert period_bounds("%Y", "2026") == (date(2026, 1, 1), date(2026, 12, 31))
    assert period_bounds("%Y%m", "202613") is None
    assert period_bounds("%Y%m", "２０２６０９") is None       # full-width digits are no period


def test_the_example_file_is_named_in_the_module_docstring():
    assert str(EXAMPLE.relative_to(REPO_ROOT)) in (M.__doc__ or "")
    assert Path(EXAMPLE).exists()
    assert re.search(r"prc_metadata_202609\.yaml\.gpg", EXAMPLE.read_text(encoding="utf-8"))


def test_the_partner_guides_example_parses_and_matches_the_police_schema(prc):
    guide = (REPO_ROOT / "docs" / "PARTNERS.md").read_text(encoding="utf-8")
    section = guide[guide.index("## Supply metadata"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    md = metadata_file.parse_metadata(block, prc)
    assert M.metadata_file_name(prc, PERIOD) in section
    assert metadata_checks.check_against(md, prc, PERIOD, _counts(md), _headers(prc)) == []
    assert md.coding_systems["ethnicity"]["IC5"] == "Chinese, Japanese or other South East Asian"
    assert md.geographic_method and md.conditions_of_use


# --- the pipeline's helpers and the DAG's docs -------------------------------------------------------------------

def test_read_metadata_reads_a_decrypted_file_and_stops_at_the_size_limit(tmp_path, prc, example):
    path = tmp_path / "prc_metadata_202609.yaml"
    path.write_bytes(EXAMPLE.read_bytes())
    assert metadata_file.read_metadata(path, prc) == example
    path.write_bytes(b"# " + b"x" * (M.MAX_BYTES + 10))
    with pytest.raises(M.MetadataError, match="larger than"):
        metadata_file.read_metadata(path, prc)


def test_the_shown_document_has_everything_but_the_supplier(example):
    doc = metadata_docs.shown_document(example)
    assert "supplier" not in doc and example.supplier.contact not in json.dumps(doc)
    back = metadata_docs.from_shown_document(doc)
    assert dataclasses.replace(back, supplier=example.supplier) == example


def test_reasons_name_the_file_to_send_and_what_happens_to_the_data(prc):
    missing = M.missing_reason(prc, PERIOD)
    assert "prc_metadata_202609.yaml.gpg" in missing and "prc_metadata_202609.json.gpg" in missing
    assert "first supply" in missing and "stay in inbox/" in missing
    first = M.refused_reason(prc, ["agency is missing (x)"], required=True, remote_name="prc_metadata_202609.yaml.gpg")
    assert first.startswith("The metadata file cannot be used: agency is missing (x).")
    assert "not loaded" in first and "prc_metadata_202609.yaml.gpg" in first
    later = M.refused_reason(prc, ["agency is missing (x)"], required=False, remote_name="x")
    assert "were loaded without it" in later
    for text in (missing, first, later):
        assert not re.search(r"['\"]", text)        # reports withhold anything quoted, as a value


def test_dag_doc_reads_what_the_load_wrote_and_nothing_else(tmp_path, example):
    assert metadata_docs.dag_doc("police_recorded_crime", tmp_path) == ""            # nothing written yet
    path = metadata_docs.write_dag_doc(tmp_path, "police_recorded_crime", example)
    assert path == tmp_path / "police_recorded_crime" / metadata_docs.DAG_DOC_NAME
    assert metadata_docs.dag_doc("police_recorded_crime", tmp_path) == metadata_docs.doc_md_section(example)
    assert "Ages of offenders and victims may be estimates" in metadata_docs.dag_doc("police_recorded_crime", tmp_path)
    assert [p.name for p in path.parent.iterdir()] == [metadata_docs.DAG_DOC_NAME]     # no temporary file left behind
    # a later supply's caveats replace it whole
    metadata_docs.write_dag_doc(tmp_path, "police_recorded_crime",
                                dataclasses.replace(example, caveats=("Only this one.",)))
    assert "- Only this one." in metadata_docs.dag_doc("police_recorded_crime", tmp_path)
    assert "may be estimates" not in metadata_docs.dag_doc("police_recorded_crime", tmp_path)
    assert metadata_docs.dag_doc("fire_incidents", tmp_path) == ""


@pytest.mark.parametrize("case", ["path_in_feed", "too_large", "not_utf8", "folder", "no_config"])
def test_dag_doc_never_raises(tmp_path, monkeypatch, case):
    feed = "police_recorded_crime"
    if case == "path_in_feed":
        feed = "../../etc"
    elif case == "too_large":
        (tmp_path / feed).mkdir()
        (tmp_path / feed / metadata_docs.DAG_DOC_NAME).write_bytes(b"x" * (metadata_docs.MAX_DAG_DOC_BYTES + 1))
    elif case == "not_utf8":
        (tmp_path / feed).mkdir()
        (tmp_path / feed / metadata_docs.DAG_DOC_NAME).write_bytes(b"\xff\xfe caveats")
    elif case == "folder":
        (tmp_path / feed / metadata_docs.DAG_DOC_NAME).mkdir(parents=True)
    else:
        monkeypatch.setenv("CSP_CONFIG", str(tmp_path / "missing.yaml"))
        assert metadata_docs.dag_doc(feed) == ""
        return
    assert metadata_docs.dag_doc(feed, tmp_path) == ""


def test_dag_doc_uses_the_settings_reports_dir(tmp_path, monkeypatch, example):
    config = tmp_path / "observatory.yaml"
    config.write_text(yaml.safe_dump({
        "database_url": "postgresql://unused", "sftp_host": "127.0.0.1", "sftp_port": 2222, "sftp_user": "x",
        "sftp_key_file": str(tmp_path / "k"), "sftp_host_key": "ssh-ed25519 AAAA", "sftp_root": "",
        "gnupg_home": str(tmp_path / "g"), "staging_dir": str(tmp_path / "s"), "reports_dir": str(tmp_path / "r")}))
    monkeypatch.setenv("CSP_CONFIG", str(config))
    metadata_docs.write_dag_doc(tmp_path / "r", "police_recorded_crime", example)
    assert metadata_docs.dag_doc("police_recorded_crime") == metadata_docs.doc_md_section(example)


def test_the_dag_file_can_import_this_module_without_pandas():
    import os
    import subprocess
    import sys

    code = ("import sys; import csp_observatory.metadata_docs as m; m.dag_doc('police_recorded_crime'); "
            "print('pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "False"
