"""Intake, part 1: find complete supplies in a partner's SFTP inbox (nothing is downloaded here).

A supply is taken only when every file its schema lists is in the inbox and none is still being written: a
``NAME.part`` is an upload in progress, and a ``NAME`` counts only once its size has stayed the same between two
polls (a partner that cannot rename). A period's metadata file (guidance section 3.4,
``prc_metadata_202609.yaml.gpg``: ``metadata.metadata_pattern``) belongs to its supply: optional here (the load
decides whether the feed needs one), waited for like a data file while it is being written, and collected with the
data; alone it waits like an incomplete supply. Everything else in the inbox is a stray, returned with a reason and
never silently skipped: a name that is no file of the feed (judged on the whole name), a period that is not a valid
period, a link, a folder, an empty file, a second metadata file for a period.

A ready supply is a :class:`PendingSupply`. The next steps live beside this module: ``intake_download.collect``
downloads it into private staging, hashes and ledgers it, and returns the supply's record from then on
(``pipeline_supply.Manifest``); ``intake_quarantine.quarantine_strays`` moves each stray to the partner's
quarantine/ with its reason, so the partner hears about every file the observatory does not take.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Final, Iterator

from csp_observatory import metadata
from csp_observatory.config import Settings
from csp_observatory.schema import FeedSchema
from csp_observatory.schema_loading import schema_for
from csp_observatory.sftp import RemoteFile, list_entries, list_files

log = logging.getLogger(__name__)

PART = ".part"
#: The ``file_name`` of a supply's metadata file (no data file of any schema has this name).
METADATA = "metadata"
#: The largest file the observatory takes (bytes), judged from the inbox listing before any byte is downloaded, so
#: that a wrong export (a force's whole history, a 1 GB file) never fills staging; ``CSP_MAX_FILE_BYTES`` sets
#: another limit. A month of the largest force's recorded crime is tens of megabytes.
DEFAULT_MAX_FILE_BYTES: Final = 512 * 1024 * 1024


def max_file_bytes() -> int:
    """The size limit in force: ``CSP_MAX_FILE_BYTES`` when set to a positive whole number, else the default."""
    raw = os.environ.get("CSP_MAX_FILE_BYTES", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_FILE_BYTES


def _size_words(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} bytes"


def too_large_reason(size: int, limit: int) -> str:
    """What a partner reads about a file over the size limit."""
    return (f"The file is {_size_words(size)} ({size:,} bytes), larger than the {_size_words(limit)} the observatory "
            f"takes in one file, so it was not downloaded. Check that it is the right file (one period's extract, "
            f"not a whole history) and upload the period's file again; if one period really is this large, ask "
            f"the observatory's data engineering team to raise the limit first.")


@dataclass
class PendingFile:
    """One file of a supply as it sits in the partner's inbox: listed, not downloaded, so no hash and no local copy.

    A different state from ``pipeline_supply.SupplyFile`` (the downloaded file), not a second shape of it.
    """

    file_name: str          # the schema's name for it: offences, offenders, victims
    remote_name: str        # the partner's file name
    size: int
    mtime: int = 0


@dataclass
class PendingSupply:
    """A period whose every file is in the inbox and complete: what ``intake_download.collect`` is handed.

    It exists only before the download (the sensor's look, the collect stage's choice of periods); once
    downloaded, the supply is its ``pipeline_supply.Manifest``.
    """

    feed: str
    partner_id: str
    period: str
    files: list[PendingFile]
    metadata: PendingFile | None = None     # the period's metadata file, if the partner sent one

    @property
    def supply_id(self) -> str:
        return f"{self.feed}/{self.period}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data, for Airflow XCom."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PendingSupply:
        """The inverse of ``to_dict``."""
        md = raw.get("metadata")
        return cls(**{**raw, "files": [PendingFile(**f) for f in raw["files"]],
                      "metadata": PendingFile(**md) if md else None})


@dataclass
class ReadySupplies:
    """What one look at the inbox found (iterating gives the ready supplies)."""

    supplies: list[PendingSupply] = field(default_factory=list)
    strays: dict[str, str] = field(default_factory=dict)      # name -> why the observatory does not take it
    kinds: dict[str, str] = field(default_factory=dict)       # stray name -> file | link | folder | other
    waiting: dict[str, str] = field(default_factory=dict)     # period -> why it is not taken yet
    sizes: dict[str, int] = field(default_factory=dict)       # name -> size now: the next poll's previous_sizes
    # name -> [size, mtime] of each file whose size this look saw hold since the previous poll (JSON-able: the
    # sensor hands it to the collect task, which may then skip its own wait: see trusted_sizes)
    settled: dict[str, list[int]] = field(default_factory=dict)

    @property
    def unrecognised(self) -> list[str]:
        """The names of every stray (misnamed, bad period, link, folder, empty), sorted."""
        return sorted(self.strays)

    def __iter__(self) -> Iterator[PendingSupply]:
        return iter(self.supplies)

    def __len__(self) -> int:
        return len(self.supplies)


def shown_name(name: str) -> str:
    """A name with every character that cannot be shown (line break, tab, other control) written as %XX.

    Used for the quarantined copy and its note, so a partner can see and delete them in any SFTP client.
    """
    # A path separator is written as %2F/%5C too: a quarantined copy is always inside quarantine/.
    return "".join(c if c.isprintable() and c not in "/\\" else f"%{ord(c):02X}" for c in name)


def _period_words(period_format: str) -> str:
    """A period format as a partner reads it: %Y%m -> YYYYMM."""
    words = {"%Y": "YYYY", "%m": "MM", "%d": "DD", "%y": "YY", "%H": "HH", "%j": "DDD"}
    return re.sub(r"%[A-Za-z]", lambda m: words.get(m.group(0), m.group(0)), period_format)


def expected_names(schema: FeedSchema) -> list[str]:
    """The feed's file names as a partner reads them (prc_offences_YYYYMM.csv.gpg), or the pattern itself."""
    out = []
    for f in schema.files:
        text = re.sub(r"\(\?P<period>[^)]*\)", _period_words(schema.period_format), f.pattern)
        text = re.sub(r"^\^|(?:\$|\\Z)$", "", text)
        text = re.sub(r"\\(.)", r"\1", text)
        # Anything still looking like a regular expression is shown as the pattern rather than guessed at.
        out.append(f.pattern if re.search(r"[\[\](){}*+?|^$\\]", text) else text)
    return out


def classify(schema: FeedSchema, name: str) -> tuple[str, str] | None:
    """(file name, period) of an inbox name: a data file of the feed, or its metadata file (:data:`METADATA`);
    None if it is neither. The whole name must match, and the period is not judged here (see period_problem)."""
    hit = schema.classify(name)
    if hit is not None:
        return hit[0].name, hit[1]
    period = metadata.match_metadata(schema, name)
    return (METADATA, period) if period is not None else None


def period_problem(schema: FeedSchema, period: str) -> str | None:
    """Why ``period`` (from a file name) is not a valid period of the feed, in a partner's words; None if it is."""
    words = _period_words(schema.period_format)
    example = datetime(2026, 9, 1).strftime(schema.period_format)
    # The patterns' \d also accepts digits of other scripts (Arabic-Indic, Devanagari...); only 0-9 are a period.
    if not (period.isascii() and period.isdigit()):
        return (f"The period {period} in the file name is not written in the digits 0 to 9. Write the period as "
                f"{words} using only the digits 0 to 9 (for example {example}), rename the file and upload it again.")
    try:
        parsed = datetime.strptime(period, schema.period_format)
    except ValueError:
        parsed = None
    if parsed is None or parsed.strftime(schema.period_format) != period:
        return (f"The period {period} in the file name is not a valid period: it must be the period the file "
                f"covers, written as {words} (for example {example}). Rename the file and upload it again.")
    return None


def sibling_schemas(schema: FeedSchema, settings: Settings) -> tuple[FeedSchema, ...]:
    """The other feeds whose files the same partner inbox holds (a police force's crime, incidents, stop and
    search...): their files are theirs to take, never this feed's strays."""
    partner_id = settings.supplier(schema.feed, schema.partner.id)
    return tuple(schema_for(f) for f in sorted(set(settings.inbox_feeds(partner_id)) - {schema.feed}))


def _sibling_claims(siblings: tuple[FeedSchema, ...], name: str) -> bool:
    return any(classify(s, name) is not None for s in siblings)


def stray_reason(schema: FeedSchema, entry: RemoteFile, siblings: tuple[FeedSchema, ...] = ()) -> str | None:
    """Why an inbox entry is not a file of this feed the observatory can take; None if it may be one.

    Size is not judged here: an empty file is refused only once its size has held still (see plan_supplies).
    ``siblings``: the other feeds the inbox serves, whose names the partner is told too.
    """
    names = ", ".join(n for s in (schema, *siblings) for n in expected_names(s))
    if entry.kind == "link":
        return ("This is a symbolic link, not a file. The observatory never follows links: upload the file "
                "itself to inbox/ under its expected name.")
    if entry.kind == "folder":
        return (f"This is a folder. The inbox takes files only: upload each file of the supply directly into "
                f"inbox/, not into a folder. Expected names: {names}.")
    if entry.kind != "file":
        return "This is not a regular file (it may be a device or a pipe). Upload the file itself to inbox/."
    if "/" in entry.name or "\\" in entry.name or entry.name.strip(".") == "":
        return (f"The file name is a path (it holds / or \\, or is only dots), so it is none of the expected "
                f"names: {names}. Upload the file directly into inbox/ under its expected name.")
    if shown_name(entry.name) != entry.name:
        return (f"The file name contains a character that cannot be shown (a line break, tab or other control "
                f"character, written here as %0A, %09 and so on), so it is none of the expected names: {names}. "
                f"Rename the file to exactly the expected name and upload it again.")
    hit = classify(schema, entry.name)
    if hit is None:
        optional = ", ".join(metadata.metadata_file_name(s, _period_words(s.period_format)) for s in (schema, *siblings))
        titles = " or ".join(s.title for s in (schema, *siblings))
        return (f"The file name {entry.name} does not match any file of the feed {titles}. Expected "
                f"names: {names}, and each supply's metadata file ({optional}). Rename the file and upload it "
                f"again.")
    return period_problem(schema, hit[1])


def plan_supplies(schema: FeedSchema, listing: list[RemoteFile], previous_sizes: dict[str, int] | None,
                  siblings: tuple[FeedSchema, ...] = (), partner_id: str | None = None,
                  max_bytes: int | None = None) -> ReadySupplies:
    """Decide from one inbox listing (and the sizes at the previous poll) which periods are ready to take.

    ``siblings``: the other feeds the same inbox serves; their files (and uploads) are left for their own runs.
    ``partner_id``: whose inbox it is (default: the schema's partner). ``max_bytes``: the size limit (default
    :func:`max_file_bytes`); a larger file is a stray, refused before it is downloaded.
    """
    previous = previous_sizes or {}
    limit = max_bytes or max_file_bytes()
    partner_id = partner_id or schema.partner.id
    listing = [f for f in listing
               if not (siblings and _sibling_claims(siblings, f.name.removesuffix(PART)))]
    out = ReadySupplies(sizes={f.name: f.size for f in listing if f.kind == "file"},
                        settled={f.name: [f.size, f.mtime] for f in listing
                                 if f.kind == "file" and f.name in previous and previous[f.name] == f.size})
    uploading = {f.name[: -len(PART)] for f in listing if f.kind == "file" and f.name.endswith(PART)}
    by_period: dict[str, dict[str, RemoteFile]] = {}
    metadata_files: dict[str, list[RemoteFile]] = {}
    for f in listing:
        if f.kind == "file" and f.name.endswith(PART):
            continue        # still being written by the partner
        why = stray_reason(schema, f, siblings)
        if why is None and f.size == 0 and previous.get(f.name) == 0:
            why = "The file is empty (0 bytes): nothing of it arrived. Upload the file again."
        if why is None and f.kind == "file" and f.size > limit:
            why = too_large_reason(f.size, limit)
        if why is not None:
            out.strays[f.name] = why
            out.kinds[f.name] = f.kind
            continue
        file_name, period = classify(schema, f.name)  # type: ignore[misc]  # stray_reason said it is one
        if file_name == METADATA:
            metadata_files.setdefault(period, []).append(f)
            by_period.setdefault(period, {})    # a metadata file alone makes a period that waits for its data
        else:
            by_period.setdefault(period, {})[file_name] = f
    for period, found in list(metadata_files.items()):
        if len(found) > 1:
            # prc_metadata_202609.yaml.gpg beside .json.gpg: which one the partner meant cannot be told.
            names = ", ".join(sorted(f.name for f in found))
            for f in found:
                out.strays[f.name] = (f"There is more than one metadata file for the period {period} ({names}). "
                                      f"A supply carries one metadata file: upload only the one you mean.")
                out.kinds[f.name] = f.kind
            del metadata_files[period]
    # A period is held back as a whole while any of its files is still uploading, even as a replacement.
    for name in uploading:
        hit = classify(schema, name)
        if hit is not None and period_problem(schema, hit[1]) is None:
            by_period.setdefault(hit[1], {})
    for period in sorted(by_period):
        present = by_period[period]
        meta = (metadata_files.get(period) or [None])[0]
        missing = [f.name for f in schema.files if f.name not in present]
        in_progress = sorted(n for n in uploading if (h := classify(schema, n)) is not None and h[1] == period)
        unstable = sorted(f.name for f in [*present.values(), *([meta] if meta else [])]
                          if previous.get(f.name) != f.size)
        if missing:
            out.waiting[period] = f"waiting for {', '.join(missing)}"
        elif in_progress:
            out.waiting[period] = f"still uploading {', '.join(in_progress)}"
        elif unstable:
            out.waiting[period] = f"size not yet stable for {', '.join(unstable)}"
        else:
            out.supplies.append(PendingSupply(
                feed=schema.feed, partner_id=partner_id, period=period,
                files=[PendingFile(ff.name, present[ff.name].name, present[ff.name].size, present[ff.name].mtime)
                       for ff in schema.files],
                metadata=PendingFile(METADATA, meta.name, meta.size, meta.mtime) if meta else None))
    return out


def wait_until_stable(sftp: Any, folder: str, names: list[str], polls: int, interval: float) -> dict[str, int]:
    """List ``folder`` ``polls`` times, ``interval`` seconds apart; the names whose size never changed, with it."""
    wanted = set(names)
    seen: dict[str, int] | None = None
    for i in range(max(polls, 1)):
        if i:
            time.sleep(interval)
        now = {f.name: f.size for f in list_files(sftp, folder) if f.name in wanted}
        seen = now if seen is None else {n: s for n, s in now.items() if seen.get(n) == s}
    return seen or {}


def trusted_sizes(listing: list[RemoteFile], candidates: list[str],
                  settled: dict[str, list[int]] | None) -> dict[str, int] | None:
    """The sizes of ``candidates`` as an earlier look certified them (``settled``: a ``ReadySupplies.settled``),
    or None when any candidate is not exactly as that look left it (then the caller polls again).

    Why this is as safe as polling again: a look puts a file in ``settled`` only when its size held between two
    listings at least ``poll_interval_s`` apart (``wait_until_stable``, or the previous poll). If this listing,
    later still, shows the same size and the same modification time, the size has held over an even longer span
    and nothing wrote to the file since (a write moves its mtime), which is all a second poll would tell. A file
    the earlier look did not certify (new, changed, or one it saw growing) makes the whole inbox polled again, as
    before, so strays such as an empty file are still judged on two polls. And a file that starts growing after
    this listing is caught by the download, which refuses bytes that differ from the listed size
    (``intake_download.IncompleteDownload``), as it does after a poll.
    """
    if not settled:
        return None
    by_name = {f.name: f for f in listing}
    trusted: dict[str, int] = {}
    for name in candidates:
        f = by_name[name]
        if settled.get(name) != [f.size, f.mtime]:
            return None
        trusted[name] = f.size
    return trusted


def find_ready_supplies(sftp: Any, schema: FeedSchema, settings: Settings,
                        previous_sizes: dict[str, int] | None = None,
                        settled: dict[str, list[int]] | None = None) -> ReadySupplies:
    """Ready supplies of a feed in its partner's inbox, plus unrecognised names and periods still waiting.

    With ``previous_sizes`` (the ``sizes`` of the last poll) this is one listing; without, it polls the inbox
    ``settings.stable_polls`` times ``settings.poll_interval_s`` apart to see which sizes hold still, unless
    ``settled`` (an earlier look's ``ReadySupplies.settled``, e.g. the sensor's) already certifies every file
    that might be taken exactly as it is listed now (:func:`trusted_sizes`).
    """
    partner_id = settings.supplier(schema.feed, schema.partner.id)
    siblings = sibling_schemas(schema, settings)
    inbox = settings.inbox(partner_id)
    if previous_sizes is None:
        listed = list_files(sftp, inbox)
        candidates = [f.name for f in listed if not f.name.endswith(PART) and stray_reason(schema, f) is None]
        previous_sizes = trusted_sizes(listed, candidates, settled) if candidates else {}
        if previous_sizes is None:
            previous_sizes = wait_until_stable(sftp, inbox, candidates, settings.stable_polls,
                                               settings.poll_interval_s)
        else:
            log.info("%s: sizes of %d file(s) held since an earlier look: not polled again", schema.feed,
                     len(previous_sizes))
    ready = plan_supplies(schema, list_entries(sftp, inbox), previous_sizes, siblings, partner_id)
    for period, why in ready.waiting.items():
        log.info("%s/%s not taken yet: %s", schema.feed, period, why)
    return ready
