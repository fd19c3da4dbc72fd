"""The QGIS project file (``.qgs``, XML) of an analyst's workspace.

:func:`project_xml` writes the project: every layer in EPSG:27700 with ``fid`` as its key, its style and its group,
connecting through :class:`workspace_connection.Connection` (never with a password); :func:`write_project` lists
the layers and writes the file whole.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from contextlib import closing
from pathlib import Path
from typing import Final, Iterable

from csp_observatory import ddl
from csp_observatory.schema import SCHEMA_DIR, FeedSchema
from csp_observatory.schema_loading import load_schemas
from csp_observatory.workspace_connection import Connection, connect
from csp_observatory.workspace_export import RefusedExport
from csp_observatory.workspace_layers import OTHER_COLOUR, PALETTE, Layer, Style, layers_extent, project_layers


#: The QGIS version the project says it was saved with: the LTR Debian 12 ships (later versions read it as is).
QGIS_VERSION: Final = "3.22.16-Białowieża"
_BNG_PROJ4: Final = ("+proj=tmerc +lat_0=49 +lon_0=-2 +k=0.9996012717 +x_0=400000 +y_0=-100000 +ellps=airy "
                     "+units=m +no_defs")
_QGIS_SRSID_27700: Final = "2437"     # QGIS's own id for EPSG:27700 (QGIS reads the authid first)


# --- the project file ---------------------------------------------------------------------------------------------

def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def _spatialrefsys(parent: ET.Element) -> None:
    from pyproj import CRS

    srs = _sub(parent, "spatialrefsys", nativeFormat="Wkt")
    _sub(srs, "wkt", CRS.from_epsg(ddl.SRID).to_wkt())
    _sub(srs, "proj4", _BNG_PROJ4)
    _sub(srs, "srsid", _QGIS_SRSID_27700)
    _sub(srs, "srid", str(ddl.SRID))
    _sub(srs, "authid", f"EPSG:{ddl.SRID}")
    _sub(srs, "description", "OSGB36 / British National Grid")
    _sub(srs, "projectionacronym", "tmerc")
    _sub(srs, "ellipsoidacronym", "EPSG:7001")
    _sub(srs, "geographicflag", "false")


def _marker(parent: ET.Element, name: str, colour: str) -> None:
    symbol = _sub(parent, "symbol", type="marker", name=name, alpha="1", clip_to_extent="1", force_rhr="0")
    layer = _sub(symbol, "layer", class_="SimpleMarker", enabled="1", locked="0", **{"pass": "0"})
    props = {"color": f"{colour},255", "name": "circle", "outline_color": "35,35,35,255", "outline_style": "solid",
             "outline_width": "0.2", "outline_width_unit": "MM", "size": "2.4", "size_unit": "MM",
             "joinstyle": "bevel", "scale_method": "diameter", "angle": "0"}
    # QGIS >= 3.18 reads the Option map; earlier 3.x versions the prop elements. Both say the same.
    options = _sub(layer, "Option", type="Map")
    for k, v in props.items():
        _sub(options, "Option", type="QString", name=k, value=v)
    for k, v in props.items():
        _sub(layer, "prop", k=k, v=v)


def _renderer(parent: ET.Element, style: Style | None) -> None:
    if style is None:
        renderer = _sub(parent, "renderer-v2", type="singleSymbol", forceraster="0", symbollevels="0",
                        enableorderby="0")
        _marker(_sub(renderer, "symbols"), "0", PALETTE[0])
        return
    renderer = _sub(parent, "renderer-v2", type="categorizedSymbol", attr=style.expression, forceraster="0",
                    symbollevels="0", enableorderby="0")
    categories = _sub(renderer, "categories")
    symbols = _sub(renderer, "symbols")
    for i, c in enumerate(style.categories):
        _sub(categories, "category", render="true", symbol=str(i), value=c.value, label=c.label)
        _marker(symbols, str(i), PALETTE[i % len(PALETTE)])
    # An empty value is QGIS's "all other values".
    other = str(len(style.categories))
    _sub(categories, "category", render="true", symbol=other, value="", label="other")
    _marker(symbols, other, OTHER_COLOUR)
    _marker(_sub(renderer, "source-symbol"), "0", OTHER_COLOUR)


def project_xml(title: str, connection: Connection, layers: list[Layer],
                extent: tuple[float, float, float, float] | None = None) -> str:
    """The QGIS project (``.qgs``) text: project CRS EPSG:27700, one group per feed, a PostGIS layer per table."""
    root = ET.Element("qgis", projectname=title, version=QGIS_VERSION)
    _sub(root, "homePath", path="")
    _sub(root, "title", title)
    _sub(root, "autotransaction", active="0")
    _sub(root, "evaluateDefaultValues", active="0")
    _sub(root, "trust", active="0")
    _spatialrefsys(_sub(root, "projectCrs"))
    # QGIS reads projectCrs only where the project says it uses a CRS ("on the fly" projections, QGIS < 3.28).
    properties = _sub(root, "properties")
    _sub(_sub(properties, "SpatialRefSys"), "ProjectionsEnabled", "1", type="int")
    tree = _sub(root, "layer-tree-group")
    _sub(tree, "customproperties")
    groups: dict[str, ET.Element] = {}
    for layer in layers:
        if layer.group not in groups:
            groups[layer.group] = _sub(tree, "layer-tree-group", name=layer.group, checked="Qt::Checked",
                                       expanded="1")
            _sub(groups[layer.group], "customproperties")
        _sub(groups[layer.group], "layer-tree-layer", id=layer.id, name=layer.name, providerKey="postgres",
             source=layer.datasource(connection), checked="Qt::Checked", expanded="0")
    canvas = _sub(root, "mapcanvas", name="theMapCanvas", annotationsVisible="1")
    _sub(canvas, "units", "meters")
    if extent is not None:
        box = _sub(canvas, "extent")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), extent):
            _sub(box, tag, repr(float(value)))
    _sub(canvas, "rotation", "0")
    _spatialrefsys(_sub(canvas, "destinationsrs"))
    _sub(canvas, "rendermaptile", "0")
    project_layers_el = _sub(root, "projectlayers")
    for layer in layers:
        spatial = layer.geometry is not None
        ml = _sub(project_layers_el, "maplayer", type="vector", geometry="Point" if spatial else "No geometry",
                  wkbType="Point" if spatial else "NoGeometry", hasScaleBasedVisibilityFlag="0",
                  readOnly="0", autoRefreshEnabled="0", refreshOnNotifyEnabled="0")
        _sub(ml, "id", layer.id)
        _sub(ml, "datasource", layer.datasource(connection))
        _sub(ml, "keywordList").append(ET.Element("value"))
        _sub(ml, "layername", layer.name)
        _spatialrefsys(_sub(ml, "srs"))
        _sub(ml, "abstract", layer.abstract)
        _sub(ml, "provider", "postgres", encoding="")
        if spatial:
            _renderer(ml, layer.style)
    order = _sub(root, "layerorder")
    for layer in layers:
        _sub(order, "layer", id=layer.id)
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + body + "\n"


def write_project(out: Path, title: str, connection: Connection, dsn: str | None = None,
                  schemas: Iterable[FeedSchema] | None = None) -> list[Layer]:
    """Write the deployment's QGIS project to ``out``; returns its layers (nothing is written if it has none)."""
    with closing(connect(dsn, connection)) as conn:
        layers = project_layers(conn, schemas if schemas is not None else load_schemas(SCHEMA_DIR))
        if not layers:
            raise RefusedExport("no depersonalised layer is loaded yet (or this login may read none): "
                                "load a supply first")
        extent = layers_extent(conn, layers)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(project_xml(title, connection, layers, extent), encoding="utf-8")
    tmp.replace(out)
    return layers
