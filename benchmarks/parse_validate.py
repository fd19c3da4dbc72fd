"""The parse-and-validate task's work at N offences in one process: parse, row rules and the GX suite per file.

Prints per file the seconds of each step and the peak RSS rise so far (sampled every 10 ms over the RSS after the
imports, GX included: its import is timed on its own line), then the totals. ``--json FILE`` writes the
summaries (GX's raw result left out), to compare two trees' findings; ``--plugins DIR`` runs another tree (e.g.
``git archive <commit> plugins include | tar -x -C DIR``, then ``--plugins DIR/plugins``). The supply is made
once by ``stages.py``'s generator into ``--dir`` and reused.

    .venv/bin/python benchmarks/parse_validate.py --offences 1000000 --dir /tmp/csp_pv_1m --json /tmp/new.json
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

_PLUGINS = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--plugins"),
                str(Path(__file__).resolve().parents[1] / "plugins"))
sys.path.insert(0, str(Path(_PLUGINS).resolve()))

import psutil  # noqa: E402

from csp_observatory import parsing, validation  # noqa: E402
from csp_observatory.schema import SCHEMA_DIR  # noqa: E402
from csp_observatory.schema_loading import load_schema  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--offences", type=int, default=100_000)
    ap.add_argument("--dir", type=Path, required=True, help="where the generated CSVs are kept and reused")
    ap.add_argument("--plugins", default=None, help="the plugins folder to import (default: this checkout's)")
    ap.add_argument("--period", default="202609")
    ap.add_argument("--json", type=Path, default=None, help="write the summaries here")
    args = ap.parse_args()
    sys.path.insert(1, str(Path(__file__).resolve().parent))
    import stages                                   # its generator; it imports this checkout's plugins only if
    paths = stages._supply(args.offences, args.dir)  # they were not imported already (above)
    schema = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")
    t = time.perf_counter()
    import great_expectations  # noqa: F401
    print(f"plugins {validation.__file__}\nimport great_expectations {time.perf_counter() - t:.2f} s", flush=True)

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], proc.memory_info().rss)

    threading.Thread(target=sample, daemon=True).start()
    totals = {"parse": 0.0, "rules": 0.0, "validate": 0.0}
    parse_cpu, data_rows = 0.0, 0
    summaries = {}
    for name, path in paths.items():
        feed_file = schema.file(name)
        t0, c0 = time.perf_counter(), time.process_time()
        parsed = parsing.parse_csv(path, feed_file)
        t1, c1 = time.perf_counter(), time.process_time()
        n = len(parsed.frame) + len(parsed.rejected)
        parse_cpu, data_rows = parse_cpu + c1 - c0, data_rows + n
        kept, rejected, nulled = validation.apply_row_rules(parsed.frame, feed_file)
        t2 = time.perf_counter()
        summary = validation.validate(kept, feed_file, schema, period=args.period,
                                      rates=validation.fill_rates(parsed.frame, feed_file))
        t3 = time.perf_counter()
        summary.pop("gx_result", None)
        summaries[name] = {"summary": summary, "rejected": len(parsed.rejected) + len(rejected), "nulled": nulled}
        for step, dt in (("parse", t1 - t0), ("rules", t2 - t1), ("validate", t3 - t2)):
            totals[step] += dt
        print(f"{name}: {len(parsed.frame):,} rows; parse {t1 - t0:.2f} s ({(t1 - t0) / n * 1e6:.2f} s per million "
              f"rows, CPU {c1 - c0:.2f} s), row rules {t2 - t1:.2f} s, validate "
              f"{t3 - t2:.2f} s; peak RSS rise so far {(peak[0] - base) / 2**30:.2f} GB", flush=True)
        del parsed, kept, rejected
    done.set()
    print(f"total {sum(totals.values()):.2f} s (" + ", ".join(f"{k} {v:.2f} s" for k, v in totals.items())
          + f"); RSS after imports {base / 2**30:.2f} GB, peak rise {(peak[0] - base) / 2**30:.2f} GB")
    # CPU time (all threads) is steadier than wall time when other work shares the machine
    print(f"parse: {totals['parse'] / data_rows * 1e6:.2f} s per million rows ({data_rows:,} rows), CPU "
          f"{parse_cpu:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=1, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
