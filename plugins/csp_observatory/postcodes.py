"""Postcode reference: the postcode's normal form, the reference frame, and looking postcodes up in a list.

The reference frame (ARCHITECTURE.md) has one row per postcode: ``postcode, easting, northing, households,
ward_code, district_code, terminated, source``, plus ``terminated_date`` (``YYYY-MM`` from ONSPD ``doterm``,
empty for live postcodes) so the geocoder can say when a postcode was terminated. The loaders for OS Code-Point
Open, ONSPD and Census household estimates are ``postcodes_sources.py``; the frame is loaded into
``reference.postcodes`` (PostGIS) and read back by ``postcodes_postgis.py``; ``postcodes_synthetic.py`` makes the
synthetic household counts and a Great-Britain-sized synthetic reference.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Final

import numpy as np
import pandas as pd

from csp_observatory.schema import REPO_ROOT

log = logging.getLogger(__name__)

POSTCODE_DIR: Final = REPO_ROOT / "include" / "postcodes"
SHIPPED_CODEPOINT: Final = POSTCODE_DIR / "codepoint_open_2014-08_hx_calderdale.csv"
SHIPPED_ONSPD: Final = POSTCODE_DIR / "onspd_extract_AB.csv.gz"
SHIPPED_HOUSEHOLDS: Final = POSTCODE_DIR / "households_SYNTHETIC_calderdale.csv"
#: Seed the shipped synthetic households file was generated with (see include/postcodes/README.md).
SHIPPED_HOUSEHOLDS_SEED: Final = 20140801

REFERENCE_COLUMNS: Final = ["postcode", "easting", "northing", "households", "ward_code", "district_code",
                            "terminated", "source", "terminated_date"]

#: Outward code (area letters, district digit(s), optional letter) + inward code (sector digit, two letters).
_POSTCODE_RE: Final = re.compile(r"^([A-Z]{1,2}[0-9][A-Z0-9]?)([0-9][A-Z]{2})$")
_POSTCODE_PATTERN: Final = _POSTCODE_RE.pattern


# Great Britain's extent on the National Grid: a point outside it is not a British location.
GB_EASTING: Final = (0.0, 700_000.0)
GB_NORTHING: Final = (0.0, 1_300_000.0)


# --- normal form ------------------------------------------------------------------------------------

def normalise_postcode(text: Any) -> str | None:
    """One postcode in normal form (``HX1 1AA``), or None if it is not a UK postcode shape."""
    if text is None or (not isinstance(text, str) and pd.isna(text)):
        return None
    compact = re.sub(r"\s+", "", str(text)).upper()
    m = _POSTCODE_RE.match(compact)
    return f"{m.group(1)} {m.group(2)}" if m else None


def normalise_postcodes(series: pd.Series) -> pd.Series:
    """Vectorised :func:`normalise_postcode`: a ``string`` Series with <NA> where a value is no postcode."""
    import pyarrow as pa
    import pyarrow.compute as pc

    # pyarrow's RE2 kernels: pandas' str.extract falls back to a Python loop (6 s per million rows).
    arr = pa.array(series.astype("string[pyarrow]").array)
    compact = pc.replace_substring_regex(pc.utf8_upper(arr), r"\s+", "")
    valid = pc.match_substring_regex(compact, _POSTCODE_PATTERN)
    spaced = pc.replace_substring_regex(compact, _POSTCODE_PATTERN, r"\1 \2")
    out = pc.if_else(pc.fill_null(valid, False), spaced, pa.scalar(None, pa.string()))
    return pd.Series(pd.array(out, dtype="string"), index=series.index, name=series.name)


def postcode_positions(postcodes: pd.Series, reference_postcodes: pd.Series) -> np.ndarray:
    """For each postcode, the position of its first row in ``reference_postcodes``, or -1 (arrow hashing)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    found = pc.index_in(pa.array(postcodes.astype("string[pyarrow]").array),
                        value_set=pa.array(reference_postcodes.astype("string[pyarrow]").array))
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def inside_gb(easting: np.ndarray, northing: np.ndarray) -> np.ndarray:
    """True where a National Grid point lies in Great Britain's grid extent (NaN is outside)."""
    e = np.asarray(easting, dtype=float)
    n = np.asarray(northing, dtype=float)
    with np.errstate(invalid="ignore"):
        return (e > GB_EASTING[0]) & (e < GB_EASTING[1]) & (n > GB_NORTHING[0]) & (n < GB_NORTHING[1])


# --- reference frames -------------------------------------------------------------------------------

def empty_reference() -> pd.DataFrame:
    """A reference frame with no rows and the right dtypes."""
    return _typed(pd.DataFrame({c: [] for c in REFERENCE_COLUMNS}))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Coerce a reference frame to its contract dtypes, in contract column order."""
    out = pd.DataFrame({
        "postcode": frame["postcode"].astype("string"),
        "easting": pd.to_numeric(frame["easting"]).astype("int64"),
        "northing": pd.to_numeric(frame["northing"]).astype("int64"),
        "households": pd.to_numeric(frame["households"]).fillna(0).astype("int64"),
        "ward_code": frame["ward_code"].astype("string"),
        "district_code": frame["district_code"].astype("string"),
        "terminated": frame["terminated"].astype(bool),
        "source": frame["source"].astype("string"),
        "terminated_date": frame["terminated_date"].astype("string"),
    })
    out.attrs.update(frame.attrs)
    return out.reset_index(drop=True)


def _blank_to_na(s: pd.Series) -> pd.Series:
    s = s.astype("string").str.strip()
    return s.mask(s == "")


def pack_postcodes(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each value as one integer (its bytes, zero-padded to 8, big-endian) and whether it could be packed.

    A value packs when it is present, ASCII, at most 8 bytes and holds no NUL: every postcode in normal form
    does. Two packed values are equal exactly when the strings are.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else \
        pa.array(pd.Series(values).astype("string[pyarrow]").array)
    arr = arr.cast(pa.large_string())
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    n = len(arr)
    lengths = pc.binary_length(arr).fill_null(99).to_numpy(zero_copy_only=False).astype(np.int64)
    ok = ((lengths <= 8) & pc.fill_null(pc.string_is_ascii(arr), False).to_numpy(zero_copy_only=False)
          & ~pc.fill_null(pc.match_substring(arr, "\x00"), True).to_numpy(zero_copy_only=False))
    if not n:
        return np.zeros(0, dtype=np.uint64), ok
    # every value that packs, NUL-padded to exactly 8 bytes (the others as 8 NULs): one contiguous buffer
    padded = pc.ascii_rpad(pc.if_else(pa.array(ok), arr, pa.scalar("", pa.large_string())), width=8,
                           padding="\x00")
    _, offsets_buf, data_buf = padded.buffers()
    first = int(np.frombuffer(offsets_buf, dtype=np.int64)[padded.offset])
    packed = np.frombuffer(data_buf, dtype=">u8", count=n, offset=first)
    return packed.astype(np.uint64), ok


class PostcodeLookup:
    """Row numbers of postcodes in a fixed list, by integer codes (``pack_postcodes``) in a hash index.

    Built once per list (a reference, a displacement map) and kept: each lookup then costs a probe per value,
    not a hash table of the whole list of strings. Same answer as ``pyarrow.compute.index_in`` (the first row holding the
    value, -1 where none does); a list with a value that does not pack is looked up with ``index_in``.
    """

    def __init__(self, postcodes: Any) -> None:
        import pyarrow as pa

        arr = postcodes if isinstance(postcodes, (pa.Array, pa.ChunkedArray)) else \
            pa.array(pd.Series(postcodes).astype("string[pyarrow]").array)
        self._values = arr
        codes, ok = pack_postcodes(arr)
        self._exact = bool(ok.all())
        order = np.argsort(codes, kind="stable")       # stable: the first of equal values comes first
        keys = codes[order]
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        # a hash index of the distinct codes (pandas builds its table once, on the first lookup, and keeps it)
        self._index = pd.Index(keys[first])
        self._rows = order[first].astype(np.int64)
        self._index.get_indexer(self._index[:1])       # builds the hash table now, not on the first lookup

    def positions(self, query: Any) -> np.ndarray:
        """Row of each queried value in the list (the first, if repeated), -1 where absent."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not self._exact:
            q = query if isinstance(query, (pa.Array, pa.ChunkedArray)) else \
                pa.array(pd.Series(query).astype("string[pyarrow]").array)
            return pc.fill_null(pc.index_in(q, value_set=self._values), -1).to_numpy(
                zero_copy_only=False).astype(np.int64)
        codes, ok = pack_postcodes(query)
        at = self._index.get_indexer(codes)
        hit = ok & (at >= 0)
        return np.where(hit, self._rows[np.where(hit, at, 0)] if len(self._rows) else -1, -1)
