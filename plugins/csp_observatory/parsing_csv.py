"""Reading a partner's CSV text: Arrow's columnar reader for a well-formed file, and the wording of what is
wrong with one the csv module cannot read (line numbers, never a value).

:func:`read_columns` takes exactly the files ``csv.reader(strict=True)`` would read the same way, and returns None
for any other, which :mod:`csp_observatory.parsing` then reads row by row with the csv module; when that fails,
:func:`csv_problem` says where and how, in a partner's words.
"""
from __future__ import annotations

import csv
import io
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pac
import pyarrow.csv as pcsv


#: A file whose double quote marks all belong to well-formed quoted fields (strict CSV), as one RE2 pattern: fields
#: split by commas and line ends, each either free of quote marks or wholly one quoted field (quote, then anything
#: but a quote or a doubled quote, then quote). RE2 runs it in one linear pass without backtracking.
_PLAIN_QUOTES: Final = r'^(?:"(?:[^"]|"")*"|[^",\r\n]*)(?:[,\r\n](?:"(?:[^"]|"")*"|[^",\r\n]*))*$'
#: The same without a line end inside a quoted value: Arrow's reader then need not look for any, a third faster.
_PLAIN_QUOTES_ONE_LINE: Final = _PLAIN_QUOTES.replace('[^"]', '[^"\\r\\n]')
#: RE2 takes texts up to 2 GiB; a larger file is checked with numpy.
_RE2_LIMIT: Final = (1 << 31) - 1


def _quotes_are_plain(data: np.ndarray | bytes | pa.Buffer) -> bool:
    """Whether every double quote mark of the file is part of a well-formed quoted field (strict CSV).

    Each quoted field must be a whole field: it opens after a field's start (comma, line end, start of file)
    and closes before a comma, a line end or the end of the file, with any quote mark inside it doubled.
    Anything else (a quote inside an unquoted value, text after a closing quote, an unclosed quote) is left to
    the csv module, which reads such files its own way or says what is wrong.
    """
    return _quoting(data if isinstance(data, pa.Buffer) else pa.py_buffer(data)) is not None


def _quoting(buf: pa.Buffer) -> bool | None:
    """None if the file's quote marks are not all in well-formed quoted fields (:func:`_quotes_are_plain`), else
    whether a quoted value holds a line end."""
    if buf.size >= _RE2_LIMIT:
        return True if _quotes_are_plain_numpy(np.frombuffer(buf, dtype=np.uint8)) else None
    text = pa.LargeBinaryArray.from_buffers(pa.large_binary(), 1, [None, pa.py_buffer(
        np.array([0, buf.size], dtype=np.int64)), buf])
    # nearly every file has no line end in a value: one pass says so, and a second is needed only otherwise
    if pac.match_substring_regex(text, _PLAIN_QUOTES_ONE_LINE)[0].as_py():
        return False
    return True if pac.match_substring_regex(text, _PLAIN_QUOTES)[0].as_py() else None


def _quotes_are_plain_numpy(data: np.ndarray) -> bool:
    """:func:`_quotes_are_plain` by counting quote marks, for a file too large for RE2.

    Counting quote marks, a file whose quotes are all in quoted fields is inside a value after an odd count:
    an escaped ``""`` closes and at once reopens. So each opening mark (even position in the count) must
    follow a field's start (comma, line end, start of file) or the mark before it, and each closing mark must
    be followed by a comma, a line end, the end of the file or the next mark.
    """
    at = np.flatnonzero(data == ord('"'))
    if len(at) == 0:
        return True
    if len(at) % 2:
        return False
    separators = np.zeros(256, dtype=bool)
    separators[[ord(","), ord("\n"), ord("\r")]] = True
    opening, closing = at[0::2], at[1::2]
    before = np.where(opening > 0, data[np.maximum(opening - 1, 0)], ord(","))
    open_ok = separators[before]
    open_ok[1:] |= opening[1:] - 1 == closing[:-1]
    after = np.where(closing + 1 < len(data), data[np.minimum(closing + 1, len(data) - 1)], ord(","))
    close_ok = separators[after]
    close_ok[:-1] |= closing[:-1] + 1 == opening[1:]
    return bool(open_ok.all() and close_ok.all())


def read_columns(data: bytes | str) -> tuple[list[str], list[pa.ChunkedArray]] | None:
    """The header and the data columns of a well-formed CSV, read by Arrow's CSV reader; None otherwise.

    ``data``: the file as UTF-8 bytes without a byte order mark (or as text). The columns are ``large_string``
    (pandas' own string storage, so making Series of them copies nothing). Exactly what
    ``csv.reader(strict=True)`` would read, for the files it reads: every row as wide as the header, no blank
    line, quotes only in well-formed quoted fields (``_quotes_are_plain``), no value reaching the csv module's
    field size limit. Any other file (a rare one) returns None, and the caller reads it row by row with the csv
    module, which finds and words each problem as before.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    # The header as the csv module reads it. A cut through a character's bytes only drops that character, and a
    # header longer than the cut then differs from Arrow's, which sends the file to the csv module.
    try:
        first = next(csv.reader(io.StringIO(data[:1 << 20].decode("utf-8", errors="ignore"), newline=""),
                                strict=True), [])
    except csv.Error:
        return None
    width = len(first)
    if width < 2 or not any(c.strip() for c in first):
        return None        # blank lines above the header, or a one-column file where a blank line is a value
    buf = pa.py_buffer(data)
    newlines = _quoting(buf)
    if newlines is None:
        return None
    try:
        table = pcsv.read_csv(
            buf,
            read_options=pcsv.ReadOptions(autogenerate_column_names=True, block_size=8 << 20),
            parse_options=pcsv.ParseOptions(delimiter=",", quote_char='"', double_quote=True, escape_char=False,
                                            newlines_in_values=newlines, ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(column_types={f"f{i}": pa.large_string() for i in range(width)},
                                                strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None        # a row of another width, a value larger than a block: the csv module says which
    if table.num_columns != width or table.num_rows == 0:
        return None
    columns = [table.column(i) for i in range(width)]
    limit = csv.field_size_limit()
    blank = None
    for col in columns:
        # Bytes first: a value has at most as many characters as bytes, so only a long one needs counting.
        lengths = pac.binary_length(col)
        if pac.max(lengths).as_py() >= limit - 1 and pac.max(pac.utf8_length(col)).as_py() >= limit - 1:
            return None
        empty = pac.equal(lengths, 0)
        blank = empty if blank is None else pac.and_(blank, empty)
    # Arrow reads a blank line as a row of empty values, the csv module as no row at all (numbered, not kept)
    if pac.any(blank).as_py():
        return None
    header = [col[0].as_py() for col in columns]
    if header != first:
        return None
    return header, [col.slice(1) for col in columns]


def _open_quote_line(text: str, start: int, end: int) -> int:
    """The line on which the last quoted field opened between lines ``start`` and ``end`` (CSV quoting rules).

    The scan stops where a quoted field's closing quote is followed by other text: that is where the csv module
    fails, and the field that "closed" there is the one left open (in a file that quotes every text field, later
    quoted fields on the same line must not be taken for it)."""
    opened, in_quotes, field_start, after_quote = start, False, True, False
    for number, line in enumerate(io.StringIO(text, newline=""), start=1):
        if number < start:
            continue
        if number > end:
            break
        for ch in line:
            if in_quotes:
                if after_quote:             # the previous character was a quote inside a quoted field
                    after_quote = False
                    if ch == '"':
                        continue            # a doubled quote: part of the value
                    if ch not in ",\r\n":
                        return opened       # text after the closing quote: the csv module's error is here
                    in_quotes = False       # it closed the field; this character is outside it
                elif ch == '"':
                    after_quote = True
                    continue
                else:
                    continue
            if ch == '"' and field_start:
                in_quotes, opened, field_start = True, number, False
            elif ch in ",\r\n":
                field_start = True
            else:
                field_start = False
    return opened


def csv_problem(text: str, message: str, start: int, at: int) -> str:
    """What is wrong, in a partner's words, from the csv module's error: line numbers, never a value."""
    opened = _open_quote_line(text, start, at)
    if "unexpected end of data" in message:
        return (f"line {opened}: a quoted field is never closed. A value starting with a double quote mark has "
                f"no closing double quote mark, so the rest of the file was read as part of it. Close the quote "
                f"on that line, or write a double quote mark inside a value as two double quote marks")
    if "field larger than field limit" in message:
        return (f"line {opened}: a value is longer than {csv.field_size_limit()} characters, usually because a "
                f"quoted field opened on that line is never closed. Close the quote on that line, or write a "
                f"double quote mark inside a value as two double quote marks")
    if "expected after" in message:
        if opened < at:
            return (f"line {opened}: a quoted field is never closed (it runs on into line {at}, where the next "
                    f"double quote mark is followed by other text). Close the quote on line {opened}, or write a "
                    f"double quote mark inside a value as two double quote marks")
        return (f"line {at}: a double quote mark inside a quoted value is not doubled, or a quoted value has text "
                f"after its closing double quote mark. Write a double quote mark inside a value as two double "
                f"quote marks, or put the whole value in quotes")
    return f"line {at}: the line is not valid CSV. Check its commas and double quote marks"
