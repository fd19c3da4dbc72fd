"""The staging store (staging.py): a supply's work area on a local folder or on object storage (fsspec's in-memory
filesystem stands in for S3 here: same code path, no network), and the stages running on either."""
from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from upath import UPath

from csp_observatory import config, demo_data, fixtures, pipeline, pipeline_supply, postcodes_sources, staging
from csp_observatory.pipeline_supply import Manifest, SupplyFile

pytestmark = pytest.mark.unit

FEED = "police_recorded_crime"
PERIOD = "202608"


@pytest.fixture()
def remote() -> UPath:
    """A fresh folder of a remote (non-local) store; removed after the test."""
    loc = staging.location(f"memory://csp-test-{secrets.token_hex(6)}/staging")
    yield loc
    staging.remove(loc)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_locations_are_local_paths_unless_the_url_names_another_filesystem(tmp_path):
    assert staging.location(str(tmp_path)) == tmp_path and staging.is_local(staging.location(str(tmp_path)))
    assert staging.location(f"file://{tmp_path}/x") == tmp_path / "x"
    mem = staging.location("memory://bucket/prefix")
    assert not staging.is_local(mem) and mem.protocol == "memory"
    # a location's text gives the same location back (it travels in XCom and in the manifest)
    assert staging.location(str(mem / "a")) == mem / "a"


def test_the_store_root_is_the_url_when_set_else_the_local_staging_dir(tmp_path):
    class S:
        staging_dir = tmp_path / "local"
        staging_url = None

    assert staging.supply_area(S, "f", "202601") == tmp_path / "local" / "f" / "202601" / "work"
    S.staging_url = "memory://shared/staging"
    assert str(staging.supply_area(S, "f", "202601")) == "memory://shared/staging/f/202601/work"


def test_a_local_store_writes_private_files_whole(tmp_path):
    target = tmp_path / "area" / "sub" / "frame.parquet"
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", None]})
    staging.write_frame(target, frame)
    pd.testing.assert_frame_equal(staging.read_frame(target), frame)
    assert _mode(target) == 0o600 and _mode(target.parent) == 0o700
    staging.write_text(tmp_path / "area" / "m.json", "{}")
    assert _mode(tmp_path / "area" / "m.json") == 0o600
    # no temporary file is left beside what was written
    assert sorted(p.name for p in (tmp_path / "area").rglob("*")) == ["frame.parquet", "m.json", "sub"]


def test_a_remote_store_round_trips_text_and_frames(remote):
    frame = pd.DataFrame({"n": pd.array([1, None], dtype="Int64"), "s": pd.array(["a", "b"], dtype="string")})
    staging.write_frame(remote / "parsed" / "offences.parquet", frame)
    staging.write_text(remote / "manifest.json", '{"k": 1}')
    pd.testing.assert_frame_equal(staging.read_frame(str(remote / "parsed" / "offences.parquet")), frame)
    assert staging.read_text(str(remote / "manifest.json")) == '{"k": 1}'
    assert [p.name for p in staging.files_in(remote / "parsed", "*.parquet")] == ["offences.parquet"]
    assert staging.files_in(remote / "nothing", "*.parquet") == []
    staging.clear(remote, keep=("manifest.json",))
    assert staging.exists(remote / "manifest.json") and not staging.exists(remote / "parsed" / "offences.parquet")


def test_a_remote_files_local_copy_lives_in_this_workers_tmpdir_only_while_it_is_used(remote, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "worker-tmp"))
    (tmp_path / "worker-tmp").mkdir()
    staging.write_bytes(remote / "plain" / "offences.csv", b"a,b\n1,2\n")
    with staging.local_file(remote / "plain" / "offences.csv") as copy:
        assert copy.read_bytes() == b"a,b\n1,2\n"
        assert copy.is_relative_to(tmp_path / "worker-tmp") and _mode(copy) == 0o600 and _mode(copy.parent) == 0o700
        copy.with_name("offences.canonical.csv").write_text("derived")    # a tool's by-product goes with it
    assert list((tmp_path / "worker-tmp").iterdir()) == []


def test_a_remote_output_is_copied_up_only_when_the_tool_succeeds(remote, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with staging.local_output(remote / "plain" / "ok.csv") as out:
        out.write_text("verified")
    assert staging.read_text(remote / "plain" / "ok.csv") == "verified"
    with pytest.raises(RuntimeError), staging.local_output(remote / "plain" / "refused.csv") as out:
        out.write_text("partial plaintext")
        raise RuntimeError("bad signature")
    assert not staging.exists(remote / "plain" / "refused.csv")
    assert list(tmp_path.iterdir()) == []


def test_adopting_a_download_moves_it_off_the_workers_disk(remote, tmp_path):
    local = tmp_path / "incoming" / "prc_offences_202608.csv.gpg"
    local.parent.mkdir()
    local.write_bytes(b"\x85encrypted")
    where = staging.adopt(local, remote / "encrypted" / local.name)
    assert not local.exists() and staging.read_bytes(where) == b"\x85encrypted"
    second = tmp_path / "second.gpg"
    second.write_bytes(b"x")
    kept = staging.adopt(second, tmp_path / "store" / "encrypted" / "second.gpg")
    assert not second.exists() and _mode(Path(kept)) == 0o600 and _mode(Path(kept).parent) == 0o700


def _work_area(area, files: dict[str, str]) -> str:
    """A supply's work area as decrypt_and_verify leaves it, in whichever store ``area`` is in."""
    m = Manifest(feed=FEED, period=PERIOD, work_dir=str(area), files={})
    for name, text in files.items():
        plain = area / "plain" / f"{name}.csv"
        staging.write_text(plain, text)
        m.files[name] = SupplyFile(name=name, remote_name=f"prc_{name}_{PERIOD}.csv.gpg", sha256=name * 8,
                                   size=len(text), encrypted_path=str(area / "encrypted" / f"{name}.gpg"),
                                   plaintext_path=str(plain))
        staging.write_bytes(area / "encrypted" / f"{name}.gpg", b"ciphertext")
    m.save()
    return str(area)


def test_the_stages_give_the_same_result_on_object_storage_as_on_a_local_folder(remote, tmp_path, monkeypatch):
    """parse_and_validate and clean on a work area in a remote store: same frames and rejections as on a local
    folder, nothing left on this worker's disk, and _delete_plaintext leaves only the manifest."""
    reference = postcodes_sources.shipped_reference()
    files = demo_data.make_police_recorded_crime(PERIOD, reference[~reference["terminated"]], n_offences=40).files
    worker_tmp = tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(worker_tmp))
    runs = {}
    for kind, area in (("local", tmp_path / "local" / "work"), ("remote", remote / FEED / PERIOD / "work")):
        work = _work_area(area, files)
        pipeline.parse_and_validate([work], fixtures.OfflineSettings())
        pipeline.clean([work], fixtures.OfflineSettings())
        runs[kind] = Manifest.read(work)
    local, far = runs["local"], runs["remote"]
    assert far.ok and far.stages["cleaning"] == local.stages["cleaning"]
    assert far.stages["validation"].keys() == local.stages["validation"].keys()
    for name in files:
        pd.testing.assert_frame_equal(far.read_frame("clean", name), local.read_frame("clean", name))
    pd.testing.assert_frame_equal(far.rejected(), local.rejected())
    assert len(far.rejected()) > 0                       # the fixture's bad rows were set aside in both
    assert list(worker_tmp.iterdir()) == []              # the plaintext copies went when each task was done
    pipeline_supply._delete_plaintext(far)
    assert [p.name for p in far.path.iterdir()] == ["manifest.json"]
    assert all(f.plaintext_path is None for f in far.all_files)


def test_stage_queues_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("CSP_STAGE_QUEUES", "collect=ingest, decrypt_and_verify = secure,*=general")
    assert config.stage_queue("collect", "default") == "ingest"
    assert config.stage_queue("decrypt_and_verify", "default") == "secure"
    assert config.stage_queue("load", "default") == "general"
    monkeypatch.setenv("CSP_STAGE_QUEUES", "")
    assert config.stage_queue("load", "default") == "default"
    with pytest.raises(ValueError, match="task=queue"):
        config.stage_queues("collect")
    assert os.environ["CSP_STAGE_QUEUES"] == ""


def test_frames_keep_their_dtypes_and_a_parquet_frame_left_by_an_older_run_is_still_read(tmp_path):
    frame = pd.DataFrame({"s": pd.array(["a", None, "c"], dtype="string"), "i": pd.array([1, None, 3], dtype="Int64"),
                          "f": pd.array([1.5, None, 2.0], dtype="Float64"), "d": pd.to_datetime(["2026-01-02"] * 3),
                          "b": [True, False, True]}, index=[7, 8, 9])
    staging.write_frame(tmp_path / "now.arrow", frame)
    assert (tmp_path / "now.arrow").read_bytes()[:6] == b"ARROW1"
    pd.testing.assert_frame_equal(staging.read_frame(tmp_path / "now.arrow"), frame.reset_index(drop=True))
    frame.to_parquet(tmp_path / "before.parquet", index=False)
    pd.testing.assert_frame_equal(staging.read_frame(tmp_path / "before.parquet"), frame.reset_index(drop=True))


def _mapped(path: Path) -> bool:
    """Whether this process maps the file (Linux's /proc/self/maps names a mapped file's path)."""
    return any(line.rstrip().endswith(str(path)) for line in Path("/proc/self/maps").read_text().splitlines())


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc/self/maps")
def test_a_local_frame_is_read_mapped_and_outlives_its_file_being_replaced_or_removed(tmp_path):
    import gc

    where = tmp_path / "frame.arrow"
    written = pd.DataFrame({"name": pd.Series([f"text {i}" for i in range(10_000)], dtype="string"),
                            "n": pd.Series(range(10_000), dtype="Int64")})
    staging.write_frame(where, written)
    frame = staging.read_frame(where)
    pd.testing.assert_frame_equal(frame, written)
    assert _mapped(where)                   # the text is the file's pages, not a copy on the heap
    # A stage's retry writes the frame again: a new file in its place, the frame read before unchanged; and the
    # work area removed after the load leaves a frame still in use readable.
    staging.write_frame(where, written.assign(name="other"))
    pd.testing.assert_frame_equal(frame, written)
    where.unlink()
    pd.testing.assert_frame_equal(frame, written)
    del frame
    gc.collect()
    assert not _mapped(where) and not any("frame.arrow" in line for line in
                                          Path("/proc/self/maps").read_text().splitlines())


def test_a_supply_in_flight_across_the_upgrade_reads_its_parquet_frames_and_never_counts_rows_twice(tmp_path):
    """A work area written before frames were Arrow IPC holds ``*.parquet``: the next stage still reads them, and a
    step that records its rows again replaces the old file rather than adding to it."""
    m = Manifest(feed=FEED, period=PERIOD, work_dir=str(tmp_path), files={})
    parsed = pd.DataFrame({"x": [1, 2]})
    (tmp_path / "parsed").mkdir()
    parsed.to_parquet(tmp_path / "parsed" / "offences.parquet", index=False)
    pd.testing.assert_frame_equal(m.read_frame("parsed", "offences"), parsed)
    old = pd.DataFrame({"source_file": ["offences"], "source_row": pd.array([3], dtype="Int64"),
                        "reason": ["old"], "stage": ["validate"]})
    (tmp_path / "rejected").mkdir()
    old.to_parquet(tmp_path / "rejected" / "validate.offences.parquet", index=False)
    assert m.rejected()["reason"].tolist() == ["old"]
    m.set_rejected("validate", "offences", old.assign(reason="new"))
    assert m.rejected()["reason"].tolist() == ["new"]
    assert sorted(p.name for p in (tmp_path / "rejected").iterdir()) == ["validate.offences.arrow"]
    m.write_frame("parsed", "offences", parsed.assign(x=[5, 6]))
    assert m.read_frame("parsed", "offences")["x"].tolist() == [5, 6]
    assert not (tmp_path / "parsed" / "offences.parquet").exists()
