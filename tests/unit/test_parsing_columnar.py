"""The columnar CSV reader gives exactly what the csv module's row-by-row reading gives (issue 9).

``parse_csv(..., columnar=False)`` is the reference: on generated files, well-formed and hostile (quotes,
embedded commas and newlines, CR and CRLF line ends, blank lines, ragged rows, a header repeated mid-file,
unclosed quotes, text after a closing quote, BOM, cp1252, Unicode), both paths must give the same frame, the
same rejected rows with the same reasons, the same header problems, or refuse the file with the same reason.
"""
from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from csp_observatory.parsing import MalformedFile, parse_csv
from csp_observatory.parsing_csv import _quotes_are_plain, read_columns
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit

HEADER = ["crime_reference", "ho_offence_code", "committed_from_date", "committed_from_time", "location_address",
          "location_postcode", "easting", "northing", "latitude", "flag_drugs", "method_of_entry"]
VALUES = {
    "crime_reference": ["CR1", "CR2", "", " CR3 ", "CR\u00e94"],
    "ho_offence_code": ["28E", "058A", "", "99Z"],
    "committed_from_date": ["2026-09-01", "02/09/2026", "31/02/2026", "", "yesterday", "1500-01-01"],
    "committed_from_time": ["09:30", "2315", "25:00", "", "9:5"],
    "location_address": ["12 King Cross Road, Halifax", "Flat 3, 12 Southgate", 'The "Old" Barn', "",
                         "line one\nline two", "a\r\nb", "Ærø, Gade", "  spaced  ", "\u00a0", "x" * 300,
                         "a\u2028b", "x\x85y", "c\x0bd\x0ce"],
    "location_postcode": ["HX1 1AA", "hx11aa", "", "HX1"],
    "easting": ["409508", " 409309 ", "409000.0", "", "4e5", "abc"],
    "northing": ["425333", "425466.0", "", "-1"],
    "latitude": ["53.7", "", ".5", "1e3", "north"],
    "flag_drugs": ["Y", "n", "", "yes", "maybe"],
    "method_of_entry": ["Rear door forced", "", 'said "hello", left', "Window, smashed"],
}


@pytest.fixture(scope="module")
def offences():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml").file("offences")


def _row(rng: random.Random) -> list[str]:
    return [rng.choice(VALUES[name]) for name in HEADER]


def _text(rows: list[list[str]], terminator: str = "\n", quoting: int = csv.QUOTE_MINIMAL) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=terminator, quoting=quoting).writerows(rows)
    return buf.getvalue()


def _outcome(path: Path, feed_file, columnar: bool):
    try:
        result = parse_csv(path, feed_file, columnar=columnar)
    except MalformedFile as bad:
        return ("refused", bad.reason)
    return ("read", result)


def _same(path: Path, feed_file) -> str:
    """Compare both paths on one file; returns which way it went."""
    new, old = _outcome(path, feed_file, True), _outcome(path, feed_file, False)
    assert new[0] == old[0], (new, old)
    if new[0] == "refused":
        assert new[1] == old[1]
        return "refused"
    pd.testing.assert_frame_equal(new[1].frame, old[1].frame)
    pd.testing.assert_frame_equal(new[1].rejected, old[1].rejected)
    assert new[1].header_problems == old[1].header_problems
    assert new[1].encoding == old[1].encoding
    return "read"


@pytest.mark.parametrize("seed", range(6))
def test_well_formed_files_read_the_same_and_take_the_columnar_path(tmp_path, offences, seed):
    rng = random.Random(seed)
    header = HEADER if seed % 2 else [h.upper().replace("_", " ") for h in HEADER]
    rows = [header] + [_row(rng) for _ in range(800)]
    text = _text(rows, rng.choice(["\n", "\r\n"]), rng.choice([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    assert read_columns(text) is not None      # the common case really is columnar
    path = tmp_path / "f.csv"
    path.write_bytes(text.encode("utf-8-sig" if seed == 3 else "utf-8"))
    assert _same(path, offences) == "read"


SPOILERS = [
    ("blank line", lambda lines, rng: lines.insert(rng.randrange(1, len(lines)), "")),
    ("whitespace line", lambda lines, rng: lines.insert(rng.randrange(1, len(lines)), "   ")),
    ("all-empty row", lambda lines, rng: lines.insert(rng.randrange(1, len(lines)), "," * (len(HEADER) - 1))),
    ("short row", lambda lines, rng: lines.insert(rng.randrange(1, len(lines)), "CR9,28E")),
    ("long row", lambda lines, rng: lines.insert(rng.randrange(1, len(lines)), "," * len(HEADER))),
    ("header again", lambda lines, rng: lines.insert(rng.randrange(1, len(lines)), ",".join(HEADER))),
    ("quote inside a value", lambda lines, rng: lines.insert(rng.randrange(1, len(lines)),
                                                            'CR9,28E,2026-09-01,09:30,5\'10" tall' + "," * 6)),
    ("text after a quote", lambda lines, rng: lines.insert(rng.randrange(1, len(lines)),
                                                          'CR9,"28E"x,2026-09-01' + "," * 8)),
    ("unclosed quote", lambda lines, rng: lines.insert(rng.randrange(1, len(lines)), 'CR9,"28E,2026-09-01')),
    ("quote after spaces", lambda lines, rng: lines.insert(rng.randrange(1, len(lines)),
                                                          'CR9, "28E",2026-09-01' + "," * 8)),
    ("blank lines above the header", lambda lines, rng: lines.insert(0, "\n")),
    ("blank line at the end", lambda lines, rng: lines.append("\n")),
    ("lone CR line ends", lambda lines, rng: lines.__setitem__(slice(None), ["\r".join(lines)])),
    ("huge value", lambda lines, rng: lines.insert(rng.randrange(1, len(lines)),
                                                  "CR9,28E,2026-09-01,09:30," + "y" * (csv.field_size_limit() + 5)
                                                  + "," * 6)),
    ("repeated header and a ragged row", lambda lines, rng: (lines.insert(3, ",".join(HEADER)),
                                                              lines.insert(5, "x,y"))),
]


@pytest.mark.parametrize("name,spoil", SPOILERS, ids=[s[0] for s in SPOILERS])
@pytest.mark.parametrize("seed", range(3))
def test_hostile_files_read_or_refused_the_same(tmp_path, offences, name, spoil, seed):
    rng = random.Random(f"{name}/{seed}")
    rows = [HEADER] + [_row(rng) for _ in range(60)]
    # one record per list item, so spoilers insert whole records (values may hold line ends)
    lines = [_text([r]).removesuffix("\n") for r in rows]
    spoil(lines, rng)
    text = "\n".join(lines) + ("" if seed == 2 else "\n")
    path = tmp_path / "f.csv"
    path.write_bytes(text.encode("cp1252", errors="replace") if seed == 1 and "Æ" not in text else
                     text.encode("utf-8"))
    _same(path, offences)


def test_cp1252_and_empty_files(tmp_path, offences):
    rows = [HEADER, [v[0] for v in VALUES.values()], ["CR5", "28E", "", "", "Caf\u00e9 Street"] + [""] * 6]
    path = tmp_path / "f.csv"
    path.write_bytes(_text(rows).encode("cp1252"))
    assert _same(path, offences) == "read"
    path.write_bytes(_text([HEADER]).encode("utf-8"))
    assert _same(path, offences) == "read"
    path.write_bytes(b"\n\n")
    assert _same(path, offences) == "refused"


def _plain(text: str) -> bool:
    return _quotes_are_plain(np.frombuffer(text.encode(), dtype=np.uint8))


def test_quote_check_accepts_exactly_well_formed_quoted_fields():
    for ok in ['a,b\n1,2', '"a",b\n"1","2"', 'a,"x,""y"""\n', '"",""', '""""', 'a\r"b"\r', '"a\nb",c']:
        assert _plain(ok), ok
    for bad in ['a,b"c', '"a"b,c', 'a,"b', 'a, "b"', '"a""', 'x"', '"a"\t']:
        assert not _plain(bad), bad
