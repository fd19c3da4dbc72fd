"""Parse a partner's decrypted CSV into a typed DataFrame, one column per datafield of its feed file.

Every data row ends up either in the frame or in ``rejected`` with a reason the partner can act on: a row
is never dropped silently. Whole-file problems (not UTF-8 or cp1252, empty, not CSV, required columns
missing) raise :class:`MalformedFile`, and the pipeline quarantines the file with that reason.
"""
from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa

from csp_observatory.parsing_convert import _FLOAT, _INTEGER, _ISO_DATE, _TIME, _UK_DATE  # noqa: F401 (tests)
from csp_observatory.parsing_convert import FALSE_WORDS, TRUE_WORDS, convert_column  # noqa: F401 (callers)
from csp_observatory.parsing_csv import csv_problem, read_columns
from csp_observatory.schema import FeedFile

REJECTED_COLUMNS: Final = ["source_file", "source_row", "reason", "stage"]

#: The pandas dtype of each datafield type (ARCHITECTURE.md, "Column contracts").
DTYPES: Final = {
    "string": "string", "code": "string", "postcode": "string", "time": "string",
    "date": "datetime64[ns]", "integer": "Int64", "float": "Float64", "boolean": "boolean",
}
#: A byte that is not ASCII whitespace (what bytes.strip removes): a file without one is empty.
_NOT_SPACE: Final = re.compile(rb"[^ \t\n\r\x0b\x0c]")
#: How much of a file is checked as UTF-8 at a time.
_PIECE: Final = 1 << 24
#: Up to this many rows set aside, the frame's text columns are sliced around them rather than copied.
_FEW_ROWS: Final = 1000
#: How many dropped column names a header problem lists before saying how many more there are.
UNKNOWN_COLUMNS_SHOWN: Final = 20
_WHAT: Final = {
    "date": "is not a valid date (use YYYY-MM-DD or DD/MM/YYYY)",
    "time": "is not a valid time (use HH:MM)",
    "integer": "is not a whole number",
    "float": "is not a number",
    "boolean": "is not a yes/no value (use Y or N)",
}


class MalformedFile(Exception):
    """A whole file cannot be read: it is refused and quarantined with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ParseResult:
    """A typed frame, the rows set aside with their reasons, and what was wrong with the header."""

    frame: pd.DataFrame
    rejected: pd.DataFrame
    header_problems: list[str] = field(default_factory=list)
    encoding: str = "utf-8"


def header_key(text: str) -> str:
    """A header cell as a datafield name: case-insensitive, spaces and hyphens read as underscores."""
    return re.sub(r"[\s\-]+", "_", text.strip().lower())


def empty_rejected() -> pd.DataFrame:
    """A rejected-rows frame with no rows and the contract's columns."""
    return pd.DataFrame({"source_file": pd.Series(dtype="string"), "source_row": pd.Series(dtype="int64"),
                         "reason": pd.Series(dtype="string"), "stage": pd.Series(dtype="string")})


def rejected_frame(source_file: str, rows: list[int], reasons: list[str], stage: str) -> pd.DataFrame:
    """A rejected-rows frame (source_file, source_row, reason, stage) from parallel lists."""
    if not rows:
        return empty_rejected()
    return pd.DataFrame({
        "source_file": pd.Series([source_file] * len(rows), dtype="string"),
        "source_row": pd.Series(rows, dtype="int64"),
        "reason": pd.Series(reasons, dtype="string"),
        "stage": pd.Series([stage] * len(rows), dtype="string"),
    })


def _line_of(data: bytes, offset: int) -> int:
    """The 1-based line of the file a byte offset is on."""
    return data.count(b"\n", 0, offset) + 1


def _decode(data: bytes) -> tuple[str, str]:
    """The file's text and its encoding (UTF-8, a byte order mark dropped, else cp1252); see :func:`_utf8`."""
    utf8, encoding, text = _utf8(data)
    return (utf8.decode("utf-8") if text is None else text), encoding


def _utf8(data: bytes) -> tuple[bytes, str, str | None]:
    """The file as UTF-8 bytes without a byte order mark, its encoding, and its text if reading it made that.

    A UTF-8 file is only checked, not decoded: its bytes are what Arrow's CSV reader reads.
    """
    # The whole file, not its start: a NUL anywhere passes every later check and then fails the load's COPY
    # on every retry. bytes.find is a memchr, fast even on a large file.
    nul = data.find(b"\x00")
    if nul >= 0:
        line = _line_of(data, nul)
        # No quote marks in a reason: reports withhold anything quoted as if it were a value.
        hint = ("; a file saved as UTF-16 (Unicode text) looks like this: save it as CSV UTF-8 instead"
                if nul < 4 or line == 1 else "")
        raise MalformedFile(f"line {line}: the file contains a NUL byte (binary data), so it is not a CSV text "
                            f"file{hint}. Export the data again as CSV and check that line")
    if _is_utf8(data):
        return (data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data), "utf-8", None
    try:
        # Spreadsheets on Windows save CSV as cp1252 ("ANSI"); accept it but tell the partner.
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        raise MalformedFile("the file is not text in UTF-8 (nor Windows cp1252): save it as CSV UTF-8 (a Save As"
                            " type in spreadsheets)") from None
    return text.encode("utf-8"), "cp1252", text


def _is_utf8(data: bytes) -> bool:
    """Whether Python decodes the bytes as UTF-8, without making the text (a 16 MiB piece at a time)."""
    if data.isascii():
        return True
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    try:
        for start in range(0, len(view), _PIECE):
            decoder.decode(view[start:start + _PIECE])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _read_records(text: str) -> list[list[str]]:
    try:
        # Sniffing is unreliable; partners are asked for comma-separated files, so read those strictly.
        return list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error:
        pass
    # Rare: read again record by record to find where it went wrong, and say so without quoting any value
    # (the csv module's message can hold a character of the data).
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    try:
        for _ in reader:
            start = reader.line_num + 1
    except csv.Error as exc:
        raise MalformedFile(csv_problem(text, str(exc), start, reader.line_num)) from None
    raise MalformedFile("the file is not valid CSV")    # the first read failed, the second did not: cannot happen


def _shown(value: str, datafield_personal: bool) -> str:
    # A rejection reason is kept by the observatory; never copy personal data into it.
    if datafield_personal:
        return "(value withheld: personal data)"
    value = value if len(value) <= 40 else value[:37] + "..."
    return f"'{value}'"


def split_rows(body: list[list[str]], width: int) -> tuple[list[list[str]], list[int], list[tuple[int, str]]]:
    """Data rows that fit the header, their row numbers (1 = first after the header), and the misfits with reasons.

    A blank line is not a data row and is skipped silently.
    """
    if all(len(r) == width for r in body):
        return body, list(range(1, len(body) + 1)), []      # the usual case, kept fast
    good: list[list[str]] = []
    numbers: list[int] = []
    bad: list[tuple[int, str]] = []
    for number, record in enumerate(body, start=1):
        if len(record) == width:
            good.append(record)
            numbers.append(number)
        elif not record or (len(record) == 1 and not record[0].strip()):
            continue
        else:
            bad.append((number, f"row {number} has {len(record)} values but the header has {width} columns"))
    return good, numbers, bad


def parse_csv(path: Path, feed_file: FeedFile, columnar: bool = True) -> ParseResult:
    """Read one decrypted partner CSV against its feed file's datafields; bad rows go to ``rejected``.

    ``columnar``: read a well-formed file with Arrow's CSV reader (``read_columns``); False, or a file it does
    not take, reads row by row with the csv module (the reference the columnar path is tested against).
    """
    data = Path(path).read_bytes()
    if _NOT_SPACE.search(data) is None:
        raise MalformedFile("the file is empty: it has no header row and no data")
    utf8, encoding, text = _utf8(data)
    del data
    read = read_columns(utf8) if columnar else None
    if read is not None:
        del utf8, text          # Arrow's columns hold their own copy of the values
        header, arrow_columns = read
        n_rows = len(arrow_columns[0])
        good_numbers: list[int] | range = range(1, n_rows + 1)
        bad_numbers: list[int] = []
        bad_reasons: list[str] = []

        def column(i: int) -> Any:
            # Handed over, not kept: each raw column is freed as soon as its typed one is made (unless it is kept
            # to word a bad value), rather than every one held until the last is typed (a 150 MB file's columns
            # are about 0.3 GB).
            raw, arrow_columns[i] = arrow_columns[i], None
            return raw
    else:
        text = utf8.decode("utf-8") if text is None else text
        del utf8
        header, good_rows, good_numbers, bad_numbers, bad_reasons = _read_rows(text)
        del text
        n_rows = len(good_rows)
        columns = list(zip(*good_rows)) if good_rows else [()] * len(header)

        def column(i: int) -> Any:
            # Building the column through pyarrow is about 2.5x faster than from a tuple of str.
            return pa.array(columns[i], pa.large_string())
    return _typed_result(feed_file, header, column, n_rows, good_numbers, bad_numbers, bad_reasons, encoding)


def _read_rows(text: str) -> tuple[list[str], list[list[str]], list[int], list[int], list[str]]:
    """The csv module's reading: header, the rows that fit it and their numbers, the misfits' numbers and reasons."""
    records = _read_records(text)
    while records and not any(c.strip() for c in records[0]):
        records.pop(0)   # blank lines above the header
    if not records:
        raise MalformedFile("the file is empty: it has no header row and no data")
    header, body = records[0], records[1:]
    good_rows, good_numbers, bad = split_rows(body, len(header))
    return header, good_rows, good_numbers, [number for number, _ in bad], [reason for _, reason in bad]


def without_rows(frame: pd.DataFrame, drop: np.ndarray) -> pd.DataFrame:
    """``frame[~drop].reset_index(drop=True)``; a few dropped rows cut Arrow-backed columns into slices, no copy."""
    rows = np.flatnonzero(drop)
    if len(rows) > _FEW_ROWS:
        return frame[~drop].reset_index(drop=True)
    keep = np.flatnonzero(~drop)
    runs = [(a, b) for a, b in zip(np.r_[0, rows + 1].tolist(), np.r_[rows, len(frame)].tolist()) if b > a]
    index = pd.RangeIndex(len(keep))
    out: dict[str, pd.Series] = {}
    for name, column in frame.items():
        if isinstance(column.dtype, pd.StringDtype) and column.dtype.storage == "pyarrow":
            whole = pa.array(column.array)          # the Arrow data itself (pandas' __arrow_array__)
            whole = whole if isinstance(whole, pa.ChunkedArray) else pa.chunked_array([whole])
            pieces = [chunk for a, b in runs for chunk in whole.slice(a, b - a).chunks]
            out[name] = pd.Series(pa.chunked_array(pieces, whole.type), index=index, dtype=column.dtype)
        else:
            out[name] = pd.Series(column.array.take(keep), index=index)
    return pd.DataFrame(out, copy=False)


def _typed_result(feed_file: FeedFile, header: list[str], column: Any, n_rows: int, good_numbers: Any,
                  bad_numbers: list[int], bad_reasons: list[str], encoding: str) -> ParseResult:
    """Check the header against the feed file, convert each datafield's column, and set aside bad values' rows."""
    expected = ",".join(feed_file.field_names)
    wanted = {name: i for i, name in enumerate(feed_file.field_names)}
    positions: dict[str, int] = {}
    problems: list[str] = []
    if encoding != "utf-8":
        problems.append("the file was read as Windows cp1252, not UTF-8: please export as CSV UTF-8")
    unknown: list[str] = []
    for i, cell in enumerate(header):
        key = header_key(cell)
        if key in wanted:
            if key in positions:
                raise MalformedFile(f"the column {key} appears more than once in the header. "
                                    f"The expected header is: {expected}")
            positions[key] = i
        else:
            unknown.append(cell.strip() or f"(unnamed column {i + 1})")
    missing_required = [d.name for d in feed_file.datafields if d.required and d.name not in positions]
    if missing_required:
        if not positions:
            raise MalformedFile(f"the first row is not a header the schema of the {feed_file.name} file knows (none "
                                f"of its columns is one of its datafields). The expected header is: {expected}")
        raise MalformedFile(f"required column(s) missing from the header: {', '.join(missing_required)}. "
                            f"The expected header is: {expected}")
    missing_optional = [d.name for d in feed_file.datafields if d.name not in positions]
    if missing_optional:
        problems.append(f"optional column(s) missing, loaded as empty: {', '.join(missing_optional)}")
    if unknown:
        # Columns the schema does not list may hold personal data nobody agreed to share: never load them.
        # Named up to a limit: a file with 10,000 stray columns must not make a report of 100 KB of names.
        shown = ", ".join(unknown[:UNKNOWN_COLUMNS_SHOWN])
        more = len(unknown) - UNKNOWN_COLUMNS_SHOWN
        if more > 0:
            shown += f" and {more:,} more ({len(unknown):,} columns in all)"
        problems.append(f"column(s) not in the schema were dropped and not loaded: {shown}")

    index = pd.RangeIndex(n_rows)
    out: dict[str, pd.Series] = {}
    bad_masks: dict[str, np.ndarray] = {}
    raws: dict[str, Any] = {}
    for d in feed_file.datafields:
        if d.name in positions:
            raw = column(positions[d.name])
            out[d.name], bad = convert_column(raw, d.type, index)
            if bad.any():
                bad_masks[d.name] = bad
                raws[d.name] = raw
        else:
            out[d.name] = pd.Series(pd.NA, index=index).astype(DTYPES[d.type])
    out["source_row"] = pd.Series(good_numbers, index=index, dtype="int64")
    frame = pd.DataFrame(out, copy=False)

    if bad_masks:
        any_bad = np.zeros(n_rows, dtype=bool)
        messages: dict[int, list[str]] = {}
        for name, mask in bad_masks.items():
            any_bad |= mask
            d = feed_file.field(name)
            rows = np.flatnonzero(mask)
            values = raws[name].take(pa.array(rows)).to_pylist()
            for i, value in zip(rows.tolist(), values):
                messages.setdefault(i, []).append(f"{name} {_shown(str(value).strip(), d.personal)} "
                                                  f"{_WHAT[d.type]}")
        for i in sorted(messages):
            bad_numbers.append(good_numbers[i])
            bad_reasons.append(f"row {good_numbers[i]}: " + "; ".join(messages[i]))
        frame = without_rows(frame, any_bad)

    order = sorted(range(len(bad_numbers)), key=bad_numbers.__getitem__)
    rejected = rejected_frame(feed_file.name, [bad_numbers[i] for i in order], [bad_reasons[i] for i in order],
                              "parse")
    return ParseResult(frame=frame, rejected=rejected, header_problems=problems, encoding=encoding)
