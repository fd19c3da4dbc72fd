"""The load's feed (copy_stream.py): each file's COPY data made in a thread ahead of the connection, in order, the
same bytes whichever way a file's batches are made, errors raised where the data is read; a staged frame counted
from its Arrow footer (no database)."""
from __future__ import annotations

import datetime as dt
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from csp_observatory import copy_binary, ddl, loading, staging
from csp_observatory.copy_stream import CopyFeed
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit


def _job(header, *batches):
    def make():
        yield header
        yield from batches
    return make


def _read_all(stream, size=3) -> bytes:
    out = b""
    while chunk := stream.read(size):
        out += chunk
    return out


def test_the_feed_gives_each_files_header_then_its_bytes_in_order():
    jobs = [("a", _job("head a", b"ab", memoryview(b"cde"), pa.py_buffer(b"f"))), ("b", _job("head b")),
            ("c", _job("head c", b"xyz" * 1000))]
    with CopyFeed(jobs, depth=1) as feed:
        assert feed.header("a") == "head a"
        assert _read_all(feed.reader("a")) == b"abcdef"
        assert feed.header("b") == "head b" and _read_all(feed.reader("b")) == b""
        assert feed.header("c") == "head c" and _read_all(feed.reader("c"), 1 << 20) == b"xyz" * 1000


def test_a_failure_in_the_feed_is_raised_where_the_data_is_read_and_cancels_the_connection():
    cancelled = []

    def failing():
        yield "head b"
        yield b"12"
        raise ValueError("value out of range for type integer: 2147483648")

    with CopyFeed([("a", _job("head a", b"x")), ("b", failing)], on_error=lambda: cancelled.append(1)) as feed:
        assert feed.header("a") == "head a" and _read_all(feed.reader("a")) == b"x"
        assert feed.header("b") == "head b"
        reader = feed.reader("b")
        with pytest.raises(ValueError, match="out of range for type integer"):
            _read_all(reader)
    assert cancelled == [1] and isinstance(feed.error, ValueError)


def test_leaving_the_feed_stops_its_thread_even_when_nobody_reads():
    made = []

    def endless():
        yield "head"
        while True:
            made.append(1)
            yield b"x" * 10

    feed = CopyFeed([("a", endless)], depth=1)
    with feed:
        assert feed.header("a") == "head"
    assert not any(t.name == "csp-load-feed" and t.is_alive() for t in threading.enumerate())
    assert len(made) <= 3                                   # it stayed a batch or two ahead, no more


@pytest.fixture(scope="module")
def victims():
    prc = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")
    feed_file = prc.file("victims")
    columns = [c for c in ddl.table_columns(prc, feed_file) if c.name not in ddl.LOADER_COLUMNS]
    rng = np.random.default_rng(3)
    n = 23
    frame = pd.DataFrame({c.name: [{"text": f"t{rng.integers(0, 5)}", "integer": int(rng.integers(0, 90)),
                                    "double precision": float(rng.normal()), "real": 1.5, "boolean": bool(i % 2),
                                    "date": pd.Timestamp("2026-09-01")}[c.sql_type] for i in range(n)]
                          for c in columns})
    frame["row_key"] = [f"{rng.integers(0, 2**62):032x}-1" for _ in range(n)]       # content keys: random order
    frame[["sanitised_easting", "sanitised_northing"]] = [[409000 + i, 425000 - i] for i in range(n)]
    loaded_at = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.timezone.utc)
    return loading._prepare(prc, "victims", frame, "prc/202609", "202609", "ab" * 32, loaded_at)


def _bytes_of(prepared, whole: bool) -> bytes:
    copy = loading._Prepared(**{**prepared.__dict__})
    return b"".join(bytes(memoryview(b).cast("B")) for b in loading._batches(copy, 101, whole))


def test_a_files_batches_are_the_same_bytes_however_they_are_made(victims, monkeypatch):
    """Tuples made whole then put in key order, or each batch's rows taken then made: the same COPY data, in key
    order, fids from the block's first in that order."""
    assert victims.order is not None
    table = victims.table
    want_rows = copy_binary.binary_copy_rows(table.take(pa.array(victims.order)), victims.types, more=1)
    fids = copy_binary.fixed_fields(np.arange(101, 101 + victims.rows, dtype=np.int64), ">i8", None)
    want = (copy_binary.COPY_HEADER + bytes(copy_binary.values_bytes(pc.binary_join_element_wise(want_rows, fids, b"")))
            + copy_binary.COPY_TRAILER)
    for size in (5, 23, 100):
        monkeypatch.setattr(loading, "COPY_BATCH_ROWS", size)
        assert _bytes_of(victims, whole=True) == want
        assert _bytes_of(victims, whole=False) == want
    in_order = loading._Prepared(**{**victims.__dict__, "table": table.take(pa.array(victims.order)), "order": None})
    assert _bytes_of(in_order, whole=True) == want


def test_lazy_frames_take_a_shape_that_needs_no_reading_and_read_when_it_cannot_tell():
    reads: list[str] = []

    def read(name: str) -> pd.DataFrame:
        reads.append(name)
        return pd.DataFrame({"a": range(4)})

    frames = loading.LazyFrames(["offences", "victims"], read,
                                shape=lambda name: (["a"], 7) if name == "offences" else None)
    assert frames.shape("offences") == (["a"], 7) and reads == []
    assert frames.shape("victims") == (["a"], 4) and reads == ["victims"]


def test_a_staged_frame_is_counted_from_its_arrow_footer(tmp_path):
    frame = pd.DataFrame({"crime_reference": pd.array(["a", None, "c"], dtype="string"), "age": [1, 2, 3]})
    staging.write_frame(tmp_path / "offences.arrow", frame)
    assert staging.frame_shape(tmp_path / "offences.arrow") == (["crime_reference", "age"], 3)
    frame.to_parquet(tmp_path / "old.parquet")
    assert staging.frame_shape(tmp_path / "old.parquet") is None           # not Arrow IPC: it is read
    assert staging.frame_shape(tmp_path / "missing.arrow") is None
