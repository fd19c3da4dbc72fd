"""The Arrow kernels of parsing give exactly what the pandas and Python reading gave (issue 9).

``convert_column`` against ``convert_reference`` value by value (dates over every day, month and year edge,
numbers, times, yes/no, text with Unicode and line ends), the RE2 quote check against the numpy one, the UTF-8
check against Python's decoder, and whole files read with the reference conversion.
"""
from __future__ import annotations

import codecs
import csv
import io
import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pac
import pytest

from csp_observatory import parsing, parsing_convert, parsing_csv
from csp_observatory.parsing import MalformedFile, parse_csv
from csp_observatory.parsing_convert import convert_column, convert_reference
from csp_observatory.parsing_csv import _quotes_are_plain, _quotes_are_plain_numpy
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit

KINDS = ["string", "code", "postcode", "time", "date", "integer", "float", "boolean"]


def _both(values: list[str], kind: str) -> None:
    """convert_column and convert_reference agree on every value: the typed Series (dtype included) and the bad rows."""
    ref, ref_bad = convert_reference(pd.Series(values, dtype="string"), kind)
    for arrow in (pa.array(values, pa.large_string()), pa.chunked_array([pa.array(values[:7], pa.string()),
                                                                         pa.array(values[7:], pa.string())])):
        got, bad = convert_column(arrow, kind, pd.RangeIndex(len(values)))
        pd.testing.assert_series_equal(got, ref, check_exact=True)
        assert bad.dtype == bool and bad.tolist() == ref_bad.tolist(), kind


def _dates() -> list[str]:
    years = ["0000", "1677", "1678", "1679", "1700", "1900", "2000", "2024", "2026", "2100", "2261", "2262", "9999"]
    days = [f"{d}" for d in range(0, 33)] + [f"{d:02d}" for d in range(0, 10)]
    months = [f"{m}" for m in range(0, 14)] + [f"{m:02d}" for m in range(0, 10)]
    return [v for y in years for m in months for d in days for v in (f"{y}-{m}-{d}", f"{d}/{m}/{y}")]


def test_dates_agree_on_every_day_month_and_year_edge():
    values = _dates()
    assert len(values) > 20000
    _both(values, "date")


TRICKY = ["", " ", "  \t", "\u00a0", "\u3000", "\n", "x\ny", " 12 ", "12\n", "\n12", "+7", "-0", "007", "12.0", "12.",
          "12.000", "12.5", "1e3", "1E-3", ".5", "5.", "-.5", "+-1", "1,000", "9" * 18, "9" * 19, "9" * 18 + ".0",
          "0x1A", "nan", "inf", "Infinity", "1e400", "-1e400", "1" * 400, "2026-09-01", " 2026-9-1 ", "1/9/2026",
          "2026-09-01\n", "2026-09-01x", "2026/09/01", "31/02/2026", "29/02/2024", "29/02/2026", "2026-02-29",
          "\uff12\uff10\uff12\uff16-09-01", "09:30", "9:5", "2315", "23:59:59", "24:00", "0930 ", "Y", "y", "YES",
          "True", "t", "1", "0", "N", "no", "FALSE", "F", "maybe", " yes ", "\u0130", "caf\u00e9", "\u00e9t\u00e9",
          "a\u2028b", "x\x85y", "c\x0bd\x0ce", "\x1c", " \x1f", "Z\u00dcRICH"]


def _corpus(kind: str, seed: int) -> list[str]:
    rng = random.Random(f"{kind}/{seed}")
    alphabet = list("0123456789") * 3 + list("+-./: eEyYnN\t") + ["\n", "\u00e9", "\u0663", "\u00a0", ""]
    made = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12))) for _ in range(3000)]
    forms = [f"{rng.randrange(0, 35)}/{rng.randrange(0, 14):02d}/{rng.randrange(1600, 2300)}" for _ in range(500)]
    forms += [f"{rng.randrange(1600, 2300)}-{rng.randrange(0, 14)}-{rng.randrange(0, 35):02d}" for _ in range(500)]
    forms += [f"{' ' * rng.randrange(2)}{rng.randrange(-10**6, 10**6)}{rng.choice(['', '.0', '.00', '.5'])}"
              for _ in range(500)]
    forms += [f"{rng.randrange(0, 30)}{rng.choice([':', ''])}{rng.randrange(0, 70):02d}" for _ in range(500)]
    return TRICKY + made + forms


def _raises_alike(values: list[str], kind: str) -> bool:
    """Whether the reference fails on these values (Unicode digits reach Arrow's cast); the fast path must too."""
    try:
        convert_reference(pd.Series(values, dtype="string"), kind)
    except pa.ArrowInvalid:
        with pytest.raises(pa.ArrowInvalid):
            convert_column(pa.array(values, pa.large_string()), kind, pd.RangeIndex(len(values)))
        return True
    return False


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(2))
def test_every_kind_agrees_with_the_reference(kind, seed):
    values = _corpus(kind, seed)
    if kind in ("integer", "float"):
        # Unicode digits and whole numbers written with a plus sign once reached Arrow's cast and failed the file
        assert not _raises_alike(values, kind)
    _both(values, kind)


@pytest.mark.parametrize("reader", ["reference", "columnar"])
def test_a_plus_sign_is_read_and_other_scripts_digits_are_bad_values_not_a_failed_file(reader):
    values = ["+7", "-7", "+7.0", "+-7", "\u0663", "1\uff12", " +12 ", "7"]
    if reader == "reference":
        got, bad = convert_reference(pd.Series(values, dtype="string"), "integer")
        bad = bad.to_numpy()
    else:
        got, bad = convert_column(pa.array(values, pa.large_string()), "integer", pd.RangeIndex(len(values)))
    assert got.tolist() == [7, -7, 7, pd.NA, pd.NA, pd.NA, 12, 7]
    assert bad.tolist() == [False, False, False, True, True, True, False, False]
    floats = ["+7.5", "\u0663.5", "1e3"]
    if reader == "reference":
        got, bad = convert_reference(pd.Series(floats, dtype="string"), "float")
        bad = bad.to_numpy()
    else:
        got, bad = convert_column(pa.array(floats, pa.large_string()), "float", pd.RangeIndex(3))
    assert got.tolist() == [7.5, pd.NA, 1000.0]
    assert bad.tolist() == [False, True, False]


def test_all_ascii_and_empty_columns():
    _both(["2026-09-01", "01/09/2026", "", "2026-13-01"] * 5, "date")
    _both(["1", "2.0", "", "x"] * 5, "integer")
    for kind in KINDS:
        got, bad = convert_column(pa.array([], pa.large_string()), kind, pd.RangeIndex(0))
        ref, _ = convert_reference(pd.Series([], dtype="string"), kind)
        pd.testing.assert_series_equal(got, ref, check_exact=True)
        assert len(bad) == 0


def test_blank_means_the_same_to_trim_and_is_space_for_every_code_point():
    """convert_column finds blank text values with utf8_is_space; the reference trims and compares with ''."""
    chars = pa.array([chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF], pa.large_string())
    trimmed_empty = pac.equal(pac.binary_length(pac.utf8_trim_whitespace(chars)), 0)
    assert pac.all(pac.equal(trimmed_empty, pac.utf8_is_space(chars))).as_py()
    assert pac.sum(trimmed_empty).as_py() > 20       # Unicode spaces, not only ASCII


def test_quote_check_agrees_with_counting_quote_marks():
    rng = random.Random(7)
    pieces = ["a", '"', ",", "\n", "\r", '""', "\u00e9", " "]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randrange(0, 12))).encode() for _ in range(20000)]
    # the pattern over all samples at once (as _quotes_are_plain runs it on a whole file), then a few calls
    by_re2 = pac.match_substring_regex(pa.array(texts, pa.large_binary()), parsing_csv._PLAIN_QUOTES).to_pylist()
    by_counting = [_quotes_are_plain_numpy(np.frombuffer(t, dtype=np.uint8)) for t in texts]
    assert by_re2 == by_counting and set(by_counting) == {True, False}
    for text, expected in list(zip(texts, by_counting))[:300]:
        assert _quotes_are_plain(text) == expected, text
    # a file with no line end inside a value is read without looking for any: exactly the plain ones whose values,
    # as the csv module reads them, hold no line end
    for text, plain in list(zip(texts, by_counting))[:5000]:
        one_line = plain and not any("\r" in v or "\n" in v
                                     for row in csv.reader(io.StringIO(text.decode(), newline=""), strict=True)
                                     for v in row)
        assert parsing_csv._quoting(pa.py_buffer(text)) == (None if not plain else not one_line), text


def test_utf8_check_agrees_with_python_across_piece_boundaries(monkeypatch):
    monkeypatch.setattr(parsing, "_PIECE", 3)           # split multi-byte characters between pieces
    rng = random.Random(3)
    tails = [b"\xc0\x80", b"\xc3\xa9", b"\xe2\x82\xac", b"\xed\xa0\x80", b"\xf0\x9f\x98\x80", b"\xf4\x90\x80\x80",
             b"\xf5", b"\x80", b"\xe2\x82", b"\xef\xbb\xbf", b"a", b","]
    for _ in range(3000):
        data = b"".join(rng.choice(tails) for _ in range(rng.randrange(1, 8)))
        try:
            data.decode("utf-8")
            valid = True
        except UnicodeDecodeError:
            valid = False
        assert parsing._is_utf8(data) == valid, data


def test_the_empty_check_is_bytes_strip(tmp_path):
    """A file is empty when bytes.strip leaves nothing: every single byte, and whitespace around one."""
    for byte in range(256):
        for data in (bytes([byte]), b" \t\n\r\x0b\x0c" + bytes([byte]) + b"\n"):
            assert (parsing._NOT_SPACE.search(data) is None) == (not data.strip()), data
    path = tmp_path / "f.csv"
    path.write_bytes(b" \t\n\r\x0b\x0c")
    with pytest.raises(MalformedFile, match="empty"):
        parse_csv(path, load_schema(SCHEMA_DIR / "police_recorded_crime.yaml").file("offences"))


# --- whole files: the fast conversion against the reference -----------------------------------------------------

HEADER = ["crime_reference", "ho_offence_code", "committed_from_date", "committed_from_time", "committed_to_date",
          "location_address", "easting", "northing", "latitude", "flag_drugs", "method_of_entry"]

GOOD = {"committed_from_date": "2026-09-01", "committed_to_date": "02/09/2026", "committed_from_time": "09:30",
        "easting": "409508", "northing": " 425333.0 ", "latitude": "53.7", "flag_drugs": "Y"}


def _reference_column(col, kind, index):
    values, bad = convert_reference(pd.Series(col, index=index, dtype="string"), kind)
    return values, bad.to_numpy(bool)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252"])
@pytest.mark.parametrize("columnar", [True, False])
def test_files_read_the_same_with_the_reference_conversion(tmp_path, monkeypatch, encoding, columnar):
    offences = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml").file("offences")
    rng = random.Random(f"{encoding}{columnar}")
    usable = [v for v in _corpus("date", 0)[:400] if not v.strip().startswith("+") and "\u0663" not in v
              and "\uff12" not in v]        # values the reference cannot cast (see above) fail either way
    pool = {name: usable[:30] + [GOOD.get(name, "CR1")] * 3000 for name in HEADER}
    pool["location_address"] = ["Flat 3, 12 King Cross Road,\nHalifax", 'The "Old" Barn', "Caf\u00e9", ""]
    rows = [HEADER] + [[rng.choice(pool[name]) for name in HEADER] for _ in range(1500)]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    text = buf.getvalue()
    path = tmp_path / "f.csv"
    path.write_bytes(text.encode(encoding, errors="replace"))
    fast = parse_csv(path, offences, columnar=columnar)
    monkeypatch.setattr(parsing, "convert_column", _reference_column)
    ref = parse_csv(path, offences, columnar=columnar)
    pd.testing.assert_frame_equal(fast.frame, ref.frame, check_exact=True)
    pd.testing.assert_frame_equal(fast.rejected, ref.rejected, check_exact=True)
    assert fast.header_problems == ref.header_problems and fast.encoding == ref.encoding
    assert fast.encoding == ("cp1252" if encoding == "cp1252" else "utf-8")
    assert 0 < len(fast.rejected) < 1500 and len(fast.frame) + len(fast.rejected) == 1500


@pytest.mark.parametrize("terminator", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("quoting", [csv.QUOTE_MINIMAL, csv.QUOTE_ALL])
def test_files_without_line_ends_in_values_read_the_same_both_ways(tmp_path, terminator, quoting):
    offences = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml").file("offences")
    rng = random.Random(f"{terminator}{quoting}")
    values = ["Flat 3, 12 King Cross Road", 'The "Old" Barn', "", " x ", "2026-09-01", "12", "Y", "a,b", '""']
    rows = [HEADER] + [[rng.choice(values + [GOOD.get(name, "CR1")] * 30) for name in HEADER] for _ in range(300)]
    buf = io.StringIO()
    csv.writer(buf, lineterminator=terminator, quoting=quoting).writerows(rows)
    data = buf.getvalue().encode()
    assert parsing_csv._quoting(pa.py_buffer(data)) is False and parsing.read_columns(data) is not None
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    fast, slow = parse_csv(path, offences), parse_csv(path, offences, columnar=False)
    pd.testing.assert_frame_equal(fast.frame, slow.frame, check_exact=True)
    pd.testing.assert_frame_equal(fast.rejected, slow.rejected, check_exact=True)
    assert len(fast.frame) > 0 and fast.header_problems == slow.header_problems


def test_a_bom_file_is_read_columnar(tmp_path):
    text = "crime_reference,ho_offence_code,committed_from_date\r\nCR1,28E,2026-09-01\r\n"
    utf8, encoding, decoded = parsing._utf8(codecs.BOM_UTF8 + text.encode())
    assert (utf8, encoding, decoded) == (text.encode(), "utf-8", None)
    assert parsing.read_columns(utf8) is not None
    assert parsing_convert.TRUE_WORDS == parsing.TRUE_WORDS


@pytest.mark.parametrize("few", [1000, 0])
def test_dropping_rows_by_slicing_is_dropping_them_by_mask(monkeypatch, few):
    monkeypatch.setattr(parsing, "_FEW_ROWS", few)      # 0: the frame's own filter
    text = pa.chunked_array([pa.array(["a", "b"], pa.large_string()), pa.array(["c", None, "e"], pa.large_string())])
    frame = pd.DataFrame({"s": pd.Series(text, dtype="string"), "i": pd.Series([1, 2, None, 4, 5], dtype="Int64"),
                          "d": pd.Series(np.arange(5).view("datetime64[ns]")),
                          "b": pd.Series([True, None, False, True, True], dtype="boolean"),
                          "f": pd.Series([0.5, None, 1, 2, 3], dtype="Float64")})
    for drop in ([0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 1, 0, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]):
        mask = np.array(drop, bool)
        got = parsing.without_rows(frame, mask)
        pd.testing.assert_frame_equal(got, frame[~mask].reset_index(drop=True), check_exact=True)
        assert got["s"].tolist() == [v for v, gone in zip(["a", "b", "c", pd.NA, "e"], drop) if not gone]


@pytest.mark.parametrize("values", [["1", "", "007", "9" * 18, "0", ""], ["1", "", "9" * 19], ["1", " 2"], ["1", "2.0"],
                                    ["", ""], ["12", "x"], ["-1", "3"]])
def test_whole_number_columns_of_plain_digits(values):
    """Such a column takes the short way (empty or 1 to 18 digits) or the general one: the same either way."""
    assert parsing_convert._only_short_digits(pa.chunked_array([pa.array(values, pa.large_string())])) == all(
        v == "" or (v.isdigit() and v.isascii() and len(v) <= 18) for v in values)
    _both(values * 3, "integer")


def test_clock_times_of_five_characters():
    """Every HH:MM from 00:00 to 99:99 takes the short way and agrees with the pattern; others go the general way."""
    every = [f"{h:02d}:{m:02d}" for h in range(100) for m in range(100)] + [""] * 50
    assert parsing_convert._clock_times(pa.chunked_array([pa.array(every, pa.large_string())])) is not None
    _both(every, "time")
    for odd in (["09:30", "9:30"], ["09:30", " 9:30"], ["0930", ""], ["09-30"], ["09:3a"]):
        assert parsing_convert._clock_times(pa.chunked_array([pa.array(odd, pa.large_string())])) is None
        _both(odd * 5, "time")


def test_one_character_yes_no_columns():
    """Every ASCII character alone (and empty) takes the short way for yes/no values and agrees with the reference."""
    every = [chr(c) for c in range(128)] + ["", "Y", "n"] * 10
    assert parsing_convert._one_byte_flags(pa.chunked_array([pa.array(every, pa.large_string())])) is not None
    _both(every, "boolean")
    for odd in (["Y", "no"], ["\u00e9", "Y"], ["", " Y"]):
        assert parsing_convert._one_byte_flags(pa.chunked_array([pa.array(odd, pa.large_string())])) is None
        _both(odd * 5, "boolean")


def test_mostly_empty_number_columns():
    """A mostly empty column of decimals reads only its filled values: the same as reading them all."""
    _both(["", "", "", "1.5", "x", "", " ", "1e3", "-0.0", "", "", "", ".5", "1e400"] * 5, "float")
    _both([""] * 20, "float")
