"""The checks onboarding makes before it changes anything: the partner id, its feeds, and its two public keys.

A safe id that is not some other account (:func:`check_partner_id`), feeds whose schema names this partner
(:func:`check_feeds`), one SSH *public* key (:func:`read_ssh_public_key`) and exactly one OpenPGP *public* key that
can sign (:func:`read_openpgp_public_key`). None of them needs root.
"""
from __future__ import annotations

import base64
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Final

import yaml

from csp_observatory.config import PARTNER_ID
from csp_observatory.onboarding_site import OnboardingError
from csp_observatory.schema import SCHEMA_DIR

#: SSH key types a partner may use (no DSA: OpenSSH refuses it).
SSH_KEY_TYPES: Final = frozenset({"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                                  "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
                                  "sk-ecdsa-sha2-nistp256@openssh.com"})
MIN_RSA_BITS: Final = 3072
MAX_KEY_FILE_BYTES: Final = 1 << 20


# ---------------------------------------------------------------------------------------------------- checks


def check_partner_id(partner_id: str) -> str:
    """The id, if it is a safe partner id (it is also the partner's SFTP user name)."""
    if not PARTNER_ID.fullmatch(partner_id or ""):
        raise OnboardingError(f"partner id {partner_id!r} is not allowed: use 2 to 31 lower-case letters, digits "
                              f"and underscores, starting with a letter (it becomes the SFTP user name)")
    return partner_id


@lru_cache(maxsize=8)
def feed_partners(schemas_dir: Path = SCHEMA_DIR) -> dict[str, str]:
    """Every feed schema's ``feed`` and the ``partner.id`` it names, read from the schema files alone."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out: dict[str, str] = {}
    for path in sorted(Path(schemas_dir).glob("*.yaml")):
        with open(path, encoding="utf-8") as fh:
            raw = yaml.load(fh, Loader=loader) or {}
        if isinstance(raw, dict) and raw.get("feed"):
            out[str(raw["feed"])] = str((raw.get("partner") or {}).get("id") or "")
    return out


def check_feeds(partner_id: str, feeds: Iterable[str], schemas_dir: Path = SCHEMA_DIR,
                supplied_by_others: dict[str, str] | None = None) -> tuple[str, ...]:
    """The feeds, sorted and without repeats, if each is a schema in ``schemas_dir`` that no other active partner
    supplies (``supplied_by_others``: feed -> partner). One partner may supply several feeds (a police force's
    crime, incidents, stop and search...): their files share its inbox, and each feed's run takes its own."""
    wanted = sorted({f.strip() for f in feeds if f and f.strip()})
    if not wanted:
        raise OnboardingError("name the feeds the partner supplies (--feeds feed1,feed2)")
    known = feed_partners(Path(schemas_dir))
    unknown = [f for f in wanted if f not in known]
    if unknown:
        raise OnboardingError(f"unknown feed(s) {', '.join(unknown)}: a feed is a schema in {schemas_dir} "
                              f"(known: {', '.join(sorted(known))})")
    # A feed is collected from one inbox (its supplies are feed/period): a second supplier is refused, not merged.
    other = {f: p for f, p in (supplied_by_others or {}).items() if f in wanted and p != partner_id}
    if other:
        raise OnboardingError("; ".join(f"feed {f} is already supplied by the active partner {p!r}"
                                        for f, p in sorted(other.items()))
                              + ": remove that partner first (scripts/partner remove --id ...), or leave the feed out")
    return tuple(wanted)


@dataclass(frozen=True)
class SshPublicKey:
    """An SSH public key as a partner sent it, checked by ssh-keygen."""

    kind: str
    blob: str
    comment: str
    fingerprint: str        # SHA256:...
    bits: int

    def authorized_line(self) -> str:
        """Its authorized_keys line: ``restrict`` turns off forwarding, PTYs and rc files whatever sshd says."""
        return " ".join(p for p in ("restrict", self.kind, self.blob, self.comment) if p)


def read_ssh_public_key(path: Path | str) -> SshPublicKey:
    """The one SSH public key in ``path``; refuses a private key, several keys, options or an unknown type."""
    path = Path(path)
    text = _read_small(path, "SSH public key").decode("utf-8", "replace")
    if "PRIVATE KEY" in text:
        raise OnboardingError(f"{path} is an SSH PRIVATE key: the partner must keep it and send only the public "
                              f"half (the .pub file)")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) != 1:
        raise OnboardingError(f"{path} must hold exactly one SSH public key line, not {len(lines)}")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or parts[0] not in SSH_KEY_TYPES:
        raise OnboardingError(f"{path} is not an SSH public key of a supported type ({', '.join(sorted(SSH_KEY_TYPES))}); "
                              f"authorized_keys options are not accepted")
    kind, blob = parts[0], parts[1]
    comment = re.sub(r"[^\w@.+-]", "_", parts[2].strip())[:80] if len(parts) > 2 else ""
    try:
        raw = base64.b64decode(blob, validate=True)
    except ValueError:
        raise OnboardingError(f"{path}: the key is not valid base64") from None
    if raw[4:4 + int.from_bytes(raw[:4], "big")].decode("ascii", "replace") != kind:
        raise OnboardingError(f"{path}: the key's data does not match its type {kind}")
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "key.pub"
        one.write_text(f"{kind} {blob}\n", encoding="ascii")
        done = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(one)], capture_output=True, text=True)
    match = re.match(r"(\d+) (SHA256:\S+)", done.stdout)
    if done.returncode != 0 or not match:
        raise OnboardingError(f"{path}: ssh-keygen cannot read the key: {done.stderr.strip() or done.stdout.strip()}")
    bits = int(match.group(1))
    if kind == "ssh-rsa" and bits < MIN_RSA_BITS:
        raise OnboardingError(f"{path}: an RSA key must have at least {MIN_RSA_BITS} bits, not {bits} "
                              f"(an ed25519 key is better: ssh-keygen -t ed25519)")
    return SshPublicKey(kind, blob, comment, match.group(2), bits)


@dataclass(frozen=True)
class PgpPublicKey:
    """An OpenPGP public key as a partner sent it, checked by gpg without importing it."""

    fingerprint: str        # the primary key's: the value pinned
    uids: tuple[str, ...]
    path: Path


def _gpg(home: Path | str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    # --no-autostart: nothing here needs a secret key, so no gpg-agent is started (and none is left behind in a
    # keyring that other processes use)
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--no-tty", "--no-autostart", *args],
                          input=stdin, capture_output=True)


def read_openpgp_public_key(path: Path | str) -> PgpPublicKey:
    """The one OpenPGP public key in ``path``; refuses secret key material, several keys, and a key that cannot
    sign (or is revoked or expired)."""
    path = Path(path)
    _read_small(path, "OpenPGP public key")
    with tempfile.TemporaryDirectory() as home:
        os.chmod(home, 0o700)
        # Secret keys are looked for in the packets first: listing a secret key would hand it to a gpg-agent.
        packets = _gpg(home, "--list-packets", str(path))
        listing = packets.stdout.decode("utf-8", "replace")
        if ":secret key packet:" in listing or ":secret sub key packet:" in listing:
            raise OnboardingError(f"{path} holds SECRET key material: the partner must keep its secret key and send "
                                  f"only the public key (gpg --armor --export FINGERPRINT)")
        shown = _gpg(home, "--with-colons", "--show-keys", str(path))
    records = [ln.split(":") for ln in shown.stdout.decode("utf-8", "replace").splitlines()]
    primaries = [r for r in records if r[0] in ("pub", "sec")]
    if shown.returncode != 0 or not primaries:
        raise OnboardingError(f"{path} is not an OpenPGP public key file (export it with gpg --armor --export)")
    if len(primaries) != 1:
        raise OnboardingError(f"{path} holds {len(primaries)} keys: send exactly one (the key you sign with)")
    pub = primaries[0]
    if pub[1] in ("r", "e", "i"):
        state = {"r": "revoked", "e": "expired", "i": "invalid"}[pub[1]]
        raise OnboardingError(f"{path}: the key is {state}")
    if "S" not in pub[11]:
        raise OnboardingError(f"{path}: the key cannot sign (capabilities {pub[11]!r}); the observatory accepts only "
                              f"files signed by the partner, so send a key with a signing (sub)key")
    fpr = next((r[9] for r in records[records.index(pub) + 1:] if r[0] == "fpr"), "")
    uids = tuple(r[9] for r in records if r[0] == "uid")
    if not re.fullmatch(r"[0-9A-F]{40}|[0-9A-F]{64}", fpr):
        raise OnboardingError(f"{path}: gpg shows no fingerprint for the key")
    return PgpPublicKey(fpr, uids, path)


def _read_small(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise OnboardingError(f"{what} file {path} does not exist")
    if path.stat().st_size > MAX_KEY_FILE_BYTES:
        raise OnboardingError(f"{path} is too large to be an {what}")
    return path.read_bytes()
