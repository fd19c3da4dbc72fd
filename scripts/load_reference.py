#!/usr/bin/env python3
"""Load the postcode reference and gazetteer into PostGIS.

With no source options it loads what ships in include/ (Calderdale Code-Point Open with SYNTHETIC
households, ONSPD AB terminated postcodes, the SYNTHETIC Calderdale places). Examples:

    scripts/load_reference.py
    scripts/load_reference.py --codepoint data/CSV/*.csv --onspd ONSPD.csv --households postcode_estimates.csv
    scripts/load_reference.py --places os_open_names/*.csv --keep-postcodes
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from csp_observatory import gazetteer, postcodes_postgis, postcodes_sources, postcodes_synthetic  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the reference frames and load them; prints counts."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=os.environ.get("CSP_DATABASE_URL"),
                    help="PostgreSQL URL (default: CSP_DATABASE_URL, else the observatory config)")
    ap.add_argument("--codepoint", nargs="*", default=[], type=Path, help="OS Code-Point Open CSV files")
    ap.add_argument("--onspd", nargs="*", default=[], type=Path, help="ONSPD CSV files (live and terminated)")
    ap.add_argument("--households", type=Path, help="Census postcode household estimates CSV")
    ap.add_argument("--synthetic-households", type=int, metavar="SEED",
                    help="generate SYNTHETIC household counts with this seed (demos and benchmarks only)")
    ap.add_argument("--places", nargs="*", default=[], type=Path, help="OS Open Names CSV files")
    ap.add_argument("--keep-postcodes", action="store_true", help="do not touch reference.postcodes")
    ap.add_argument("--append", action="store_true", help="upsert instead of replacing the tables")
    args = ap.parse_args(argv)

    url = args.database_url
    if not url:
        from csp_observatory.config import load_settings

        url = load_settings().database_url
    import psycopg2

    started = time.monotonic()
    with psycopg2.connect(url) as conn:
        if not args.keep_postcodes:
            if args.codepoint or args.onspd:
                frames = [postcodes_sources.read_codepoint_open(p) for p in args.codepoint]
                frames += [postcodes_sources.read_onspd(p) for p in args.onspd]
                dropped = sum(f.attrs.get("dropped_no_coordinates", 0) for f in frames)
                reference = postcodes_sources.combine_references(frames)
                if args.households:
                    reference = postcodes_sources.attach_households(
                        reference, postcodes_sources.read_household_estimates(args.households))
                elif args.synthetic_households is not None:
                    synthetic = postcodes_synthetic.synthetic_households(reference, args.synthetic_households)
                    synthetic = synthetic.assign(Postcode=synthetic["Postcode"].str.replace(r"\s+", " ", regex=True))
                    counts = dict(zip(synthetic["Postcode"], synthetic["Occupied_Households"]))
                    reference["households"] = reference["postcode"].map(counts).fillna(0).astype("int64")
                else:
                    print("warning: no household estimates given: every postcode has 0 households", file=sys.stderr)
                print(f"postcodes without coordinates dropped: {dropped}")
            else:
                reference = postcodes_sources.shipped_reference()
            n = postcodes_postgis.load_reference(conn, reference, replace=not args.append)
            print(f"reference.postcodes: {n} rows loaded "
                  f"({int(reference['terminated'].sum())} terminated)")
        if args.places:
            import pandas as pd

            places = pd.concat([gazetteer.read_os_open_names(p) for p in args.places], ignore_index=True)
        else:
            places = gazetteer.shipped_places()
        n = gazetteer.load_places(conn, places, replace=not args.append)
        print(f"reference.places: {n} rows loaded")
    print(f"done in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
