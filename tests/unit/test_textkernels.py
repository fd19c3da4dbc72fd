"""Arrow (RE2) regex kernels give exactly what pandas gives through Python's ``re`` (issue 9).

The reference is the pandas call each kernel replaces, run on the same varied values: ASCII, Unicode digits and
spaces, newlines (Python's ``$`` matches before a final one), the ASCII separators Python counts as space, empty
strings and missing values.
"""
from __future__ import annotations

import random

import pandas as pd
import pytest

from csp_observatory import parsing, textkernels

pytestmark = pytest.mark.unit

PIECES = ["0", "00", "1", "12", "123", "2026", "9", "٣", "١٢", "²", " ", "  ", "\t", "\n", "\r\n", "\x0b", "\x1c",
          "\x1f", "\u00a0", "\u2003", ":", "-", "/", ".", ".0", "e5", "E-3", "+", "a", "Z", "é", "😀", ",", ""]
PATTERNS = [parsing._TIME, parsing._ISO_DATE, parsing._UK_DATE, parsing._INTEGER, parsing._FLOAT,
            r"^(\d{1,2}):?(\d{2})(?::\d{2})?$", r"\s+", r"^0+(\d)", r"\.0*$"]


def _values(n: int, seed: int) -> pd.Series:
    rng = random.Random(seed)
    out: list[str | None] = []
    for _ in range(n):
        if rng.random() < 0.05:
            out.append(None)
        else:
            out.append("".join(rng.choice(PIECES) for _ in range(rng.randint(0, 6))))
    # well-formed values the patterns are for, so that matches are tested as well as misses
    out += ["09:30", "9:30", "0930", "23:59:59", "2026-09-01", "1/9/2026", "12", "-12.000", "1.5e3", ".5",
            "028E", "000", "0\n", "12.0\n", "09:30\n", "a  b\t\tc", "x\x1cy", "٣:٣٠"]
    return pd.Series(out, index=range(3, 3 + len(out)), dtype="string")


def _plain(series: pd.Series) -> list:
    return [None if pd.isna(v) else v for v in series]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("pattern", PATTERNS)
def test_fullmatch_matches_pandas(pattern, seed):
    values = _values(3000, seed)
    expected = values.str.fullmatch(pattern).fillna(False).to_numpy(bool).tolist()
    got = textkernels.fullmatch(values, pattern)
    assert list(got.index) == list(values.index)
    assert got.tolist() == expected
    assert any(expected)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("pattern,repl", [(r"\s+", " "), (r"^0+(\d)", r"\1"), (r"\.0*$", "")])
def test_replace_matches_pandas(pattern, repl, seed):
    values = _values(3000, seed)
    expected = values.str.replace(pattern, repl, regex=True)
    got = textkernels.replace(values, pattern, repl)
    assert str(got.dtype) == "string" and list(got.index) == list(values.index)
    assert _plain(got) == _plain(expected)
    assert _plain(got) != _plain(values)


def test_leading_zeros_pattern_is_the_old_look_ahead():
    values = _values(3000, 7)
    assert _plain(textkernels.replace(values, r"^0+(\d)", r"\1")) == \
        _plain(values.str.replace(r"^0+(?=\d)", "", regex=True))


@pytest.mark.parametrize("seed", range(3))
def test_extract_matches_pandas(seed):
    values = _values(3000, seed)
    pattern = r"^(\d{1,2}):?(\d{2})(?::\d{2})?$"
    expected = values.str.extract(pattern)
    got = textkernels.extract(values, pattern, 2)
    for i in range(2):
        assert _plain(got[i]) == _plain(expected[i])
    assert got[0].notna().any()


def test_patterns_needing_python_are_refused():
    for pattern in (r"^0+(?=\d)", r"(?<!a)b", r"\bx", r"(a)\1"):
        with pytest.raises(ValueError):
            textkernels.re2_pattern(pattern)


def test_contains_distinct_matches_pandas():
    from csp_observatory import gazetteer

    values = pd.concat([_values(2000, 4), pd.Series(["Car park, Piece Hall", "12 Park Road", "Shroggs Park", None,
                                                     "STATION ROAD", "Bus station, Cripplegate"] * 50,
                                                    dtype="string")], ignore_index=True)
    for pattern in (gazetteer.STRONG_HINT, gazetteer.NON_ADDRESSABLE_HINT, r"\d(?![A-Z]{2}\b)"):
        expected = values.str.contains(pattern, regex=True).fillna(False).to_numpy(bool).tolist()
        assert textkernels.contains_distinct(values, pattern).tolist() == expected
        assert textkernels.contains(values, pattern).tolist() == expected      # RE2 where it can, else Python
        assert any(expected)


@pytest.mark.parametrize("seed", range(3))
def test_squeeze_spaces_matches_pandas(seed):
    values = pd.concat([_values(3000, seed), pd.Series(["a b", "a  b", "a\tb", " x ", "é  é", None, "a\x1cb"] * 30,
                                                        dtype="string")], ignore_index=True)
    expected = values.str.replace(r"\s+", " ", regex=True)
    got = textkernels.squeeze_spaces(values)
    assert str(got.dtype) == "string" and list(got.index) == list(values.index)
    assert _plain(got) == _plain(expected)
    assert _plain(got) != _plain(values)
