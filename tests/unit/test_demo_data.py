"""The demo supply: real Calderdale postcodes, realistic rows, and the rows made bad on purpose."""
from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from csp_observatory import cleaning, demo_data, parsing, postcodes, validation
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.unit

#: The real Calderdale Code-Point Open extract and its column headers, shipped in include/postcodes.
CPO_HEADERS = postcodes.POSTCODE_DIR / "codepoint_open_column_headers.csv"


@pytest.fixture(scope="module")
def calderdale() -> pd.DataFrame:
    with open(CPO_HEADERS, encoding="utf-8") as f:
        names = list(csv.reader(f))[1]
    cpo = pd.read_csv(postcodes.SHIPPED_CODEPOINT, header=None, names=names, dtype={"Postcode": str})
    return cpo.rename(columns={"Postcode": "postcode", "Eastings": "easting", "Northings": "northing"})


@pytest.fixture(scope="module")
def schema():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")


@pytest.fixture(scope="module")
def made(calderdale):
    return demo_data.make_police_recorded_crime("202609", calderdale, n_offences=200)


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.exact_output
def test_deterministic_for_a_seed(calderdale, made):
    again = demo_data.make_police_recorded_crime("202609", calderdale, n_offences=200)
    other = demo_data.make_police_recorded_crime("202609", calderdale, n_offences=200, seed=7)
    assert again.files == made.files and again.bad_rows == made.bad_rows
    assert other.files["offences"] != made.files["offences"]


def test_files_have_the_schema_header_and_realistic_rows(made, schema, calderdale):
    for name, text in made.files.items():
        header = next(csv.reader(io.StringIO(text)))
        assert header == schema.file(name).field_names
    offences = _rows(made.files["offences"])
    real = set(calderdale["postcode"])
    given = [r["location_postcode"] for r in offences if r["location_postcode"]]
    normal = {postcodes.normalise_postcode(p) for p in given} - {None}
    assert normal and normal <= real                                 # only real postcodes (bar the bad one)
    codes = schema.file("offences").field("ho_offence_code").allowed_codes
    assert sum(r["ho_offence_code"] in codes for r in offences) == len(offences) - 1   # one 999Z
    assert any(r["location_address"].startswith("Flat ") for r in offences)
    assert any("Bankfield Museum" in r["location_address"] or "Park" in r["location_address"] for r in offences)
    with_en = [r for r in offences if r["easting"] and r["northing"]]
    with_ll = [r for r in offences if r["longitude"] and not r["easting"]]
    only_pc = [r for r in offences if r["location_postcode"] and not r["easting"] and not r["longitude"]]
    assert len(with_en) > len(with_ll) > 0 and only_pc
    assert all(49.8 < float(r["latitude"]) < 61 for r in with_ll)
    victims = _rows(made.files["victims"])
    assert victims and all(r["victim_name"] and r["date_of_birth"] for r in victims)
    made_refs = {f"132609{seq:05d}" for seq in range(1, 201)}
    assert {r["crime_reference"] for r in victims} <= made_refs
    assert {r["crime_reference"] for r in _rows(made.files["offenders"])} <= made_refs
    assert {r["ethnicity"] for r in victims} <= set(schema.file("victims").field("ethnicity").allowed_codes)


def test_supplied_points_are_a_few_metres_from_their_postcode(made, calderdale):
    centroids = calderdale.set_index("postcode")[["easting", "northing"]]
    offences = [r for r in _rows(made.files["offences"]) if r["easting"] and r["location_postcode"] in centroids.index]
    assert offences
    bad = {b["row"] for b in made.bad_rows}
    for i, r in enumerate(_rows(made.files["offences"]), start=1):
        if r in offences and i not in bad:
            c = centroids.loc[r["location_postcode"]]
            assert abs(int(r["easting"]) - c["easting"]) <= 30 and abs(int(r["northing"]) - c["northing"]) <= 30


def test_the_bad_rows_end_where_the_listing_says(made, schema, tmp_path):
    ff = schema.file("offences")
    path = tmp_path / "offences.csv"
    path.write_text(made.files["offences"], encoding="utf-8")
    parsed = parsing.parse_csv(path, ff)
    kept, rejected, nulled = validation.apply_row_rules(parsed.frame, ff)
    cleaned = cleaning.clean(kept, ff)
    set_aside = {int(r): stage for r, stage in zip(
        pd.concat([parsed.rejected, rejected, cleaned.removed])["source_row"],
        pd.concat([parsed.rejected, rejected, cleaned.removed])["stage"])}
    expected = {b["row"]: b["stage"] for b in made.bad_rows if b["expect"] == "rejected"}
    assert set_aside == expected
    assert len(expected) == 5
    assert nulled == {"easting/northing outside Great Britain": 1}
    assert cleaned.changes["postcodes_invalid_nulled"] == {"location_postcode": 1}
    nulled_rows = {b["row"] for b in made.bad_rows if b["expect"] == "nulled"}
    assert nulled_rows <= set(cleaned.frame["source_row"])
    n_rows = len(_rows(made.files["offences"]))
    assert len(cleaned.frame) + len(set_aside) == n_rows
    for name in ("offenders", "victims"):
        p = tmp_path / f"{name}.csv"
        p.write_text(made.files[name], encoding="utf-8")
        result = parsing.parse_csv(p, schema.file(name))
        assert result.rejected.empty and len(result.frame) > 0


def test_the_demo_supplys_metadata_file_matches_it_as_the_parser_reads_it(made, schema, tmp_path):
    """The demo sends a metadata file with its supply (the feed's first must carry one): it must match."""
    from csp_observatory import fixtures, metadata_checks, metadata_file

    text = fixtures.make_metadata(schema, "202609", made.files)
    md = metadata_file.parse_metadata(text, schema)
    counts, headers = {}, {}
    for name, csv_text in made.files.items():
        path = tmp_path / f"{name}.csv"
        path.write_text(csv_text, encoding="utf-8")
        parsed = parsing.parse_csv(path, schema.file(name))
        counts[name] = len(parsed.frame) + len(parsed.rejected)      # what the pipeline counts as rows_in_file
        headers[name] = next(csv.reader(io.StringIO(csv_text)))
    assert metadata_checks.check_against(md, schema, "202609", counts, headers) == []
    assert md.caveats and md.geographic_method and md.date_supplied.isoformat() == "2026-10-12"
    assert fixtures.make_metadata(schema, "202609", made.files) == text          # deterministic


def test_people_are_numbered_per_offence_and_their_ages_match_their_dates_of_birth(made):
    """The columns are drawn at once: each person still belongs to one offence, numbered within it, and the age
    sent is the whole years from the date of birth to the offence's date."""
    from datetime import date, datetime

    offences = {r["crime_reference"]: r for r in _rows(made.files["offences"]) if r["crime_reference"]}
    for name, prefix in (("offenders", "O"), ("victims", "V")):
        rows = _rows(made.files[name])
        assert rows
        seen: dict[str, int] = {}
        for r in rows:
            seen[r["crime_reference"]] = seen.get(r["crime_reference"], 0) + 1
            assert r[f"{name[:-1]}_reference"] == f"{prefix}{seen[r['crime_reference']]}"
            dob_text = r["date_of_birth"]
            born = (date.fromisoformat(dob_text) if "-" in dob_text
                    else datetime.strptime(dob_text, "%d/%m/%Y").date())
            offence = offences.get(r["crime_reference"])
            if r["age"] and offence and "/" not in offence["committed_from_date"]:
                on = date.fromisoformat(offence["committed_from_date"])
                age = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
                assert int(r["age"]) == age and 10 <= age <= 95
        assert max(seen.values()) <= 2
    assert any("/" in r["date_of_birth"] for r in _rows(made.files["victims"]))      # both date forms are sent


def test_text_is_quoted_and_numbers_are_bare(made):
    """Written as many systems export (Python's QUOTE_NONNUMERIC): the CSV module reads it back unchanged."""
    lines = made.files["offences"].splitlines()
    assert lines[1].startswith('"13') and all(line.count('"') % 2 == 0 for line in lines)
    rows = _rows(made.files["offences"])
    assert any("," in r["location_address"] for r in rows)
    assert all(r["easting"] == "" or r["easting"].isdigit() for r in rows)
    assert all(r["longitude"] == "" or len(r["longitude"].split(".")[1]) == 6 for r in rows)


def test_the_demo_month_is_last_month():
    from datetime import date

    from csp_observatory import demo

    assert demo.last_month(date(2026, 11, 30)) == "202610"
    assert demo.last_month(date(2027, 1, 1)) == "202612"
    assert demo.last_month(date(2024, 3, 31)) == "202402"


def test_a_supply_made_in_parts_joins_into_one_with_distinct_references(made, schema, calderdale, tmp_path):
    """benchmarks/end_to_end.py makes a supply too large to hold at once in parts (``first_offence``): joined,
    the parts are one supply whose crime references are all distinct, with people linked to their own part's."""
    from csp_observatory import fixtures, metadata_checks, metadata_file

    parts = [demo_data.make_police_recorded_crime("202609", calderdale, n_offences=200, seed=demo_data.DEFAULT_SEED + i,
                                                  first_offence=1 + 200 * i) for i in range(2)]
    assert parts[0].files == made.files          # the first part is the supply made at once
    joined: dict[str, str] = {}
    for name in made.files:
        header, _, first_body = parts[0].files[name].partition("\n")
        joined[name] = header + "\n" + first_body + parts[1].files[name].partition("\n")[2]
    offences = _rows(joined["offences"])
    references = [r["crime_reference"] for r in offences if r["crime_reference"]]
    # the deliberately repeated rows of each part repeat a reference of their own part, no other
    assert len(references) - len(set(references)) == 2 * 2
    first = {r["crime_reference"] for r in _rows(parts[0].files["offences"])} - {""}    # (one blanked on purpose)
    second = {r["crime_reference"] for r in _rows(parts[1].files["offences"])} - {""}
    assert len(second) > 150 and not first & second
    for people in ("offenders", "victims"):
        linked = {r["crime_reference"] for r in _rows(parts[1].files[people])}
        assert len(linked & second) > 100 and not linked & first
    # the metadata file made from the headers and the rows counted matches the joined files as the parser reads them
    counts = {name: text.count("\n") - 1 for name, text in joined.items()}
    md = metadata_file.parse_metadata(fixtures.make_metadata(
        schema, "202609", {name: text.partition("\n")[0] + "\n" for name, text in joined.items()}, records=counts),
        schema)
    read, headers = {}, {}
    for name, text in joined.items():
        path = tmp_path / f"{name}.csv"
        path.write_text(text, encoding="utf-8")
        parsed = parsing.parse_csv(path, schema.file(name))
        read[name] = len(parsed.frame) + len(parsed.rejected)
        headers[name] = next(csv.reader(io.StringIO(text)))
    assert read == counts
    assert metadata_checks.check_against(md, schema, "202609", read, headers) == []
