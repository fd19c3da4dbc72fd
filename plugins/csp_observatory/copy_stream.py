"""A load's COPY data made in a background thread, ahead of the one connection that sends it (issue 9).

A supply's load is one transaction on one connection, so PostgreSQL does its part (each file's COPY, then its index
builds) one statement after another, on one core. What this process does for a file (read its frame, type its
columns, order its rows, make the binary tuples) is done meanwhile by :class:`CopyFeed`'s thread, one file after
another, into a queue of a few COPY batches: the next file's first batches are ready when its COPY starts (made
while the previous file's indexes were built), and each batch while the one before it is sent. The server no
longer waits for this process between batches or for a whole file's preparation (the 2 cores: one each).
A failure on either side stops the other: the feed's error is raised where its data is read (psycopg2 turns an
error raised inside ``copy_expert`` into ``QueryCanceled``: the caller raises :attr:`CopyFeed.error` instead), and
``on_error`` (the connection's ``cancel``) stops a statement the connection is running meanwhile.
"""
from __future__ import annotations

import io
import queue
import threading
from typing import Any, Callable, Iterable, Iterator

#: A file's work: its name and a function giving its header (first) and then its COPY batches (bytes-like).
Job = tuple[str, Callable[[], Iterator[Any]]]

_END = object()


class FeedError(RuntimeError):
    """The feed and its reader disagree (a job's data asked for out of turn), or its thread stopped early."""


class CopyFeed:
    """Runs ``jobs`` in order in a background thread, at most ``depth`` batches ahead of the reader.

    Use as a context manager; for each job in turn, :meth:`header` gives its first item and :meth:`reader` a stream
    of the bytes of the rest, for ``copy_expert``. Leaving the context stops the thread and waits for it.
    """

    def __init__(self, jobs: Iterable[Job], on_error: Callable[[], None] | None = None, depth: int = 2) -> None:
        self._jobs = list(jobs)
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._on_error = on_error
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="csp-load-feed", daemon=True)

    def __enter__(self) -> CopyFeed:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the thread (it finishes the batch it is making) and wait for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for name, make in self._jobs:
                for item in make():
                    if not self._put((name, item)):
                        return
                    del item            # a sent batch is not held while the next is made
                if not self._put((name, _END)):
                    return
        except BaseException as exc:    # noqa: BLE001  # raised again in the reading thread
            self.error = exc
            if self._on_error is not None and not self._stop.is_set():
                try:
                    self._on_error()    # stop what the connection runs now (an index build): the load fails anyway
                except Exception:       # noqa: BLE001  # the error itself is what the reader raises
                    pass

    def _get(self, name: str) -> Any:
        while True:
            try:
                got, item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self.error is not None:
                    raise self.error        # as the preparation raised it (e.g. a value out of range)
                if not self._thread.is_alive():
                    raise FeedError(f"preparing {name}: the feed stopped") from None
                continue
            if got != name:
                raise FeedError(f"expected {name}'s rows, got {got}'s")
            return item

    def header(self, name: str) -> Any:
        """The first item of job ``name`` (the next job): what its COPY statement needs to know."""
        item = self._get(name)
        if item is _END:
            raise FeedError(f"{name}: no header")
        return item

    def reader(self, name: str) -> io.RawIOBase:
        """The bytes of job ``name``'s batches, end to end, as a file for ``copy_expert``."""
        return _Reader(self, name)


class _Reader(io.RawIOBase):
    def __init__(self, feed: CopyFeed, name: str) -> None:
        self._feed, self._name = feed, name
        self._head = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not len(self._head):
            if self._done:
                return b""
            item = self._feed._get(self._name)
            if item is _END:
                self._done = True
                return b""
            self._head = memoryview(item).cast("B")
        size = len(self._head) if size is None or size < 0 else size
        out = bytes(self._head[:size])          # psycopg2 takes bytes only
        self._head = self._head[size:]
        return out
