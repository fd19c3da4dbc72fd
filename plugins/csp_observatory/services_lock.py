"""The machine-wide lock on the tests' services (their database and SFTP tree): one integration test session, or
one benchmark run on the tests' config, at a time.

A POSIX record lock (``fcntl.lockf``), not ``flock``: an flock belongs to the open file, so any process forked
while it is held (a task runner, a daemon a test starts) keeps it after the session has ended, and every later
session waits for a holder that is gone. A record lock belongs to the process that took it: children never hold
it, and it ends when that process does. (Its one trap: the holder must not open and close the lock file elsewhere
while it holds the lock, because closing any descriptor of the file ends the process's record locks on it.)
"""
from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

LOCK_FILE = Path("/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()) / "csp-observatory-tests.lock"


def _holder(fh) -> str:
    """The pid the holder wrote into the file, if that process is alive; else "?"."""
    fh.seek(0)
    pid = fh.read().strip()
    return pid if pid.isdigit() and Path(f"/proc/{pid}").exists() else "?"


@contextmanager
def hold(wait_s: float, on_wait: Callable[[str], None] = lambda holder: None,
         on_timeout: Callable[[str], None] | None = None, path: Path = LOCK_FILE) -> Iterator[None]:
    """Wait (at most ``wait_s``) for the lock, then hold it for the block. ``on_wait(holder_pid)`` is called once
    when it has to wait; ``on_timeout(holder_pid)`` when the wait is over (it should raise; TimeoutError otherwise)."""
    with open(path, "a+", encoding="utf-8") as fh:
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as busy:
                if busy.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                if time.monotonic() > deadline:
                    if on_timeout is not None:
                        on_timeout(_holder(fh))
                    raise TimeoutError(f"{path} held by pid {_holder(fh)} for {wait_s} s") from None
                if not told:
                    on_wait(_holder(fh))
                    told = True
                time.sleep(2)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.lockf(fh, fcntl.LOCK_UN)
