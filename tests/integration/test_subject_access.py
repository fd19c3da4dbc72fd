"""Subject access on the real services: one person sent by two personalised feeds (a PPO list and a prison release
list, each through its DAG from an SFTP drop) is found in both tables by name and date of birth, and in the PPO
table by offender id; the export is private and the run is logged without the identifiers."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from datetime import date, datetime

import pytest

from csp_observatory import demo, fixtures, postcodes_sources, subject_access
from csp_observatory.schema_loading import schema_for
from csp_observatory.schema import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_partner_folders", "reference_loaded")]

PERIOD = "202603"                     # this module's own month
PPO, RELEASES = "prolific_priority_offenders", "prison_releases"
PERSON = "Zebedee Quillfeather"       # no demo generator makes this name


def _rewrite(text: str, row: int, **values: str) -> tuple[str, dict[str, str]]:
    """The CSV with data row ``row`` (1-based) changed, every other line as it was (the fixtures' bad rows stay
    bad); returns the new text and the row as it was."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    first_line = reader.line_num
    for number, record in enumerate(reader, start=1):
        if number == row:
            break
        first_line = reader.line_num
    else:
        raise IndexError(row)
    before = dict(zip(header, record))
    changed = [values.get(name, value) for name, value in zip(header, record)]
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(changed)
    lines = text.split("\n")
    lines[first_line:reader.line_num] = [out.getvalue()]
    return "\n".join(lines), before


def _iso(text: str) -> str:
    """A fixture's date of birth (ISO, or day first as UK partners write it) as YYYY-MM-DD."""
    for fmt in ("%Y-%m-%d", "%d/%m/%Y", "%d-%m-%Y", "%d.%m.%Y", "%Y/%m/%d"):
        try:
            return datetime.strptime(text.strip(), fmt).date().isoformat()
        except ValueError:
            continue
    raise ValueError(f"no date of birth in row: {text!r}")


@pytest.fixture(scope="module")
def person_in_two_feeds(settings):
    """The first good row of the PPO file (none of the fixtures' bad rows) is the person; so is the first good row
    of the releases, and the second has the same name with another date of birth (someone else)."""
    reference = postcodes_sources.shipped_reference()
    ppo = fixtures.make_supply(schema_for(PPO), PERIOD, reference, n=10)
    rel = fixtures.make_supply(schema_for(RELEASES), PERIOD, reference, n=10)

    def good(supply, file_name: str) -> list[int]:
        bad = {b["row"] for b in supply.bad_rows if b["file"] == file_name}
        n = len(list(csv.DictReader(io.StringIO(supply.files[file_name]))))
        return [r for r in range(1, n + 1) if r not in bad]

    ppo_row, (rel_row, other_row) = good(ppo, "offenders")[0], good(rel, "releases")[:2]
    _, first = _rewrite(ppo.files["offenders"], ppo_row)
    dob = _iso(first["date_of_birth"])          # the same day, written one way in both files
    ppo_text, _ = _rewrite(ppo.files["offenders"], ppo_row, name=PERSON, date_of_birth=dob)
    rel_text, _ = _rewrite(rel.files["releases"], rel_row, name=f"  {PERSON.upper()} ", date_of_birth=dob)
    other_dob = "1950-01-01" if dob != "1950-01-01" else "1951-01-01"
    rel_text, _ = _rewrite(rel_text, other_row, name=PERSON, date_of_birth=other_dob)
    return {"dob": dob, "reference": first["offender_reference"],
            "supplies": {PPO: ({"offenders": ppo_text}, ppo.metadata),
                         RELEASES: ({"releases": rel_text}, rel.metadata)}}


@pytest.fixture()
def loaded(settings, db, forget_supply, person_in_two_feeds):
    for feed, (files, metadata) in person_in_two_feeds["supplies"].items():
        forget_supply(db, schema_for(feed), PERIOD)
        demo.drop_demo_supply(settings, schema_for(feed), PERIOD, files=files, metadata=metadata)
        demo.run_feed_dag(feed)
    yield person_in_two_feeds
    for feed in person_in_two_feeds["supplies"]:
        forget_supply(db, schema_for(feed), PERIOD)


def _log_rows(db) -> list[tuple]:
    with db.cursor() as cur:
        cur.execute("SELECT to_regclass('observatory.subject_access_log') IS NOT NULL")
        if not cur.fetchone()[0]:
            db.rollback()
            return []
        cur.execute("SELECT id, requested_by, identifier_kinds, identifiers_sha256, records_found, found_by_table, "
                    "row_to_json(l)::text FROM observatory.subject_access_log l ORDER BY id")
        rows = cur.fetchall()
    db.rollback()
    return rows


def test_a_person_is_found_in_every_personal_table_that_holds_them_and_the_run_is_logged(settings, db, loaded,
                                                                                         tmp_path):
    before = len(_log_rows(db))
    ids = subject_access.Identifiers(name=PERSON.lower(), date_of_birth=date.fromisoformat(loaded["dob"]))
    out = subject_access.run(ids, tmp_path / "export", "csv", requested_by="test DPO", settings=settings)
    ppo_table = f"personal.{schema_for(PPO).files[0].table}"
    rel_table = f"personal.{schema_for(RELEASES).files[0].table}"
    assert out["found"][ppo_table] >= 1 and out["found"][rel_table] >= 1
    # only this person: the same name with another date of birth is someone else
    for table in (ppo_table, rel_table):
        path = tmp_path / "export" / f"{table}.csv"
        assert os.stat(path).st_mode & 0o777 == 0o600
        rows = list(csv.DictReader(path.open(encoding="utf-8")))
        assert len(rows) == out["found"][table]
        assert all(" ".join(r["name"].split()).lower() == PERSON.lower() and r["date_of_birth"] == loaded["dob"]
                   and r["supply_id"].endswith(PERIOD) for r in rows)
    assert os.stat(tmp_path / "export").st_mode & 0o777 == 0o700
    # the run is logged: who, which kinds, a hash, the counts; never the name or the date of birth
    log = _log_rows(db)
    assert len(log) == before + 1
    row_id, who, kinds, digest, found, by_table, text = log[-1]
    assert (row_id, who, found) == (out["log_id"], "test DPO", sum(out["found"].values()))
    assert kinds == ["name", "date_of_birth"] and digest == ids.digest() and len(digest) == 64
    assert by_table[rel_table] == out["found"][rel_table]
    assert "quillfeather" not in text.lower() and loaded["dob"] not in text

    # the offender id alone finds the PPO record, through the documented command, as JSON
    done = subprocess.run([str(REPO_ROOT / "scripts" / "subject_access"), "--reference", loaded["reference"],
                           "--out", str(tmp_path / "by_id"), "--format", "json", "--requested-by", "test DPO"],
                          env={**os.environ, "CSP_CONFIG": str(REPO_ROOT / ".run" / "test" / "observatory.yaml")},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = json.loads((tmp_path / "by_id" / f"{ppo_table}.json").read_text(encoding="utf-8"))
    assert {r["offender_reference"] for r in records} == {loaded["reference"]}
    assert not (tmp_path / "by_id" / f"{rel_table}.json").exists()
    assert len(_log_rows(db)) == before + 2


def test_a_search_needs_a_name_or_an_id(settings, tmp_path):
    with pytest.raises(ValueError, match="name"):
        subject_access.run(subject_access.Identifiers(), tmp_path, settings=settings)
    assert not any(tmp_path.iterdir())                # nothing exported
