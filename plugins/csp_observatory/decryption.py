"""Decrypt a partner's file and verify that the partner's pinned key signed it.

python-gnupg's ``ok`` is True for an unsigned file and for one signed by an unknown key, and a truncated or
altered file still leaves partial plaintext behind (STACK-NOTES). So a file is accepted only when it decrypted,
carries a good signature, and that signature's primary key is the partner's pinned fingerprint; gpg writes to a
temporary name that becomes the output only on success, and any partial plaintext is deleted on failure.
"""
from __future__ import annotations

import errno
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import gnupg

#: Kinds of refusal, for code and tests; ``RefusedFile.reason`` is the sentence a partner reads.
KINDS = ("unreadable", "not_encrypted", "not_pgp", "damaged", "unsigned", "unknown_signer", "wrong_signer",
         "bad_signature", "expired_or_revoked")


class RefusedFile(Exception):
    """A partner's file the observatory will not use: ``reason`` for the partner, ``detail`` for engineers."""

    def __init__(self, reason: str, detail: str = "", kind: str = "unreadable") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.kind = kind


@dataclass(frozen=True)
class Verified:
    """A file that decrypted and carries a good signature by the partner's pinned key."""

    signer_fingerprint: str
    signature_time: datetime | None
    plaintext_path: Path
    plaintext_size: int


def normalise_fingerprint(value: str | None) -> str:
    """A fingerprint as gpg prints it in status lines: upper-case hex, no spaces."""
    return "".join((value or "").split()).upper()


def status_lines(stderr: str) -> list[tuple[str, str]]:
    """gpg's machine-readable ``[GNUPG:] KEYWORD args`` lines, as (keyword, args) pairs."""
    out = []
    for line in stderr.splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, _, args = line[9:].partition(" ")
            out.append((keyword, args.strip()))
    return out


def check_status(stderr: str, expected_fingerprint: str) -> tuple[str, datetime | None]:
    """Decide from gpg's output whether a decryption is acceptable; return (signer, signature time) or raise."""
    lines = status_lines(stderr)
    keys = {k for k, _ in lines}
    expected = normalise_fingerprint(expected_fingerprint)
    detail = "; ".join(f"{k} {v}".strip() for k, v in lines if k != "KEY_CONSIDERED") or stderr.strip()[-500:]

    def refuse(kind: str, reason: str) -> RefusedFile:
        return RefusedFile(reason, detail, kind)

    # Order matters: the most basic failure is the one the partner must fix first.
    if not keys & {"ENC_TO", "BEGIN_DECRYPTION", "PLAINTEXT", "NEED_PASSPHRASE_SYM"} and "NODATA" in keys:
        raise refuse("not_pgp", "The file is not an OpenPGP (gpg) file. Encrypt it to the observatory's public "
                                "key and sign it with your registered key (gpg --encrypt --sign), then upload "
                                "the .gpg file again.")
    if "NEED_PASSPHRASE_SYM" in keys:
        raise refuse("not_encrypted", "The file was encrypted with a password, not to the observatory's public "
                                      "key. Encrypt it to the observatory's key (gpg --encrypt --recipient "
                                      "<observatory fingerprint> --sign) and upload it again.")
    if "ENC_TO" not in keys and "BEGIN_DECRYPTION" not in keys and "PLAINTEXT" in keys:
        raise refuse("not_encrypted", "The file is signed but not encrypted. Personal data must be encrypted to "
                                      "the observatory's public key: use gpg --encrypt --sign and upload again.")
    if "NO_SECKEY" in keys and "DECRYPTION_OKAY" not in keys:
        raise refuse("unreadable", "The file is not encrypted to the observatory's current public key, so the "
                                   "observatory cannot read it. Encrypt it to the key the observatory gave you "
                                   "(check its fingerprint) and upload it again.")
    if "DECRYPTION_OKAY" not in keys:
        if any(m in stderr for m in ("read error", "unexpected EOF", "premature", "pending bytes")):
            raise refuse("damaged", "The file is truncated: it ends before the encrypted data does, so it is "
                                    "damaged or incomplete (was the upload interrupted?). Upload the complete "
                                    "file again.")
        if keys & {"BADMDC", "DECRYPTION_FAILED", "BEGIN_DECRYPTION", "DECRYPTION_KEY", "NODATA"}:
            raise refuse("damaged", "The file is damaged: its contents were altered or corrupted after it was "
                                    "encrypted, so it cannot be trusted. Encrypt and sign the original again and "
                                    "upload the new file.")
        raise refuse("unreadable", "The observatory could not decrypt the file. Encrypt it to the observatory's "
                                   "public key, sign it with your registered key, and upload it again.")
    if "BADSIG" in keys:
        raise refuse("bad_signature", "The file's signature does not match its contents: it was altered after "
                                      "it was signed. Sign and encrypt the original again and upload it.")
    if "REVKEYSIG" in keys:
        raise refuse("expired_or_revoked", "The file was signed with a key that has been revoked, so the "
                                           "signature cannot be trusted. Register a new signing key with the "
                                           "observatory and sign the file with it.")
    if "EXPKEYSIG" in keys:
        raise refuse("expired_or_revoked", "The file was signed with a key that has expired. Extend the key's "
                                           "expiry date (and send the observatory the updated public key) or "
                                           "register a new signing key, then sign the file again.")
    if "ERRSIG" in keys or "NO_PUBKEY" in keys:
        signer = next((v.split()[6] for k, v in lines if k == "ERRSIG" and len(v.split()) >= 7), "")
        signer = signer or next((v for k, v in lines if k == "NO_PUBKEY"), "unknown")
        raise refuse("unknown_signer", f"The file is signed by a key the observatory does not know ({signer}). "
                                       f"Sign the file with the key registered with the observatory, fingerprint "
                                       f"{expected}.")
    valid = [v.split() for k, v in lines if k == "VALIDSIG"]
    if "GOODSIG" not in keys or not valid:
        raise refuse("unsigned", f"The file is not signed. Sign it as well as encrypting it (gpg --encrypt "
                                 f"--sign) with the key registered with the observatory, fingerprint {expected}.")
    # The primary key's fingerprint is the 10th field; the first is the (sub)key that made the signature.
    signers = {normalise_fingerprint(p[9] if len(p) >= 10 else p[0]) for p in valid}
    if signers != {expected}:
        raise refuse("wrong_signer", f"The file is signed by a key ({', '.join(sorted(signers))}) that is not "
                                     f"the key registered for your organisation. Sign the file with the key "
                                     f"registered with the observatory, fingerprint {expected}.")
    sig_ts = valid[0][2] if len(valid[0]) > 2 else ""
    when = None
    if sig_ts.isdigit():
        when = datetime.fromtimestamp(int(sig_ts), tz=timezone.utc)
    elif "T" in sig_ts:   # gpg may print ISO 8601 basic format instead of epoch seconds
        when = datetime.strptime(sig_ts, "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    return expected, when


#: What gpg says when it cannot write its output: the observatory's own disk, never the partner's file.
_WRITE_FAILURES = (("No space left on device", errno.ENOSPC), ("Disk quota exceeded", errno.EDQUOT),
                   ("File too large", errno.EFBIG), ("error writing", errno.EIO), ("write error", errno.EIO))


def local_write_failure(stderr: str, output: Path) -> None:
    """Raise OSError when gpg failed to write the plaintext (staging full, say): a fault of the observatory, which
    the stage must fail on (and Airflow retry), not a damaged file to send back to the partner."""
    for words, code in _WRITE_FAILURES:
        if words in stderr:
            raise OSError(code, f"gpg could not write the plaintext to {output.parent} ({words}): the file is not "
                                f"at fault and stays in the inbox")


@lru_cache(maxsize=8)
def _gpg(gnupg_home: str) -> gnupg.GPG:
    """python-gnupg's handle on a keyring, made once per home: making one runs ``gpg --version`` (a process each
    time, for every file of every supply). It holds only settings; each decryption runs its own gpg process and
    gets its own result, so the decrypt stage's threads may share it."""
    return gnupg.GPG(gnupghome=gnupg_home)


def decrypt_and_verify(gnupg_home: str | Path, encrypted: Path, output: Path, expected_fingerprint: str,
                       passphrase: str | None = None) -> Verified:
    """Decrypt ``encrypted`` to ``output`` only if it is signed by ``expected_fingerprint``; else RefusedFile."""
    output = Path(output)
    temp = output.with_name(f".{output.name}.{secrets.token_hex(4)}.partial")
    # Create the temporary file 0600 first: gpg reuses it, so plaintext is never readable by others.
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        gpg = _gpg(str(gnupg_home))
        result = gpg.decrypt_file(str(encrypted), passphrase=passphrase, output=str(temp))
        local_write_failure(result.stderr or "", temp)
        signer, when = check_status(result.stderr or "", expected_fingerprint)
        # Belt and braces over our own reading of the status lines: python-gnupg must agree.
        if not (result.ok and result.valid
                and normalise_fingerprint(result.pubkey_fingerprint) == normalise_fingerprint(expected_fingerprint)):
            raise RefusedFile("The observatory could not verify the file. Encrypt it to the observatory's key, "
                              "sign it with your registered key, and upload it again.",
                              f"python-gnupg: ok={result.ok} valid={result.valid} status={result.status!r} "
                              f"signer={result.pubkey_fingerprint}", "unreadable")
        os.chmod(temp, 0o600)
        os.replace(temp, output)
    except BaseException:
        # Nothing of a refused file may stay readable, not even a stale output of an earlier attempt.
        temp.unlink(missing_ok=True)
        output.unlink(missing_ok=True)
        raise
    return Verified(signer_fingerprint=signer, signature_time=when, plaintext_path=output,
                    plaintext_size=output.stat().st_size)
