"""Reading a partner's own file (CSV or XML) as text columns, and telling which layout it is in.

:func:`_read` gives a :class:`_Source` (headers, columns, the partner's row numbers, rows that could not be read);
XML is read with expat, and a DOCTYPE is refused before anything else. :func:`detect` picks the candidate layout a
file is in, by its CSV header or XML root element.
"""
from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.parsers import expat

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from csp_observatory.layouts_model import Layout, XmlShape, _bare, key
from csp_observatory.parsing import MalformedFile, _decode, _read_records, split_rows


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
