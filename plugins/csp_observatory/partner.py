"""The partner's side of a delivery: encrypt and sign a file, and upload it without exposing a half-written copy.

This is real code a partner could run (the demo and the tests do): it follows the partner conventions in
docs/ARCHITECTURE.md, so the observatory takes the file only once it is complete and signed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gnupg


class PartnerError(RuntimeError):
    """The partner's file could not be encrypted, signed or uploaded."""


def _fingerprint(value: str) -> str:
    return value.replace(" ", "").upper()


def encrypt_and_sign(partner_gnupg_home: str | Path, plaintext: Path, out: Path, recipient_fingerprint: str,
                     signer_fingerprint: str, passphrase: str | None = None) -> Path:
    """Encrypt ``plaintext`` to the observatory's key and sign it with the partner's key, as binary OpenPGP."""
    gpg = gnupg.GPG(gnupghome=str(partner_gnupg_home))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(plaintext, "rb") as fh:
        # The recipient is named by its full fingerprint (the value the observatory publishes), so trusting that
        # exact key is the pin; without it gpg refuses an imported key nobody has certified.
        result = gpg.encrypt_file(fh, [_fingerprint(recipient_fingerprint)], sign=_fingerprint(signer_fingerprint),
                                  always_trust=True, armor=False, output=str(out), passphrase=passphrase)
    if not result.ok or not out.exists():
        raise PartnerError(f"gpg could not encrypt and sign {plaintext.name}: {result.status}\n{result.stderr}")
    return out


def upload(sftp: Any, local: Path, remote_folder: str, name: str) -> int:
    """Upload ``local`` as ``remote_folder/name.part``, then rename it atomically to ``name``; returns bytes sent."""
    final = f"{remote_folder.rstrip('/')}/{name}"
    part = final + ".part"
    attrs = sftp.put(str(local), part, confirm=True)
    size = os.path.getsize(local)
    if attrs.st_size is not None and attrs.st_size != size:
        raise PartnerError(f"upload of {name} is incomplete: {attrs.st_size} of {size} bytes arrived")
    # posix-rename replaces an existing name atomically; plain SFTP v3 rename would fail on it.
    sftp.posix_rename(part, final)
    return size
