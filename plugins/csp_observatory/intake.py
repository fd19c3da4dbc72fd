"""Collect: find complete supplies in a partner's SFTP inbox, download them to private staging, ledger them.

A supply is taken only when every file its schema lists is in the inbox and none is still being written: a
``NAME.part`` is an upload in progress, and a ``NAME`` counts only once its size has stayed the same between two
polls (a partner that cannot rename). Names that match no file of the feed are returned, never silently skipped,
so the pipeline can quarantine them with a reason the partner can act on.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from csp_observatory import ledger
from csp_observatory.config import Settings
from csp_observatory.schema import FeedSchema
from csp_observatory.sftp import RemoteFile, download, list_files, move, put_text

log = logging.getLogger(__name__)

PART = ".part"
REASON_SUFFIX = ".reason.txt"


class IncompleteDownload(RuntimeError):
    """The bytes that arrived in staging are not the bytes the inbox listed; the file stays in the inbox."""


@dataclass
class PendingFile:
    """One file of a supply as it sits in the inbox."""

    file_name: str          # the schema's name for it: offences, offenders, victims
    remote_name: str        # the partner's file name
    size: int
    mtime: int = 0


@dataclass
class PendingSupply:
    """A period whose every file is in the inbox and complete."""

    feed: str
    partner_id: str
    period: str
    files: list[PendingFile]

    @property
    def supply_id(self) -> str:
        return f"{self.feed}/{self.period}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data, for Airflow XCom."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PendingSupply:
        """The inverse of ``to_dict``."""
        return cls(**{**raw, "files": [PendingFile(**f) for f in raw["files"]]})


@dataclass
class CollectedFile:
    """One downloaded (still encrypted) file in staging."""

    file_name: str
    remote_name: str
    sha256: str
    size: int
    local_path: str
    duplicate_of: str | None = None    # supply_id it was already loaded as; such a file is never loaded again

    @property
    def duplicate(self) -> bool:
        return self.duplicate_of is not None


@dataclass
class CollectedSupply:
    """A supply downloaded into staging, with its files' hashes."""

    feed: str
    partner_id: str
    period: str
    files: list[CollectedFile]
    collected_at: str = ""

    @property
    def supply_id(self) -> str:
        return f"{self.feed}/{self.period}"

    @property
    def duplicates(self) -> list[CollectedFile]:
        return [f for f in self.files if f.duplicate]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (paths as strings), for Airflow XCom."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CollectedSupply:
        """The inverse of ``to_dict``."""
        return cls(**{**raw, "files": [CollectedFile(**f) for f in raw["files"]]})


@dataclass
class ReadySupplies:
    """What one look at the inbox found (iterating gives the ready supplies)."""

    supplies: list[PendingSupply] = field(default_factory=list)
    unrecognised: list[str] = field(default_factory=list)     # names that are no file of this feed
    waiting: dict[str, str] = field(default_factory=dict)     # period -> why it is not taken yet
    sizes: dict[str, int] = field(default_factory=dict)       # name -> size now: the next poll's previous_sizes

    def __iter__(self) -> Iterator[PendingSupply]:
        return iter(self.supplies)

    def __len__(self) -> int:
        return len(self.supplies)


def plan_supplies(schema: FeedSchema, listing: list[RemoteFile],
                  previous_sizes: dict[str, int] | None) -> ReadySupplies:
    """Decide from one inbox listing (and the sizes at the previous poll) which periods are ready to take."""
    previous = previous_sizes or {}
    out = ReadySupplies(sizes={f.name: f.size for f in listing})
    uploading = {f.name[: -len(PART)] for f in listing if f.name.endswith(PART)}
    by_period: dict[str, dict[str, RemoteFile]] = {}
    for f in listing:
        if f.name.endswith(PART):
            continue        # still being written by the partner
        hit = schema.classify(f.name)
        if hit is None:
            out.unrecognised.append(f.name)
            continue
        feed_file, period = hit
        by_period.setdefault(period, {})[feed_file.name] = f
    # A period is held back as a whole while any of its files is still uploading, even as a replacement.
    for name in uploading:
        hit = schema.classify(name)
        if hit is not None:
            by_period.setdefault(hit[1], {})
    for period in sorted(by_period):
        present = by_period[period]
        missing = [f.name for f in schema.files if f.name not in present]
        in_progress = sorted(n for n in uploading if (h := schema.classify(n)) is not None and h[1] == period)
        unstable = sorted(f.name for f in present.values() if previous.get(f.name) != f.size)
        if missing:
            out.waiting[period] = f"waiting for {', '.join(missing)}"
        elif in_progress:
            out.waiting[period] = f"still uploading {', '.join(in_progress)}"
        elif unstable:
            out.waiting[period] = f"size not yet stable for {', '.join(unstable)}"
        else:
            out.supplies.append(PendingSupply(
                feed=schema.feed, partner_id=schema.partner.id, period=period,
                files=[PendingFile(ff.name, present[ff.name].name, present[ff.name].size, present[ff.name].mtime)
                       for ff in schema.files]))
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


def find_ready_supplies(sftp: Any, schema: FeedSchema, settings: Settings,
                        previous_sizes: dict[str, int] | None = None) -> ReadySupplies:
    """Ready supplies of a feed in its partner's inbox, plus unrecognised names and periods still waiting.

    With ``previous_sizes`` (the ``sizes`` of the last poll) this is one listing; without, it polls the inbox
    ``settings.stable_polls`` times ``settings.poll_interval_s`` apart to see which sizes hold still.
    """
    inbox = settings.inbox(schema.partner.id)
    if previous_sizes is None:
        candidates = [f.name for f in list_files(sftp, inbox)
                      if not f.name.endswith(PART) and schema.classify(f.name) is not None]
        previous_sizes = (wait_until_stable(sftp, inbox, candidates, settings.stable_polls,
                                            settings.poll_interval_s) if candidates else {})
    ready = plan_supplies(schema, list_files(sftp, inbox), previous_sizes)
    for period, why in ready.waiting.items():
        log.info("%s/%s not taken yet: %s", schema.feed, period, why)
    return ready


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks (files can be larger than memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def private_dir(root: Path, *parts: str) -> Path:
    """``root/parts...``, every level created 0700 (mkdir's mode applies only to the last level)."""
    path = Path(root)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    for part in parts:
        path = path / part
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    return path


def collect(sftp: Any, conn: Any, schema: FeedSchema, settings: Settings, supply: PendingSupply) -> CollectedSupply:
    """Download a ready supply into private staging, hash each file and record it in the ledger (no commit)."""
    inbox = settings.inbox(schema.partner.id)
    incoming = private_dir(settings.staging_dir, schema.feed, supply.period, "incoming")
    files = []
    for pf in supply.files:
        # A unique name, so two runs collecting at once cannot write into each other's download.
        temp = incoming / f"{pf.remote_name}.{secrets.token_hex(4)}"
        got = download(sftp, f"{inbox}/{pf.remote_name}", temp)
        if got != pf.size:
            temp.unlink(missing_ok=True)
            raise IncompleteDownload(f"{pf.remote_name}: downloaded {got} bytes but the inbox listed {pf.size}; "
                                     "it is left in the inbox for the next run")
        sha = sha256_file(temp)
        final_dir = private_dir(settings.staging_dir, schema.feed, supply.period, sha[:16])
        local = final_dir / pf.remote_name
        os.replace(temp, local)
        earlier = ledger.find(conn, sha)
        duplicate_of = None
        if earlier is not None and earlier.status == "loaded":
            duplicate_of = earlier.supply_id
            log.warning("%s is identical to %s, already loaded as %s: not loading it again",
                        pf.remote_name, earlier.file_name, earlier.supply_id)
        else:
            ledger.record_received(conn, sha, schema.feed, pf.remote_name, supply.supply_id, got)
        files.append(CollectedFile(pf.file_name, pf.remote_name, sha, got, str(local), duplicate_of))
    if incoming.exists() and not any(incoming.iterdir()):
        incoming.rmdir()
    return CollectedSupply(schema.feed, schema.partner.id, supply.period, files,
                           datetime.now(timezone.utc).isoformat(timespec="seconds"))


def reason_text(remote_name: str, reason: str, when: datetime | None = None) -> str:
    """The note left beside a quarantined file: what was wrong and what to do, for the partner's staff."""
    when = when or datetime.now(timezone.utc)
    return (
        f"The observatory did not accept the file {remote_name}.\n"
        f"\n"
        f"What was wrong, and what to do:\n"
        f"{reason}\n"
        f"\n"
        f"Nothing from this file was loaded. The file has been moved to this quarantine folder so that it is not\n"
        f"tried again. When the problem is fixed, upload the corrected file to inbox/ (upload it as\n"
        f"{remote_name}.part and rename it to {remote_name} when the upload is complete). You may delete the\n"
        f"quarantined copy and this note.\n"
        f"\n"
        f"Refused at {when.strftime('%Y-%m-%d %H:%M:%S')} UTC.\n"
    )


def quarantine(sftp: Any, settings: Settings, partner_id: str, remote_name: str, reason: str) -> str:
    """Move a refused file from the inbox to the partner's quarantine/ with ``NAME.reason.txt``; returns its path."""
    inbox = settings.inbox(partner_id)
    folder = settings.partner_folder(partner_id, "quarantine")
    dst = f"{folder}/{remote_name}"
    move(sftp, f"{inbox}/{remote_name}", dst)
    put_text(sftp, dst + REASON_SUFFIX, reason_text(remote_name, reason))
    log.warning("quarantined %s for %s: %s", remote_name, partner_id, reason)
    return dst


def archive(sftp: Any, settings: Settings, partner_id: str, remote_name: str) -> str:
    """Move a file from the inbox to the partner's processed/ (call only after its load committed)."""
    dst = f"{settings.partner_folder(partner_id, 'processed')}/{remote_name}"
    move(sftp, f"{settings.inbox(partner_id)}/{remote_name}", dst)
    return dst
