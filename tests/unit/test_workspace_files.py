"""The analyst's workspace without a database: the QGIS project's XML, its styles and connection, the export's
columns and its refusal of personalised feeds."""
from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET

import pytest

from csp_observatory import ddl, ward_month, workspace, workspace_connection, workspace_export, workspace_layers, workspace_project
from csp_observatory.schema_loading import load_schemas

pytestmark = pytest.mark.unit

SCHEMAS = {s.feed: s for s in load_schemas()}


def _layers() -> list[workspace_layers.Layer]:
    """The layers a project over police recorded crime and council ASB would have (all their tables there)."""
    layers = []
    for feed in ("police_recorded_crime", "council_asb"):
        schema = SCHEMAS[feed]
        for f in schema.files:
            layers.append(workspace_layers.Layer(group=schema.title, name=f.title, db_schema=schema.db_schema,
                                                 table=f.table, style=workspace_layers.style_for(schema, f)))
            layers.append(workspace_layers.Layer(group=schema.title, name=f"{f.title} by ward and month",
                                                 db_schema=schema.db_schema, table=ward_month.ward_month_table(f),
                                                 geometry=None))
    return layers


def test_a_connection_has_no_password_and_says_a_service_or_parameters():
    service = workspace_connection.Connection()
    assert service.qgis() == "service='csp_observatory'" and service.libpq() == "service=csp_observatory"
    params = workspace_connection.Connection(service=None, host="db.example", port=5433, dbname="csp obs",
                                             user="analyst")
    assert params.qgis() == "dbname='csp obs' host=db.example port=5433 user='analyst'"
    assert params.libpq() == "dbname='csp obs' host=db.example port=5433 user=analyst"
    assert "password" not in {f.name for f in dataclasses.fields(workspace_connection.Connection)}
    with pytest.raises(TypeError):
        workspace_connection.Connection(service=None, dbname="x", password="secret")     # type: ignore[call-arg]
    with pytest.raises(ValueError):
        workspace_connection.Connection(service=None)
    assert workspace_connection.service_stanza(params) == \
        "[csp_observatory]\nhost=db.example\nport=5433\ndbname=csp obs\nuser=analyst\n"


def test_the_project_is_qgis_xml_in_british_national_grid_with_fid_keys():
    text = workspace_project.project_xml("Calderdale CSP", workspace_connection.Connection(), _layers(),
                                         (400000, 420000, 410000, 430000))
    assert text.startswith("<!DOCTYPE qgis")
    root = ET.fromstring(text.split("\n", 1)[1])
    assert root.tag == "qgis" and root.get("projectname") == "Calderdale CSP"
    assert root.find("projectCrs/spatialrefsys/authid").text == "EPSG:27700"
    assert root.find("properties/SpatialRefSys/ProjectionsEnabled").text == "1"
    assert root.find("mapcanvas/destinationsrs/spatialrefsys/authid").text == "EPSG:27700"
    assert [root.find(f"mapcanvas/extent/{t}").text for t in ("xmin", "xmax")] == ["400000.0", "410000.0"]
    maplayers = root.findall("projectlayers/maplayer")
    assert len(maplayers) == 8                        # 3 + 1 layers, each with its counts
    tree_ids = [e.get("id") for e in root.iter("layer-tree-layer")]
    assert tree_ids == [m.find("id").text for m in maplayers] and len(set(tree_ids)) == 8
    assert [g.get("name") for g in root.findall("layer-tree-group/layer-tree-group")] == \
        [SCHEMAS["police_recorded_crime"].title, SCHEMAS["council_asb"].title]
    for m in maplayers:
        source = m.find("datasource").text
        assert source.startswith("service='csp_observatory' key='fid' ")
        assert m.find("provider").text == "postgres"
        assert m.find("srs/spatialrefsys/authid").text == "EPSG:27700"
        if m.get("geometry") == "Point":
            assert "srid=27700 type=Point" in source and source.endswith(" (geom)")
            assert m.find("renderer-v2") is not None
        else:
            assert m.get("geometry") == "No geometry" and "_ward_month\"" in source and "(geom)" not in source
    assert not re.search(r"password|authcfg", text, re.I)


def test_points_are_coloured_by_the_schemas_category():
    text = workspace_project.project_xml("t", workspace_connection.Connection(), _layers())
    root = ET.fromstring(text.split("\n", 1)[1])
    renderers = {m.find("datasource").text.split('"."')[1].split('"')[0]: m.find("renderer-v2")
                 for m in root.findall("projectlayers/maplayer") if m.get("geometry") == "Point"}
    # offences: Home Office codes grouped into their police.uk categories (include/reference/ho_offence_codes.csv)
    offences = renderers["prc_offences"]
    assert offences.get("type") == "categorizedSymbol"
    assert offences.get("attr").startswith('CASE WHEN "ho_offence_code" IN (') and "'Burglary'" in offences.get("attr")
    values = [c.get("value") for c in offences.findall("categories/category")]
    assert "Burglary" in values and "Violence and Sexual Offences" in values and values[-1] == ""   # "" = all others
    assert len(values) == len(offences.findall("symbols/symbol"))
    # council ASB: its nine incident types, one colour each, in the schema's order
    asb_field = ward_month.category_field(SCHEMAS["council_asb"], SCHEMAS["council_asb"].files[0])
    asb = renderers[SCHEMAS["council_asb"].files[0].table]
    assert asb.get("attr") == asb_field.name
    assert [c.get("value") for c in asb.findall("categories/category")] == [*asb_field.codes, ""]
    colours = [s.find("layer/Option/Option[@name='color']").get("value") for s in asb.findall("symbols/symbol")]
    assert len(set(colours)) == len(colours) and colours[-1].startswith(workspace_layers.OTHER_COLOUR)
    # offenders have no category: one symbol for all
    assert renderers["prc_offenders"].get("type") == "singleSymbol"


def test_free_text_categories_take_the_layers_most_frequent_values():
    schema = SCHEMAS["police_incidents"]
    f = schema.files[0]
    d = ward_month.category_field(schema, f)
    assert d is not None and d.needs_free_text_rule
    style = workspace_layers.style_for(schema, f)          # no database: no values to offer, everything is "other"
    assert style.expression == d.name and style.categories == ()


def test_an_export_holds_what_the_table_holds_and_never_what_sanitising_drops():
    schema = SCHEMAS["police_recorded_crime"]
    for f in schema.files:
        table = [c.name for c in ddl.table_columns(schema, f)]
        cols = workspace_export.export_columns(schema, f, set(table) | {"fid", "offender_name", "easting"})
        assert cols == [c for c in table if c != "geom"]
        assert not {d.name for d in f.datafields if d.dropped_on_sanitising} & set(cols)
        assert ddl.FID_COLUMN not in cols
    offences = schema.file("offences")
    assert "ho_offence_code" not in workspace_export.export_columns(schema, offences, {"crime_reference"})


def test_a_personalised_feed_is_refused_before_any_connection(tmp_path, capsys):
    personal = [s for s in SCHEMAS.values() if s.personalised]
    assert personal
    out = tmp_path / "x.gpkg"
    # a DSN that cannot connect: the refusal must come first
    code = workspace.main(["export", "--feed", personal[0].feed, "--period", "202609", "--out", str(out),
                           "--dsn", "host=/nonexistent dbname=none"])
    assert code == 2 and not out.exists()
    assert "personalised" in capsys.readouterr().err
    with pytest.raises(workspace_export.RefusedExport, match="personalised"):
        workspace_export.export_gpkg(None, personal[0], "202609", out)


def test_a_tls_connection_asks_qgis_and_libpq_to_verify_the_server():
    tls = workspace_connection.Connection(service=None, host="db.example", port=5433, dbname="csp", user="jsmith",
                                          sslmode="verify-full", sslrootcert="/etc/ca dir/ca.crt")
    assert tls.qgis() == "dbname='csp' host=db.example port=5433 user='jsmith' sslmode=verify-full"
    # the CA's path is for libpq and pg_service.conf: a QGIS data source has no such key
    assert tls.libpq() == "dbname=csp host=db.example port=5433 user=jsmith sslmode=verify-full " \
                          "sslrootcert='/etc/ca dir/ca.crt'"
    assert workspace_connection.service_stanza(tls).splitlines()[-2:] == ["sslmode=verify-full",
                                                                           "sslrootcert=/etc/ca dir/ca.crt"]
