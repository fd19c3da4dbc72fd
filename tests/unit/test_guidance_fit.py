"""The schema format carries the guidance's datasets: a guidance-exact file loads, files without a reference number
get a stable key, and the lint refuses unsafe or over-demanding schemas (issue 7, the schema format)."""
from __future__ import annotations

import csv
import io
import re
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from csp_observatory import cleaning, ddl, parsing, record_keys, schema_docs, validation
from csp_observatory.schema import CONTENT_KEY_COLUMN, SchemaError
from csp_observatory.schema_loading import load_schemas, parse_schema

pytestmark = pytest.mark.unit

SCHEMAS = load_schemas()


def _value(d, period_start: datetime) -> str:
    """A valid value for a datafield, from its type, codes and pattern alone."""
    if d.allowed_codes:
        return sorted(d.allowed_codes)[0]
    if d.pattern:
        for candidate in ("AB1234", "CR00001", "1234", "A1"):
            if re.fullmatch(d.pattern, candidate):
                return candidate
        pytest.skip(f"no sample value for the pattern of {d.name}")
    return {"string": "Some text", "date": period_start.strftime("%Y-%m-%d"), "time": "12:30", "integer": "30",
            "float": "-1.86" if d.role == "longitude" else "53.72" if d.role == "latitude" else "1.5",
            "boolean": "Y", "postcode": "HX1 1AA"}[d.type] if d.role not in ("easting", "northing") else \
        ("409500" if d.role == "easting" else "425500")


@pytest.mark.parametrize("schema,feed_file", [(s, f) for s in SCHEMAS for f in s.files],
                         ids=lambda v: getattr(v, "feed", None) or getattr(v, "name", ""))
def test_a_file_with_exactly_the_guidance_datafields_loads(schema, feed_file, tmp_path):
    start = datetime.strptime("202609", schema.period_format) if schema.period_format == "%Y%m" else datetime(2026, 9, 1)
    listed = [d for d in feed_file.datafields if d.guidance]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([d.name for d in listed])
    for _ in range(3):
        writer.writerow([_value(d, start) for d in listed])
    path = tmp_path / "exact.csv"
    path.write_text(out.getvalue(), encoding="utf-8")
    parsed = parsing.parse_csv(path, feed_file)           # raises MalformedFile if a required column is missing
    kept, rejected, _ = validation.apply_row_rules(parsed.frame, feed_file)
    assert rejected.empty, rejected["reason"].tolist()
    result = cleaning.clean(kept, feed_file)
    # three identical rows: a file keyed by content keeps all three; one keyed by reference keeps the first
    assert len(result.frame) == (3 if feed_file.content_key else 1)


def test_content_keys_are_stable_and_tell_identical_rows_apart():
    frame = pd.DataFrame({"crime_reference": ["CR1", "CR1", "CR2", "CR1"], "gender": ["F", "F", "M", "M"],
                          "age": pd.array([30, 30, None, 41], dtype="Int64")})
    keys = record_keys.content_keys(frame, ["crime_reference", "gender", "age"])
    assert keys.is_unique and keys.str.fullmatch(r"[0-9a-f]{32}-\d+").all()
    assert keys[0][:32] == keys[1][:32] and keys[0].endswith("-1") and keys[1].endswith("-2")
    # a re-sent supply in another order gives every record the same key
    shuffled = frame.iloc[[3, 2, 1, 0]].reset_index(drop=True)
    again = record_keys.content_keys(shuffled, ["crime_reference", "gender", "age"])
    assert sorted(again) == sorted(keys)
    assert again[0] == keys[3] and again[1] == keys[2]
    # any change to a loaded value changes the key; a missing value differs from the text "<NA>"
    changed = frame.assign(age=pd.array([31, 30, None, 41], dtype="Int64"))
    assert record_keys.content_keys(changed, ["crime_reference", "gender", "age"])[0] != keys[0]
    assert record_keys.content_keys(pd.DataFrame({"a": [None]}), ["a"])[0] != \
        record_keys.content_keys(pd.DataFrame({"a": ["<NA>"]}), ["a"])[0]


def test_a_content_keyed_table_has_row_key_in_its_primary_key():
    prc = next(s for s in SCHEMAS if s.feed == "police_recorded_crime")
    victims = prc.file("victims")
    assert victims.content_key and victims.table_key == (CONTENT_KEY_COLUMN,)
    assert CONTENT_KEY_COLUMN in [c.name for c in ddl.table_columns(prc, victims)]
    assert CONTENT_KEY_COLUMN not in [c.name for c in ddl.table_columns(prc, prc.file("offenders"))]


def _minimal(**overrides) -> dict:
    raw = {"feed": "t", "title": "T", "guidance_section": "3.2.99", "dataset_type": "depersonalised",
           "partner": {"id": "p", "agency": "A", "name": "N"},
           "supply_cycle": {"schedule": "@daily", "description": "daily"},
           "files": {"f": {"pattern": r"^t_(?P<period>\d{6})\.csv\.gpg$", "table": "t", "key": ["ref"],
                           "datafields": [{"name": "ref", "type": "string", "role": "reference_number",
                                           "required": True}]}}}
    raw["files"]["f"]["datafields"] += overrides.pop("fields", [])
    raw["files"]["f"].update(overrides)
    return raw


def test_the_lint_refuses_what_the_guidance_does_not_ask_for():
    parse_schema(_minimal(fields=[{"name": "extra", "type": "integer", "role": "attribute", "guidance": False}]))
    with pytest.raises(SchemaError, match="cannot be required"):
        parse_schema(_minimal(fields=[{"name": "extra", "type": "integer", "role": "attribute",
                                       "guidance": False, "required": True}]))
    with pytest.raises(SchemaError, match="never asks for names"):
        parse_schema(_minimal(fields=[{"name": "who", "type": "string", "role": "name", "required": True}]))
    with pytest.raises(SchemaError, match="key must be a list"):
        parse_schema(_minimal(key="ref"))
    assert parse_schema(_minimal(key="content")).files[0].content_key


def test_the_airflow_docs_say_which_fields_the_guidance_lists_and_what_sanitising_does():
    prc = next(s for s in SCHEMAS if s.feed == "police_recorded_crime")
    doc = schema_docs.doc_md(prc)
    assert "| `victim_reference` |" in doc and "no (optional)" in doc
    assert re.search(r"\| `offender_name` \|.*\| dropped \|", doc)
    assert re.search(r"\| `method_of_entry` \|.*\| scrubbed \|", doc)
    assert "a hash of each row (no reference number)" in doc


def _content_keys_per_row(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """The content key as first written, a row at a time: the reference the batched one must equal."""
    import hashlib

    seen: dict[str, int] = {}
    keys = []
    for row in frame[columns].astype("string").itertuples(index=False):
        text = "\x1f".join("\x00" if pd.isna(v) else str(v) for v in row)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
        seen[digest] = seen.get(digest, 0) + 1
        keys.append(f"{digest}-{seen[digest]}")
    return keys


def test_content_keys_in_batches_are_the_per_row_keys(monkeypatch):
    rng = np.random.default_rng(7)
    n = 2_000
    frame = pd.DataFrame({
        "ref": pd.array(rng.choice(["CR1", "CR2", "Ré-3", "", None], n), dtype="string[pyarrow]"),
        "age": pd.array(rng.choice([30, 41, None], n), dtype="Int64"),
        "when": pd.to_datetime(rng.choice(["2026-01-02", "2026-01-03"], n)),
        "where": pd.array(rng.choice(["HX1 1AA", None], n), dtype="string[python]"),
    })
    columns = ["ref", "age", "when", "where"]
    # small batches, so that rows repeat across their boundaries (few distinct rows: many occurrences)
    monkeypatch.setattr(record_keys, "KEY_BATCH_ROWS", 97)
    keys = record_keys.content_keys(frame, columns)
    assert keys.tolist() == _content_keys_per_row(frame, columns)
    assert keys.is_unique and keys.str.split("-").str[-1].astype(int).max() > 10
    monkeypatch.setattr(record_keys, "KEY_BATCH_ROWS", 1 << 18)
    assert record_keys.content_keys(frame, columns).tolist() == keys.tolist()
