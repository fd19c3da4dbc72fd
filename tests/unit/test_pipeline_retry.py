"""Airflow retries a failed stage (``retries: 2``): a retry must give exactly what one clean run gives.

The stages run here without Airflow and without services: parse_and_validate and clean read and write only the
supply's private work folder. A stage is made to fail once after it has recorded its rejections, then run again.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from csp_observatory import (cleaning, demo_data, fixtures, pipeline, pipeline_parse, pipeline_supply,
                             postcodes_sources, validation)
from csp_observatory.pipeline_supply import Manifest
from csp_observatory.schema_loading import schema_for

pytestmark = pytest.mark.unit

FEED = "police_recorded_crime"
PERIOD = "202608"


@pytest.fixture(scope="module")
def supply_files() -> dict[str, str]:
    reference = postcodes_sources.shipped_reference()
    return demo_data.make_police_recorded_crime(PERIOD, reference[~reference["terminated"]], n_offences=80).files


def _work_dir(root: Path, files: dict[str, str], metadata: str | None = None) -> str:
    """A work folder as decrypt_and_verify leaves it (with ``metadata`` as the supply's metadata file, if given)."""
    return fixtures.decrypted_work_area(root, schema_for(FEED), PERIOD, files, metadata)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["source_file", "source_row", "stage", "reason"]).reset_index(drop=True)


def _fail_once(monkeypatch, module, name: str, on_call: int) -> list[int]:
    """Make ``module.name`` raise on its ``on_call``-th call (once), after the earlier calls did their work."""
    real = getattr(module, name)
    calls = [0]

    def flaky(*args, **kwargs):
        calls[0] += 1
        if calls[0] == on_call:
            raise ConnectionError("simulated fault part-way through the stage")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, flaky)
    return calls


def test_a_retried_stage_records_each_rejected_row_once(tmp_path, monkeypatch, supply_files):
    clean_run = _work_dir(tmp_path / "clean", supply_files)
    pipeline.parse_and_validate([clean_run], fixtures.OfflineSettings())
    pipeline.clean([clean_run], fixtures.OfflineSettings())
    expected = _sorted(Manifest.read(clean_run).rejected())
    assert len(expected) > 0, "the demo supply has rows made bad on purpose"
    assert set(expected["stage"]) >= {"parse", "validate", "clean"}

    retried = _work_dir(tmp_path / "retried", supply_files)
    # parse_and_validate fails on its second file, after the first file's rejections are recorded.
    calls = _fail_once(monkeypatch, validation, "validate", on_call=2)
    with pytest.raises(ConnectionError):
        pipeline.parse_and_validate([retried], fixtures.OfflineSettings())
    assert not Manifest.read(retried).rejected().empty, "the failed try had recorded rejections"
    pipeline.parse_and_validate([retried], fixtures.OfflineSettings())          # Airflow's retry
    assert calls[0] > 2
    # clean fails on its last file, after the others' removed duplicates are recorded.
    _fail_once(monkeypatch, cleaning, "clean", on_call=len(supply_files))
    with pytest.raises(ConnectionError):
        pipeline.clean([retried], fixtures.OfflineSettings())
    pipeline.clean([retried], fixtures.OfflineSettings())

    got = _sorted(Manifest.read(retried).rejected())
    pd.testing.assert_frame_equal(got, expected)
    for name in supply_files:
        pd.testing.assert_frame_equal(Manifest.read(retried).read_frame("clean", name),
                                      Manifest.read(clean_run).read_frame("clean", name))
    # and a whole stage run twice over changes nothing either
    pipeline.clean([retried], fixtures.OfflineSettings())
    pd.testing.assert_frame_equal(_sorted(Manifest.read(retried).rejected()), expected)
    assert Manifest.read(retried).stages == Manifest.read(clean_run).stages


def test_orphan_links_are_flagged_row_by_row(tmp_path, supply_files):
    # Drop a few offences: their offenders and victims now point at no offence in the supply.
    lines = supply_files["offences"].splitlines(keepends=True)
    files = dict(supply_files, offences="".join(lines[:1] + lines[6:]))
    work = _work_dir(tmp_path, files)
    pipeline.parse_and_validate([work], fixtures.OfflineSettings())
    pipeline.clean([work], fixtures.OfflineSettings())
    m = Manifest.read(work)
    flagged = m.flagged()
    counts = m.stages["links"]
    assert counts["offenders"] + counts["victims"] > 0
    assert len(flagged) == counts["offenders"] + counts["victims"]
    assert set(flagged["stage"]) == {"link"} and flagged["source_row"].notna().all()
    assert all("matches no row of the offences file" in r for r in flagged["reason"])


def test_verdict_fails_unless_every_supply_is_green():
    green = {"supply_id": "f/202601", "status": "loaded", "level": "green", "reasons": [], "headline": "Loaded 5"}
    amber = {**green, "supply_id": "f/202602", "level": "amber", "reasons": ["1 row set aside (not loaded)"]}
    red = {**green, "supply_id": "f/202603", "status": "refused", "level": "red", "reasons": ["not signed"]}
    assert "f/202601: GREEN" in pipeline.verdict({"supplies": [green]})
    assert pipeline.verdict({"supplies": []}) == "no supply was ready"
    assert pipeline.verdict(None) == "no supply was ready"
    with pytest.raises(pipeline.SupplyHasProblems, match="1 row set aside"):
        pipeline.verdict({"supplies": [green, amber]})
    with pytest.raises(pipeline.SupplyNotLoaded, match="f/202603: RED"):
        pipeline.verdict({"supplies": [amber, red]})


def test_staging_work_folder_is_private(tmp_path, supply_files):
    work = Path(_work_dir(tmp_path, supply_files))
    pipeline.parse_and_validate([str(work)], fixtures.OfflineSettings())
    for sub in ("parsed", "rejected"):
        assert (work / sub).stat().st_mode & 0o077 == 0, sub
    shutil.rmtree(work)


def test_a_partner_layout_is_read_through_its_declared_mapping(tmp_path, supply_files):
    """The parse stage meets a force's own export with a declared layout (include/layouts/), row numbers intact."""
    data = Path(__file__).resolve().parents[1] / "data" / "layouts"
    runs = {}
    for variant in ("demo_force", "canonical"):
        files = dict(supply_files, offenders=(data / f"{variant}_offenders_202609.csv").read_text(encoding="utf-8"))
        work = _work_dir(tmp_path / variant, files)
        pipeline.parse_and_validate([work], fixtures.OfflineSettings())
        runs[variant] = Manifest.read(work)
    force, canonical = runs["demo_force"], runs["canonical"]
    assert force.ok and force.files["offenders"].rows_in_file == canonical.files["offenders"].rows_in_file == 8
    got, want = force.read_frame("parsed", "offenders"), canonical.read_frame("parsed", "offenders")
    pd.testing.assert_frame_equal(got[want.columns], want)
    problems = force.stages["validation"]["offenders"]["header_problems"]
    assert problems[0] == "read as the declared layout 'demo_force_offenders'"
    # the canonical copy is plaintext too: it lives beside the partner's file and goes with it
    assert (Path(force.work_dir) / "plain" / "offenders.canonical.csv").exists()


def test_a_file_in_no_known_layout_is_malformed_with_a_reason(tmp_path, supply_files, monkeypatch):
    files = dict(supply_files, offenders="Nominal,Sex\nN1,Male\n")
    work = _work_dir(tmp_path, files)
    refused = []
    monkeypatch.setattr(pipeline_parse, "_refuse", lambda m, s, c, f, reason, status, conn: (
        refused.append((f.name, reason)), setattr(m, "status", status)))
    monkeypatch.setattr(pipeline_supply, "_sftp", lambda s: __import__("contextlib").nullcontext())
    monkeypatch.setattr(pipeline_supply, "_db", lambda s: __import__("contextlib").nullcontext())
    pipeline.parse_and_validate([work], fixtures.OfflineSettings())
    assert [name for name, _ in refused] == ["offenders"]
    assert "match none of the layouts" in refused[0][1] and "Demo Constabulary" in refused[0][1]


def test_an_error_in_one_supply_never_stops_another(tmp_path, monkeypatch, supply_files):
    """Two supplies in one run: the one that breaks is marked failed with its stage; the other goes on."""
    good = _work_dir(tmp_path / "good", supply_files)
    bad = _work_dir(tmp_path / "bad", supply_files)
    for w in (good, bad):
        pipeline.parse_and_validate([w], fixtures.OfflineSettings())
    # the run takes the bad supply first, and its first file breaks
    _fail_once(monkeypatch, cleaning, "clean", on_call=1)
    pipeline.clean([bad, good], fixtures.OfflineSettings())
    monkeypatch.undo()
    assert Manifest.read(bad).status == "failed"
    assert "clean stage (ConnectionError)" in Manifest.read(bad).problems[-1]["reason"]
    assert Manifest.read(good).ok and "cleaning" in Manifest.read(good).stages
    # alone in its run, the same fault is raised, so that Airflow retries the stage
    monkeypatch.setattr(cleaning, "clean", lambda frame, ff: (_ for _ in ()).throw(ValueError("transient")))
    with pytest.raises(ValueError, match="transient"):
        pipeline.clean([good], fixtures.OfflineSettings())


def test_the_parse_stage_checks_the_metadata_file_against_the_files_it_read(tmp_path, supply_files):
    schema = schema_for(FEED)
    runs = {}
    for kind, text in {"matching": fixtures.make_metadata(schema, PERIOD, supply_files),
                       "miscounted": fixtures.make_metadata(schema, PERIOD, supply_files, records={"victims": 3}),
                       "unreadable": "agency: Local police force\n", "none": None}.items():
        work = _work_dir(tmp_path / kind, supply_files, text)
        pipeline.parse_and_validate([work], fixtures.OfflineSettings())
        runs[kind] = Manifest.read(work).stages["metadata"]
    assert runs["matching"]["mismatches"] == [] and runs["matching"]["refused"] == []
    assert runs["matching"]["file"] == f"prc_metadata_{PERIOD}.yaml.gpg"
    doc = runs["matching"]["document"]
    assert doc["caveats"] and "supplier" not in doc     # the manifest outlives the plaintext: no contact details
    assert [m["kind"] for m in runs["miscounted"]["mismatches"]] == ["record_count"]
    assert "victims file has 3 records" in runs["miscounted"]["mismatches"][0]["message"]
    assert runs["unreadable"]["document"] is None and any("supplier is missing" in p
                                                          for p in runs["unreadable"]["refused"])
    assert runs["none"] == {"file": None, "expected": f"prc_metadata_{PERIOD}.yaml.gpg", "supplied": False,
                            "refused": [], "document": None, "mismatches": []}


def test_a_retried_parse_stage_checks_the_metadata_once(tmp_path, monkeypatch, supply_files):
    text = fixtures.make_metadata(schema_for(FEED), PERIOD, supply_files, records={"offences": 1})
    clean_run = _work_dir(tmp_path / "clean", supply_files, text)
    pipeline.parse_and_validate([clean_run], fixtures.OfflineSettings())
    retried = _work_dir(tmp_path / "retried", supply_files, text)
    _fail_once(monkeypatch, validation, "validate", on_call=3)
    with pytest.raises(ConnectionError):
        pipeline.parse_and_validate([retried], fixtures.OfflineSettings())
    pipeline.parse_and_validate([retried], fixtures.OfflineSettings())
    assert Manifest.read(retried).stages["metadata"] == Manifest.read(clean_run).stages["metadata"]
    assert len(Manifest.read(retried).stages["metadata"]["mismatches"]) == 1


def test_the_metadata_files_plaintext_goes_with_the_rest(tmp_path, supply_files):
    work = _work_dir(tmp_path, supply_files, fixtures.make_metadata(schema_for(FEED), PERIOD, supply_files))
    m = Manifest.read(work)
    assert m.all_files[-1] == m.metadata and Manifest.read(work).metadata.plaintext_path
    pipeline_supply._delete_plaintext(m)
    assert sorted(p.name for p in Path(work).iterdir()) == ["manifest.json"]
    assert m.metadata.plaintext_path is None
