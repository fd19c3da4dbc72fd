"""Intake, part 2: download a ready supply into private staging, hash each file, ledger it, spot duplicates.

``collect`` turns an ``intake.PendingSupply`` (files listed in the inbox) into the supply's record,
``pipeline_supply.Manifest`` with a ``SupplyFile`` per file: the same record every later stage and the report read.
A file whose bytes were already loaded keeps its ``duplicate_of``; the collect stage (``pipeline_collect``) decides
what that means for the supply.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from csp_observatory import ledger
from csp_observatory.config import Settings
from csp_observatory.intake import PendingFile, PendingSupply
from csp_observatory.pipeline_supply import Manifest, SupplyFile
from csp_observatory.schema import FeedSchema
from csp_observatory.sftp import download

log = logging.getLogger("csp_observatory.intake")  # one logger for intake, as before the split


class IncompleteDownload(RuntimeError):
    """The bytes that arrived in staging are not the bytes the inbox listed; the file stays in the inbox."""


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


def collect(sftp: Any, conn: Any, schema: FeedSchema, settings: Settings, supply: PendingSupply) -> Manifest:
    """Download a ready supply (its metadata file too) into private staging, hash each file and record it in the
    ledger (no commit).

    Returns the supply's :class:`~csp_observatory.pipeline_supply.Manifest`: each file's ``encrypted_path`` is its
    download on this worker's disk, and the manifest has no work area yet (the collect stage gives it one).
    """
    inbox = settings.inbox(supply.partner_id)
    incoming = private_dir(settings.staging_dir, schema.feed, supply.period, "incoming")
    supply_id = f"{schema.feed}/{supply.period}"

    def one(pf: PendingFile) -> SupplyFile:
        # A unique name, so two runs collecting at once cannot write into each other's download.
        temp = incoming / f"{pf.remote_name}.{secrets.token_hex(4)}"
        digest = hashlib.sha256()       # hashed as it arrives: the download is not read a second time
        got = download(sftp, f"{inbox}/{pf.remote_name}", temp, digest)
        if got != pf.size:
            temp.unlink(missing_ok=True)
            raise IncompleteDownload(f"{pf.remote_name}: downloaded {got} bytes but the inbox listed {pf.size}; "
                                     "it is left in the inbox for the next run")
        sha = digest.hexdigest()
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
            ledger.record_received(conn, sha, schema.feed, pf.remote_name, supply_id, got)
        return SupplyFile(name=pf.file_name, remote_name=pf.remote_name, sha256=sha, size=got,
                          encrypted_path=str(local), duplicate_of=duplicate_of)

    files = {pf.file_name: one(pf) for pf in supply.files}
    meta = one(supply.metadata) if supply.metadata else None
    if incoming.exists() and not any(incoming.iterdir()):
        incoming.rmdir()
    return Manifest(feed=schema.feed, period=supply.period, work_dir="", files=files,
                    collected_at=datetime.now(timezone.utc).isoformat(), metadata=meta,
                    partner_id=supply.partner_id)
