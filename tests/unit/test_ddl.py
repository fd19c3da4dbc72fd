"""DDL derived from the real police recorded crime schema."""
from __future__ import annotations

import dataclasses

import pytest
from csp_observatory import ddl
from csp_observatory.schema import SCHEMA_DIR, Datafield
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def prc():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")


def _roles_dropped(feed_file):
    return {d.name for d in feed_file.datafields if d.role in {"name", "date_of_birth", "easting", "northing",
                                                                "longitude", "latitude"}}


def test_depersonalised_tables_have_no_name_dob_or_raw_coordinates(prc):
    for f in prc.files:
        names = [c.name for c in ddl.table_columns(prc, f)]
        dropped = _roles_dropped(f)
        assert dropped, f"{f.name} should have something to drop"
        assert not dropped & set(names)
        kept = [d.name for d in f.datafields if d.name not in dropped]
        assert names[:len(kept)] == kept          # every other datafield, in schema order
    offenders = [c.name for c in ddl.table_columns(prc, prc.file("offenders"))]
    assert "offender_name" not in offenders and "date_of_birth" not in offenders
    offences = [c.name for c in ddl.table_columns(prc, prc.file("offences"))]
    assert not {"easting", "northing", "longitude", "latitude"} & set(offences)


def test_types_follow_the_datafield_types(prc):
    for f in prc.files:
        types = dict(ddl.table_columns(prc, f))
        for d in f.datafields:
            if d.name in types:
                assert types[d.name] == ddl.SQL_TYPES[d.type], d.name
    offences = dict(ddl.table_columns(prc, prc.file("offences")))
    assert offences["committed_from_date"] == "date"
    assert offences["committed_from_time"] == "text"
    assert offences["flag_drugs"] == "boolean"
    assert offences["location_postcode"] == "text"


def test_sanitised_lineage_and_geometry_columns(prc):
    cols = dict(ddl.table_columns(prc, prc.file("victims")))
    assert cols["sanitised_easting"] == "integer" and cols["sanitised_northing"] == "integer"
    assert cols["displacement_m"] == "real" and cols["sanitise_rule"] == "text"
    assert cols["geocode_method"] == "text" and cols["sanitised_postcode"] == "text"
    assert cols["supply_id"] == "text" and cols["source_sha256"] == "text" and cols["loaded_at"] == "timestamptz"
    assert cols["source_row"] == "integer" and cols["period"] == "text"
    assert cols["geom"] == "geometry(Point,27700)"
    assert {"supply_id", "source_sha256", "loaded_at"} <= ddl.NOT_NULL_COLUMNS
    names = [c.name for c in ddl.table_columns(prc, prc.file("victims"))]
    assert len(names) == len(set(names))
    assert names[-1] == "geom"


def test_age_is_added_only_when_dob_has_no_age_field(prc):
    offenders = prc.file("offenders")
    assert [c.name for c in ddl.table_columns(prc, offenders)].count("age") == 1   # the supplied age field
    no_age = dataclasses.replace(offenders, datafields=tuple(d for d in offenders.datafields if d.role != "age"))
    cols = dict(ddl.table_columns(prc, no_age))
    assert cols["age"] == "integer"
    no_dob = dataclasses.replace(no_age, datafields=tuple(d for d in no_age.datafields if d.role != "date_of_birth"))
    assert "age" not in dict(ddl.table_columns(prc, no_dob))


def test_personalised_feed_keeps_everything_and_the_exact_point(prc):
    personal = dataclasses.replace(prc, dataset_type="personalised")
    assert ddl.table_schema(personal) == "personal" and ddl.table_schema(prc) == "depersonalised"
    for f in personal.files:
        names = [c.name for c in ddl.table_columns(personal, f)]
        assert set(f.field_names) <= set(names)
        assert {"geo_easting", "geo_northing"} <= set(names)
        assert not any(n.startswith("sanitised_") for n in names)
    assert ddl.point_columns(personal) == ("geo_easting", "geo_northing")
    assert ddl.point_columns(prc) == ("sanitised_easting", "sanitised_northing")


def test_frame_columns_leave_out_what_the_loader_fills(prc):
    f = prc.file("offences")
    frame_cols = ddl.frame_columns(prc, f)
    assert "source_row" in frame_cols and "crime_reference" in frame_cols
    assert not ddl.LOADER_COLUMNS & set(frame_cols)
    assert len(frame_cols) == len(ddl.table_columns(prc, f)) - len(ddl.LOADER_COLUMNS)


def test_a_datafield_clashing_with_an_added_column_is_an_error(prc):
    f = prc.file("offences")
    clash = dataclasses.replace(f, datafields=(*f.datafields, Datafield(
        name="supply_id", label="x", type="string", role="attribute")))
    with pytest.raises(ValueError, match="supply_id"):
        ddl.table_columns(prc, clash)



def test_the_dropped_roles_are_the_ones_schema_lists(prc):
    from csp_observatory.schema import DROPPED_ON_SANITISING

    for f in prc.files:
        assert _roles_dropped(f) == {d.name for d in f.datafields if d.role in DROPPED_ON_SANITISING}


def test_free_text_dropped_on_sanitising_has_no_column(prc):
    f = prc.file("offences")
    dropped = dataclasses.replace(f, datafields=tuple(
        dataclasses.replace(d, free_text="drop") if d.name == "property_stolen" else d for d in f.datafields))
    names = [c.name for c in ddl.table_columns(prc, dropped)]
    assert "property_stolen" not in names and "method_of_entry" in names
    assert "property_stolen" in [c.name for c in ddl.table_columns(prc, f)]
    personal = dataclasses.replace(prc, dataset_type="personalised")
    assert "property_stolen" in [c.name for c in ddl.table_columns(personal, dropped)]


# --- the feature id and the counts by ward and month (issue 10, an analyst's workspace) ----------------------------

def test_the_feature_id_is_the_databases_never_a_frames(prc):
    for f in prc.files:
        assert ddl.FID_COLUMN not in [c.name for c in ddl.table_columns(prc, f)]
        assert ddl.FID_COLUMN not in ddl.frame_columns(prc, f)
    clash = dataclasses.replace(prc.file("offences"), datafields=(*prc.file("offences").datafields, Datafield(
        name="fid", label="x", type="integer", role="attribute")))
    with pytest.raises(ValueError, match="feature id"):
        ddl.table_columns(prc, clash)


def test_a_records_key_is_its_supply_and_its_schemas_key(prc):
    assert ddl.natural_key(prc.file("offences")) == ["supply_id", "crime_reference"]
    assert ddl.natural_key(prc.file("offenders")) == ["supply_id", "crime_reference", "offender_reference"]
    assert ddl.natural_key(prc.file("victims")) == ["supply_id", "row_key"]


def test_counts_by_ward_and_month_only_for_depersonalised_files_with_a_location(prc):
    from csp_observatory.schema_loading import load_schemas

    assert all(ddl.has_ward_month(prc, f) for f in prc.files)
    assert not any(ddl.has_ward_month(dataclasses.replace(prc, dataset_type="personalised"), f) for f in prc.files)
    schemas = {s.feed: s for s in load_schemas()}
    detections = schemas["detection_status"]
    assert not ddl.has_ward_month(detections, detections.files[0])       # no location: no ward to count by
    names = [t for s in schemas.values() for f in s.files
             for t in (f.table, *([ddl.ward_month_table(f)] if ddl.has_ward_month(s, f) else []))]
    assert len(names) == len(set(names)) and max(map(len, names)) <= 63   # no clash, no truncated identifier


def test_the_category_is_the_datafield_the_schema_marks(prc):
    from csp_observatory.schema_loading import load_schemas

    assert ddl.category_field(prc, prc.file("offences")).name == "ho_offence_code"
    assert ddl.category_field(prc, prc.file("offenders")) is None      # counted without a category
    for schema in load_schemas():
        for f in schema.files:
            kept = {c.name for c in ddl.table_columns(schema, f)}
            marked = [d.name for d in f.by_role("category") if d.name in kept]
            # one at most, so which one a layer is counted and styled by is never a guess
            assert len(marked) <= 1, (schema.feed, f.name, marked)
            found = ddl.category_field(schema, f)
            assert (found.name if found else None) == (marked[0] if marked else None)
    dropped = dataclasses.replace(prc.file("offences"), datafields=tuple(
        dataclasses.replace(d, role="category", free_text="drop") if d.name == "property_stolen" else
        dataclasses.replace(d, role="attribute") if d.role == "category" else d
        for d in prc.file("offences").datafields))
    assert ddl.category_field(prc, dropped) is None      # a category sanitising drops is never counted
