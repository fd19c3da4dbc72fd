"""One partner, several feeds, one inbox: a police force sends its recorded crime and its incidents through the
same SFTP account, and each feed's DAG takes its own supply and leaves the other's files alone (real sshd, gpg,
PostGIS and dag.test)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from csp_observatory import demo, fixtures, postcodes_sources, sftp
from csp_observatory.config import load_settings
from csp_observatory.schema_loading import schema_for

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_partner_folders", "reference_loaded")]

PERIOD = "202603"                 # this module's own month
FORCE = "police"                  # the account both feeds arrive in
FEEDS = ("police_recorded_crime", "police_incidents")


@pytest.fixture()
def registry_serving_both(tmp_path, monkeypatch, settings):
    """The machine's partner registry, copied, with the police account supplying both feeds and the incidents
    feed's own demo partner removed (as scripts/partner would leave them); the tasks read it via CSP_PARTNERS_DIR."""
    source = Path(settings.partners_dir)
    registry = tmp_path / "partners"
    shutil.copytree(source, registry)
    police = yaml.safe_load((registry / f"{FORCE}.yaml").read_text())
    police["feeds"] = sorted({*police["feeds"], *FEEDS})
    (registry / f"{FORCE}.yaml").write_text(yaml.safe_dump(police, sort_keys=False))
    for path in registry.glob("*.yaml"):
        entry = yaml.safe_load(path.read_text())
        if entry["id"] != FORCE and set(entry.get("feeds") or ()) & set(FEEDS):
            entry.update(status="removed", removed_at="2026-11-29T00:00:00Z")
            path.write_text(yaml.safe_dump(entry, sort_keys=False))
    monkeypatch.setenv("CSP_PARTNERS_DIR", str(registry))
    return load_settings()


def test_one_inbox_serves_two_feeds_and_each_run_takes_only_its_own(registry_serving_both, settings, db,
                                                                    forget_supply):
    shared = registry_serving_both
    assert [shared.supplier(f, schema_for(f).partner.id) for f in FEEDS] == [FORCE, FORCE]
    reference = postcodes_sources.shipped_reference()
    supplies = {}
    for feed in FEEDS:
        schema = schema_for(feed)
        forget_supply(db, schema, PERIOD)
        supplies[feed] = fixtures.make_supply(schema, PERIOD, reference, n=20)
        demo.drop_demo_supply(settings, schema, PERIOD, files=supplies[feed].files,
                              metadata=supplies[feed].metadata, partner_id=FORCE)
    inbox = settings.inbox(FORCE)
    try:
        for feed in FEEDS:
            since = time.time()
            before = set(_listdir(settings, inbox))
            demo.run_feed_dag(feed)
            report = json.loads(demo.latest_report(settings, feed, PERIOD, since).read_text())
            assert report["outcome"]["level"] in ("green", "amber"), report["outcome"]
            with db.cursor() as cur:
                cur.execute("SELECT status FROM observatory.supplies WHERE supply_id = %s", (f"{feed}/{PERIOD}",))
                assert cur.fetchone() == ("loaded",)
            db.rollback()
            taken = before - set(_listdir(settings, inbox))
            own = {fixtures.remote_name(f, PERIOD) for f in schema_for(feed).files} | {supplies[feed].metadata_name}
            # this feed's run took exactly its own files: the other feed's wait in the inbox for their own run
            assert taken == own
        assert _listdir(settings, inbox) == []
        assert _listdir(settings, settings.partner_folder(FORCE, "quarantine")) == []
        assert len(_listdir(settings, settings.partner_folder(FORCE, "processed"))) == sum(
            len(s.files) + 1 for s in supplies.values())
        # both reports went back to the one account that sent the supplies
        reports = _listdir(settings, settings.partner_folder(FORCE, "reports"))
        assert {name.split(f"_{PERIOD}_")[0] for name in reports} == set(FEEDS)
    finally:
        for feed in FEEDS:
            forget_supply(db, schema_for(feed), PERIOD)


def _listdir(settings, folder: str) -> list[str]:
    with sftp.connect_observatory(settings) as client:
        return sorted(client.listdir(folder))
