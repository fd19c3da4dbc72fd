"""Every DAG file imports, and every DAG follows the observatory's policies."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from csp_observatory.schema_loading import load_schemas

pytestmark = pytest.mark.unit

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory):
    # Parsing needs no metadata DB; keep Airflow's home out of the user's.
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow_home")))
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_every_dag_file_imports(dagbag) -> None:
    assert dagbag.import_errors == {}


#: DAGs that follow the loads rather than take supplies (dags/refresh.py): unpaused from the start, no feed docs.
DOWNSTREAM = {"refresh_summaries"}


def test_one_dag_per_feed_schema(dagbag) -> None:
    # and the one governance DAG (retention and agreements, dags/retention.py), and the refresh of the summaries
    assert set(dagbag.dag_ids) == {f"feed_{s.feed}" for s in load_schemas()} | {"retention"} | DOWNSTREAM


@pytest.mark.parametrize("parsing_for, expected", [
    ("feed_bus_incidents", {"feed_bus_incidents", "retention", "refresh_summaries"}),
    ("refresh_summaries", {"retention", "refresh_summaries"}),
])
def test_a_task_process_parse_builds_only_its_own_feed_dag(dagbag, monkeypatch, parsing_for, expected) -> None:
    # A task's process parses with Airflow's parsing context naming its DAG: the feeds file builds that feed's DAG
    # alone (the other files still define theirs), the same DAG as the full parse builds.
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", parsing_for)
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == expected
    for dag_id in expected:
        assert [t.task_id for t in bag.dags[dag_id].tasks] == [t.task_id for t in dagbag.dags[dag_id].tasks]


def test_the_demos_parsing_context_is_gone_after_its_block(monkeypatch) -> None:
    # demo.run_feed_dag parses in it: left set, a deployment started later from the same process (the integration
    # tests start several) would parse one feed's DAG and never the others.
    from airflow.sdk import get_parsing_context

    from csp_observatory.demo import parsing_for

    monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", raising=False)
    with parsing_for("feed_bus_incidents"):
        assert get_parsing_context().dag_id == "feed_bus_incidents"
    assert get_parsing_context().dag_id is None
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "retention")
    with pytest.raises(KeyError):
        with parsing_for("feed_bus_incidents"):
            raise KeyError("a failed parse")
    assert get_parsing_context().dag_id == "retention"


def test_dag_policies(dagbag) -> None:
    assert dagbag.dags, "no DAGs were found"
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.catchup is False, f"{dag_id} would backfill on deploy"
        assert dag.max_active_runs == 1, f"{dag_id} could run twice over the same files"
        if dag_id not in DOWNSTREAM:
            assert dag.doc_md and "datafield" in dag.doc_md, f"{dag_id} has no feed documentation"
            assert dag.is_paused_upon_creation is True, f"{dag_id} would start polling before its partner is onboarded"
        for t in dag.tasks:
            assert t.owner and t.owner != "airflow", f"{dag_id}.{t.task_id} has no owner"
            # Stages retry transient faults; the two judging tasks judge data, which a retry does not change.
            expected = 0 if t.task_id in ("verdict", "stage_failed") else 2
            assert t.retries >= expected, f"{dag_id}.{t.task_id} has {t.retries} retries"


def test_stages_run_in_the_guidance_order(dagbag) -> None:
    dag = dagbag.dags["feed_police_recorded_crime"]
    chain = ["wait_for_supply", "collect", "decrypt_and_verify", "parse_and_validate", "clean", "geocode",
             "sanitise", "load", "report_and_archive"]
    for before, after in zip(chain, chain[1:]):
        assert after in dag.get_task(before).downstream_task_ids, f"{before} does not lead to {after}"
    assert dag.get_task("report_and_archive").trigger_rule == "all_done"


def test_the_run_state_follows_the_supply(dagbag) -> None:
    dag = dagbag.dags["feed_police_recorded_crime"]
    # The leaves decide the run's state: the verdict (red or amber fails) and the stage watcher.
    leaves = {t.task_id for t in dag.tasks if not t.downstream_task_ids}
    assert leaves == {"verdict", "stage_failed"}
    watcher = dag.get_task("stage_failed")
    assert watcher.trigger_rule == "one_failed"
    stages = {"wait_for_supply", "collect", "decrypt_and_verify", "parse_and_validate", "clean", "geocode",
              "sanitise", "load", "report_and_archive"}
    assert stages <= watcher.upstream_task_ids
    assert dag.get_task("verdict").upstream_task_ids == {"report_and_archive"}
    assert "confirm_replace" in dag.params


def test_core_feeds_run_on_their_schedule_and_peripheral_feeds_on_a_supply_arriving(dagbag) -> None:
    from airflow.sdk.definitions.timetables.assets import AssetOrTimeSchedule, AssetTriggeredTimetable
    from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable

    from csp_observatory.arrival import SupplyArrivalTrigger

    for schema in load_schemas():
        dag = dagbag.dags[f"feed_{schema.feed}"]
        assert isinstance(dag.timetable, AssetTriggeredTimetable), dag.dag_id
        # every feed is started by its supply's arrival: the watcher looks at this feed's own inbox, in the triggerer
        (asset,) = dag.timetable.asset_condition.objects
        (watcher,) = asset.watchers
        assert isinstance(watcher.trigger, SupplyArrivalTrigger) and watcher.trigger.feed == schema.feed
        assert asset.uri.endswith(f"/supplies/{schema.feed}")
        if schema.on_arrival:
            assert not isinstance(dag.timetable, AssetOrTimeSchedule), f"{dag.dag_id} is as and when: no schedule"
        else:
            # and a core feed on its monthly schedule too
            assert isinstance(dag.timetable, AssetOrTimeSchedule), dag.dag_id
            assert isinstance(dag.timetable.timetable, CronTriggerTimetable), dag.dag_id
            assert dag.timetable.timetable.expression == schema.schedule, dag.dag_id


def test_the_wait_for_a_supply_holds_no_worker_and_ends_with_its_window(dagbag) -> None:
    from csp_observatory.arrival import SupplySensor

    for schema in load_schemas():
        sensor = dagbag.dags[f"feed_{schema.feed}"].get_task("wait_for_supply")
        assert isinstance(sensor, SupplySensor) and sensor.deferrable and sensor.feed == schema.feed
        # a closed window skips the run (nothing arrived), it does not fail it
        assert sensor.soft_fail is True
        if not os.environ.get("CSP_SENSOR_TIMEOUT_S"):
            assert sensor.timeout == schema.wait_hours * 3600, schema.feed


def test_the_dag_docs_carry_the_partners_latest_caveats(dagbag, monkeypatch) -> None:
    import importlib.util

    from csp_observatory import metadata_docs, schema_docs

    monkeypatch.setattr(metadata_docs, "dag_docs_dir", lambda: Path("/the/reports"))
    monkeypatch.setattr(metadata_docs, "dag_doc", lambda feed, reports_dir: f"\n## Partner's caveats for {feed} "
                                                                            f"from {reports_dir}\n")
    spec = importlib.util.spec_from_file_location("feeds_for_docs", DAGS / "feeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schema = next(s for s in load_schemas() if s.feed == "police_recorded_crime")
    doc = module.build_feed_dag(schema).doc_md
    assert doc.startswith(schema_docs.doc_md(schema))
    assert doc.endswith("## Partner's caveats for police_recorded_crime from /the/reports\n")


def test_each_load_emits_its_feeds_tables_and_the_refresh_runs_on_them_not_on_a_clock(dagbag) -> None:
    from airflow.sdk import Asset
    from airflow.sdk.definitions.asset import AssetAny
    from airflow.sdk.definitions.timetables.assets import AssetTriggeredTimetable

    from csp_observatory.ward_month import has_ward_month

    summarised: set[str] = set()
    for schema in load_schemas():
        dag = dagbag.dags[f"feed_{schema.feed}"]
        load = dag.get_task("load")
        names = [a.name for a in load.outlets if isinstance(a, Asset)]
        assert names == [f"{schema.db_schema}.{f.table}" for f in schema.files], schema.feed
        for asset in load.outlets:
            # the postgres provider's scheme: postgres://host:port/database/schema/table
            assert asset.uri.startswith("postgres://") and asset.uri.endswith("/" + asset.name.replace(".", "/"))
        # only the load emits them: no other task of the feed claims to change its tables
        assert not [t.task_id for t in dag.tasks if t.task_id != "load" and t.outlets], schema.feed
        summarised |= {f"{schema.db_schema}.{f.table}" for f in schema.files if has_ward_month(schema, f)}
    refresh = dagbag.dags["refresh_summaries"]
    assert isinstance(refresh.timetable, AssetTriggeredTimetable)
    condition = refresh.timetable.asset_condition
    # any one table's event starts it (not all of them together), and only the tables with counts by ward and month
    assert isinstance(condition, AssetAny)
    assert {a.name for a in condition.objects} == summarised and "personal.ppo_offenders" not in summarised
    assert refresh.is_paused_upon_creation is False
    (task,) = refresh.tasks
    assert task.task_id == "refresh_counts" and task.retries >= 1
