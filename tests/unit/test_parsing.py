"""parse_csv: header matching, typed columns, every row either kept or rejected with a reason."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
import pytest

from csp_observatory.parsing import MalformedFile, parse_csv
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def schema():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")


@pytest.fixture(scope="module")
def offences(schema):
    return schema.file("offences")


def _csv(rows: list[list[object]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _write(tmp_path: Path, text: str | bytes, name: str = "f.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return p


HEADER = ["Crime Reference", " HO-Offence-Code ", "COMMITTED_FROM_DATE", "committed from time", "easting",
          "northing", "latitude", "flag_drugs", "Victim Surname"]


def test_header_matching_types_and_dropped_columns(tmp_path, offences):
    text = _csv([HEADER,
                 ["CR0001", "28E", "2026-09-01", "09:30", "409508", "425333", "53.7", "Y", "Smith"],
                 ["CR0002", "58A", "02/09/2026", "2315", " 409309 ", "425466.0", "", "no", "Jones"]])
    result = parse_csv(_write(tmp_path, text), offences)
    frame = result.frame
    assert list(frame.columns) == offences.field_names + ["source_row"]
    assert "Victim Surname" not in frame.columns and "victim_surname" not in frame.columns
    assert any("Victim Surname" in p for p in result.header_problems)
    assert any("location_postcode" in p for p in result.header_problems)   # optional, missing, reported
    assert frame["location_postcode"].isna().all()
    assert frame["committed_from_date"].dtype == "datetime64[ns]"
    assert frame["committed_from_date"].tolist() == [pd.Timestamp("2026-09-01"), pd.Timestamp("2026-09-02")]
    assert str(frame["easting"].dtype) == "Int64" and frame["easting"].tolist() == [409508, 409309]
    assert frame["northing"].tolist() == [425333, 425466]
    assert str(frame["latitude"].dtype) == "Float64"
    assert frame["latitude"].isna().tolist() == [False, True]
    assert str(frame["flag_drugs"].dtype) == "boolean" and frame["flag_drugs"].tolist() == [True, False]
    assert frame["crime_reference"].dtype == "string"
    assert frame["source_row"].tolist() == [1, 2]
    assert result.rejected.empty


def test_bad_values_and_ragged_rows_are_rejected_with_row_numbers(tmp_path, offences):
    rows = [HEADER[:8]]
    rows.append(["CR0001", "28E", "2026-09-01", "09:30", "409508", "425333", "53.7", "Y"])
    rows.append(["CR0002", "28E", "31/02/2026", "09:30", "409508", "425333", "", "Y"])     # no 31 February
    rows.append(["CR0003", "28E", "2026-09-01", "25:00", "4095O8", "425333", "", "maybe"])
    rows.append(["CR0004", "28E", "2026-09-01"])                                           # too few values
    rows.append(["CR0005", "28E", "2026-09-01", "09:30", "1", "2", "3", "Y", "extra"])     # too many
    rows.append(["CR0006", "28E", "2026-13-01", "0930", "", "", "", ""])
    rows.append(["CR0007", "28E", "2026-09-30", "9:05", "", "", "", "true"])
    result = parse_csv(_write(tmp_path, _csv(rows)), offences)
    assert len(result.frame) + len(result.rejected) == len(rows) - 1
    assert result.frame["crime_reference"].tolist() == ["CR0001", "CR0007"]
    assert result.frame["source_row"].tolist() == [1, 7]
    by_row = dict(zip(result.rejected["source_row"], result.rejected["reason"]))
    assert sorted(by_row) == [2, 3, 4, 5, 6]
    assert by_row[2].startswith("row 2: committed_from_date '31/02/2026' is not a valid date")
    assert "committed_from_time '25:00'" in by_row[3] and "easting '4095O8'" in by_row[3] \
        and "flag_drugs 'maybe'" in by_row[3]
    assert "3 values" in by_row[4] and "9 values" in by_row[5]
    assert "2026-13-01" in by_row[6]
    assert set(result.rejected["stage"]) == {"parse"}
    assert set(result.rejected["source_file"]) == {"offences"}


def test_personal_values_are_not_copied_into_reasons(tmp_path, schema):
    victims = schema.file("victims")
    text = _csv([["crime_reference", "victim_reference", "date_of_birth"], ["CR0001", "V1", "1990-02-30"]])
    result = parse_csv(_write(tmp_path, text), victims)
    reason = result.rejected["reason"].iloc[0]
    assert "date_of_birth" in reason and "1990-02-30" not in reason


def test_missing_required_column_refuses_the_file(tmp_path, offences):
    text = _csv([["crime_reference", "committed_from_date"], ["CR0001", "2026-09-01"]])
    with pytest.raises(MalformedFile) as info:
        parse_csv(_write(tmp_path, text), offences)
    assert "ho_offence_code" in info.value.reason
    assert ",".join(offences.field_names) in info.value.reason


@pytest.mark.parametrize("content, words", [
    (b"", "empty"),
    (b"   \n\n", "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    (b"\x81\x8d\x8f\x90\x9d not text", "UTF-8"),
    ("<html><body>Not a CSV</body></html>\n".encode(), "header"),
])
def test_files_that_are_not_csv_are_refused(tmp_path, offences, content, words):
    with pytest.raises(MalformedFile) as info:
        parse_csv(_write(tmp_path, content), offences)
    assert words.lower() in info.value.reason.lower()
    # No quote marks or apostrophes: the report withholds anything between two of them as if it were a value.
    assert "'" not in info.value.reason and '"' not in info.value.reason


def test_cp1252_is_read_and_reported(tmp_path, offences):
    text = _csv([["crime_reference", "ho_offence_code", "committed_from_date", "method_of_entry"],
                 ["CR0001", "28E", "2026-09-01", "Door forced – café"]])
    result = parse_csv(_write(tmp_path, text.encode("cp1252")), offences)
    assert result.encoding == "cp1252"
    assert result.frame["method_of_entry"].iloc[0] == "Door forced – café"
    assert any("cp1252" in p for p in result.header_problems)


def test_utf8_bom_header_is_matched(tmp_path, offences):
    text = _csv([["crime_reference", "ho_offence_code", "committed_from_date"], ["CR0001", "28E", "2026-09-01"]])
    result = parse_csv(_write(tmp_path, b"\xef\xbb\xbf" + text.encode()), offences)
    assert result.encoding == "utf-8" and result.frame["crime_reference"].tolist() == ["CR0001"]


def test_header_only_file_gives_an_empty_typed_frame(tmp_path, offences):
    result = parse_csv(_write(tmp_path, ",".join(offences.field_names) + "\n"), offences)
    assert result.frame.empty and result.rejected.empty
    assert result.frame["committed_from_date"].dtype == "datetime64[ns]"


def test_quoted_fields_with_commas_and_newlines(tmp_path, offences):
    text = _csv([["crime_reference", "ho_offence_code", "committed_from_date", "location_address"],
                 ["CR0001", "28E", "2026-09-01", "Flat 3, 12 King Cross Road,\nHalifax"],
                 ["CR0002", "28E", "2026-09-01", "Car park, Bankfield Museum"]])
    result = parse_csv(_write(tmp_path, text), offences)
    assert result.frame["location_address"].tolist() == ["Flat 3, 12 King Cross Road,\nHalifax",
                                                         "Car park, Bankfield Museum"]
    assert result.frame["source_row"].tolist() == [1, 2]


def test_a_large_file_accounts_for_every_row(tmp_path, offences):
    rows = [offences.field_names[:4]]
    for i in range(20000):
        date = "31/04/2026" if i % 997 == 0 else f"{1 + i % 28:02d}/09/2026"
        rows.append([f"CR{i:06d}", "28E", date, f"{i % 24:02d}{i % 60:02d}"])
    result = parse_csv(_write(tmp_path, _csv(rows)), offences)
    expected_bad = sum(1 for i in range(20000) if i % 997 == 0)
    assert len(result.rejected) == expected_bad
    assert len(result.frame) == 20000 - expected_bad
    assert result.frame["source_row"].is_unique


# --- hostile input (issue 6, section 8) -----------------------------------------------------------

def _offence_lines(n: int) -> list[str]:
    return [f'CR{i:05d},28E,2026-09-01,"Flat {i}, Secret Street"\n' for i in range(1, n + 1)]


OFFENCE_HEADER = "crime_reference,ho_offence_code,committed_from_date,location_address\n"


def test_a_nul_byte_anywhere_refuses_the_file_with_its_line(tmp_path, offences):
    lines = [OFFENCE_HEADER] + _offence_lines(3000)
    data = "".join(lines).encode()
    # A NUL well past the first 64 KiB, on line 2500 (the header is line 1).
    cut = len("".join(lines[:2499]).encode()) + 5
    assert cut > 65536
    bad = data[:cut] + b"\x00" + data[cut:]
    with pytest.raises(MalformedFile) as info:
        parse_csv(_write(tmp_path, bad), offences)
    assert info.value.reason.startswith("line 2500: ") and "NUL" in info.value.reason
    assert "Secret" not in info.value.reason and "'" not in info.value.reason and '"' not in info.value.reason


@pytest.mark.parametrize("case, line, words", [
    ("never_closed_at_the_end", 58, "a quoted field is never closed"),
    ("never_closed_in_the_middle", 57, "a quoted field is never closed"),
    ("quote_inside_a_value", 57, "not doubled"),
    ("never_closed_in_a_big_file", 57, "never closed"),
])
def test_an_unbalanced_quote_gives_the_line_and_what_is_wrong_never_the_value(tmp_path, offences, case, line,
                                                                               words):
    lines = [OFFENCE_HEADER] + _offence_lines(80)
    if case == "never_closed_at_the_end":
        lines = lines[:57] + ['CR99999,28E,2026-09-01,"Flat 9, Secret Street\n']
    elif case == "never_closed_in_the_middle":
        lines[56] = 'CR99999,28E,2026-09-01,"Flat 9, Secret Street\n'
    elif case == "quote_inside_a_value":
        lines[56] = 'CR99999,28E,2026-09-01,"Flat 9" Secret Street\n'
    else:
        # No further quote for longer than the csv module's field limit: the error comes far from line 57.
        lines[56] = 'CR99999,28E,2026-09-01,"Flat 9, Secret Street\n'
        lines[57:] = ["CR1,28E,2026-09-01,plain text\n"] * 8000
    with pytest.raises(MalformedFile) as info:
        parse_csv(_write(tmp_path, "".join(lines)), offences)
    reason = info.value.reason
    assert reason.startswith(f"line {line}: ") and words in reason, reason
    assert "Secret" not in reason and "Flat" not in reason
    # No quote marks: the report withholds anything quoted as if it were a value (the old reason read
    # '[value withheld]' expected after '"').
    assert "'" not in reason and '"' not in reason


def test_a_multi_line_value_before_an_unclosed_quote_does_not_confuse_the_line(tmp_path, offences):
    text = (OFFENCE_HEADER + 'CR1,28E,2026-09-01,"Flat 1,\nKing Cross Road"\n' + "CR2,28E,2026-09-01,ok\n"
            + 'CR3,28E,2026-09-01,"Flat 3\n' + "CR4,28E,2026-09-01,ok\n")
    with pytest.raises(MalformedFile) as info:
        parse_csv(_write(tmp_path, text), offences)
    assert info.value.reason.startswith("line 5: a quoted field is never closed"), info.value.reason


@pytest.mark.unit
def test_an_unclosed_quote_is_placed_on_its_own_line_when_every_text_field_is_quoted(tmp_path):
    """A file that quotes every text field: the stray quote on line 3 pairs with the first quote of line 4, and the
    csv module fails there; the reason must still name line 3, not a later field of line 4."""
    from csp_observatory import parsing_csv

    good = ['1,"a","b","c"\n'] * 5
    lines = ["id,x,y,z\n", *good]
    lines[2] = '2,"Flat 9 Secret Street,b,c\n'                 # line 3 of the file opens a quote it never closes
    path = tmp_path / "f.csv"
    path.write_text("".join(lines))
    text = path.read_text()
    problem = parsing_csv.csv_problem(text, "',' expected after '\"'", 1, 4)
    assert problem.startswith("line 3: a quoted field is never closed"), problem
    assert "Secret" not in problem
