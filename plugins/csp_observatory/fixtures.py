"""A realistic made-up supply for any feed schema, from its datafields alone: for tests and for trying a feed.

``make_supply(schema, period, reference)`` writes every file of one supply of a feed as CSV text. Values come
(``fixture_values.py``) from each datafield's type, role, code list and pattern; locations are real postcodes and
centroids of the reference (``postcodes_sources.shipped_reference()``: Calderdale) with invented house numbers on
real street names. A few rows are made bad on purpose among the good ones and listed in ``FixtureSupply.bad_rows``
with what should happen to them:

=================  ===========================================================  ============================
bad row            how                                                          expected
=================  ===========================================================  ============================
missing required   a required datafield (else a key datafield) left empty       set aside at ``validate``
bad code           a code that is not in the datafield's list                   set aside at ``validate`` if
                                                                                the datafield is required,
                                                                                else blanked (``nulled``)
bad date           31 February                                                  set aside at ``parse``
duplicate key      an exact copy of a row, right after it                       set aside at ``clean``
=================  ===========================================================  ============================

A file keyed by content (``key: content``) has no duplicate-key row: two identical rows are two records there,
and the supply holds such a pair among its good rows. Each kind is made only where the file has a datafield for
it. Everything is drawn from one ``random.Random`` seeded by (seed, feed, period), with integer arithmetic for
every value compared exactly (no NumPy), so a seed gives the same rows and bad rows on every machine. The one
exception is a longitude/latitude (sent in some rows of a file whose location has them): pyproj computes it, and
its sixth decimal can differ where PROJ has the OSTN15 grid. Use a period in the past: dates fall in the period,
and validation blanks dates in the future.

Each supply also has its metadata file (guidance section 3.4; ``metadata.py``), made by :func:`make_metadata` to
match the files (every file's records and header), or miscounted, or left out (``make_supply(metadata=...)``).
"""
from __future__ import annotations

import csv
import hashlib
import io
import random
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

import pandas as pd
import yaml

from csp_observatory import metadata as supply_metadata
from csp_observatory.config import Settings
from csp_observatory.fixture_values import Places, good_row
from csp_observatory.metadata_file import TOP_LEVEL
from csp_observatory.pipeline_supply import Manifest, SupplyFile
from csp_observatory.schema import POINT_ROLES, REPO_ROOT, Datafield, FeedFile, FeedSchema, period_bounds

DEFAULT_SEED: Final = 20260701
#: A feed's example metadata file, if it has one: ``<feed>_metadata.yaml`` (make_metadata starts from it).
EXAMPLES_DIR: Final = REPO_ROOT / "include" / "examples"
#: What ``make_supply(metadata=...)`` can give the supply: a matching file, one whose first file is miscounted, none.
METADATA_KINDS: Final = ("matching", "miscounted", None)
HO_CODES_FILE: Final = "ho_offence_codes.csv"


@dataclass
class FixtureSupply:
    """One supply of a feed: CSV text per file, and the rows made bad on purpose (and what should happen)."""

    feed: str
    period: str
    #: schema file name (``offences``, ``incidents``...) -> CSV text, header first
    files: dict[str, str]
    #: {file, row (1-based data row), kind (missing_required | bad_code | bad_date | duplicate_key), column, why,
    #: expect (rejected | nulled), stage (parse | validate | clean)}
    bad_rows: list[dict[str, Any]] = field(default_factory=list)
    #: data rows per file (header excluded)
    rows: dict[str, int] = field(default_factory=dict)
    #: the supply's metadata file (YAML text) and its name on SFTP, or None when it has none
    metadata: str | None = None
    metadata_name: str | None = None

    def rejected(self, file_name: str) -> dict[int, str]:
        """Row number -> stage, of the rows of one file that must be set aside."""
        return {b["row"]: b["stage"] for b in self.bad_rows if b["file"] == file_name and b["expect"] == "rejected"}


def remote_name(feed_file: FeedFile, period: str) -> str:
    """The partner's file name for a period, from the file's pattern (``pi_incidents_202607.csv.gpg``)."""
    text = re.sub(r"\(\?P<period>[^)]*\)", period, feed_file.pattern.strip("^$"))
    name = re.sub(r"\\(.)", r"\1", text)
    if feed_file.match(name) != period:
        raise ValueError(f"cannot make a file name from the pattern {feed_file.pattern!r}")
    return name


def decrypted_work_area(folder: Path, schema: FeedSchema, period: str, files: dict[str, str],
                        metadata: str | None = None) -> str:
    """A supply's work folder (``folder/work``) as decrypt_and_verify leaves it: each file's plaintext and the
    Manifest naming them, with ``metadata`` as the supply's metadata file if given. For the tests and benchmarks that
    start a supply at parse_and_validate; no encrypted file exists, so each ``sha256`` is the plaintext's."""
    work = Path(folder) / "work"
    (work / "plain").mkdir(parents=True)
    m = Manifest(feed=schema.feed, period=period, work_dir=str(work), files={})
    texts = [(SupplyFile(name=name, remote_name=remote_name(schema.file(name), period), sha256="", size=0), text)
             for name, text in files.items()]
    m.files = {f.name: f for f, _ in texts}
    if metadata is not None:
        m.metadata = SupplyFile(name="metadata", remote_name=supply_metadata.metadata_file_name(schema, period),
                                sha256="", size=0)
        texts.append((m.metadata, metadata))
    for f, text in texts:
        data = text.encode("utf-8")
        plain = m.plaintext_location(f)          # where, and under the name, decrypt writes it
        plain.write_bytes(data)
        f.sha256, f.size = hashlib.sha256(data).hexdigest(), len(data)
        f.encrypted_path, f.plaintext_path = str(work / f.remote_name), str(plain)
    m.save()
    return str(work)


def _period_days(period: str, period_format: str) -> tuple[date, int]:
    start = pd.Timestamp(pd.to_datetime(period, format=period_format)).date()
    following = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return start, (following - start).days


def _bad_code(d: Datafield) -> str:
    return "999Z" if d.codes_file == HO_CODES_FILE else "not-a-code"


def _spoil(rng: random.Random, feed_file: FeedFile, rows: list[dict[str, str]],
           year: str) -> list[tuple[dict[str, str], dict[str, str]]]:
    """Make a few rows of a file bad on purpose; each with what is wrong and what should happen to it."""
    if len(rows) < 8:
        return []
    key = set(feed_file.key)
    spots = rng.sample(range(1, len(rows) - 1), 3)
    bad: list[tuple[dict[str, str], dict[str, str]]] = []

    required = [d for d in feed_file.datafields if d.required and d.name not in key] or \
        [d for d in feed_file.datafields if d.name in key]
    if required:
        d = required[rng.randrange(len(required))]
        row = rows[spots[0]]
        row[d.name] = ""
        bad.append((row, {"kind": "missing_required", "column": d.name, "why": f"{d.name} is missing (required)",
                          "expect": "rejected", "stage": "validate"}))

    coded = [d for d in feed_file.datafields if d.allowed_codes is not None and d.name not in key]
    if coded:
        strict = [d for d in coded if d.required]
        d = (strict or coded)[rng.randrange(len(strict or coded))]
        row = rows[spots[1]]
        row[d.name] = _bad_code(d)
        bad.append((row, {"kind": "bad_code", "column": d.name, "why": f"{d.name} is not a valid code",
                          "expect": "rejected" if d.required else "nulled",
                          "stage": "validate"}))

    dates = [d for d in feed_file.datafields if d.type == "date"]
    if dates:
        # Prefer a date that is not personal: the reason then names the value the partner must fix.
        plain = [d for d in dates if not d.personal] or dates
        d = plain[rng.randrange(len(plain))]
        row = rows[spots[2]]
        row[d.name] = f"31/02/{year}"
        bad.append((row, {"kind": "bad_date", "column": d.name, "why": f"{d.name} is 31 February",
                          "expect": "rejected", "stage": "parse"}))

    spoilt = {id(r) for r, _ in bad}
    good = [i for i in range(len(rows) - 1) if id(rows[i]) not in spoilt]
    at = good[rng.randrange(len(good))]
    copy = dict(rows[at])
    rows.insert(at + 1, copy)
    if not feed_file.content_key:
        bad.append((copy, {"kind": "duplicate_key", "column": ", ".join(feed_file.key),
                           "why": "exact copy of the row above (duplicate key)", "expect": "rejected",
                           "stage": "clean"}))
    # With a content key, two identical rows are two records (two pupils excluded alike): both load.
    return bad


def _write(header: list[str], rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) or "" for k in header})
    return buf.getvalue()


def make_supply(schema: FeedSchema, period: str, reference: pd.DataFrame, n: int = 60,
                seed: int = DEFAULT_SEED, metadata: str | None = "matching") -> FixtureSupply:
    """Every file of one supply of ``schema`` for ``period`` as CSV text, with bad rows among the good.

    ``reference`` is a postcode reference frame (``postcodes_sources.shipped_reference()``); ``n`` is the number of good
    rows of each file (a linked file, such as offenders, links each of its rows to a row of its target file).
    ``metadata`` (one of :data:`METADATA_KINDS`): a metadata file that matches the files, one that says the first
    file has one record more than it has, or none. Deterministic for a seed.
    """
    if n < 8:
        raise ValueError("make at least 8 rows: the bad rows need room among the good")
    if metadata not in METADATA_KINDS:
        raise ValueError(f"metadata must be one of {METADATA_KINDS}")
    rng = random.Random(f"{seed}/{schema.feed}/{period}")
    places = Places(reference)
    start, days = _period_days(period, schema.period_format)
    # Files that others link to first, so their references exist when a linked file draws on them.
    order = sorted(schema.files, key=lambda f: f.links_to is not None)
    made: dict[str, list[dict[str, str]]] = {}
    bad_rows: list[dict[str, Any]] = []
    for feed_file in order:
        links: dict[str, list[str]] = {}
        if feed_file.links_to:
            target, column = feed_file.links_to["file"], feed_file.links_to["column"]
            links[column] = sorted({r[column] for r in made.get(target, []) if r.get(column)})
        rows = [good_row(rng, feed_file, places, period, start, days, seq, links) for seq in range(1, n + 1)]
        bad = _spoil(rng, feed_file, rows, period[:4])
        made[feed_file.name] = rows
        # Row numbers are known only once every bad row is in place.
        position = {id(r): i + 1 for i, r in enumerate(rows)}
        bad_rows += [{"file": feed_file.name, "row": position[id(r)], **info} for r, info in bad]
    files = {f.name: _write(f.field_names, made[f.name]) for f in schema.files}
    rows = {name: len(rows) for name, rows in made.items()}
    text = None
    if metadata is not None:
        first = schema.files[0].name
        text = make_metadata(schema, period, files,
                             records={first: rows[first] + 1} if metadata == "miscounted" else None)
    return FixtureSupply(feed=schema.feed, period=period, files=files,
                         bad_rows=sorted(bad_rows, key=lambda b: (b["file"], b["row"])), rows=rows, metadata=text,
                         metadata_name=supply_metadata.metadata_file_name(schema, period) if text else None)


def _records_and_header(text: str) -> tuple[int, list[str]]:
    """A CSV file's data records (as the parser counts them: blank lines are none) and its header cells."""
    records = [r for r in csv.reader(io.StringIO(text, newline="")) if any(c.strip() for c in r)]
    return max(len(records) - 1, 0), (records[0] if records else [])


def make_metadata(schema: FeedSchema, period: str, files: dict[str, str], *,
                  records: dict[str, int] | None = None, caveats: list[str] | None = None,
                  date_supplied: date | None = None) -> str:
    """A metadata file (guidance section 3.4) for a supply of ``schema``, as the partner would write it: YAML text.

    It matches ``files`` (file name -> CSV text): each file's records are its data rows and its datafields its
    header, so ``metadata_checks.check_against`` finds nothing. The feed's example in ``include/examples`` (if any) gives
    the agency, supplier, explanations, caveats, coding systems and how coordinates were made; other feeds get
    plain made-up ones. ``records`` overrides a file's count (a mismatch on purpose), ``caveats`` the caveats.
    Deterministic: the date supplied is, by default, twelve days after the period ends.
    """
    example = EXAMPLES_DIR / f"{schema.feed}_metadata.yaml"
    if example.exists():
        doc: dict[str, Any] = yaml.safe_load(example.read_text(encoding="utf-8"))
    else:
        doc = {"agency": schema.partner.agency,
               "supplier": {"name": f"Data team, {schema.partner.name}", "contact": "data-team@partner.example"},
               "dataset": schema.feed,
               "file_format": "CSV (UTF-8, comma-separated, one header row), encrypted and signed with OpenPGP",
               "files": {},
               "caveats": [f"Made-up records for trying the {schema.title} feed: they describe no real event."],
               "geographic_method": "Geocoded from the address by the partner's own gazetteer (made-up points)."}
    bounds = period_bounds(schema.period_format, period)
    explained = {name: entry.get("datafields") for name, entry in (doc.get("files") or {}).items()}
    out_files: dict[str, Any] = {}
    listed: set[str] = set()
    for f in schema.files:
        if f.name not in files:
            continue
        count, header = _records_and_header(files[f.name])
        known = explained.get(f.name) if isinstance(explained.get(f.name), dict) else {}
        names = [cell for cell in header if cell.strip()]
        listed |= {supply_metadata.header_key(c) for c in names}
        # name: explanation where there are explanations, else the plain list a partner may write instead
        fields: Any = {c: known.get(c) for c in names} if any(known.get(c) for c in names) else names
        out_files[f.name] = {"records": (records or {}).get(f.name, count), "datafields": fields}
    coordinates = any(d.role in POINT_ROLES and supply_metadata.header_key(d.name) in listed
                      for f in schema.files for d in f.datafields)
    if caveats is not None:
        doc["caveats"] = list(caveats)
    doc.update({
        "period": period, "files": out_files,
        "date_supplied": date_supplied or ((bounds[1] if bounds else date(2026, 1, 1)) + timedelta(days=12)),
    })
    if not coordinates:
        doc.pop("geographic_method", None)
    text = yaml.safe_dump({k: doc[k] for k in TOP_LEVEL if k in doc}, sort_keys=False,
                          allow_unicode=True, width=110)
    # "name:" with nothing after it, as a person writes a self-explanatory datafield (YAML reads it as null)
    return re.sub(r"(?m)^(\s+[^\s:#]+): null$", r"\1:", text)


class OfflineSettings:
    """Settings for running the stages that need neither SFTP nor PostGIS on a work area (parse and validate,
    clean), in tests: a stage that reaches for any other setting fails with an AssertionError that names it. They
    carry only how a stage spreads its files over processes (``file_workers.py``), at its defaults."""

    file_workers = Settings.file_workers
    file_workers_min_mb = Settings.file_workers_min_mb

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the stage reached for settings.{name}: it should not need services here")
