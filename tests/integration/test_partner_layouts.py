"""Partners' own layouts through the whole pipeline: published public data (data.police.uk's stop-and-search CSV),
the NHS ISTV minimum data set as A&E departments send it, and two partners sending one dataset in two layouts,
each dropped on the real sshd, signed and encrypted, and loaded by the feed's DAG into PostGIS."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from csp_observatory import demo, fixtures, layouts, layouts_loading, layouts_reading, sftp
from csp_observatory.schema_loading import schema_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_partner_folders", "reference_loaded")]

DATA = Path(__file__).resolve().parents[1] / "data" / "layouts"
POLICE_UK_SEARCHES = DATA / "police_uk_stop_search_2026-09_calderdale.csv"
ISTV_CSV = DATA / "istv_assaults_2026-09.csv"


def _rows(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines()[1:] if line.strip())


def _canonical(feed: str, file_name: str, src: Path, tmp: Path) -> str:
    """The canonical copy intake makes of a partner file: what its metadata's datafields and counts describe."""
    feed_file = schema_for(feed).file(file_name)
    layout = layouts_reading.detect(src, layouts_loading.layouts_for(feed, file_name))
    assert layout is not None and layout.id != "canonical"
    out = tmp / f"{file_name}.canonical.csv"
    layouts.apply(layout, src, out, feed_file)
    return out.read_text(encoding="utf-8")


def _send_and_run(settings, db, forget_supply, feed: str, period: str, file_name: str, text: str,
                  canonical: str, partner_id: str | None = None) -> dict:
    schema = schema_for(feed)
    forget_supply(db, schema, period)
    since = time.time()
    meta = fixtures.make_metadata(schema, period, {file_name: canonical})
    demo.drop_demo_supply(settings, schema, period, files={file_name: text}, metadata=meta, partner_id=partner_id)
    demo.run_feed_dag(feed)
    report = json.loads(demo.latest_report(settings, feed, period, since).read_text(encoding="utf-8"))
    with db.cursor() as cur:
        cur.execute("SELECT status FROM observatory.supplies WHERE supply_id = %s", (f"{feed}/{period}",))
        assert cur.fetchone() == ("loaded",), report["outcome"]
        cur.execute(f"SELECT count(*) FROM depersonalised.{schema.file(file_name).table} WHERE supply_id = %s",
                    (f"{feed}/{period}",))
        report["loaded_in_db"] = cur.fetchone()[0]
    db.rollback()
    return report


def test_data_police_uk_stop_and_search_csv_loads_as_published(settings, db, forget_supply, tmp_path):
    text = POLICE_UK_SEARCHES.read_text(encoding="utf-8")
    try:
        report = _send_and_run(settings, db, forget_supply, "stop_and_search", "202609", "searches", text,
                                _canonical("stop_and_search", "searches", POLICE_UK_SEARCHES, tmp_path))
        (searches,) = report["files"]
        assert searches["rows_in_file"] == _rows(POLICE_UK_SEARCHES)
        assert report["loaded_in_db"] == searches["rows_loaded"] > 0
        # its metadata, made from the canonical copy, matches: the layout is invisible past intake
        assert report["outcome"]["level"] in ("green", "amber")
    finally:
        forget_supply(db, schema_for("stop_and_search"), "202609")


def test_an_nhs_istv_csv_loads_into_the_a_and_e_feed(settings, db, forget_supply, tmp_path):
    text = ISTV_CSV.read_text(encoding="utf-8")
    try:
        report = _send_and_run(settings, db, forget_supply, "ae_assaults", "202609", "assaults", text,
                               _canonical("ae_assaults", "assaults", ISTV_CSV, tmp_path))
        (assaults,) = report["files"]
        assert assaults["rows_in_file"] == _rows(ISTV_CSV) == report["loaded_in_db"]
        with db.cursor() as cur:
            cur.execute("SELECT location_type, count(*) FROM depersonalised.ae_assaults WHERE supply_id = %s "
                        "GROUP BY 1 ORDER BY 1", ("ae_assaults/202609",))
            # every location type the department sent (codes and words) became one of the guidance's types
            assert dict(cur.fetchall()) == {"at home": 1, "in licensed premises": 2, "other": 2,
                                            "outside licensed premises": 1}
        db.rollback()
    finally:
        forget_supply(db, schema_for("ae_assaults"), "202609")


def test_two_partners_send_one_dataset_in_two_layouts_and_both_load(settings, db, forget_supply, tmp_path,
                                                                    monkeypatch):
    """The stop-and-search feed's own partner sends data.police.uk's layout; then the force's main account takes the
    feed over (scripts/partner: one supplier at a time) and sends the canonical layout. Both months load."""
    schema = schema_for("stop_and_search")
    first = POLICE_UK_SEARCHES.read_text(encoding="utf-8")
    canonical = _canonical("stop_and_search", "searches", POLICE_UK_SEARCHES, tmp_path)
    try:
        one = _send_and_run(settings, db, forget_supply, "stop_and_search", "202609", "searches", first, canonical)
        # the registry as scripts/partner leaves it once the force's account supplies the feed instead
        registry = tmp_path / "partners"
        shutil.copytree(settings.partners_dir, registry)
        for path in registry.glob("*.yaml"):
            entry = yaml.safe_load(path.read_text())
            if entry["id"] == "police":
                entry["feeds"] = sorted({*entry["feeds"], schema.feed})
            elif schema.feed in (entry.get("feeds") or ()):
                entry.update(status="removed", removed_at="2026-11-29T00:00:00Z")
            path.write_text(yaml.safe_dump(entry, sort_keys=False))
        monkeypatch.setenv("CSP_PARTNERS_DIR", str(registry))
        two = _send_and_run(settings, db, forget_supply, "stop_and_search", "202610", "searches",
                            canonical.replace("2026-09-", "2026-10-"), canonical.replace("2026-09-", "2026-10-"),
                            partner_id="police")
        assert one["loaded_in_db"] == two["loaded_in_db"] == _rows(POLICE_UK_SEARCHES)
        with sftp.connect_observatory(settings) as client:
            assert client.listdir(settings.partner_folder("police_stop_search", "processed"))
            assert client.listdir(settings.partner_folder("police", "processed"))
    finally:
        for period in ("202609", "202610"):
            forget_supply(db, schema, period)
