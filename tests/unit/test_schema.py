"""Feed schemas: the police recorded crime schema covers guidance section 3.2.1, and bad schemas are refused."""
from __future__ import annotations

import copy

import pytest
import yaml

from csp_observatory import schema_docs
from csp_observatory.schema import DROPPED_ON_SANITISING, REWRITTEN_ON_SANITISING, SCHEMA_DIR, SchemaError
from csp_observatory.schema_loading import load_schema, parse_schema

pytestmark = pytest.mark.unit

PRC = SCHEMA_DIR / "police_recorded_crime.yaml"


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load(PRC.read_text())


def test_police_recorded_crime_has_every_datafield_of_section_3_2_1() -> None:
    s = load_schema(PRC)
    assert [f.name for f in s.files] == ["offences", "offenders", "victims"]
    labels = {f.name: " ".join(d.label.lower() for d in f.datafields) for f in s.files}
    # The guidance's datafield names (section 3.2.1), file by file.
    for phrase in ["crime reference", "home office classification", "committed from date", "committed from time",
                   "committed to date", "committed to time", "address/location of offence", "easting", "northing",
                   "method of entry", "property stolen", "weapon", "distraction burglary", "drugs-related",
                   "alcohol-related", "racially-motivated", "domestic"]:
        assert phrase in labels["offences"], phrase
    for phrase in ["crime reference", "offender reference", "gender", "date of birth", "age", "ethnicity",
                   "occupation", "address of offender", "easting", "northing"]:
        assert phrase in labels["offenders"], phrase
    for phrase in ["crime reference", "gender", "date of birth", "age", "ethnicity", "association with offender",
                   "occupation", "address of victim", "easting", "northing"]:
        assert phrase in labels["victims"], phrase
    assert s.dataset_type == "depersonalised" and s.db_schema == "depersonalised"
    assert s.household_threshold == 4


def test_classify_file_names() -> None:
    s = load_schema(PRC)
    f, period = s.classify("prc_victims_202609.csv.gpg")
    assert (f.name, period) == ("victims", "202609")
    assert s.classify("prc_victims_202609.csv.gpg.part") is None
    assert s.classify("prc_victims_2026.csv.gpg") is None


def test_codes_come_from_the_home_office_list() -> None:
    codes = load_schema(PRC).file("offences").field("ho_offence_code").allowed_codes
    assert {"28E", "56A", "8N", "105A"} <= codes and "999Z" not in codes


def test_personal_roles_are_marked() -> None:
    offenders = load_schema(PRC).file("offenders")
    assert {d.name for d in offenders.datafields if d.personal} == {"offender_name", "date_of_birth"}


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["files"]["offences"]["datafields"][0].update(type="text"), "unknown type"),
    (lambda r: r["files"]["offences"]["datafields"][0].update(role="whatever"), "unknown role"),
    (lambda r: r["files"]["offences"].update(key=["nope"]), "not a datafield"),
    (lambda r: r["files"]["offences"].update(pattern="^x.csv$"), "period"),
    (lambda r: r.update(dataset_type="secret"), "dataset_type"),
    (lambda r: r["files"]["offences"]["datafields"].append(dict(r["files"]["offences"]["datafields"][0])), "repeat"),
    (lambda r: r.pop("partner"), "missing"),
])
def test_bad_schemas_are_refused(raw: dict, mutate, message: str) -> None:
    bad = copy.deepcopy(raw)
    mutate(bad)
    with pytest.raises(SchemaError, match=message):
        parse_schema(bad)


def test_doc_md_lists_datafields_for_the_airflow_ui() -> None:
    doc = schema_docs.doc_md(load_schema(PRC))
    assert "Local police force" in doc and "`crime_reference`" in doc and "Caveats" in doc


def _field(raw: dict, file_name: str, name: str) -> dict:
    return next(d for d in raw["files"][file_name]["datafields"] if d["name"] == name)


def test_roles_dropped_or_rewritten_on_sanitising_are_listed_once() -> None:
    assert DROPPED_ON_SANITISING == {"name", "date_of_birth", "easting", "northing", "longitude", "latitude"}
    assert REWRITTEN_ON_SANITISING == {"address", "postcode"}


def test_every_free_text_datafield_of_the_police_feed_has_a_rule() -> None:
    s = load_schema(PRC)
    rules = {(f.name, d.name): d.free_text for f in s.files for d in f.datafields if d.needs_free_text_rule}
    assert rules == {("offences", "method_of_entry"): "scrub", ("offences", "property_stolen"): "scrub",
                     ("offences", "weapon_used"): "scrub", ("offenders", "occupation"): "scrub",
                     ("victims", "occupation"): "scrub"}
    # references, names, addresses and coded fields are not free text
    offenders = s.file("offenders")
    for name in ("crime_reference", "offender_reference", "offender_name", "home_address", "gender"):
        assert not offenders.field(name).needs_free_text_rule, name


@pytest.mark.parametrize("file_name, name", [("offences", "method_of_entry"), ("offenders", "occupation")])
def test_a_depersonalised_feed_with_unruled_free_text_is_refused(raw: dict, file_name: str, name: str) -> None:
    bad = copy.deepcopy(raw)
    del _field(bad, file_name, name)["free_text"]
    with pytest.raises(SchemaError, match=rf"need a rule.*{file_name}\.{name}"):
        parse_schema(bad)
    # the same feed kept whole in the personal schema needs no rule: nothing of it reaches analysts
    bad["dataset_type"] = "personalised"
    assert parse_schema(bad).personalised


def test_a_new_free_text_datafield_needs_a_rule_and_each_rule_is_accepted(raw: dict) -> None:
    new = {"name": "modus_operandi", "label": "MO notes", "type": "string", "role": "attribute"}
    bad = copy.deepcopy(raw)
    bad["files"]["offences"]["datafields"].append(dict(new))
    with pytest.raises(SchemaError, match="offences.modus_operandi"):
        parse_schema(bad)
    for rule in ({"free_text": "drop"}, {"free_text": "scrub"}, {"codes": ["a", "b"]}):
        ok = copy.deepcopy(raw)
        ok["files"]["offences"]["datafields"].append({**new, **rule})
        d = parse_schema(ok).file("offences").field("modus_operandi")
        assert d.free_text == rule.get("free_text")
        assert d.dropped_on_sanitising == (rule.get("free_text") == "drop")


@pytest.mark.parametrize("where, update, message", [
    (("offences", "method_of_entry"), {"free_text": "redact"}, "free_text must be one of"),
    (("offences", "committed_from_date"), {"free_text": "scrub"}, "string datafields"),
    (("offences", "location_address"), {"free_text": "drop"}, "already dropped, rewritten"),
    (("offenders", "offender_name"), {"free_text": "scrub"}, "already dropped, rewritten"),
    (("offences", "method_of_entry"), {"codes": ["x"]}, "not both"),
])
def test_bad_free_text_rules_are_refused(raw: dict, where, update: dict, message: str) -> None:
    bad = copy.deepcopy(raw)
    _field(bad, *where).update(update)
    with pytest.raises(SchemaError, match=message):
        parse_schema(bad)


@pytest.mark.parametrize("where, update, message", [
    (("offenders", "date_of_birth"), {"future_days": 30}, "not to a 'date_of_birth' datafield"),
    (("offences", "committed_from_time"), {"future_days": 30}, "not to a 'time' datafield"),
    (("offences", "committed_to_date"), {"future_days": -1}, "whole number of days"),
    (("offences", "committed_to_date"), {"future_days": True}, "whole number of days"),
    (("offences", "committed_to_date"), {"future_days": "a year"}, "whole number of days"),
    (("offenders", "age"), {"age_field": "age"}, "age_field names the age a date of birth becomes"),
    (("offenders", "date_of_birth"), {"age_field": "gender"}, "age_field 'gender' is not an age datafield"),
])
def test_bad_future_days_and_age_fields_are_refused(raw: dict, where, update: dict, message: str) -> None:
    bad = copy.deepcopy(raw)
    _field(bad, *where).update(update)
    with pytest.raises(SchemaError, match=message):
        parse_schema(bad)


def test_future_days_and_age_field_are_read(raw: dict) -> None:
    ok = copy.deepcopy(raw)
    _field(ok, "offences", "committed_to_date")["future_days"] = 10
    _field(ok, "offenders", "date_of_birth")["age_field"] = "age"
    s = parse_schema(ok)
    assert s.file("offences").field("committed_to_date").future_days == 10
    assert s.file("offences").field("committed_from_date").future_days == 0      # the default: no future
    assert s.file("offenders").age_pairs == (("date_of_birth", "age"),)


def test_the_airflow_docs_say_which_age_a_date_of_birth_becomes_and_how_far_ahead_a_date_may_be() -> None:
    btp = schema_docs.doc_md(load_schema(SCHEMA_DIR / "btp_crimes.yaml"))
    assert "| `victim_date_of_birth` |" in btp and "| dropped (becomes `victim_age`) |" in btp
    assert "| dropped (becomes `offender_age`) |" in btp
    assert "| `release_date` | Date of release (when they are to be released) | date, up to 366 days ahead |" in \
        schema_docs.doc_md(load_schema(SCHEMA_DIR / "prison_releases.yaml"))


@pytest.mark.unit
def test_supply_due_follows_the_period_and_due_days():
    """A core feed's supply is due when its window closes (police: 16 days after the month); an as-and-when
    feed has no due date unless its schema sets one; a period that cannot be read has none."""
    from datetime import datetime, timezone

    from csp_observatory.schema_loading import schema_for

    police = schema_for("police_recorded_crime")
    assert police.due_days == 16
    assert police.supply_due("202602") == datetime(2026, 3, 17, tzinfo=timezone.utc)
    assert police.supply_due("202612") == datetime(2027, 1, 17, tzinfo=timezone.utc)
    assert police.supply_due("2026-02") is None
    assert schema_for("ae_assaults").supply_due("202602") is None
