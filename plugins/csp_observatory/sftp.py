"""SFTP for the observatory: functions on a paramiko ``SFTPClient``, and a client with the server's host key pinned.

In the DAGs the client comes from Airflow's ``SFTPHook`` (the connection ``csp_sftp``, ``hooks.py``); what runs
without Airflow (the CLI scripts, the demo's partner uploads, the tests) opens one with
:func:`connect`. The functions below work on either: the hook has no ``posix-rename``, which the observatory needs
for atomic moves and for never exposing a half-written file (see STACK-NOTES), and lists links as files.
"""
from __future__ import annotations

import base64
import binascii
import os
import stat
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, Iterator

import paramiko

from csp_observatory.config import Settings


class HostKeyMismatch(paramiko.SSHException):
    """The SFTP server presented a host key other than the pinned one: possibly not the server we think."""


@dataclass(frozen=True)
class RemoteFile:
    """One entry of a remote folder: a regular file unless ``kind`` says otherwise."""

    name: str
    size: int
    mtime: int
    kind: str = "file"      # file | link | folder | other (see list_entries)


def parse_host_key(host_key: str) -> paramiko.PKey:
    """The public key of an OpenSSH ``"ssh-ed25519 AAAA... [comment]"`` line (a known_hosts host name is allowed)."""
    fields = host_key.split()
    # Accept a known_hosts line too: "[127.0.0.1]:2222 ssh-ed25519 AAAA...".
    if len(fields) >= 3 and not fields[0].startswith(("ssh-", "ecdsa-", "sk-")):
        fields = fields[1:]
    if len(fields) < 2:
        raise ValueError(f"host key {host_key!r} is not of the form 'ssh-ed25519 AAAA...'")
    key_type, data = fields[0], fields[1]
    try:
        return paramiko.PKey.from_type_string(key_type, base64.b64decode(data, validate=True))
    except (binascii.Error, paramiko.SSHException, ValueError) as exc:
        raise ValueError(f"host key {host_key[:40]!r}... cannot be read: {exc}") from exc


def _known_name(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


@contextmanager
def connect(host: str, port: int, user: str, key_file: Path | str, host_key: str,
            timeout: float = 10.0) -> Iterator[paramiko.SFTPClient]:
    """An SFTP session authenticated by key, refusing any server whose host key is not ``host_key``."""
    pinned = parse_host_key(host_key)
    client = paramiko.SSHClient()
    # Only the pinned key is known; RejectPolicy refuses anything else instead of trusting on first use.
    client.get_host_keys().add(_known_name(host, port), pinned.get_name(), pinned)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(host, port=port, username=user, key_filename=str(key_file), timeout=timeout,
                       allow_agent=False, look_for_keys=False, banner_timeout=timeout, auth_timeout=timeout)
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyMismatch(
            f"the SFTP server {host}:{port} presented host key {exc.key.get_name()} "
            f"{exc.key.fingerprint}, but the pinned key is {pinned.get_name()} {pinned.fingerprint}: refusing to "
            f"connect (the server was replaced or someone is in between; check sftp_host_key)") from exc
    except paramiko.SSHException as exc:
        client.close()
        if "not found in known_hosts" in str(exc):
            # The server offered a key of another type than the pinned one; it is just as unverifiable.
            raise HostKeyMismatch(f"the SFTP server {host}:{port} did not present the pinned host key "
                                  f"{pinned.get_name()} {pinned.fingerprint}: {exc}") from exc
        raise
    except BaseException:
        client.close()
        raise
    try:
        sftp = client.open_sftp()
        try:
            yield sftp
        finally:
            sftp.close()
    finally:
        client.close()


@contextmanager
def connect_observatory(settings: Settings) -> Iterator[paramiko.SFTPClient]:
    """The observatory's own SFTP session, from its settings."""
    with connect(settings.sftp_host, settings.sftp_port, settings.sftp_user, settings.sftp_key_file,
                 settings.sftp_host_key) as client:
        yield client


def entry_kind(mode: int | None) -> str:
    """What an entry is from its ``st_mode`` (paramiko) or ``permissions`` (asyncssh): file, link, folder, other."""
    if mode is None or stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "folder"
    return "other"


def list_entries(sftp: paramiko.SFTPClient, folder: str) -> list[RemoteFile]:
    """Every entry of ``folder``, sorted by name, each with its kind (file, link, folder, other).

    The server reports links as links (OpenSSH's sftp-server lstat()s directory entries); they are never
    followed, so a link cannot make the observatory read something outside the partner's folder.
    """
    out = [RemoteFile(a.filename, int(a.st_size or 0), int(a.st_mtime or 0), entry_kind(a.st_mode))
           for a in sftp.listdir_attr(folder)]
    return sorted(out, key=lambda f: f.name)


def list_files(sftp: paramiko.SFTPClient, folder: str) -> list[RemoteFile]:
    """Regular files in ``folder``, sorted by name (folders and links are left out)."""
    return [f for f in list_entries(sftp, folder) if f.kind == "file"]


#: Read requests in flight during a download, and the bytes each asks for (OpenSSH's sftp-server answers up to
#: 255 KiB per read; a shorter answer has the rest asked for again).
_READS_IN_FLIGHT: Final = 32
_READ_SIZE: Final = 128 << 10


class _Answers:
    """Keeps the answers to a download's read requests that paramiko reads while waiting for an earlier one."""

    def __init__(self) -> None:
        self.got: dict[int, tuple[int, paramiko.Message]] = {}

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:    # paramiko's callback
        self.got[num] = (t, msg)


def _copy_pipelined(sftp: paramiko.SFTPClient, src: paramiko.SFTPFile, size: int, out: BinaryIO) -> int:
    """Copy the first ``size`` bytes of an open remote file to ``out`` (fewer if it ends early), with
    ``_READS_IN_FLIGHT`` read requests outstanding; returns the bytes written.

    paramiko's ``prefetch`` (and ``get``/``getfo``, which use it) issues its requests from a thread and decides it
    is done whenever every request issued so far has been answered: on a busy machine the answers catch up with
    that thread and the rest of the file is read one 32 KiB round trip at a time (15 MB/s against 100 MB/s when
    idle). Here the requests are issued and their answers read in this thread, in file order, through paramiko's
    own request calls (``_async_request``, ``_read_response``: private, but stable since paramiko 1.x).
    """
    from paramiko.sftp import CMD_DATA, CMD_READ, CMD_STATUS, int64

    answers = _Answers()
    pending: deque[tuple[int, int]] = deque()       # (request number, bytes asked), in file order
    asked = written = 0

    def ask(offset: int, length: int) -> int:
        return sftp._async_request(answers, CMD_READ, src.handle, int64(offset), int(length))

    def answer(num: int) -> bytes | None:
        """The data of one read request's answer; None at the end of the file."""
        try:
            if num in answers.got:
                t, msg = answers.got.pop(num)
                if t == CMD_STATUS:
                    sftp._convert_status(msg)       # raises: EOFError at the end, IOError on an error
            else:
                t, msg = sftp._read_response(num)
        except EOFError:
            return None
        if t != CMD_DATA:
            raise paramiko.SFTPError("Expected data")
        return msg.get_string()

    while True:
        while asked < size and len(pending) < _READS_IN_FLIGHT:
            length = min(_READ_SIZE, size - asked)
            pending.append((ask(asked, length), length))
            asked += length
        if not pending:
            return written
        num, length = pending.popleft()
        data = answer(num)
        while data:
            out.write(data)
            written += len(data)
            length -= len(data)
            # a short answer: the rest of this request's span, before any later one is written
            data = answer(ask(written, length)) if length > 0 else None
        if length > 0:
            return written          # the file ended early; later answers go to ``answers`` and are dropped


class _Hashing:
    """A file being written that also feeds every byte to a hash (``hashlib``), so a download is read once."""

    def __init__(self, out: BinaryIO, digest: Any) -> None:
        self.out, self.digest = out, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.out.write(data)


def download(sftp: paramiko.SFTPClient, remote: str, local: Path, digest: Any | None = None) -> int:
    """Copy ``remote`` to ``local`` (created 0600, replaced if present); returns the number of bytes written.

    ``digest`` (a ``hashlib`` object), if given, is updated with the bytes as they are written.
    """
    local = Path(local)
    local.unlink(missing_ok=True)
    # Open with 0600 from the start: the file may hold personal data (encrypted or not) for a moment.
    fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    written = 0
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as opened, sftp.open(remote, "rb") as src:
            out: Any = opened if digest is None else _Hashing(opened, digest)
            if isinstance(sftp, paramiko.SFTPClient) and isinstance(src, paramiko.SFTPFile):
                written = _copy_pipelined(sftp, src, src.stat().st_size, out)
                src.seek(written)
            else:       # a stand-in for a client (tests): paramiko's read-ahead, if it has one
                src.prefetch()
            # to the end of the file (one round trip when the size held), as the copy always did
            while chunk := src.read(1 << 20):
                out.write(chunk)
                written += len(chunk)
    except BaseException:
        local.unlink(missing_ok=True)
        raise
    return written


def move(sftp: paramiko.SFTPClient, src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` atomically, replacing ``dst`` if it exists (SFTP posix-rename)."""
    sftp.posix_rename(src, dst)


def put_text(sftp: paramiko.SFTPClient, remote: str, text: str, mode: int | None = None) -> None:
    """Write ``text`` (UTF-8) to ``remote`` via ``remote.part`` and a rename, so no reader sees half of it."""
    part = remote + ".part"
    with sftp.open(part, "wb") as fh:
        fh.write(text.encode("utf-8"))
    if mode is not None:
        # By default the server decides (setup.sh: shared group, umask 0007); set before the rename so the
        # file never appears with the wrong mode.
        sftp.chmod(part, mode)
    sftp.posix_rename(part, remote)


def put_file(sftp: paramiko.SFTPClient, local: Path, remote: str, mode: int | None = None) -> None:
    """Upload ``local`` to ``remote`` via ``remote.part`` and a rename, so no reader sees half of it."""
    part = remote + ".part"
    sftp.put(str(local), part, confirm=True)
    if mode is not None:
        sftp.chmod(part, mode)
    sftp.posix_rename(part, remote)


def exists(sftp: paramiko.SFTPClient, remote: str) -> bool:
    """Whether ``remote`` exists (a link counts as itself: it is not followed)."""
    try:
        sftp.lstat(remote)
    except FileNotFoundError:
        return False
    return True
