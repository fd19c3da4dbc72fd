"""Intake, part 3: where a file leaves the partner's inbox for, other than staging.

A refused file goes to the partner's quarantine/ with ``NAME.reason.txt`` beside it, saying what was wrong and what
to do (:func:`quarantine`; :func:`quarantine_strays` for every stray of one inbox look, ``intake.ReadySupplies``);
one that cannot be moved gets only the note (:func:`leave_reason`). A loaded file's original goes to processed/
(:func:`archive`).
"""
from __future__ import annotations

import errno
import logging
from datetime import datetime, timezone
from typing import Any, Final

from csp_observatory.config import Settings
from csp_observatory.intake import ReadySupplies, shown_name, stray_reason
from csp_observatory.schema import FeedSchema
from csp_observatory.sftp import RemoteFile, exists, move, put_text

log = logging.getLogger("csp_observatory.intake")  # one logger for intake, as before the split

REASON_SUFFIX = ".reason.txt"


def quarantine_strays(sftp: Any, settings: Settings, schema: FeedSchema, ready: ReadySupplies) -> dict[str, str]:
    """Refuse every stray of one inbox look with its reason; returns name -> where the partner finds the note.

    One stray never stops another, nor any supply: a stray that vanished meanwhile (the partner renamed or
    deleted it) is skipped, and one that cannot be moved gets its note in quarantine/ and stays in the inbox.
    """
    done: dict[str, str] = {}
    partner_id = settings.supplier(schema.feed, schema.partner.id)
    for name, why in ready.strays.items():
        kind = ready.kinds.get(name, "file")
        # Only an empty file has a name that is right as it stands; every other stray needs another name.
        right = kind == "file" and stray_reason(schema, RemoteFile(name, 1, 0)) is None
        try:
            done[name] = quarantine(sftp, settings, partner_id, name, why, kind=kind, right_name=right)
        except FileNotFoundError:
            log.info("%s left the inbox before it could be quarantined", shown_name(name))
        except OSError as exc:
            if getattr(exc, "errno", None) == errno.ENOENT:
                continue
            log.warning("could not move %s out of %s's inbox (%s): leaving a reason for it in quarantine/",
                        shown_name(name), partner_id, exc)
            try:
                done[name] = leave_reason(sftp, settings, partner_id, name, why, kind=kind,
                                          right_name=right)
            except OSError as again:
                log.error("could not leave a reason for %s in %s's quarantine/ either: %s", shown_name(name),
                          partner_id, again)
    return done


_WHAT: Final = {"file": "the file", "link": "the symbolic link", "folder": "the folder", "other": "the entry"}


def reason_text(remote_name: str, reason: str, when: datetime | None = None, kind: str = "file",
                moved: bool = True, right_name: bool = True) -> str:
    """The note left beside a quarantined file: what was wrong and what to do, for the partner's staff.

    ``right_name`` says the name itself is one the feed expects, so the note can say what to upload as.
    """
    when = when or datetime.now(timezone.utc)
    name = shown_name(remote_name)
    if moved:
        where = ("It has been moved from inbox/ to this quarantine folder so that it is not tried again. You may "
                 "delete it and this note.")
    else:
        where = ("It could not be moved out of inbox/, so it is still there: please delete it from inbox/ (the "
                 "observatory will not take it), then delete this note.")
    if right_name:
        upload = (f"upload the corrected file to inbox/ (upload it as {name}.part and rename it to {name} when "
                  f"the upload is complete).")
    else:
        upload = ("upload the corrected file to inbox/ under its expected name (upload it as NAME.part and "
                  "rename it to NAME when the upload is complete).")
    return (
        f"The observatory did not accept {_WHAT.get(kind, 'the entry')} {name}.\n"
        f"\n"
        f"What was wrong, and what to do:\n"
        f"{reason}\n"
        f"\n"
        f"Nothing from it was loaded. {where}\n"
        f"\n"
        f"When the problem is fixed, {upload}\n"
        f"\n"
        f"Refused at {when.strftime('%Y-%m-%d %H:%M:%S')} UTC.\n"
    )


def quarantine(sftp: Any, settings: Settings, partner_id: str, remote_name: str, reason: str,
               kind: str = "file", right_name: bool = True) -> str:
    """Move a refused file from the inbox to the partner's quarantine/ with ``NAME.reason.txt``; returns its path.

    The quarantined copy is named with :func:`shown_name`, so a name with a line break in it can be seen.
    """
    inbox = settings.inbox(partner_id)
    folder = settings.partner_folder(partner_id, "quarantine")
    dst = f"{folder}/{shown_name(remote_name)}"
    move(sftp, f"{inbox}/{remote_name}", dst)
    put_text(sftp, dst + REASON_SUFFIX, reason_text(remote_name, reason, kind=kind, right_name=right_name))
    log.warning("quarantined %s for %s: %s", shown_name(remote_name), partner_id, reason)
    return dst


def leave_reason(sftp: Any, settings: Settings, partner_id: str, remote_name: str, reason: str,
                 kind: str = "file", right_name: bool = False) -> str:
    """For something in the inbox that cannot be moved: only the note, in quarantine/; returns the note's path.

    Written once: the sensor looks at the inbox every few minutes, and one note is enough.
    """
    note = f"{settings.partner_folder(partner_id, 'quarantine')}/{shown_name(remote_name)}{REASON_SUFFIX}"
    if not exists(sftp, note):
        put_text(sftp, note, reason_text(remote_name, reason, kind=kind, moved=False, right_name=right_name))
    return note


def archive(sftp: Any, settings: Settings, partner_id: str, remote_name: str) -> str:
    """Move a file from the inbox to the partner's processed/ (call only after its load committed)."""
    dst = f"{settings.partner_folder(partner_id, 'processed')}/{remote_name}"
    move(sftp, f"{settings.inbox(partner_id)}/{remote_name}", dst)
    return dst
