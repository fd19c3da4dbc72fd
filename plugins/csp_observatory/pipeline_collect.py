"""Stages 1 and 2 of a supply: wait for it in the partner's inbox, collect it, decrypt and verify it.

``collect`` has intake download each ready supply (``intake_download.collect``, which makes the supply's
:class:`~csp_observatory.pipeline_supply.Manifest`, its record from here on), gives it its work area in the staging
store and moves the encrypted files there; ``decrypt_and_verify`` lets on only the files signed by the partner's
key.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

from csp_observatory import staging
from csp_observatory.config import Settings, load_settings
from csp_observatory.pipeline_supply import (Services, SupplyFile, _delete_plaintext, _in_flight, _refuse,
                                             _services, supply_schema)
from csp_observatory.schema_loading import schema_for

log = logging.getLogger("csp_observatory.pipeline")


# --- stage 1: collect ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReadyLook:
    """What the sensor's look found: the ready periods, and the files whose size it saw hold (name -> [size,
    mtime], ``intake.ReadySupplies.settled``), which the collect task may trust instead of polling again."""

    periods: list[str]
    settled: dict[str, list[int]]


def ready_look(feed: str, settings: Settings | None = None, services: Services | None = None,
               settled: dict[str, list[int]] | None = None, held_s: float = 0.0) -> ReadyLook:
    """The periods whose every file is in the partner's inbox and no longer being written, with the sizes seen.

    Strays (misnamed files, bad periods, links, folders, empty files) are quarantined here with their reason:
    when nothing in the inbox is ready no run starts, and the partner must still hear about every one.
    ``settled``: sizes an earlier look saw hold over ``held_s`` seconds (the arrival watcher's, see
    ``arrival.arrival_certificate``); files still exactly so are not polled again, if that span is at least the
    poll interval this look would wait (``intake.trusted_sizes``).
    """
    from csp_observatory import intake, intake_quarantine

    settings = settings or load_settings()
    svc = _services(settings, services)
    schema = schema_for(feed)
    trusted = settled if settled and held_s >= settings.poll_interval_s else None
    with svc.sftp() as client:
        ready = intake.find_ready_supplies(client, schema, settings, settled=trusted)
        intake_quarantine.quarantine_strays(client, settings, schema, ready)
    return ReadyLook(sorted(s.period for s in ready.supplies), ready.settled)


def ready_periods(feed: str, settings: Settings | None = None, services: Services | None = None) -> list[str]:
    """The periods of :func:`ready_look` (which quarantines the strays it finds)."""
    return ready_look(feed, settings, services).periods


def collect(feed: str, periods: list[str], run_id: str, settings: Settings | None = None,
            services: Services | None = None, settled: dict[str, list[int]] | None = None) -> list[str]:
    """Download each ready supply into staging, record its hashes, and set aside duplicates and strays.

    ``settled``: the sensor's :attr:`ReadyLook.settled`; files still exactly as it saw them are not polled again
    for a stable size (``intake.trusted_sizes`` says why that is safe); without it, or if anything changed, the
    inbox is polled as always.
    """
    from csp_observatory import agreements, intake, intake_download, intake_quarantine, ledger

    settings = settings or load_settings()
    svc = _services(settings, services)
    schema = schema_for(feed)
    work_dirs: list[str] = []
    with svc.sftp() as client, svc.db() as conn:
        ledger.ensure_ledger(conn)
        conn.commit()
        ready = intake.find_ready_supplies(client, schema, settings, settled=settled)
        # Strays that arrived since the sensor's look; one never stops another, nor a supply.
        intake_quarantine.quarantine_strays(client, settings, schema, ready)
        for pending in ready.supplies:
            if pending.period not in periods:
                continue
            m = intake_download.collect(client, conn, schema, settings, pending)
            conn.commit()
            # The work area is in the staging store every worker reaches (staging.py), not on this worker's disk.
            work = staging.supply_area(settings, feed, pending.period)
            staging.remove(work)  # what an earlier, interrupted run left: this run starts the supply afresh
            staging.make_private_dir(work)
            m.work_dir, m.run_id = str(work), run_id
            for f in m.all_files:
                f.encrypted_path = _into_store(f.encrypted_path, work)
            # Guidance 2.2: a feed is taken only under a current information sharing agreement (agreements.py).
            standing = agreements.standing(m.partner, feed)
            if standing.warning:
                log.warning("%s: %s", m.supply_id, standing.warning)
            if standing.agreement is not None:
                m.stages["agreement"] = {"id": standing.agreement.id, "title": standing.agreement.title(),
                                         "review_date": standing.agreement.review_date.isoformat(),
                                         "review_due": standing.warning is not None}
            if not standing.current:
                for f in m.all_files:
                    _refuse(m, settings, client, f, standing.refusal or "", "refused", conn)
                _delete_plaintext(m)
            elif all(f.duplicate for f in m.all_files):
                # The same bytes were loaded before: never load them twice. The partner is told where.
                for f in m.all_files:
                    intake_quarantine.archive(client, settings, m.partner, f.remote_name)
                    m.problems.append({"file": f.name, "remote_name": f.remote_name,
                                       "reason": f"identical to a delivery already loaded as supply "
                                                 f"{f.duplicate_of}; not loaded again"})
                m.status = "duplicate"
                _delete_plaintext(m)
            # A supply where only some files are new is loaded whole again: the load replaces the period's
            # rows, so unchanged files neither duplicate nor go missing.
            m.save()
            work_dirs.append(str(work))
    return work_dirs


def _into_store(local_path: str, work: staging.Location) -> str:
    """A file this task downloaded to its own disk, moved into the supply's work area (``encrypted/``): the decrypt
    task may run on another worker. The download's own folder, now empty, goes too."""
    local = Path(local_path)
    stored = staging.adopt(local, work / "encrypted" / local.name)
    try:
        local.parent.rmdir()
    except OSError:
        pass            # not empty (another file of the supply), or already gone
    return stored


# --- stage 2: decrypt and verify --------------------------------------------------------------------

class _OnFirstUse:
    """A session (``Services.sftp`` or ``Services.db``) entered on ``stack`` the first time it is asked for."""

    def __init__(self, stack: ExitStack, open_session: Callable[[], ContextManager[Any]]) -> None:
        self._stack, self._open, self._session = stack, open_session, None

    def get(self) -> Any:
        """The session, opened now if it is not yet."""
        if self._session is None:
            self._session = self._stack.enter_context(self._open())
        return self._session


def decrypt_and_verify(work_dirs: list[str], settings: Settings | None = None,
                       services: Services | None = None) -> list[str]:
    """Decrypt each file; only a file signed by the partner's pinned key goes on."""
    from csp_observatory import decryption

    settings = settings or load_settings()
    svc = _services(settings, services)
    out: list[str] = []
    # SFTP and PostGIS are needed only to refuse a file (quarantine it, ledger it): a login each that a supply
    # whose files all verify never needs, so each is opened at the first refusal and closed when the stage ends.
    with ExitStack() as stack:
        sftp_session, db_session = _OnFirstUse(stack, svc.sftp), _OnFirstUse(stack, svc.db)
        for m in _in_flight(work_dirs):
            if not m.ok:
                out.append(m.work_dir)
                continue
            supply_schema(m)        # the partner of a manifest from before collect recorded it
            fingerprint = settings.partner(m.partner).signing_fingerprint

            def decrypt(f: SupplyFile) -> decryption.Verified | decryption.RefusedFile:
                # gpg reads and writes real files: for a remote store, private copies on this worker, deleted
                # when it is done (the plaintext goes up into the supply's work area only once verified).
                try:
                    with staging.local_file(f.encrypted_path) as encrypted, \
                            staging.local_output(m.plaintext_location(f)) as written:
                        return decryption.decrypt_and_verify(settings.gnupg_home, encrypted, written,
                                                             fingerprint, settings.gpg_passphrase)
                except decryption.RefusedFile as refused:
                    return refused

            # one gpg process per file at once (gpg uses one core); the outcomes are then taken in file order
            files = m.all_files
            with ThreadPoolExecutor(max_workers=max(1, min(len(files), os.cpu_count() or 1))) as pool:
                outcomes = list(pool.map(decrypt, files))
            for f, verified in zip(files, outcomes):
                if isinstance(verified, decryption.RefusedFile):
                    _refuse(m, settings, sftp_session.get(), f, verified.reason, "refused", db_session.get())
                    continue
                f.plaintext_path, f.signer = str(m.plaintext_location(f)), verified.signer_fingerprint
            if not m.ok:
                _delete_plaintext(m)
            m.save()
            out.append(m.work_dir)
    return out
