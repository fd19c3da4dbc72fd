"""Reading the layout files of ``include/layouts/`` into :class:`layouts_model.Layout` s, checked against their target.

:func:`parse_layout` checks a layout against its target (a feed file of a schema, or a plain list of canonical
names) and raises :class:`layouts_model.LayoutError` for anything that does not fit; :func:`layouts_for` gives a feed
file's layouts, with the canonical layout (the feed file itself) last.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import pandas as pd

from csp_observatory.config import read_yaml
from csp_observatory.layouts_model import (_QUOTES, ColumnMap, Generate, Layout, LayoutError, SetAside, Transform,
                                           XmlShape, key)
from csp_observatory.schema import REFERENCE_DIR, REPO_ROOT, SCHEMA_DIR, FeedFile, SchemaError
from csp_observatory.schema_loading import load_schema

LAYOUT_DIR: Final = REPO_ROOT / "include" / "layouts"
FORMATS: Final = frozenset({"csv", "xml"})
#: Transforms that take no argument, and those that take one (with the argument's type).
_PLAIN: Final = frozenset({"upper", "lower", "trim", "month_start", "date_of", "time_of"})
_WITH_ARG: Final = {"strip_prefix": str, "truncate": int, "prefix": str, "blank": list}


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
        return parse_layout(read_yaml(fh), Path(path))


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


def layouts_for(feed: str, file: str, directory: Path = LAYOUT_DIR, feed_file: FeedFile | None = None) -> list[Layout]:
    """The declared layouts of one feed file, then the canonical layout (most specific first, for detect).

    ``feed_file``: the file's schema, when the caller has it (a stage hands its own); else read from the feed's.
    """
    declared = [lay for lay in load_layouts(directory) if lay.feed == feed and lay.file == file]
    feed_file = feed_file if feed_file is not None else _schema_target(feed, file)
    if feed_file is not None:
        return [*declared, canonical_layout(feed_file, feed, file)]
    if declared:
        first = declared[0]
        return [*declared, canonical_layout(first.target_names, feed, file, sorted(first.required))]
    return []
