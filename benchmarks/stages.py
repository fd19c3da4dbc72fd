"""Per-stage wall time, rows/s and peak RSS of parse, clean, link, geocode and sanitise on generated offences.

Where a stage keeps its old per-row path as the reference (parse: ``parsing.parse_records_slow``; address
stripping: ``addresses.sanitise_address`` per row), both run in the same process on the same input, the outputs
are compared, and the ratio is printed. Peak RSS is the process's maximum so far after each stage
(``resource.getrusage``), so it only grows down the list.

Input: a police recorded crime supply from ``demo_data`` (offences, offenders, victims), generated once into
``--dir`` and reused (generation at 100k offences takes about half a minute). The postcode reference is the
shipped Calderdale extract (``postcodes_sources.shipped_reference``); ``--national`` adds the national-size synthetic
reference for the displacement map build and its cache.

    .venv/bin/python benchmarks/stages.py --offences 100000 --dir /tmp/csp_stages
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

# --plugins DIR: time another tree's stages (e.g. `git archive <commit> plugins | tar -x -C DIR`) for a baseline
_PLUGINS = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--plugins"),
                str(Path(__file__).resolve().parents[1] / "plugins"))
sys.path.insert(0, str(Path(_PLUGINS).resolve()))

from csp_observatory import (addresses, cleaning, demo_data, gazetteer, geocoding, parsing,  # noqa: E402
                             postcodes_sources, postcodes_synthetic, sanitising, sanitising_checks,
                             sanitising_displacement)
from csp_observatory.schema import SCHEMA_DIR  # noqa: E402
from csp_observatory.schema_loading import load_schema  # noqa: E402


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label: str, rows: int, fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run once, print wall time, rows/s and the peak RSS so far."""
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    print(f"  {label:<44} {dt:8.3f} s  {rows / dt if dt else float('inf'):>12,.0f} rows/s  "
          f"peak RSS {_rss_mb():7.0f} MB", flush=True)
    return out, dt


def _ratio(label: str, old: float, new: float) -> None:
    print(f"  -> {label}: old {old:.3f} s / new {new:.3f} s = {old / new if new else float('inf'):.1f}x")


def _supply(n: int, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.csv" for name in ("offences", "offenders", "victims")}
    if not all(p.exists() for p in paths.values()):
        t = time.perf_counter()
        supply = demo_data.make_police_recorded_crime("202609", postcodes_sources.shipped_reference(), n_offences=n)
        for name, text in supply.files.items():
            paths[name].write_text(text)
        print(f"generated {n} offences in {time.perf_counter() - t:.1f} s into {folder}")
    return paths


def _distinct_addresses(n: int, skip_old: bool) -> None:
    """Address stripping where texts hardly repeat (a real force's year): the old per-(text, postcode) cache
    almost never hits, the skeletons still repeat."""
    rng = np.random.default_rng(9)
    first = np.array(["Acacia", "Beech", "Cedar", "Church", "Mill", "Moor", "North", "Park", "Queens", "Station",
                      "Victoria", "Albert", "King", "Hill", "West", "Bank", "Spring", "Green", "High", "Low"])
    second = np.array(["", "field ", "side ", "wood ", "croft ", "royd ", "holme ", "ley ", "bridge ", "thorpe "])
    kind = np.array(["Road", "Street", "Lane", "Avenue", "Close", "Drive", "Terrace", "Way", "Court", "Grove"])
    towns = np.array(["Halifax", "Brighouse", "Elland", "Todmorden", "Hebden Bridge", "Sowerby Bridge"])
    street = pd.Series(first[rng.integers(0, 20, n)]) + pd.Series(second[rng.integers(0, 10, n)]).str.strip() + \
        " " + pd.Series(kind[rng.integers(0, 10, n)])
    number = pd.Series(rng.integers(1, 400, n)).astype(str) + pd.Series(np.where(rng.random(n) < 0.1, "A", ""))
    flat = pd.Series(np.where(rng.random(n) < 0.2, "Flat " + pd.Series(rng.integers(1, 30, n)).astype(str) + ", ",
                              ""))
    pcs = pd.Series([f"HX{a} {b}{c}{d}" for a, b, c, d in zip(
        rng.integers(1, 8, n), rng.integers(0, 10, n), rng.choice(list("ABDEFGHJLNPQRSTUWXYZ"), n),
        rng.choice(list("ABDEFGHJLNPQRSTUWXYZ"), n))], dtype="string")
    texts = (flat + number + " " + street + ", " + pd.Series(towns[rng.integers(0, 6, n)])).astype("string")
    # a third carry their postcode in the text (replaced by the sanitised one)
    texts = texts.where(rng.random(n) < 0.66, texts + " " + pcs.str.replace(" ", "", regex=False))
    print(f"\n{n:,} generated addresses: {texts.nunique():,} distinct texts, "
          f"{len(set(zip(texts, pcs))):,} distinct (text, postcode) pairs")
    new, dt = timed("sanitise_addresses", n, lambda: addresses.sanitise_addresses(texts, postcodes=pcs))
    if not skip_old:
        old, dt_old = timed("sanitise_address per row, cached per pair (old)", n, lambda: _old_addresses(texts, pcs))
        pd.testing.assert_series_equal(old, new, check_names=False)
        _ratio("address stripping, distinct addresses", dt_old, dt)


def _old_addresses(texts: pd.Series, pcs: pd.Series) -> pd.Series:
    """The previous sanitise_addresses: one call per distinct (text, postcode) pair."""
    cache: dict[tuple[Any, Any], Any] = {}
    out = []
    for pair in zip(texts.astype(object).where(texts.notna(), None), pcs.astype(object).where(pcs.notna(), None)):
        if pair not in cache:
            cache[pair] = addresses.sanitise_address(pair[0], pair[1])
        out.append(cache[pair])
    return pd.Series(out, index=texts.index, dtype="string")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--offences", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, default=None, help="where the generated CSVs are kept and reused")
    ap.add_argument("--skip-old", action="store_true", help="do not run the old per-row reference paths")
    ap.add_argument("--address-rows", type=int, default=0,
                    help="also strip this many mostly distinct generated addresses, each with its own postcode")
    ap.add_argument("--plugins", default=None, help="the plugins folder to import (default: this checkout's)")
    ap.add_argument("--national", action="store_true",
                    help="also build (and cache) the displacement map of a national-size synthetic reference")
    args = ap.parse_args()
    folder = args.dir or Path(tempfile.gettempdir()) / f"csp_stages_{args.offences}"
    paths = _supply(args.offences, folder)
    schema = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")
    reference = postcodes_sources.shipped_reference()
    places = gazetteer.shipped_places()
    print(f"nproc={len(__import__('os').sched_getaffinity(0))}; pandas {pd.__version__}; plugins {_PLUGINS}")
    baseline = not hasattr(sanitising, "cached_displacement")      # a tree from before issue 9
    if baseline:
        args.skip_old, args.national = True, False
    totals: dict[str, float] = {}

    for name, path in paths.items():
        feed_file = schema.file(name)
        size = path.stat().st_size
        print(f"\n{name}: {path.name} ({size / 1e6:.1f} MB)")
        parsed, dt = timed("parse", path.read_bytes().count(b"\n") - 1,
                           lambda: parsing.parse_csv(path, feed_file))
        rows = len(parsed.frame)
        totals["parse"] = totals.get("parse", 0) + dt
        if not args.skip_old:
            old, dt_old = timed("parse (old per-row reference)", rows,
                                lambda: parsing.parse_csv(path, feed_file, columnar=False))
            pd.testing.assert_frame_equal(old.frame, parsed.frame)
            pd.testing.assert_frame_equal(old.rejected, parsed.rejected)
            _ratio("parse", dt_old, dt)
        cleaned, dt = timed("clean", rows, lambda: cleaning.clean(parsed.frame, feed_file))
        totals["clean"] = totals.get("clean", 0) + dt
        geo, dt = timed("geocode", rows, lambda: geocoding.geocode(cleaned.frame, feed_file, reference, places))
        totals["geocode"] = totals.get("geocode", 0) + dt
        key = (schema.household_threshold, schema.displacement)
        pmap, dt = timed("build displacement map", rows,
                         lambda: sanitising_displacement.build_displacement(reference, *key))
        result, dt = timed("sanitise", rows, lambda: sanitising.sanitise(geo.frame, feed_file, pmap))
        totals["sanitise"] = totals.get("sanitise", 0) + dt
        problems, dt = timed("check_sanitised", rows, lambda: sanitising_checks.check_sanitised(result.frame, pmap,
                                                                                        feed_file))
        totals["check_sanitised"] = totals.get("check_sanitised", 0) + dt
        assert not problems, problems
        address = feed_file.location.address
        if address:
            texts = geo.frame[address]
            pcs = result.frame["sanitised_postcode"]
            new, dt = timed("  of which: sanitise_addresses", rows,
                            lambda: addresses.sanitise_addresses(texts, postcodes=pcs))
            if not args.skip_old:
                old, dt_old = timed("  sanitise_address per row (old reference)", rows, lambda: pd.Series(
                    [addresses.sanitise_address(t, p) for t, p in zip(
                        texts.astype(object).where(texts.notna(), None),
                        pcs.astype(object).where(pcs.notna(), None))], index=texts.index, dtype="string"))
                pd.testing.assert_series_equal(old, new, check_names=False)
                _ratio("address stripping", dt_old, dt)
    print("\ntotals over the three files (s): " + ", ".join(f"{k} {v:.2f}" for k, v in totals.items()))
    print(f"peak RSS {_rss_mb():.0f} MB")

    if args.address_rows and not baseline:
        _distinct_addresses(args.address_rows, args.skip_old)

    if args.national:
        ref = postcodes_synthetic.national_synthetic_reference()
        with tempfile.TemporaryDirectory() as cache:
            _, built = timed("national map: build and cache", len(ref),
                             lambda: sanitising_displacement.cached_displacement(ref, 4, "nearest", Path(cache)))
            pmap, hit = timed("national map: from the cache", len(ref),
                              lambda: sanitising_displacement.cached_displacement(ref, 4, "nearest", Path(cache)))
            _ratio("displacement map", built, hit)
            rng = np.random.default_rng(1)
            n = 1_000_000
            pcs = pd.Series(ref["postcode"].to_numpy(object)[rng.integers(0, len(ref), n)], dtype="string")
            frame = pd.DataFrame({"geocode_method": pd.Series("postcode", index=range(n), dtype="string"),
                                  "geo_easting": np.nan, "geo_northing": np.nan, "geo_postcode": pcs})
            ff = schema.file("offences")
            bare = frame.assign(**{c: pd.NA for c in ff.field_names if c not in frame})
            bare[ff.location.address] = pd.Series(pd.NA, index=bare.index, dtype="string")
            timed("sanitise 1M point records (no address text)", n,
                  lambda: sanitising.sanitise(bare[["geocode_method", "geo_easting", "geo_northing",
                                                     "geo_postcode"]], ff, pmap))
            timed("the same again", n,
                  lambda: sanitising.sanitise(bare[["geocode_method", "geo_easting", "geo_northing",
                                                     "geo_postcode"]], ff, pmap))


if __name__ == "__main__":
    main()
