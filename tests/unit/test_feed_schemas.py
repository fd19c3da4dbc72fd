"""One feed schema per dataset of the guidance's section 3.2, each with every datafield the guidance lists, and a
realistic fixture supply for each whose bad rows are set aside (issue 7, "The feeds" and "Tests")."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from csp_observatory import cleaning, fixtures, parsing, postcodes, postcodes_sources, validation
from csp_observatory.schema import SCHEMA_DIR, FeedSchema
from csp_observatory.schema_loading import load_schema, load_schemas

pytestmark = pytest.mark.unit

#: Guidance section -> feed id (the schema is include/schemas/<feed>.yaml).
SECTIONS = {
    "3.2.1": "police_recorded_crime",
    "3.2.2": "police_incidents",
    "3.2.3": "council_asb",
    "3.2.4": "fire_incidents",
    "3.2.5": "probation_oasys",
    "3.2.6": "yos_assessments",
    "3.2.7": "prolific_priority_offenders",
    "3.2.8": "prison_releases",
    "3.2.9": "yoi_releases",
    "3.2.10": "drug_treatment_adults",
    "3.2.11": "drug_treatment_young_people",
    "3.2.12": "ae_assaults",
    "3.2.13": "hospital_admissions",
    "3.2.14": "ambulance_calls",
    "3.2.15": "btp_crimes",
    "3.2.16": "tram_train_incidents",
    "3.2.17": "bus_incidents",
    "3.2.18": "school_exclusions",
    "3.2.19": "environment_agency_crime",
    "3.2.20": "stop_and_search",
    "3.2.21": "drug_tests_trigger_offences",
    "3.2.22": "detection_status",
}
#: The sections whose datasets the guidance marks personalised.
PERSONALISED = {"3.2.7", "3.2.8", "3.2.9", "3.2.19"}
#: Table 1's core datasets (monthly, on a schedule); the rest are Table 2's peripheral ones (as and when).
CORE = {"3.2.1", "3.2.2", "3.2.3", "3.2.4", "3.2.5", "3.2.6", "3.2.7"}

_EN = ["easting coordinate", "northing coordinate"]
_TRANSPORT = ["crime reference number", "type of offence", "date of incident", "time of incident",
              "address/location of offence", "route on which offence occurred", *_EN, "offender gender",
              "offender age", "offender date of birth", "offender ethnicity", "victim gender", "victim age",
              "victim date of birth", "victim ethnicity"]
_DRUG_TREATMENT = ["client reference number", "age", "gender", "postcode (full postcode)", "primary drug of use",
                   "secondary drug of use", "referral source", "type of treatment", "date when treatment began",
                   "planned discharge date"]
_RELEASES = ["name", "gender", "date of birth", "length of sentence", "offence committed",
             "address where they will reside after release", *_EN]
#: The guidance's datafields of each dataset (section 3.2, its words, lower case), file by file where it has
#: several: each must be in a datafield's label.
GUIDANCE_FIELDS = {
    "3.2.2": {"incidents": ["incident reference number", "type of incident", "marker/flag for domestic incident",
                            "date of incident", "time of incident", "address/location of incident", *_EN]},
    "3.2.3": {"incidents": ["incident reference number", "type of incident", "date of incident", "time of incident",
                            "value of property damaged", "size or weight of waste that is dumped",
                            "make of vehicle", "model of vehicle", "age of vehicle", "registered address of vehicle",
                            "address/location of incident", *_EN]},
    "3.2.4": {"incidents": ["incident reference number", "type of incident", "date of incident", "time of incident",
                            "number of casualties", "address/location of incident", *_EN]},
    "3.2.5": {"assessments": ["client reference number", "age", "gender", "postcode (full postcode)",
                              "offence description", "emotional wellbeing link to offending (lto)",
                              "thinking and behaviour lto", "attitudes lto", "accommodation lto",
                              "employment, training and education lto", "financial management lto",
                              "relationships", "lifestyle and associations lto", "drug misuse lto",
                              "alcohol misuse lto", "date assessment was completed",
                              "risk of reconviction: high, medium, low", "risk of harm to others",
                              "number of months planned for supervision"]},
    "3.2.6": {"assessments": ["client reference number", "age", "gender", "postcode (full postcode)",
                              "offence description", "marker/flag for persistent offender", "date of assessment",
                              "ratings for each category of risk assessment"]},
    "3.2.7": {"offenders": ["offender reference number", "name", "gender", "age", "date of birth", "ethnicity",
                            "occupation", "offences committed", "current status",
                            "address/location of offender - address is the offender's primary address", *_EN]},
    "3.2.8": {"releases": _RELEASES},
    "3.2.9": {"releases": _RELEASES},
    "3.2.10": {"clients": _DRUG_TREATMENT},
    "3.2.11": {"clients": [*_DRUG_TREATMENT, "primary drug of use (includes alcohol)"]},
    "3.2.12": {"assaults": ["patient reference number", "age", "gender", "ethnicity", "address of patient",
                            "type of incident - assault", "date of incident", "time of incident",
                            "type of location where incident took place", "location where incident took place",
                            *_EN, "whether reported to the police"]},
    "3.2.13": {"admissions": ["patient reference number", "age", "gender", "ethnicity", "postcode (full postcode)",
                              "reason for admission/diagnosis"]},
    "3.2.14": {"calls": ["patient reference number", "age", "gender", "ethnicity", "address of patient",
                         "type of incident", "date of incident", "time of incident",
                         "address/location where incident took place", *_EN]},
    "3.2.15": {"offences": _TRANSPORT},
    "3.2.16": {"offences": _TRANSPORT},
    "3.2.17": {"offences": _TRANSPORT},
    "3.2.18": {"exclusions": ["gender", "age", "ethnicity", "name of school",
                              "easting coordinate (relating to the school address)",
                              "northing coordinate (relating to the school address)", "type of exclusion"]},
    "3.2.19": {"dumping": ["incident reference number", "type of incident", "committed from date of incident",
                           "committed from time of incident", "committed to date of incident",
                           "committed to time of incident", "address/location of incident", *_EN],
               "waste_sites": ["site reference number", "name of waste processing site", "name of site owner",
                               "type of illegal waste", "date identified", "address of site", *_EN]},
    "3.2.20": {"searches": ["reference number", "date of search", "time of search", "gender of suspect",
                            "age of suspect", "ethnicity of suspect", "reason for search", "results of search",
                            "address/location of search", *_EN]},
    "3.2.21": {"tests": ["crime reference number", "type of offence - home office classification code",
                         "result of drugs test", "type of drug used"]},
    "3.2.22": {"detections": ["crime reference number", "type of offence - home office classification code",
                              "detection status"]},
}
PERIOD = "202607"


def _schema(section: str) -> FeedSchema:
    return load_schema(SCHEMA_DIR / f"{SECTIONS[section]}.yaml")


def _label_text(label: str) -> str:
    return re.sub(r"\s+", " ", label.replace("\u2013", "-").replace("\u2019", "'")).strip().lower()


@pytest.fixture(scope="module")
def reference():
    return postcodes_sources.shipped_reference()


def test_every_section_3_2_dataset_has_exactly_one_schema():
    schemas = load_schemas()
    by_section = {s.guidance_section: s.feed for s in schemas}
    assert len(by_section) == len(schemas), "two schemas claim one guidance section"
    assert by_section == SECTIONS
    for section, feed in SECTIONS.items():
        # A schema file is named by its feed (layouts find their target schema so).
        assert _schema(section).guidance_section == section, feed


@pytest.mark.parametrize("section", sorted(GUIDANCE_FIELDS, key=lambda s: int(s.split(".")[-1])))
def test_every_datafield_the_guidance_lists_is_there_in_its_words(section):
    schema = _schema(section)
    assert {f.name for f in schema.files} == set(GUIDANCE_FIELDS[section])
    for file_name, phrases in GUIDANCE_FIELDS[section].items():
        listed = [_label_text(d.label) for d in schema.file(file_name).datafields if d.guidance]
        for phrase in phrases:
            assert any(phrase in label for label in listed), f"{schema.feed}.{file_name}: no label says {phrase!r}"


def test_personalised_feeds_are_exactly_the_ones_the_guidance_marks():
    schemas = load_schemas()
    assert {s.guidance_section for s in schemas if s.personalised} == PERSONALISED
    for s in schemas:
        assert s.db_schema == ("personal" if s.guidance_section in PERSONALISED else "depersonalised"), s.feed


def test_core_feeds_are_monthly_on_a_schedule_and_peripheral_ones_as_and_when():
    for s in load_schemas():
        assert s.period_format == "%Y%m", s.feed
        if s.guidance_section in CORE:
            # Table 1: monthly, on a schedule, waiting through the supply window (more than a week, under a month)
            assert not s.on_arrival and s.schedule.split()[2:] == ["1", "*", "*"], f"{s.feed}: monthly on the 1st"
            assert 7 * 24 < s.wait_hours < 28 * 24, s.feed
        else:
            # Table 2: as and when. The DAG is started by the supply's arrival, never polled on a schedule.
            assert s.on_arrival and s.schedule == "on_arrival", s.feed
            assert "as and when" in s.supply_cycle.lower(), s.feed


def test_partners_tables_and_file_names_never_clash_across_feeds():
    schemas = load_schemas()
    partners = [s.partner.id for s in schemas]
    # intake takes one feed's files from an inbox and quarantines the rest: one SFTP account per feed
    assert len(set(partners)) == len(partners)
    tables = [(s.db_schema, f.table) for s in schemas for f in s.files]
    assert len(set(tables)) == len(tables)
    assert len({t for _, t in tables}) == len(tables), "a table name is used in both PostGIS schemas"
    for s in schemas:
        for f in s.files:
            name = fixtures.remote_name(f, PERIOD)
            claimed = [(o.feed, hit[0].name) for o in schemas if (hit := o.classify(name))]
            assert claimed == [(s.feed, f.name)], name
            assert re.fullmatch(r"\^[a-z]+_[a-z_]+_\(\?P<period>\\d\{6\}\)\\\.csv\\\.gpg\$", f.pattern), f.pattern


def test_police_offence_types_use_the_home_office_codes_where_the_guidance_says_so():
    for section in ("3.2.1", "3.2.21", "3.2.22"):
        schema = _schema(section)
        coded = [d for f in schema.files for d in f.datafields if "home office classification code" in d.label.lower()]
        assert coded and all(d.codes_file == "ho_offence_codes.csv" and d.required for d in coded), schema.feed


def test_several_locations_in_one_file_are_each_sanitised():
    assert [n for n, _ in _schema("3.2.3").file("incidents").other_locations] == ["vehicle_keeper"]
    for section, file_name in (("3.2.12", "assaults"), ("3.2.14", "calls")):
        other = dict(_schema(section).file(file_name).other_locations)
        assert other["patient_home"].kind == "home" and other["patient_home"].address == "patient_address"
    for section, file_name in (("3.2.5", "assessments"), ("3.2.6", "assessments"), ("3.2.10", "clients"),
                               ("3.2.11", "clients"), ("3.2.13", "admissions")):
        loc = _schema(section).file(file_name).location
        assert loc.columns == {"postcode": "postcode"} and loc.kind == "home", section


def test_only_dates_that_lie_ahead_in_the_guidances_meaning_may_be_in_the_future():
    ahead = {(s.feed, f.name, d.name): d.future_days for s in load_schemas() for f in s.files for d in f.datafields
             if d.future_days}
    # 3.2.8 and 3.2.9: "when they are to be released"; 3.2.10 and 3.2.11: a planned discharge date
    assert ahead == {("prison_releases", "releases", "release_date"): 366,
                     ("yoi_releases", "releases", "release_date"): 366,
                     ("drug_treatment_adults", "clients", "planned_discharge_date"): 731,
                     ("drug_treatment_young_people", "clients", "planned_discharge_date"): 731}
    for s in load_schemas():
        for f in s.files:
            # offences, incidents, attendances, assessments and births happened: never in the future
            if f.event_date and (s.feed, f.name, f.event_date) not in ahead:
                assert f.field(f.event_date).future_days == 0, (s.feed, f.name)
            assert all(d.future_days == 0 for d in f.by_role("date_of_birth")), (s.feed, f.name)


def test_every_date_of_birth_in_a_depersonalised_feed_becomes_its_own_persons_age():
    for s in load_schemas():
        for f in s.files:
            dobs = [d.name for d in f.by_role("date_of_birth")]
            if s.personalised or not dobs:
                continue
            pairs = dict(f.age_pairs)
            assert sorted(pairs) == sorted(dobs), (s.feed, f.name)
            assert len(set(pairs.values())) == len(pairs), (s.feed, f.name)         # one age per person
            assert all(f.field(a).role == "age" for a in pairs.values()), (s.feed, f.name)
    for section in ("3.2.15", "3.2.16", "3.2.17"):
        assert dict(_schema(section).file("offences").age_pairs) == {"offender_date_of_birth": "offender_age",
                                                                     "victim_date_of_birth": "victim_age"}


# --- fixture supplies ------------------------------------------------------------------------------------------

def _feed_files():
    return [(s, f) for s in load_schemas() for f in s.files]


@pytest.mark.parametrize("schema,feed_file", _feed_files(), ids=lambda v: getattr(v, "feed", None) or v.name)
def test_a_fixture_supply_parses_with_its_bad_rows_set_aside(schema, feed_file, reference, tmp_path):
    supply = fixtures.make_supply(schema, PERIOD, reference, n=40, seed=7)
    path: Path = tmp_path / f"{feed_file.name}.csv"
    path.write_text(supply.files[feed_file.name], encoding="utf-8")
    parsed = parsing.parse_csv(path, feed_file)
    assert parsed.header_problems == []                       # every datafield is a column, none other
    kept, rejected, nulled = validation.apply_row_rules(parsed.frame, feed_file)
    result = cleaning.clean(kept, feed_file)
    set_aside = {**{int(r): "parse" for r in parsed.rejected["source_row"]},
                 **{int(r): "validate" for r in rejected["source_row"]},
                 **{int(r): "clean" for r in result.removed["source_row"]}}
    assert set_aside == supply.rejected(feed_file.name)       # exactly the bad rows, at the stage expected
    assert len(result.frame) + len(set_aside) == supply.rows[feed_file.name] == \
        len(supply.files[feed_file.name].splitlines()) - 1
    bad = [b for b in supply.bad_rows if b["file"] == feed_file.name]
    kinds = {b["kind"] for b in bad}
    # bad rows of every kind the file has a datafield for, among the good
    assert "bad_date" in kinds and "missing_required" in kinds
    assert ("duplicate_key" in kinds) != feed_file.content_key
    assert ("bad_code" in kinds) == any(d.allowed_codes is not None and d.name not in feed_file.key
                                         for d in feed_file.datafields)
    for b in bad:
        if b["expect"] == "nulled":     # a bad code in an optional datafield is blanked and the row kept
            assert nulled.get(b["column"], 0) >= 1 and b["row"] in set(result.frame["source_row"])
    if feed_file.content_key:
        # two identical records are two rows of a file with no reference number: both kept
        assert result.frame.drop(columns="source_row").duplicated().any()


def test_fixture_supplies_are_the_same_for_a_seed_and_differ_between_seeds(reference):
    schema = _schema("3.2.3")
    a = fixtures.make_supply(schema, PERIOD, reference, seed=1)
    assert fixtures.make_supply(schema, PERIOD, reference, seed=1) == a
    assert fixtures.make_supply(schema, PERIOD, reference, seed=2).files != a.files
    assert fixtures.make_supply(schema, "202608", reference, seed=1).files != a.files


def test_fixture_locations_are_real_postcodes_and_addresses_with_house_numbers(reference, tmp_path):
    schema = _schema("3.2.14")
    feed_file = schema.file("calls")
    supply = fixtures.make_supply(schema, PERIOD, reference, n=80)
    path = tmp_path / "calls.csv"
    path.write_text(supply.files["calls"], encoding="utf-8")
    frame = parsing.parse_csv(path, feed_file).frame
    known = set(reference["postcode"])
    for column in ("location_postcode", "patient_postcode"):
        written = postcodes.normalise_postcodes(frame[column]).dropna()
        assert len(written) > 60 and set(written) <= known
    assert frame["location_address"].str.match(r"^(Flat \d+, )?\d+").mean() > 0.8
    points = frame[["easting", "northing"]].dropna()
    assert len(points) > 40 and points["easting"].between(380000, 430000).all()
    assert fixtures.remote_name(feed_file, PERIOD) == "amb_calls_202607.csv.gpg"
