"""A stage's work on each file of a supply, in processes of their own when the supply is large (issue 9).

A stage takes a supply's files (offences, offenders, victims) one by one, and each file's work (parse and
validate, clean, geocode, sanitise) is independent of the others'. On one core that is all it can do; with two,
one file's work leaves the other core idle. :func:`each_file` runs the files' work in forked processes instead, as
many at once as the task may use cores, largest file first, and hands back each file's result in the files' order.

Forked, not spawned: a child starts with everything the task has imported (Great Expectations, pandas, the
reference frames it read), so it costs milliseconds, not the seconds of a fresh interpreter. What a child does is
what the stage did in its own process: it reads and writes the supply's staged frames (each file's own) and
returns what the stage records in the manifest, which the task then writes as before. So the staged frames and the
manifest are the same either way (``tests/integration/test_file_workers.py`` compares them).

A child must not speak for the task: Airflow's task process talks to its supervisor over inherited sockets, and
two processes writing to them at once could garble the task's log. So a child's log records, warnings and printed
output are kept, returned with its result, and written by the task (after that file's work is done). A child never
calls Airflow, and leaves by ``os._exit`` (``multiprocessing``), running none of the task's exit handlers.

Small supplies stay in the task's process (staged files under ``file_workers_min_mb`` in all): forking and passing
results back costs more than a small file's work. So do supplies in a remote staging store (their sizes count as
0): fsspec's filesystems hold connections and event loops that a forked child should not share. ``file_workers``
caps the processes (``CSP_FILE_WORKERS``; 0, the default, means the cores this task may use,
``os.sched_getaffinity``; 1 runs everything in the task's process).
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import resource
import signal
import sys
import time
import traceback
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, Callable, Mapping, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The work of the pool being run, set before its processes fork: a child finds its work here by the file's name
#: (a closure over the supply's manifest and schema cannot be pickled, and need not be: the child has it).
_WORK: dict[str, Callable[[], Any]] = {}


class FileWorkFailed(RuntimeError):
    """A file's work raised an error that could not be passed back whole; its type, message and traceback are
    in this error's message."""


@dataclass
class _Outcome:
    """What a child hands back: the work's result (or its error), and what it logged, warned and printed."""

    result: Any = None
    error: BaseException | None = None
    records: list[tuple[str, int, str]] = field(default_factory=list)
    output: str = ""


class _Keep(logging.Handler):
    """Keeps a child's log records as (logger, level, message), for the task to write."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info))
        except Exception:           # a record that cannot be formatted is kept as its template
            message = str(record.msg)
        self.records.append((record.name, record.levelno, message))


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def processes_for(sizes: Mapping[str, int], workers: int = 0, min_bytes: int = 0) -> int:
    """How many processes a stage's files get (``sizes``: each file's staged bytes): 1, the task's own, for a supply
    under ``min_bytes`` or with one file; else the files, the cores (or ``workers``, if set), whichever is fewer."""
    files = sum(1 for size in sizes.values() if size > 0)
    if files < 2 or sum(sizes.values()) < max(min_bytes, 1):
        return 1
    return max(1, min(files, workers if workers > 0 else usable_cores()))


def _run_child(name: str) -> _Outcome:
    """In a child: one file's work, with its logging, warnings and output kept for the task."""
    # The task's own handlers (Airflow's, whose signals mean "stop the task") are not the child's: the pool ends it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    keep = _Keep()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(keep)
    # Loggers that do not propagate to the root (Airflow sets up some) would still write to the task's streams.
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger) and logger.handlers:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.addHandler(keep)
    out = io.StringIO()
    sys.stdout = sys.stderr = out
    outcome: _Outcome = _Outcome(records=keep.records)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            outcome.result = _WORK[name]()
        except BaseException as exc:    # noqa: BLE001 - every error goes back to the task, which raises it
            outcome.error = _passable(exc)
    log.info("file %s: %s in %.2f s in process %d (peak RSS %.2f GB, with what it shares with the task)", name,
             "failed" if outcome.error else "done", time.perf_counter() - started, os.getpid(),
             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    for w in caught:
        keep.records.append(("py.warnings", logging.WARNING,
                             warnings.formatwarning(w.message, w.category, w.filename, w.lineno).strip()))
    outcome.output = out.getvalue()
    try:
        pickle.dumps(outcome.result)
    except Exception as exc:            # noqa: BLE001 - say what could not come back, rather than break the pool
        outcome.result, outcome.error = None, FileWorkFailed(
            f"file {name}: its result could not be passed back to the task ({type(exc).__name__}: {exc})")
    return outcome


def _passable(exc: BaseException) -> BaseException:
    """The error itself if it survives pickling (its type and message reach the task), else a FileWorkFailed that
    names it and carries its traceback."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:                   # noqa: BLE001 - an error class whose arguments do not round-trip
        text = "".join(traceback.format_exception(exc))
        return FileWorkFailed(f"{type(exc).__name__}: {exc}\n{text}")


def _replay(name: str, outcome: _Outcome) -> None:
    """Write a child's log records and output as the task's own."""
    for logger, level, message in outcome.records:
        logging.getLogger(logger).log(level, "%s", message)
    if outcome.output.strip():
        log.info("file %s printed:\n%s", name, outcome.output.rstrip())


def each_file(work: Mapping[str, Callable[[], T]], sizes: Mapping[str, int], workers: int = 0,
              min_bytes: int = 0) -> dict[str, T]:
    """Each file's ``work[name]()``, in the files' order: in forked processes, largest file (``sizes``: bytes)
    first, when :func:`processes_for` gives more than one; else one after another in this process.

    An error in a file's work is raised here, as itself (or as :class:`FileWorkFailed` if it cannot be passed back),
    once every file started has finished: no child is left running, and a later file's error does not hide the
    first one's (the first in the files' order is raised)."""
    names = list(work)
    processes = processes_for({n: sizes.get(n, 0) for n in names}, workers, min_bytes)
    if processes <= 1:
        return {name: work[name]() for name in names}
    if _WORK:
        raise RuntimeError("file_workers.each_file is already running in this process (it does not nest)")
    order = sorted(names, key=lambda n: -sizes.get(n, 0))
    _WORK.update(work)
    try:
        log.info("%d files in %d processes (largest first: %s)", len(names), processes, ", ".join(order))
        # Children fork when the pool starts, after _WORK is set; each runs files until none is left.
        with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("fork")) as pool:
            futures = {name: pool.submit(_run_child, name) for name in order}
            outcomes = {name: futures[name].result() for name in order}
    finally:
        _WORK.clear()
    for name in names:
        _replay(name, outcomes[name])
    for name in names:
        if outcomes[name].error is not None:
            raise outcomes[name].error
    return {name: outcomes[name].result for name in names}


__all__: Sequence[str] = ["FileWorkFailed", "each_file", "processes_for", "usable_cores"]
