"""DDL derived from the real police recorded crime schema."""
from __future__ import annotations

import dataclasses

import pytest
from csp_observatory import ddl, partitions, ward_month
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

    assert all(ward_month.has_ward_month(prc, f) for f in prc.files)
    personal = dataclasses.replace(prc, dataset_type="personalised")
    assert not any(ward_month.has_ward_month(personal, f) for f in prc.files)
    schemas = {s.feed: s for s in load_schemas()}
    detections = schemas["detection_status"]
    assert not ward_month.has_ward_month(detections, detections.files[0])       # no location: no ward to count by
    names = [t for s in schemas.values() for f in s.files
             for t in (f.table, *([ward_month.ward_month_table(f)] if ward_month.has_ward_month(s, f) else []))]
    assert len(names) == len(set(names)) and max(map(len, names)) <= 63   # no clash, no truncated identifier


def test_the_category_is_the_datafield_the_schema_marks(prc):
    from csp_observatory.schema_loading import load_schemas

    assert ward_month.category_field(prc, prc.file("offences")).name == "ho_offence_code"
    assert ward_month.category_field(prc, prc.file("offenders")) is None      # counted without a category
    for schema in load_schemas():
        for f in schema.files:
            kept = {c.name for c in ddl.table_columns(schema, f)}
            marked = [d.name for d in f.by_role("category") if d.name in kept]
            # one at most, so which one a layer is counted and styled by is never a guess
            assert len(marked) <= 1, (schema.feed, f.name, marked)
            found = ward_month.category_field(schema, f)
            assert (found.name if found else None) == (marked[0] if marked else None)
    dropped = dataclasses.replace(prc.file("offences"), datafields=tuple(
        dataclasses.replace(d, role="category", free_text="drop") if d.name == "property_stolen" else
        dataclasses.replace(d, role="attribute") if d.role == "category" else d
        for d in prc.file("offences").datafields))
    assert ward_month.category_field(prc, dropped) is None      # a category sanitising drops is never counted


# --- one partition per supply (issue 9, partitions.py) ------------------------------------------------------------

def test_a_feed_table_is_partitioned_by_fid_with_fid_its_only_key():
    statements = [text for text, _ in partitions.parent_statements("depersonalised", "prc_offences",
                                                                    ['"crime_reference" text NOT NULL'])]
    create = next(t for t in statements if t.startswith("CREATE TABLE"))
    assert create.endswith('PARTITION BY RANGE ("fid")')
    # a single-column integer primary key: GDAL and QGIS take it as the feature id without being told
    assert 'CONSTRAINT "prc_offences_pkey" PRIMARY KEY ("fid")' in create
    assert '"fid" bigint NOT NULL DEFAULT nextval(%s::regclass)' in create and "IDENTITY" not in create
    assert 'ALTER SEQUENCE "depersonalised"."prc_offences_fid_seq" OWNED BY "depersonalised"."prc_offences"."fid"' \
        in statements
    assert any("USING gist (geom)" in t for t in statements)


def test_a_loaded_partition_is_indexed_and_checked_so_attach_scans_nothing():
    staged = partitions.Staged(partitions.partition_name("prc_offences", 1001), 1001, 1501)
    assert staged.name == "prc_offences_f1001"
    statements = partitions.index_statements("depersonalised", "prc_offences", staged,
                                             ["supply_id", "crime_reference"], "police_recorded_crime/202609")
    texts = [t for t, _ in statements]
    # the record's key first, so a repeated record stops the supply before the other indexes are built
    assert texts[1].endswith('ADD CONSTRAINT "prc_offences_f1001_supply_key" UNIQUE ("supply_id", "crime_reference")')
    assert any(t.endswith('PRIMARY KEY ("fid")') for t in texts)
    assert any('"prc_offences_f1001_geom_gist"' in t and "USING gist (geom)" in t for t in texts)
    checks = partitions.check_statements("depersonalised", staged, "police_recorded_crime/202609")
    assert not any("CHECK" in t for t in texts)            # they come with the empty table, before its rows
    statements = checks
    bound = next((t, p) for t, p in statements if "_fid_range" in t)
    assert bound == ('ALTER TABLE "depersonalised"."prc_offences_f1001" ADD CONSTRAINT "prc_offences_f1001_fid_range" '
                     'CHECK ("fid" >= %s AND "fid" < %s)', (1001, 1501))
    supply = next((t, p) for t, p in statements if t.endswith("CHECK (supply_id = %s)"))
    assert supply[1] == ("police_recorded_crime/202609",)       # a value, never SQL text
    attach = partitions.attach_statement("depersonalised", "prc_offences", staged)
    assert attach == ('ALTER TABLE "depersonalised"."prc_offences" ATTACH PARTITION '
                      '"depersonalised"."prc_offences_f1001" FOR VALUES FROM (%s) TO (%s)', (1001, 1501))
    # the same bound as the CHECK, so PostgreSQL sees the partition constraint is implied
    assert attach[1] == bound[1]


def test_partition_names_are_quoted_and_fit_postgresqls_63_bytes():
    long = "t" * 60
    name = partitions.partition_name(long, 9_223_372_036_854_775_000)
    assert len(f"{name}_supply_key") <= 63 and name.endswith("_f9223372036854775000")
    assert partitions.partition_name("t" * 60, 5) != partitions.partition_name("t" * 59 + "x", 5)
    assert partitions.quote_ident('a"b') == '"a""b"'
    (create,) = partitions.stage_statements("depersonalised", 'x"y', partitions.Staged('x"y_f1', 1, 2))
    assert create == ('CREATE TABLE "depersonalised"."x""y_f1" (LIKE "depersonalised"."x""y")', ())
    # a partition another connection builds is made in the loading schema, LIKE its feed's table
    (create,) = partitions.stage_statements("depersonalised", 'x"y',
                                            partitions.Staged('x"y_f1', 1, 2, partitions.LOADING_SCHEMA))
    assert create == ('CREATE TABLE "loading"."x""y_f1" (LIKE "depersonalised"."x""y")', ())
    assert partitions.legacy_name("prc_offences") == "prc_offences_legacy"
    assert partitions.partition_comment("depersonalised", "prc_offences", "a/1") != \
        partitions.partition_comment("depersonalised", "prc_offences", "a/10")
