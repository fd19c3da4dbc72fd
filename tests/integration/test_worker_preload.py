"""A Celery worker's preload (``csp_observatory.worker_preload``) holds everything a supply's stages import.

Each task process is forked from its worker, so what the worker imported once no task imports again. The check runs
a supply through every stage in a fresh Python process, as the DAG's tasks call them (through the Airflow
Connections' hooks), after importing the preload module as the worker does, and lists what the stages imported
beyond it: no third-party module and none of the observatory's may be among them, or a task process would import
it again each time (Great Expectations alone is 2.7-4.2 s).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from csp_observatory import demo, fixtures, postcodes_sources
from csp_observatory.schema_loading import schema_for

pytestmark = pytest.mark.integration

FEED = "police_recorded_crime"
PERIOD = "209511"               # this module's own month

# Runs the stages in order as dags/feeds.py's tasks do, then prints the modules they imported after the preload.
STAGES_SCRIPT = textwrap.dedent("""
    import json, sys
    import csp_observatory.worker_preload              # what `celery worker` imports (celery_config.CELERY_CONFIG)
    before = set(sys.modules)
    from csp_observatory import connections, pipeline
    from csp_observatory.config import load_settings
    from csp_observatory.hooks import HookServices

    connections.ensure_env(load_settings())
    feed, period = sys.argv[1], sys.argv[2]
    services = HookServices()
    collected = pipeline.collect(feed, [period], "preload-check", services=services)
    supplies = pipeline.decrypt_and_verify(collected, services=services)
    for stage in (pipeline.parse_and_validate, pipeline.clean, pipeline.geocode, pipeline.sanitise):
        supplies = stage(supplies, services=services)
    loaded = pipeline.load(supplies, confirmed=[], services=services)
    outcome = pipeline.report_and_archive(feed, collected, services=services)
    print(json.dumps({"loaded": pipeline.loaded_supplies(loaded), "outcome": outcome,
                      "imported": sorted(set(sys.modules) - before)}))
""")


def _third_party_or_ours(module: str) -> bool:
    """Airflow's own task-runner modules are Airflow's to preload (its worker imports them for the first task)."""
    top = module.split(".")[0]
    return top not in sys.stdlib_module_names and top not in ("airflow", "__mp_main__")


@pytest.mark.usefixtures("clean_partner_folders", "reference_loaded")
def test_the_stages_import_nothing_the_worker_has_not_preloaded(settings, db, forget_supply, tmp_path):
    schema = schema_for(FEED)
    forget_supply(db, schema, PERIOD)
    supply = fixtures.make_supply(schema, PERIOD, postcodes_sources.shipped_reference(), n=30)
    demo.drop_demo_supply(settings, schema, PERIOD, files=supply.files, metadata=supply.metadata)
    try:
        out = subprocess.run([sys.executable, "-c", STAGES_SCRIPT, FEED, PERIOD], capture_output=True, text=True,
                             timeout=300, env=dict(os.environ), check=False)
        assert out.returncode == 0, out.stderr[-4000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
        # the stages did their work: a supply read, loaded and reported, so every stage's imports were reached
        assert [s["supply_id"] for s in got["loaded"]] == [f"{FEED}/{PERIOD}"], got["loaded"]
        (reported,) = got["outcome"]["supplies"]
        assert reported["status"] == "loaded", reported
        late = [m for m in got["imported"] if _third_party_or_ours(m)]
        assert late == [], f"imported by the stages, not preloaded by the worker: {late}"
    finally:
        forget_supply(db, schema, PERIOD)
