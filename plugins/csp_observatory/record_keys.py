"""The record key's two uses at load time: a key for files with no reference number (:func:`content_keys`, made
when the rows are sanitised) and the rows' order by their key (:func:`key_order`: the order their fids and the
COPY follow, so the key's and fid's b-trees are built from sorted input)."""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from csp_observatory import ddl


def key_order(table: pa.Table, feed_file: Any) -> np.ndarray | None:
    """The rows' positions in the order of the record's key (the order their fids and the COPY follow); None when
    they are in that order already (partners' files usually are: then nothing is moved)."""
    key = [c for c in ddl.natural_key(feed_file) if c in table.column_names and c != "supply_id"]
    if not key:
        return None
    column = table.column(key[0]).combine_chunks() if len(key) == 1 else None
    if column is not None and pa.types.is_string(column.type) and not column.null_count:
        order = _string_order(column)
    else:
        order = pc.sort_indices(table.select(key), sort_keys=[(c, "ascending") for c in key]).to_numpy()
    return None if bool((order == np.arange(table.num_rows)).all()) else order


def _string_order(text: pa.Array) -> np.ndarray:
    """The positions of strings (no null) in ascending byte order, stable: Arrow's sort_indices of them, sooner for
    long keys that differ early (the 32-character content hash, 3x): sorted by their first 8 bytes as an integer,
    then only the runs sharing those (a record repeated: its ``-1``, ``-2``...) by the whole string."""
    n = len(text)
    values = text.buffers()[2]
    data = np.frombuffer(values, dtype=np.uint8) if values is not None and values.size else np.zeros(1, np.uint8)
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32, count=n + 1, offset=text.offset * 4)
    at = np.arange(8, dtype=np.int32)
    inside = at[None, :] < np.diff(offsets)[:, None]
    # A byte past the end counts as 0, below every byte of text ("ab" before "ab\x01"); a tie is settled below.
    picked = np.where(inside, data[np.minimum(offsets[:-1, None] + at[None, :], len(data) - 1)], 0)
    prefix = picked.astype(np.uint8).view(">u8").ravel().astype(np.uint64)      # native order: sorts 3x faster
    order = np.argsort(prefix, kind="stable")
    ordered = prefix[order]
    same = ordered[1:] == ordered[:-1]
    if same.any():
        tied = np.zeros(n, dtype=bool)
        tied[1:] |= same
        tied[:-1] |= same
        spots = np.flatnonzero(tied)
        runs = order[spots]
        # The tied runs sorted whole, together: their order among themselves is the prefixes' order already.
        order[spots] = runs[pc.sort_indices(text.take(pa.array(runs))).to_numpy()]
    return order


#: Rows whose text is joined and hashed at a time: the joined copy of a file's values is made a slice at a time.
KEY_BATCH_ROWS = 1 << 18
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def content_keys(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """A key per row for a file with no reference number: ``<sha256 of its values>-<occurrence>``.

    Stable for a re-sent supply: it depends only on the record's own loaded values (never its position in the
    file), and identical records, which are interchangeable, are told apart by counting them in file order. It is
    computed over the values that are loaded (after sanitising), so it reveals nothing the row does not show.
    The hash is the first 16 bytes of the SHA-256, in lower-case hex.
    """
    if frame.empty:
        return pd.Series([], index=frame.index, dtype="string")
    n = len(frame)
    digests = np.empty((n, 16), dtype=np.uint8)
    for start in range(0, n, KEY_BATCH_ROWS):
        stop = min(start + KEY_BATCH_ROWS, n)
        digests[start:stop] = _digests(frame.iloc[start:stop], columns)
    # each digest in hex, made in one pass over the bytes rather than a Python string per row
    hexed = np.empty((n, 32), dtype=np.uint8)
    hexed[:, 0::2], hexed[:, 1::2] = _HEX[digests >> 4], _HEX[digests & 15]
    text = pa.LargeStringArray.from_buffers(n, pa.py_buffer(np.arange(0, 32 * n + 1, 32, dtype=np.int64)),
                                           pa.py_buffer(hexed))
    keys = pc.binary_join_element_wise(text, pa.array(_occurrence(digests)).cast(pa.large_string()),
                                       pa.scalar("-", pa.large_string()))
    return pd.Series(pd.arrays.ArrowStringArray(keys), index=frame.index).astype("string")


def _digests(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """The first 16 bytes of each row's SHA-256, as an (n, 16) array: the row's values as text (missing: NUL),
    joined by the unit separator, hashed as UTF-8 straight from the Arrow buffer."""
    # in Arrow: pandas' str.cat goes through a Python object per value
    text = [pc.fill_null(pa.array(frame[c].astype("string[pyarrow]").array).cast(pa.large_string()), "\x00")
            for c in columns]
    joined = pc.binary_join_element_wise(*text, pa.scalar("\x1f", pa.large_string())) if len(text) > 1 else text[0]
    joined = joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined
    ends = np.frombuffer(joined.buffers()[1], dtype=np.int64)[joined.offset:joined.offset + len(joined) + 1].tolist()
    data = memoryview(joined.buffers()[2] or b"")
    sha256 = hashlib.sha256
    packed = b"".join([sha256(data[a:b]).digest() for a, b in zip(ends[:-1], ends[1:])])
    return np.frombuffer(packed, dtype=np.uint8).reshape(-1, 32)[:, :16]


def _occurrence(digests: np.ndarray) -> np.ndarray:
    """For each row, how many rows up to and including it (in file order) have its digest: 1, 2, ..."""
    n = len(digests)
    halves = np.ascontiguousarray(digests).view(np.uint64).reshape(n, 2)     # (equal or not: any byte order)
    if len(pd.unique(halves[:, 0])) == n:
        return np.ones(n, dtype=np.int64)       # no two alike (the usual file): a hash table says so at once
    order = np.lexsort((halves[:, 1], halves[:, 0]))        # stable: equal digests stay in file order
    ordered = halves[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    run_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    occurrence = np.empty(n, dtype=np.int64)
    occurrence[order] = np.arange(n) - run_start + 1
    return occurrence
