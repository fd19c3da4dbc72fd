"""What the staging store costs a stage: the same frames written and read back through staging.py on a local folder
(the single-machine default, and a shared volume) and on a remote fsspec filesystem (in-memory here: it measures the
extra copy through a file object that object storage adds, not a network), plus the private local copy gpg and the
parser get of a remote plaintext file. Prints seconds per operation and the ratio against the local folder, both
measured in this run.

    .venv/bin/python benchmarks/staging_store.py [rows]
"""
from __future__ import annotations

import secrets
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from csp_observatory import staging  # noqa: E402


def _frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame({
        "crime_reference": pd.array([f"CR{i:09d}" for i in range(rows)], dtype="string"),
        "offence_code": pd.array(rng.choice(["28/1", "49/2", "58A", "105A"], rows), dtype="string"),
        "postcode": pd.array([f"HX{i % 9 + 1} {i % 10}AB" for i in range(rows)], dtype="string"),
        "geo_easting": rng.uniform(400000, 420000, rows),
        "geo_northing": rng.uniform(420000, 430000, rows),
        "source_row": np.arange(1, rows + 1),
    })


def _best(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(rows: int = 200_000) -> None:
    frame = _frame(rows)
    csv_bytes = frame.to_csv(index=False).encode()
    with tempfile.TemporaryDirectory() as tmp:
        stores = {"local folder": Path(tmp) / "store",
                  "remote (memory://)": staging.location(f"memory://bench-{secrets.token_hex(4)}/store")}
        results: dict[str, dict[str, float]] = {}
        for name, root in stores.items():
            target, plain = root / "clean" / "offences.parquet", root / "plain" / "offences.csv"
            staging.write_bytes(plain, csv_bytes)

            def copy_and_read(plain=plain) -> None:
                with staging.local_file(plain) as path:
                    path.read_bytes()

            results[name] = {
                "write frame": _best(lambda target=target: staging.write_frame(target, frame)),
                "read frame": _best(lambda target=target: staging.read_frame(target)),
                "plaintext to a local file": _best(copy_and_read),
            }
            staging.remove(root)
    base = results["local folder"]
    parquet_mb = len(frame.to_parquet(index=False)) / 1e6
    print(f"{rows:,} rows; parquet {parquet_mb:.1f} MB, CSV {len(csv_bytes) / 1e6:.1f} MB")
    print(f"{'operation':28} {'local s':>9} {'remote s':>9} {'ratio':>6}")
    for op in base:
        far = results["remote (memory://)"][op]
        print(f"{op:28} {base[op]:9.4f} {far:9.4f} {far / base[op]:6.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
