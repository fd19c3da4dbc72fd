"""Wall time of the clean, geocode and sanitise tasks as the DAG runs them (``pipeline_geo``), on a staged supply.

Unlike ``stages.py`` (the stage functions on frames in memory), this times each task's whole body: reading the
previous task's staged Arrow frames, the work, writing its own frames and rejected/flagged rows, the manifest.
The postcode reference and the gazetteer are read from PostGIS as in a run (the settings' ``database_url``).

    # once: generate N offences and run parse_and_validate into DIR/base (GX; about a minute at 1M)
    .venv/bin/python benchmarks/geo_tasks.py prepare --offences 1000000 --dir /tmp/geo_bench
    # a tree's three tasks on a fresh copy of DIR/base, in DIR/<label> (the frames are kept for compare)
    .venv/bin/python benchmarks/geo_tasks.py run --dir /tmp/geo_bench --label new
    .venv/bin/python benchmarks/geo_tasks.py run --dir /tmp/geo_bench --label old --plugins /tmp/g_old/plugins
    # the two runs' staged frames, rows set aside and flagged, and stage summaries must be equal
    .venv/bin/python benchmarks/geo_tasks.py compare --dir /tmp/geo_bench old new

``--profile`` writes a cProfile file per task beside the run (``<label>/<task>.prof``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

_PLUGINS = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--plugins"),
                str(Path(__file__).resolve().parents[1] / "plugins"))
sys.path.insert(0, str(Path(_PLUGINS).resolve()))

import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402

from csp_observatory import demo_data, fixtures, pipeline, postcodes_sources  # noqa: E402
from csp_observatory.config import load_settings  # noqa: E402
from csp_observatory.pipeline_supply import Manifest  # noqa: E402
from csp_observatory.schema_loading import schema_for  # noqa: E402

PERIOD = "202609"
TASKS = ("clean", "geocode", "sanitise")


def prepare(folder: Path, n: int) -> None:
    """Generate the supply and run parse_and_validate into ``folder/base/work``."""
    work = folder / "base" / "work"
    if work.exists():
        shutil.rmtree(work.parent)
    reference = postcodes_sources.shipped_reference()
    t = time.perf_counter()
    files = demo_data.make_police_recorded_crime(PERIOD, reference[~reference["terminated"]], n_offences=n).files
    print(f"generated {n:,} offences in {time.perf_counter() - t:.1f} s", flush=True)
    fixtures.decrypted_work_area(work.parent, schema_for("police_recorded_crime"), PERIOD, files)
    t = time.perf_counter()
    pipeline.parse_and_validate([str(work)], _settings(folder / "base"))
    m = Manifest.read(str(work))
    print(f"parse_and_validate {time.perf_counter() - t:.1f} s; status {m.status}", flush=True)


def _settings(where: Path):  # noqa: ANN202 (a Settings of whichever tree is imported)
    # staging_dir's parent holds the displacement map cache: one per run folder, built in its first sanitise
    return dataclasses.replace(load_settings(), staging_dir=where / "staging")


def run(folder: Path, label: str, profile: bool, map_cached: bool) -> dict[str, float]:
    """Copy ``base`` to ``label`` and time the three tasks on it."""
    if label in ("base", "maps"):
        raise SystemExit(f"--label {label!r} names the prepared supply's own folder: choose another label")
    dest = folder / label
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(folder / "base", dest)
    manifest = dest / "work" / "manifest.json"      # the copy's own work area, not base's
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "work_dir": str(dest / "work")}))
    settings = _settings(folder / "maps" if map_cached else dest)
    work = [str(dest / "work")]
    times: dict[str, float] = {}
    for task in TASKS:
        fn = getattr(pipeline, task)
        t, cpu = time.perf_counter(), time.process_time()
        if profile:
            import cProfile
            cProfile.runctx("fn(work, settings)", globals(), {"fn": fn, "work": work, "settings": settings},
                            str(dest / f"{task}.prof"))
        else:
            fn(work, settings)
        times[task] = time.perf_counter() - t
        times[f"{task}_cpu"] = time.process_time() - cpu
    m = Manifest.read(work[0])
    rows = sum(len(m.read_frame("parsed", f)) for f in m.files)
    print(f"{label} ({_PLUGINS}): " + ", ".join(
        f"{k} {v:.2f} s ({v / rows * 1e6:.2f} s/M rows, CPU {times[k + '_cpu']:.2f} s)"
        for k, v in times.items() if k in TASKS) +
        f"; {rows:,} rows; status {m.status}", flush=True)
    print("JSON " + json.dumps({"label": label, "rows": rows, **times}), flush=True)
    return times


def compare(folder: Path, a: str, b: str) -> None:
    """Assert the two runs' staged frames, rows set aside and flagged, and stage summaries are equal."""
    ma, mb = Manifest.read(str(folder / a / "work")), Manifest.read(str(folder / b / "work"))
    for stage in ("clean", "geocoded", "sanitised"):
        for name in ma.files:
            fa, fb = ma.read_frame(stage, name), mb.read_frame(stage, name)
            pd.testing.assert_frame_equal(fa, fb, check_exact=True)
            # and the files' Arrow schemas (types, pandas' dtypes in the metadata), whatever their compression
            sa, sb = (pa.ipc.open_file(str(m.frame_path(stage, name))).schema for m in (ma, mb))
            assert sa.equals(sb, check_metadata=True), (stage, name)
            print(f"  {stage}/{name}: {len(fa):,} rows x {fa.shape[1]} columns equal (dtypes included)")
    pd.testing.assert_frame_equal(ma.rejected(), mb.rejected(), check_exact=True)
    pd.testing.assert_frame_equal(ma.flagged(), mb.flagged(), check_exact=True)
    print(f"  rejected {len(ma.rejected()):,} rows and flagged {len(ma.flagged()):,} rows equal")
    assert ma.stages == mb.stages, "stage summaries differ"
    assert (ma.status, ma.problems) == (mb.status, mb.problems)
    print(f"  stage summaries equal ({', '.join(ma.stages)}); status {ma.status}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=("prepare", "run", "compare"))
    ap.add_argument("labels", nargs="*", help="compare: the two run labels")
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--offences", type=int, default=1_000_000)
    ap.add_argument("--label", default="new")
    ap.add_argument("--plugins", default=None, help="the plugins folder to import (default: this checkout's)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--map-cached", action="store_true",
                    help="keep the displacement map in DIR/maps across runs (as a run after the first one does)")
    args = ap.parse_intermixed_args()
    if args.action == "prepare":
        prepare(args.dir, args.offences)
    elif args.action == "run":
        run(args.dir, args.label, args.profile, args.map_cached)
    else:
        compare(args.dir, *args.labels)


if __name__ == "__main__":
    main()
