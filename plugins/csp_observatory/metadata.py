"""Supply metadata (guidance section 3.4): what a partner's description of a supply is, and its file's name.

A supply may carry one metadata file, encrypted and signed like its data files and named after the feed's files:
``prc_metadata_202609.yaml.gpg`` for police recorded crime (:func:`metadata_pattern`). The first supply of a feed
must carry one (:func:`missing_reason`). It is YAML written by hand (JSON is accepted too) and holds what section
3.4 lists: the agency, the supplier and a contact, the dataset, the period covered, the file format, the number of
records and the datafields of each file (with explanations where a name is not self-explanatory), the date supplied
and the caveats on use; and, as the guidance asks "from the outset", the coding systems used and how any
coordinates were made. ``include/examples/police_recorded_crime_metadata.yaml`` is a complete example and
``docs/PARTNERS.md`` (*Supply metadata*) documents it for partners.

This module holds what the others share: :class:`SupplyMetadata` and its parts, :class:`MetadataError`, the
:class:`Mismatch` kinds, the file's name, and the reasons given to a partner. A supply's metadata then goes, as
``pipeline.py`` wires it: intake takes the file with its supply (:func:`match_metadata`); the parse stage reads it
(``metadata_file.py``) and checks it against the data (``metadata_checks.py``); the load keeps it in the catalogue
and the tables' comments in its own transaction (``metadata_catalogue.py``), then writes the feed's caveats for the
DAG's docs, and the report shows it (``metadata_docs.py``). Importing this module does not import pandas.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final, Mapping

from csp_observatory.schema import FeedSchema

#: Largest metadata file read, in bytes (a hand-written file is a few kilobytes).
MAX_BYTES: Final = 1_000_000

#: Mismatch kinds (Mismatch.kind), in the order a report lists them.
FEED: Final = "feed"
PERIOD: Final = "period"
FILE_NOT_DESCRIBED: Final = "file_not_described"
FILE_NOT_RECEIVED: Final = "file_not_received"
RECORD_COUNT: Final = "record_count"
DATAFIELD_NOT_IN_FILE: Final = "datafield_not_in_file"
DATAFIELD_NOT_LISTED: Final = "datafield_not_listed"
DATAFIELD_NOT_IN_SCHEMA: Final = "datafield_not_in_schema"
REQUIRED_DATAFIELD_NOT_LISTED: Final = "required_datafield_not_listed"
KINDS: Final = (FEED, PERIOD, FILE_NOT_DESCRIBED, FILE_NOT_RECEIVED, RECORD_COUNT, DATAFIELD_NOT_IN_FILE,
                DATAFIELD_NOT_LISTED, DATAFIELD_NOT_IN_SCHEMA, REQUIRED_DATAFIELD_NOT_LISTED)

#: A name that may be quoted back to a partner (a key or a datafield name); anything else is described, not shown.
_SHOWABLE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _./()-]{0,63}")


def header_key(text: str) -> str:
    """:func:`parsing.header_key`, imported on first use: parsing loads pandas, and the DAG file imports this module
    at parse time (:func:`dag_doc`), when every second counts."""
    from csp_observatory.parsing import header_key as key

    return key(text)


class MetadataError(ValueError):
    """A metadata file that cannot be used; ``problems`` lists each problem in a partner's words."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("The metadata file cannot be used: " + "; ".join(self.problems) + ".")


@dataclass(frozen=True)
class Supplier:
    """Who supplied the data: a team or person, and how to reach them (personal data: engineers only)."""

    name: str
    contact: str


@dataclass(frozen=True)
class FileMetadata:
    """What the partner says of one file of the supply."""

    file: str                                        # the schema's name for it: offences, offenders, victims
    records: int
    datafields: tuple[tuple[str, str | None], ...]   # (datafield name as written, explanation or None)

    @property
    def field_names(self) -> list[str]:
        return [name for name, _ in self.datafields]

    @property
    def explanations(self) -> dict[str, str]:
        """Explanations by normalised datafield name (as :func:`parsing.header_key` reads a header)."""
        return {header_key(name): text for name, text in self.datafields if text}


@dataclass(frozen=True)
class SupplyMetadata:
    """A parsed metadata file (section 3.4), normalised; ``feed`` is the feed it was checked against."""

    feed: str
    dataset: str
    agency: str
    supplier: Supplier
    period: str | None          # the supply period (as in the file names); None if start-end is not one period
    period_start: date | None
    period_end: date | None
    file_format: str
    date_supplied: date
    files: tuple[FileMetadata, ...]
    caveats: tuple[str, ...]
    coding_systems: dict[str, str | dict[str, str]] = field(default_factory=dict)
    geographic_method: str | None = None
    conditions_of_use: str | None = None

    def file(self, name: str) -> FileMetadata:
        for f in self.files:
            if f.file == name:
                return f
        raise KeyError(name)

    def to_document(self) -> dict[str, Any]:
        """A JSON-able dict (the catalogue's ``document``); :meth:`from_document` reads it back."""
        return {
            "feed": self.feed, "dataset": self.dataset, "agency": self.agency,
            "supplier": {"name": self.supplier.name, "contact": self.supplier.contact},
            "period": self.period,
            "period_start": self.period_start.isoformat() if self.period_start else None,
            "period_end": self.period_end.isoformat() if self.period_end else None,
            "file_format": self.file_format, "date_supplied": self.date_supplied.isoformat(),
            # lists, not objects, wherever order matters: jsonb does not keep the order of an object's keys
            "files": [{"file": f.file, "records": f.records,
                       "datafields": [{"name": n, "explanation": e} for n, e in f.datafields]} for f in self.files],
            "caveats": list(self.caveats),
            "coding_systems": [{"datafield": name, "codes": [{"code": c, "meaning": m} for c, m in system.items()]}
                               if isinstance(system, dict) else {"datafield": name, "system": system}
                               for name, system in self.coding_systems.items()],
            "geographic_method": self.geographic_method, "conditions_of_use": self.conditions_of_use,
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> SupplyMetadata:
        """The inverse of :meth:`to_document`."""
        def day(v: str | None) -> date | None:
            return date.fromisoformat(v) if v else None
        return cls(
            feed=doc["feed"], dataset=doc["dataset"], agency=doc["agency"],
            supplier=Supplier(**doc["supplier"]), period=doc.get("period"),
            period_start=day(doc.get("period_start")), period_end=day(doc.get("period_end")),
            file_format=doc["file_format"], date_supplied=date.fromisoformat(doc["date_supplied"]),
            files=tuple(FileMetadata(f["file"], int(f["records"]),
                                     tuple((d["name"], d.get("explanation")) for d in f["datafields"]))
                        for f in doc["files"]),
            caveats=tuple(doc.get("caveats") or ()),
            coding_systems={c["datafield"]: {x["code"]: x["meaning"] for x in c["codes"]} if "codes" in c
                            else c["system"] for c in doc.get("coding_systems") or ()},
            geographic_method=doc.get("geographic_method"), conditions_of_use=doc.get("conditions_of_use"),
        )


@dataclass(frozen=True)
class Mismatch:
    """One difference between the metadata and the supply, with a plain message for the report."""

    kind: str
    message: str
    file: str | None = None
    datafield: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "file": self.file, "datafield": self.datafield}


# --- the file name -------------------------------------------------------------------------------------------------

def _period_group(pattern: str) -> str | None:
    """The sub-pattern of a file pattern's ``(?P<period>...)`` group, brackets balanced; None if there is none."""
    start = pattern.find("(?P<period>")
    if start < 0:
        return None
    i, depth, body = start + len("(?P<period>"), 1, start + len("(?P<period>")
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth == 0:
            return pattern[body:i]
        i += 1
    return None


def _literal_prefix(pattern: str) -> str | None:
    """The plain text a file pattern starts with before its period (``prc_offences_``), or None if not plain."""
    m = re.match(r"\^?((?:[A-Za-z0-9_-]|\\[-_.])*)\(\?P<period>", pattern)
    return re.sub(r"\\(.)", r"\1", m.group(1)) if m else None


def metadata_prefix(schema: FeedSchema) -> str:
    """What a feed's metadata file name starts with: the text its files' names share (``prc``), else the feed id."""
    prefixes = [_literal_prefix(f.pattern) for f in schema.files]
    if not prefixes or any(p is None for p in prefixes):
        return schema.feed
    common = prefixes[0] or ""
    for p in prefixes[1:]:
        while not (p or "").startswith(common):
            common = common[:-1]
    if len(prefixes) > 1:
        cut = max(common.rfind("_"), common.rfind("-"))
        common = common[:cut] if cut > 0 else ""
    common = common.rstrip("_-")
    return common or schema.feed


def metadata_pattern(schema: FeedSchema) -> str:
    """The regular expression of a feed's metadata file names, with a ``period`` group like its data files'.

    ``^prc_metadata_(?P<period>\\d{6})\\.(?:yaml|yml|json)\\.gpg$`` for police recorded crime; match it with
    ``re.fullmatch`` (as ``FeedFile.match`` does). The period's sub-pattern is the first file's.
    """
    group = _period_group(schema.files[0].pattern) if schema.files else None
    return (rf"^{re.escape(metadata_prefix(schema))}_metadata_(?P<period>{group or r'[0-9]+'})"
            r"\.(?:yaml|yml|json)\.gpg$")


def metadata_file_name(schema: FeedSchema, period: str) -> str:
    """The name a partner gives a period's metadata file: ``prc_metadata_202609.yaml.gpg``."""
    return f"{metadata_prefix(schema)}_metadata_{period}.yaml.gpg"


def match_metadata(schema: FeedSchema, filename: str) -> str | None:
    """The period of a metadata file of this feed (the whole name must match), or None if it is not one."""
    m = re.fullmatch(metadata_pattern(schema), filename)
    return m.group("period") if m else None


# --- what may be shown to a partner ------------------------------------------------------------------------

def _shown(name: Any) -> str:
    """A key or datafield name as it may be quoted to a partner; anything else is described, never shown."""
    text = str(name).strip() if isinstance(name, (str, int)) and not isinstance(name, bool) else ""
    return text if _SHOWABLE.fullmatch(text) else "(a name that cannot be shown)"


def coding_text(system: str | dict[str, str]) -> str:
    """A coding system as one line: its description, or "code = meaning; ..."."""
    if isinstance(system, dict):
        return "; ".join(f"{code} = {meaning}" for code, meaning in system.items())
    return system


def missing_reason(schema: FeedSchema, period: str) -> str:
    """Why a feed's first supply without a metadata file is not loaded, naming the file the partner must send."""
    name = metadata_file_name(schema, period)
    return (f"This is the first supply of {schema.title}, and the first supply of a feed must carry a metadata file "
            f"(guidance section 3.4: who supplied it, what it covers, what each datafield means and the caveats on "
            f"its use). Send {name} (or {name.replace('.yaml.gpg', '.json.gpg')} in JSON), encrypted and signed "
            f"like the data files, into inbox/. The data files of this supply stay in inbox/ and are taken again "
            f"with it. The partner guide (Supply metadata) has a complete example.")


def refused_reason(schema: FeedSchema, problems: list[str], *, required: bool, remote_name: str) -> str:
    """Why a metadata file that cannot be read was returned to the partner (its quarantine note), and what then.

    ``required``: the feed's first supply, which is not loaded without it; otherwise the data were loaded.
    """
    what = MetadataError(problems).args[0]
    if required:
        return (f"{what} This is the first supply of {schema.title}, so it is not loaded without a metadata file the "
                f"observatory can read: correct the file and upload it again as {remote_name}. The data files of "
                f"this supply stay in inbox/ and are taken again with it.")
    return (f"{what} The data of this supply were loaded without it: correct the file and send it with your next "
            f"supply of {schema.title}.")
