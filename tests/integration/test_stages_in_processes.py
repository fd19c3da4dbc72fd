"""A large supply's files go through each stage in processes of their own (``file_workers.py``, issue 9): what the
stages stage and record must be exactly what they give in the task's own process.

The same supply (with bad rows of every kind: set aside at parse, validate and clean, flagged at geocode) runs
parse and validate, clean, geocode and sanitise twice, against the tests' PostGIS reference: once with every file in
the task's process (``file_workers: 1``), once with the files in two forked processes whatever their size
(``file_workers: 2``, ``file_workers_min_mb: 0``). Every staged frame, every row set aside or flagged, and the
manifest's record of every stage must be the same.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from csp_observatory import fixtures, pipeline, postcodes_sources, sanitising_checks
from csp_observatory.pipeline_supply import Manifest
from csp_observatory.schema_loading import schema_for

pytestmark = pytest.mark.integration

FEED = "police_recorded_crime"
PERIOD = "209407"
STAGES = (pipeline.parse_and_validate, pipeline.clean, pipeline.geocode, pipeline.sanitise)
FRAMES = ("parsed", "clean", "geocoded", "sanitised")


@pytest.fixture(scope="module")
def supply() -> fixtures.FixtureSupply:
    return fixtures.make_supply(schema_for(FEED), PERIOD, postcodes_sources.shipped_reference(), n=400)


def _run(root: Path, supply: fixtures.FixtureSupply, settings, caplog) -> tuple[Manifest, list[str]]:
    work = fixtures.decrypted_work_area(root, schema_for(FEED), PERIOD, supply.files, supply.metadata)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="csp_observatory.file_workers"):
        for stage in STAGES:
            stage([work], settings)
    pools = [r.getMessage() for r in caplog.records if r.name == "csp_observatory.file_workers"
             and " processes (largest first" in r.getMessage()]
    return Manifest.read(work), pools


def _sorted(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.sort_values(["source_file", "source_row", "stage", "reason"]).reset_index(drop=True)


@pytest.mark.usefixtures("reference_loaded")
def test_the_stages_stage_and_record_the_same_whether_the_files_share_a_process_or_not(settings, supply, tmp_path,
                                                                                      caplog):
    one, one_pools = _run(tmp_path / "one", supply, dataclasses.replace(settings, file_workers=1), caplog)
    split, split_pools = _run(tmp_path / "split", supply,
                              dataclasses.replace(settings, file_workers=2, file_workers_min_mb=0), caplog)
    # each stage really split its files: three files in two processes, four times; and never when told not to
    assert one_pools == [] and len(split_pools) == len(STAGES), split_pools
    assert all(p.startswith("3 files in 2 processes") for p in split_pools), split_pools
    children = {int(m) for r in caplog.records for m in re.findall(r"in process (\d+) \(", r.getMessage())}
    assert children and os.getpid() not in children

    assert split.status == one.status == "collected" and split.problems == one.problems == []
    assert {n: f.rows_in_file for n, f in split.files.items()} == {n: f.rows_in_file for n, f in one.files.items()}
    assert split.stages == one.stages
    for stage in FRAMES:
        for name in one.files:
            pd.testing.assert_frame_equal(split.read_frame(stage, name), one.read_frame(stage, name),
                                          check_exact=True, obj=f"{stage}/{name}")
    rejected, flagged = one.rejected(), one.flagged()
    # the supply's bad rows were met, so the comparison covers the rows set aside and flagged
    assert set(rejected["stage"]) >= {"parse", "validate", "clean"} and len(flagged) > 0
    pd.testing.assert_frame_equal(_sorted(split.rejected()), _sorted(rejected))
    pd.testing.assert_frame_equal(_sorted(split.flagged()), _sorted(flagged))


@pytest.mark.usefixtures("reference_loaded")
def test_an_error_in_one_files_process_stops_the_stage_with_its_reason(settings, supply, tmp_path, monkeypatch):
    real = sanitising_checks.check_sanitised

    def breach_in_victims(frame, displacement, feed_file):
        return ["victims row 3: a house number left in the address"] if feed_file.name == "victims" \
            else real(frame, displacement, feed_file)

    # patched here, before the stage forks: the child processes run the patched check
    monkeypatch.setattr(sanitising_checks, "check_sanitised", breach_in_victims)
    split = dataclasses.replace(settings, file_workers=2, file_workers_min_mb=0)
    work = fixtures.decrypted_work_area(tmp_path, schema_for(FEED), PERIOD, supply.files, supply.metadata)
    for stage in STAGES[:-1]:
        stage([work], split)
    with pytest.raises(RuntimeError, match="victims: sanitised output breaks Appendix 1: .*a house number"):
        pipeline.sanitise([work], split)
    assert not Manifest.read(work).frame_path("sanitised", "victims").exists()
