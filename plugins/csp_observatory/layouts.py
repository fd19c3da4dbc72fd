"""Partner layouts: turn a partner's own file into the canonical CSV of one feed file, before parsing.

A partner's system names columns its own way and writes codes as words. A *layout* (one YAML file per
partner layout in ``include/layouts/``) declares, for one feed file, which partner header gives each canonical
datafield, which declared transforms and code maps apply on the way, which partner columns are dropped and
which rows are set aside with a reason. :func:`apply` writes a UTF-8 CSV whose header is the target's
datafield names, which :func:`csp_observatory.parsing.parse_csv` then reads as if the partner had sent it.

Nothing is guessed: only declared transforms run, a value a code map does not know is passed on unchanged for
validation to judge, a partner column neither mapped nor dropped is left out and named in the notes, and a
required datafield with no column in the file refuses the file (:class:`~csp_observatory.parsing.MalformedFile`)
with a reason naming the datafield and the header expected, never a value. See ``docs/LAYOUTS.md``.

The target is a :class:`~csp_observatory.schema.FeedFile`, or a plain list of canonical names for datasets
whose feed schema is not written yet (stop and search, A&E assaults): the YAML then names the target itself.
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from xml.parsers import expat

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import yaml

from csp_observatory.parsing import MalformedFile, _decode, _read_records, empty_rejected, rejected_frame, split_rows
from csp_observatory.schema import REFERENCE_DIR, REPO_ROOT, SCHEMA_DIR, FeedFile, SchemaError, load_schema

LAYOUT_DIR: Final = REPO_ROOT / "include" / "layouts"
FORMATS: Final = frozenset({"csv", "xml"})
#: Transforms that take no argument, and those that take one (with the argument's type).
_PLAIN: Final = frozenset({"upper", "lower", "trim", "month_start", "date_of", "time_of"})
_WITH_ARG: Final = {"strip_prefix": str, "truncate": int, "prefix": str, "blank": list}
_QUOTES: Final = "'\"`\u2018\u2019\u201c\u201d"
# Dates and date-times as partners write them: ISO (xs:dateTime, police.uk's 2026-09-03T21:14:00+01:00, with a
# space instead of T) or UK day-first. Seconds, fractions and the offset are read and let go: the canonical
# time is local wall-clock HH:MM, as written (police.uk writes local time with its offset).
_ISO_DT: Final = (r"^\s*(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})"
                  r"(?:[T ]\s*(?P<H>\d{1,2}):(?P<M>\d{2})(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}:?\d{2})?)?\s*$")
_UK_DT: Final = (r"^\s*(?P<d>\d{1,2})/(?P<m>\d{1,2})/(?P<y>\d{4})"
                 r"(?:[T ]\s*(?P<H>\d{1,2}):(?P<M>\d{2})(?::\d{2}(?:\.\d+)?)?)?\s*$")
_ID_SEP: Final = "\x1f"     # a character no partner value holds, so joined keys cannot run into each other


class LayoutError(ValueError):
    """A layout file is not valid, or does not fit its target (an observatory mistake, not the partner's)."""


def key(text: str) -> str:
    """A header, element name or code word as a lookup key: case-, space- and punctuation-insensitive.

    ``Crime ID``, ``crime_id`` and ``CRIME-ID`` are one key; so are the ISB 1594 data element
    ``SITE CODE (OF TREATMENT)`` and its XML element ``<SiteCodeOfTreatment>``: the CSV and XML forms of one
    data set then share one mapping.
    """
    return re.sub(r"[\W_]+", "", text.casefold())


def _bare(text: str) -> str:
    # Reports withhold anything in quote marks as if it were a value: a header named in a reason carries none.
    return "".join(ch for ch in text if ch not in _QUOTES).strip()


def _keys(values: pd.Series) -> pd.Series:
    """:func:`key` over a Series."""
    return values.str.casefold().str.replace(r"[\W_]+", "", regex=True)


# --- the layout --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Transform:
    """One declared transform of a value: ``name`` (see docs/LAYOUTS.md) and its argument, if any."""

    name: str
    arg: Any = None


@dataclass(frozen=True)
class Generate:
    """A generated reference: a hash of canonical values plus the row's occurrence among rows sharing them."""

    sources: tuple[str, ...]
    prefix: str
    length: int = 16


@dataclass(frozen=True)
class ColumnMap:
    """How one canonical datafield is made from the partner's file."""

    target: str
    #: Alternative partner headers: the first present in the file is used.
    sources: tuple[str, ...] = ()
    #: Partner headers joined with ``sep`` into one value (for example a date and a time column).
    join: tuple[str, ...] = ()
    sep: str = " "
    generate: Generate | None = None
    transforms: tuple[Transform, ...] = ()
    #: Code map by :func:`key` of the word: partner word (or code) -> the target's code.
    codes: dict[str, str] | None = None
    #: Carried for the sanitising stage: the value is free text that can hold personal data.
    free_text: bool = False

    @property
    def inputs(self) -> tuple[str, ...]:
        """Every partner header this datafield may be read from."""
        return self.sources + self.join


@dataclass(frozen=True)
class SetAside:
    """Rows whose ``column`` is empty are not mapped; each is reported with ``reason``."""

    column: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class XmlShape:
    """Where the records of an XML submission are: accepted root element names and the record element."""

    roots: tuple[str, ...]
    record: str


@dataclass(frozen=True)
class Layout:
    """One partner layout of one feed file."""

    id: str
    title: str
    feed: str
    file: str
    formats: tuple[str, ...]
    columns: tuple[ColumnMap, ...]
    drop: tuple[str, ...] = ()
    set_aside: tuple[SetAside, ...] = ()
    caveats: str = ""
    xml: XmlShape | None = None
    #: The canonical names written, in order: the schema's datafields, or the YAML's ``target.names``.
    target_names: tuple[str, ...] = ()
    #: Canonical datafields a file cannot go without.
    required: frozenset[str] = frozenset()
    #: Extra headers that must be present for :func:`detect` to pick this layout.
    detect_headers: tuple[str, ...] = ()
    source_path: Path = field(compare=False, default=Path())

    @property
    def free_text(self) -> tuple[str, ...]:
        """Canonical datafields this layout marks as free text (for the sanitising stage)."""
        return tuple(c.target for c in self.columns if c.free_text)

    @property
    def mapped(self) -> tuple[str, ...]:
        return tuple(c.target for c in self.columns)

    def column(self, target: str) -> ColumnMap:
        for c in self.columns:
            if c.target == target:
                return c
        raise KeyError(target)

    def header_groups(self) -> list[tuple[str, ...]]:
        """For :func:`detect`: the partner headers that must be present, each as a group of alternatives."""
        groups: list[tuple[str, ...]] = []
        for c in self.columns:
            if c.target in self.required:
                if c.sources:
                    groups.append(c.sources)
                groups.extend((h,) for h in c.join)
        groups.extend((h,) for h in self.detect_headers)
        return groups


@dataclass
class LayoutResult:
    """What :func:`apply` wrote and what the partner (or the observatory) should know about it."""

    rows: int
    notes: list[str]
    layout: str = ""
    #: Rows the layout set aside, in parsing's contract (source_file, source_row, reason, stage "layout").
    rejected: pd.DataFrame = field(default_factory=empty_rejected)
    #: The partner's row number of each written row: parsing's row k is the partner's ``source_rows[k - 1]``.
    source_rows: list[int] = field(default_factory=list)
    free_text: tuple[str, ...] = ()
    encoding: str = "utf-8"


# --- loading ------------------------------------------------------------------------------------------------

def _as_tuple(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise LayoutError(f"{where}: expected a header name or a list of them")


def _transforms(raw: Any, where: str) -> tuple[Transform, ...]:
    items = raw if isinstance(raw, list) else [raw] if raw is not None else []
    out = []
    for item in items:
        if isinstance(item, str) and item in _PLAIN:
            out.append(Transform(item))
        elif isinstance(item, dict) and len(item) == 1:
            (name, arg), = item.items()
            kind = _WITH_ARG.get(name)
            if kind is None:
                raise LayoutError(f"{where}: unknown transform {name!r}")
            if not isinstance(arg, kind) or isinstance(arg, bool):
                raise LayoutError(f"{where}: transform {name!r} needs a {kind.__name__} argument")
            if name == "truncate" and arg < 1:
                raise LayoutError(f"{where}: truncate needs a positive length")
            if name == "blank":
                arg = frozenset(key(str(v)) for v in arg)
            out.append(Transform(name, arg))
        else:
            raise LayoutError(f"{where}: unknown transform {item!r} (known: {sorted(_PLAIN | set(_WITH_ARG))})")
    return tuple(out)


def _reference_words(spec: dict[str, Any], where: str) -> dict[str, str]:
    """A reference CSV's code -> word column, for checking a code map against it."""
    unknown = set(spec) - {"file", "code", "word"}
    if unknown or set(spec) != {"file", "code", "word"}:
        raise LayoutError(f"{where}: codes_check needs file, code and word")
    path = REFERENCE_DIR / spec["file"]
    if path.resolve().parent != REFERENCE_DIR.resolve() or not path.is_file():
        raise LayoutError(f"{where}: codes_check file {spec['file']!r} is not in include/reference/")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if spec["code"] not in table.columns or spec["word"] not in table.columns:
        raise LayoutError(f"{where}: {spec['file']} has no column {spec['code']!r} or {spec['word']!r}")
    return dict(zip(table[spec["code"]], table[spec["word"]]))


def _column(target: str, raw: Any, where: str) -> tuple[ColumnMap, dict[str, Any] | None]:
    if isinstance(raw, str):
        raw = {"from": raw}
    if not isinstance(raw, dict):
        raise LayoutError(f"{where}: expected a header name or a mapping")
    unknown = set(raw) - {"from", "join", "sep", "generate", "transform", "codes", "codes_check", "free_text",
                          "note"}
    if unknown:
        raise LayoutError(f"{where}: unknown keys {sorted(unknown)}")
    how = [k for k in ("from", "join", "generate") if k in raw]
    if len(how) != 1:
        raise LayoutError(f"{where}: give exactly one of from, join or generate")
    generate = None
    if "generate" in raw:
        g = raw["generate"]
        if not isinstance(g, dict) or set(g) - {"from", "prefix", "length"} or "from" not in g:
            raise LayoutError(f"{where}: generate needs from (canonical names), and may give prefix and length")
        length = g.get("length", 16)
        if not isinstance(length, int) or not 8 <= length <= 64:
            raise LayoutError(f"{where}: generate length must be 8 to 64 hex digits")
        generate = Generate(_as_tuple(g["from"], where), str(g.get("prefix", "")), length)
    codes = None
    if raw.get("codes") is not None:
        if not isinstance(raw["codes"], dict):
            raise LayoutError(f"{where}: codes must map partner words to codes")
        codes = {}
        for word, code in raw["codes"].items():
            k = key(str(word))
            if k in codes and codes[k] != str(code):
                raise LayoutError(f"{where}: code words {word!r} and another read the same but map differently")
            codes[k] = str(code)
    column = ColumnMap(
        target=target, sources=_as_tuple(raw.get("from"), where), join=_as_tuple(raw.get("join"), where),
        sep=str(raw.get("sep", " ")), generate=generate,
        transforms=_transforms(raw.get("transform"), where), codes=codes, free_text=bool(raw.get("free_text")))
    if "codes_check" in raw and codes is None:
        raise LayoutError(f"{where}: codes_check checks a code map; give codes")
    return column, raw.get("codes_check")


def _schema_target(feed: str, file: str) -> FeedFile | None:
    """The feed file of an existing feed schema, or None if the feed has no schema (yet)."""
    path = SCHEMA_DIR / f"{feed}.yaml"
    if not path.is_file():
        return None
    try:
        return load_schema(path).file(file)
    except KeyError:
        raise LayoutError(f"feed {feed} has a schema but no file named {file}") from None
    except SchemaError as exc:
        raise LayoutError(f"the schema of feed {feed} is not valid: {exc}") from exc


def parse_layout(raw: dict[str, Any], source_path: Path = Path()) -> Layout:
    """Build and check a Layout from a parsed YAML document, against its feed file's schema when there is one."""
    where = source_path.name or "layout"
    if not isinstance(raw, dict):
        raise LayoutError(f"{where}: a layout is a YAML mapping")
    unknown = set(raw) - {"layout", "title", "feed", "file", "formats", "target", "caveats", "columns", "drop",
                          "set_aside", "xml", "detect", "source"}
    if unknown:
        raise LayoutError(f"{where}: unknown keys {sorted(unknown)}")
    try:
        lid, feed, file = str(raw["layout"]), str(raw["feed"]), str(raw["file"])
        formats = _as_tuple(raw.get("formats", ["csv"]), f"{where}: formats")
        columns_raw = raw["columns"]
    except KeyError as exc:
        raise LayoutError(f"{where}: missing {exc}") from None
    if not re.fullmatch(r"[a-z][a-z0-9_]*", lid):
        raise LayoutError(f"{where}: layout id must be snake_case")
    if not formats or set(formats) - FORMATS:
        raise LayoutError(f"{where}: formats must be among {sorted(FORMATS)}")
    if not isinstance(columns_raw, dict) or not columns_raw:
        raise LayoutError(f"{where}: columns must map canonical names to partner headers")

    columns, checks = [], {}
    for target, spec in columns_raw.items():
        column, check = _column(str(target), spec, f"{where}: {target}")
        columns.append(column)
        if check is not None:
            checks[column.target] = check

    xml = None
    if "xml" in formats:
        x = raw.get("xml")
        if not isinstance(x, dict) or set(x) != {"roots", "record"}:
            raise LayoutError(f"{where}: an XML layout needs xml: roots (root element names) and record")
        xml = XmlShape(tuple(key(r) for r in _as_tuple(x["roots"], where)), key(str(x["record"])))
    elif "xml" in raw:
        raise LayoutError(f"{where}: xml is given but xml is not among the formats")

    # The target: the feed file's schema if the feed has one; otherwise the names the YAML declares.
    feed_file = _schema_target(feed, file)
    declared = raw.get("target") or {}
    if declared and (not isinstance(declared, dict) or set(declared) - {"names", "required"}):
        raise LayoutError(f"{where}: target takes names and required")
    if feed_file is not None:
        names = tuple(feed_file.field_names)
        required = frozenset({d.name for d in feed_file.datafields if d.required} | set(feed_file.key))
        if declared.get("names") and set(declared["names"]) - set(names):
            raise LayoutError(f"{where}: target names not in the schema of {feed}.{file}: "
                              f"{sorted(set(declared['names']) - set(names))}")
    else:
        names = _as_tuple(declared.get("names"), f"{where}: target.names")
        required = frozenset(_as_tuple(declared.get("required"), f"{where}: target.required"))
        if not names:
            raise LayoutError(f"{where}: feed {feed} has no schema yet, so the layout must name its target "
                              f"(target: names)")
        if len(set(names)) != len(names) or not all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names):
            raise LayoutError(f"{where}: target names must be distinct snake_case names")
        if required - set(names):
            raise LayoutError(f"{where}: target.required names not in target.names: {sorted(required - set(names))}")

    mapped = [c.target for c in columns]
    if len(set(mapped)) != len(mapped):
        raise LayoutError(f"{where}: a canonical datafield is mapped twice")
    if set(mapped) - set(names):
        raise LayoutError(f"{where}: not datafields of {feed}.{file}: {sorted(set(mapped) - set(names))}")
    if required - set(mapped):
        raise LayoutError(f"{where}: required datafields of {feed}.{file} the layout does not map: "
                          f"{sorted(required - set(mapped))}")
    plain = {c.target for c in columns if c.generate is None}
    for c in columns:
        if c.generate is not None and set(c.generate.sources) - plain:
            raise LayoutError(f"{where}: {c.target}: generate reads canonical datafields the layout maps "
                              f"from the file, not {sorted(set(c.generate.sources) - plain)}")
        if c.codes is not None and feed_file is not None:
            allowed = feed_file.field(c.target).allowed_codes
            if allowed is not None and set(c.codes.values()) - allowed:
                raise LayoutError(f"{where}: {c.target}: codes not in the schema: "
                                  f"{sorted(set(c.codes.values()) - allowed)}")
    for target, check in checks.items():
        words = _reference_words(check, f"{where}: {target}")
        for word_key, code in (columns[mapped.index(target)].codes or {}).items():
            if code not in words:
                raise LayoutError(f"{where}: {target}: code {code} is not in {check['file']}")
            if key(words[code]) != word_key and key(code) != word_key:
                raise LayoutError(f"{where}: {target}: code {code} is {words[code]!r} in {check['file']}, "
                                  f"not the word it is mapped from")

    inputs = {key(h) for c in columns for h in c.inputs}
    drop = _as_tuple(raw.get("drop"), f"{where}: drop")
    if inputs & {key(h) for h in drop}:
        raise LayoutError(f"{where}: a header is both mapped and dropped: "
                          f"{sorted(h for h in drop if key(h) in inputs)}")
    set_aside = []
    for i, rule in enumerate(raw.get("set_aside") or []):
        if not isinstance(rule, dict) or set(rule) != {"when_empty", "reason"}:
            raise LayoutError(f"{where}: set_aside {i + 1} needs when_empty (a header) and reason")
        column = _as_tuple(rule["when_empty"], where)
        reason = str(rule["reason"]).strip()
        if not {key(h) for h in column} <= inputs:
            raise LayoutError(f"{where}: set_aside {i + 1}: when_empty must be a header the layout maps")
        if any(ch in reason for ch in _QUOTES):
            # Reports withhold anything quoted as if it were a value: the partner would never read the reason.
            raise LayoutError(f"{where}: set_aside {i + 1}: a reason carries no quote marks or apostrophes")
        set_aside.append(SetAside(column, reason))
    return Layout(
        id=lid, title=str(raw.get("title", lid)), feed=feed, file=file, formats=formats, columns=tuple(columns),
        drop=drop, set_aside=tuple(set_aside), caveats=str(raw.get("caveats", "")).strip(), xml=xml,
        target_names=names, required=required,
        detect_headers=_as_tuple(raw.get("detect"), f"{where}: detect"), source_path=source_path)


def load_layout(path: Path) -> Layout:
    """Read and check one layout file."""
    with open(path, encoding="utf-8") as fh:
        return parse_layout(yaml.safe_load(fh), Path(path))


def load_layouts(directory: Path = LAYOUT_DIR) -> list[Layout]:
    """Every layout in a directory, sorted by file name."""
    return [load_layout(p) for p in sorted(Path(directory).glob("*.yaml"))]


def canonical_layout(target: FeedFile | Sequence[str], feed: str = "", file: str = "",
                     required: Sequence[str] = ()) -> Layout:
    """The identity layout: a file already in the canonical layout (the header is the datafield names)."""
    if isinstance(target, FeedFile):
        names = tuple(target.field_names)
        req = frozenset({d.name for d in target.datafields if d.required} | set(target.key))
        file = file or target.name
    else:
        names, req = tuple(target), frozenset(required)
    return Layout(id="canonical", title="the canonical layout (the schema datafield names)", feed=feed,
                  file=file, formats=("csv",), columns=tuple(ColumnMap(n, sources=(n,)) for n in names),
                  target_names=names, required=req)


def layouts_for(feed: str, file: str, directory: Path = LAYOUT_DIR) -> list[Layout]:
    """The declared layouts of one feed file, then the canonical layout (most specific first, for detect)."""
    declared = [lay for lay in load_layouts(directory) if lay.feed == feed and lay.file == file]
    feed_file = _schema_target(feed, file)
    if feed_file is not None:
        return [*declared, canonical_layout(feed_file, feed, file)]
    if declared:
        first = declared[0]
        return [*declared, canonical_layout(first.target_names, feed, file, sorted(first.required))]
    return []


# --- reading the partner's file ----------------------------------------------------------------------------

@dataclass
class _Source:
    """A partner's file as text columns, before mapping."""

    headers: list[str]                 # as written (for notes)
    columns: list[pd.Series]           # one per header, string dtype, "" for empty
    rows: list[int]                    # the partner's row number of each frame row
    rejected: list[tuple[int, str]]    # rows that could not be read as records
    encoding: str = "utf-8"
    format: str = "csv"

    def __post_init__(self) -> None:
        self.index: dict[str, int] = {}
        self.repeated: set[str] = set()
        for i, h in enumerate(self.headers):
            k = key(h)
            if not k:
                continue
            if k in self.index:
                self.repeated.add(k)
            else:
                self.index[k] = i

    def find(self, names: Sequence[str]) -> str | None:
        """The key of the first of ``names`` present in the file, or None."""
        for n in names:
            if key(n) in self.index:
                return key(n)
        return None

    def get(self, k: str) -> pd.Series:
        if k in self.repeated:
            raise MalformedFile(f"the column {_bare(self.headers[self.index[k]])} appears more than once in the "
                                f"header, so it is not clear which to read")
        return self.columns[self.index[k]]


def _is_xml(data: bytes) -> bool:
    head = data[:4096]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return head[2:].decode("utf-16-le" if head[:2] == b"\xff\xfe" else "utf-16-be",
                               errors="ignore").lstrip().startswith("<")
    return head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"<")


def _series(values: list[str] | pa.ChunkedArray) -> pd.Series:
    """Text values as a pyarrow-backed string Series (building through pyarrow is the fast way)."""
    array = values if isinstance(values, pa.ChunkedArray) else pa.array(values, pa.string())
    return pd.Series(array, dtype="string[pyarrow]")


def _read_csv(data: bytes) -> _Source:
    """A partner CSV as text columns; rows numbered as parsing numbers them (the Nth record after the header)."""
    if not data.strip():
        raise MalformedFile("the file is empty: it has no header row and no data")
    text, encoding = _decode(data)      # NUL bytes, UTF-8 or cp1252: parsing's checks and reasons
    # Fast path: pyarrow, but only where it reads exactly as the strict csv module does. It accepts broken
    # quoting silently (an unclosed quote swallows the rest of the file), so a file with any double quote mark,
    # and one with blank lines (which parsing skips but still counts), is read by the csv module instead.
    if '"' not in text and all(line.strip() for line in text.splitlines()):
        first = text.split("\n", 1)[0].rstrip("\r")
        width = first.count(",") + 1
        try:
            table = pacsv.read_csv(
                io.BytesIO(text.encode("utf-8")),
                read_options=pacsv.ReadOptions(autogenerate_column_names=True, skip_rows=1),
                parse_options=pacsv.ParseOptions(quote_char=False, ignore_empty_lines=False),
                convert_options=pacsv.ConvertOptions(column_types={f"f{i}": pa.string() for i in range(width)},
                                                     strings_can_be_null=False))
        except pa.ArrowInvalid:
            table = None     # ragged rows: the csv module reads them and they are set aside one by one
        if table is not None and table.num_columns == width:
            n = table.num_rows
            return _Source(first.split(","), [_series(table.column(i)) for i in range(width)],
                           list(range(1, n + 1)), [], encoding)
    records = _read_records(text)       # strict; a broken file is refused with parsing's line-numbered reason
    while records and not any(c.strip() for c in records[0]):
        records.pop(0)
    if not records:
        raise MalformedFile("the file is empty: it has no header row and no data")
    header, body = records[0], records[1:]
    width = len(header)
    good, numbers, bad = split_rows(body, width)
    columns = list(zip(*good)) if good else [()] * width
    return _Source(header, [_series(list(c)) for c in columns], numbers, bad, encoding)


class _Stop(Exception):
    """Stops the first expat pass at the root element (detection needs no more)."""


def _refuse_dtd(*_: Any) -> None:
    raise MalformedFile("the XML file has a DOCTYPE or ENTITY declaration, which the observatory does not accept "
                        "(it can make a small file expand without limit). Send the XML without a DOCTYPE")


def _expat_pass(data: bytes, stop_at_root: bool = False) -> str:
    """Check XML for DTDs and well-formedness with expat, before any tree is built; the root element's name.

    ElementTree expands internal entities declared in a DOCTYPE (a billion-laughs bomb grows a small file to
    gigabytes), so the file is refused on the first DOCTYPE or ENTITY declaration, before anything expands.
    """
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.ExternalEntityRefHandler = _refuse_dtd
    root: list[str] = []

    def start(name: str, _attrs: Any) -> None:
        if not root:
            root.append(name.rsplit("}", 1)[-1].rsplit(":", 1)[-1])
            if stop_at_root:
                raise _Stop

    parser.StartElementHandler = start
    try:
        parser.Parse(data, True)
    except _Stop:
        pass
    except expat.ExpatError as exc:
        # expat's message names the problem and the line, never the text at fault.
        raise MalformedFile(f"the XML is not well-formed: {expat.ErrorString(exc.code)} at line {exc.lineno}. "
                            f"Export the submission again") from None
    return root[0] if root else ""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]      # namespaces are tolerated: only the local name counts


def _read_xml(data: bytes, shape: XmlShape) -> _Source:
    """An XML submission as text columns: one row per record element, with the header's values on each row.

    Leaf elements outside any record (the submission header, wherever it is nested) apply to every record; a
    record's leaf elements (at any depth) are its fields. Element names are matched by :func:`key`.
    """
    root_name = _expat_pass(data)
    if key(root_name) not in shape.roots:
        raise MalformedFile("the root element of the XML is not one this layout reads (expected one of: "
                            f"{', '.join(shape.roots)})")
    root = ET.fromstring(data)     # safe now: no DTD, so no entity but the five predefined ones
    shared: dict[str, str] = {}
    names: dict[str, str] = {}     # key -> element name as written
    records: list[ET.Element] = []

    def walk(element: ET.Element) -> None:
        for child in element:
            if key(_local(child.tag)) == shape.record:
                records.append(child)
            elif len(child):
                walk(child)
            else:
                k = key(_local(child.tag))
                names.setdefault(k, _local(child.tag))
                shared[k] = (child.text or "").strip()

    walk(root)
    rows: list[dict[str, str]] = []
    bad: list[tuple[int, str]] = []
    numbers: list[int] = []
    for number, record in enumerate(records, start=1):
        values: dict[str, str] = {}
        repeated = set()
        for leaf in record.iter():
            if leaf is record or len(leaf):
                continue
            k = key(_local(leaf.tag))
            names.setdefault(k, _local(leaf.tag))
            if k in values:
                repeated.add(_local(leaf.tag))
            values[k] = (leaf.text or "").strip()
        if repeated:
            bad.append((number, (f"row {number}: the {shape.record} element has more than one "
                                 f"{', '.join(sorted(repeated))} element, so it is not clear which to read")))
            continue
        rows.append(values)
        numbers.append(number)
    order = list(names)
    columns = [_series([r.get(k, shared.get(k, "")) for r in rows]) for k in order]
    return _Source([names[k] for k in order], columns, numbers, bad, "utf-8", "xml")


def _read(data: bytes, layout: Layout) -> _Source:
    if _is_xml(data):
        if layout.xml is None:
            raise MalformedFile(f"the file is XML but the layout {_bare(layout.title)} reads CSV files")
        return _read_xml(data, layout.xml)
    if "csv" not in layout.formats:
        raise MalformedFile(f"the file is not XML but the layout {_bare(layout.title)} reads XML submissions")
    return _read_csv(data)


# --- detection ----------------------------------------------------------------------------------------------

def _csv_header(data: bytes) -> list[str]:
    head = data[:1 << 20]
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # A cut multi-byte character at the end of the slice is fine; anything else is read as cp1252.
        text = head[:exc.start].decode("utf-8-sig") if exc.start > len(head) - 4 else head.decode("cp1252",
                                                                                                  "replace")
    try:
        for record in csv.reader(io.StringIO(text, newline="")):
            if any(c.strip() for c in record):
                return record
    except csv.Error:
        return []
    return []


def detect(source: Path | bytes, candidates: Sequence[Layout]) -> Layout | None:
    """The candidate layout a file is in, by its header (CSV) or root element (XML); None if none fits.

    A CSV layout fits when every header it needs for a required datafield is present; among those that fit,
    the one that recognises most of the file's columns wins (the canonical layout comes last on a tie).
    An XML file with a DOCTYPE is refused here too (:class:`MalformedFile`): it is never worth reading.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if _is_xml(data):
        root = key(_expat_pass(data, stop_at_root=True))
        return next((lay for lay in candidates if lay.xml is not None and root in lay.xml.roots), None)
    present = {key(h) for h in _csv_header(data)}
    best, best_score = None, 0
    for lay in candidates:
        if "csv" not in lay.formats:
            continue
        if not all(any(key(h) in present for h in group) for group in lay.header_groups()):
            continue
        score = len(present & {key(h) for c in lay.columns for h in c.inputs})
        if score > best_score:
            best, best_score = lay, score
    return best


# --- mapping ------------------------------------------------------------------------------------------------

def _date_time(values: pd.Series, part: str) -> pd.Series:
    """The date (ISO YYYY-MM-DD) or time (HH:MM) of a date or date-time; other values unchanged.

    A value that is neither form is passed on as it is, so that parsing sets the row aside with its reason; a
    date without a time has an empty time.
    """
    out = values.copy()
    for pattern in (_ISO_DT, _UK_DT):
        parts = values.str.extract(pattern)
        hit = parts["y"].notna()
        if not hit.any():
            continue
        if part == "date":
            made = parts["y"] + "-" + parts["m"].str.zfill(2) + "-" + parts["d"].str.zfill(2)
        else:
            made = (parts["H"].str.zfill(2) + ":" + parts["M"]).fillna("")
        out = out.mask(hit, made)
    return out.fillna("").astype("string[pyarrow]")


def _transform(values: pd.Series, t: Transform) -> pd.Series:
    """One declared transform; empty values stay empty."""
    empty = values == ""
    match t.name:
        case "upper":
            out = values.str.upper()
        case "lower":
            out = values.str.lower()
        case "trim":
            out = values.str.strip()
        case "strip_prefix":
            out = values.str.replace(rf"^\s*{re.escape(t.arg)}\s*", "", case=False, regex=True)
        case "truncate":
            out = values.str.slice(0, t.arg)
        case "prefix":
            out = (t.arg + values).where(~empty, "")
        case "blank":
            out = values.mask(_keys(values).isin(t.arg), "")
        case "month_start":
            # Two regex replaces run in pyarrow; an extract would run row by row in Python.
            out = values.str.replace(r"^\s*(\d{4})-(\d{2})\s*$", r"\1-\2-01", regex=True) \
                        .str.replace(r"^\s*(\d{4})-(\d)\s*$", r"\1-0\2-01", regex=True)
        case "date_of":
            out = _date_time(values, "date")
        case "time_of":
            out = _date_time(values, "time")
        case _:
            raise LayoutError(f"unknown transform {t.name}")
    return out.fillna("").astype("string[pyarrow]")


def _code_map(values: pd.Series, codes: dict[str, str], allowed: frozenset[str] | None) -> tuple[pd.Series, int]:
    """Words (or codes) to codes; a value the map does not know is passed on unchanged, and counted."""
    lookup = dict(codes)
    for code in (allowed or frozenset(codes.values())):
        lookup.setdefault(key(code), code)      # a partner already sending the code is understood
    mapped = _keys(values).map(lookup)
    unknown = (values.str.strip() != "") & mapped.isna()
    return mapped.where(mapped.notna(), values).fillna("").astype("string[pyarrow]"), int(unknown.sum())


def _generate(frame: dict[str, pd.Series], g: Generate, n: int) -> pd.Series:
    """A stable reference: prefix + hash of the given canonical values and the row's occurrence among equals.

    Stable for a re-sent file: the same values give the same hash, and the occurrence number tells apart rows
    that share them (counted in file order; such rows are alike in those values, so which is first does not
    change what is loaded). Hex digits of SHA-256 fit every reference pattern of the schemas.
    """
    if n == 0:
        return pd.Series([], dtype="string[pyarrow]")
    # A source datafield whose column is not in the file (an optional one) counts as empty.
    parts = pd.DataFrame({s: frame[s].astype(str) if s in frame else [""] * n for s in g.sources})
    occurrence = parts.groupby(list(g.sources), sort=False, dropna=False).cumcount() + 1
    joined = parts.apply(lambda col: col.str.replace(_ID_SEP, " ", regex=False)).agg(_ID_SEP.join, axis=1) \
        if len(g.sources) > 1 else parts[g.sources[0]]
    joined = joined + _ID_SEP + occurrence.astype(str)
    digests = [hashlib.sha256(v.encode("utf-8")).hexdigest()[:g.length].upper() for v in joined]
    return _series([g.prefix + d for d in digests])


def _target(layout: Layout, target: FeedFile | Sequence[str] | None
            ) -> tuple[tuple[str, ...], frozenset[str], FeedFile | None]:
    if target is None:
        return layout.target_names, layout.required, _schema_target(layout.feed, layout.file)
    if isinstance(target, FeedFile):
        return (tuple(target.field_names),
                frozenset({d.name for d in target.datafields if d.required} | set(target.key)), target)
    names = tuple(target)
    return names, layout.required & set(names), None


def apply(layout: Layout, src: Path, dst: Path, target: FeedFile | Sequence[str] | None = None) -> LayoutResult:
    """Write the canonical CSV of ``src`` (a partner file in ``layout``) to ``dst``; what was done, in notes.

    ``target`` is the feed file (or the list of canonical names) written; by default the layout's own. Raises
    :class:`MalformedFile` when the file cannot be read or a required datafield has no column in it, and
    :class:`LayoutError` when the layout does not fit the target.
    """
    names, required, feed_file = _target(layout, target)
    if set(layout.mapped) - set(names):
        raise LayoutError(f"layout {layout.id} maps datafields the target does not have: "
                          f"{sorted(set(layout.mapped) - set(names))}")
    source = _read(Path(src).read_bytes(), layout)
    notes: list[str] = []
    if source.encoding != "utf-8":
        notes.append(f"the file was read as Windows {source.encoding}, not UTF-8: please export as CSV UTF-8")

    # Which partner column each datafield comes from; a required one with none refuses the file.
    thing = "column" if source.format == "csv" else "element"
    found: dict[str, list[str]] = {}
    missing_required: list[str] = []
    missing_optional: dict[str, str] = {}
    for c in layout.columns:
        if c.generate is not None:
            continue
        if c.sources:
            k = source.find(c.sources)
            keys = [k] if k else None
        else:
            keys = [key(h) for h in c.join] if all(key(h) in source.index for h in c.join) else None
        if keys is None:
            wanted = " or ".join(_bare(h) for h in c.sources) if c.sources else " and ".join(_bare(h) for h in c.join)
            named = c.target if c.sources == (c.target,) else f"{c.target} (from a {thing} named {wanted})"
            if c.target in required:
                missing_required.append(named)
            else:
                missing_optional[c.target] = named
        else:
            found[c.target] = keys
    if missing_required:
        where = "header" if source.format == "csv" else "submission"
        raise MalformedFile(
            f"required datafield(s) with no {thing} in the file: {'; '.join(missing_required)}. The file was read "
            f"with the layout {_bare(layout.title)}, which needs them in the {where} (names are matched in any "
            f"case and spacing)")
    if source.format == "xml" and not source.rows and not source.rejected:
        notes.append(f"the submission holds no {layout.xml.record if layout.xml else 'record'} element: no rows")

    # Rows the layout sets aside, with the reason it declares (before mapping: they are never written).
    keep = pd.Series(True, index=pd.RangeIndex(len(source.rows)))
    set_aside: list[tuple[int, str]] = list(source.rejected)
    for rule in layout.set_aside:
        k = source.find(rule.column)
        if k is None:
            continue
        hit = (source.get(k).str.strip() == "") & keep
        set_aside += [(source.rows[i], f"row {source.rows[i]}: {rule.reason}") for i in hit[hit].index]
        keep &= ~hit

    kept = keep.to_numpy()
    out: dict[str, pd.Series] = {}
    for c in layout.columns:
        if c.target not in found:
            continue
        parts = [source.get(k)[kept].reset_index(drop=True) for k in found[c.target]]
        values = parts[0]
        for p in parts[1:]:
            values = (values + c.sep + p).str.strip()
        for t in c.transforms:
            values = _transform(values, t)
        if c.codes is not None:
            allowed = feed_file.field(c.target).allowed_codes if feed_file is not None else None
            values, unknown = _code_map(values, c.codes, allowed)
            if unknown:
                notes.append(f"{c.target}: {unknown} value(s) are not in the code map of this layout and were "
                             f"passed on unchanged for validation")
        out[c.target] = values
    n = int(kept.sum())
    for c in layout.columns:
        if c.generate is not None:
            out[c.target] = _generate(out, c.generate, n)

    empty = _series([""] * n)
    frame = pd.DataFrame({name: out.get(name, empty) for name in names})
    frame.to_csv(dst, index=False, encoding="utf-8", lineterminator="\n")

    if missing_optional:
        notes.append(f"optional datafield(s) whose column is not in the file, written empty: "
                     f"{', '.join(missing_optional.values())}")
    other = [name for name in names if name not in out and name not in missing_optional]
    if other:
        notes.append(f"datafield(s) this layout does not supply, written empty: {', '.join(other)}")
    used = {k for ks in found.values() for k in ks} | {key(h) for r in layout.set_aside for h in r.column}
    dropped = {key(h) for h in layout.drop}
    unknown = [_bare(h) or f"(unnamed column {i + 1})" for i, h in enumerate(source.headers)
               if key(h) not in used and key(h) not in dropped]
    if unknown:
        # Columns nobody agreed to share may hold personal data: they are left out, and the partner is told.
        notes.append(f"{thing}(s) not in the layout were left out: {', '.join(unknown)}")
    if set_aside:
        notes.append(f"{len(set_aside)} row(s) set aside by the layout, each with its reason")
    set_aside.sort()
    rejected = rejected_frame(layout.file, [r for r, _ in set_aside], [m for _, m in set_aside], "layout")
    return LayoutResult(rows=n, notes=notes, layout=layout.id, rejected=rejected,
                        source_rows=[r for r, k in zip(source.rows, kept) if k], free_text=layout.free_text,
                        encoding=source.encoding)

