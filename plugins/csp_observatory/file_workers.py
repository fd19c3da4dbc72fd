"""A stage's work on each file of a supply, in processes of their own when the supply is large (issue 9).

A stage takes a supply's files (offences, offenders, victims) one by one, and each file's work (parse and
validate, clean, geocode, sanitise) is independent of the others'. On one core that is all it can do; with two,
one file's work leaves the other core idle. :func:`each_file` runs the files' work in forked processes instead, as
many at once as the task may use cores, largest file first, and hands back each file's result in the files' order.

Forked, not spawned: a child starts with everything the task has imported (Great Expectations, pandas, the
reference frames it read), so it costs milliseconds, not the seconds of a fresh interpreter. What a child does is
what the stage did in its own process: it reads and writes the supply's staged frames (each file's own) and
returns what the stage records in the manifest, which the task then writes as before. So the staged frames and the
manifest are the same either way (``tests/integration/test_stages_in_processes.py`` compares them). Each file gets a
child of its own, forked with ``os.fork`` rather than through ``multiprocessing``, which refuses children to a
daemonic process such as a Celery worker's pool process, where a deployment's tasks run.

A child must not speak for the task: Airflow's task process talks to its supervisor over inherited sockets, and
two processes writing to them at once could garble the task's log. So a child's log records, warnings and printed
output are kept, returned with its result, and written by the task (after that file's work is done). A child never
calls Airflow, and leaves by ``os._exit``, running none of the task's exit handlers.

Small supplies stay in the task's process (staged files under ``file_workers_min_mb`` in all): forking and passing
results back costs more than a small file's work. So do supplies in a remote staging store (their sizes count as
0): fsspec's filesystems hold connections and event loops that a forked child should not share. ``file_workers``
caps the processes (``CSP_FILE_WORKERS``; 0, the default, means the cores this task may use,
``os.sched_getaffinity``; 1 runs everything in the task's process).
"""
from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import pickle
import resource
import selectors
import signal
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Not empty while :func:`each_file` runs its children (and so in them): it does not nest.
_RUNNING: list[bool] = []


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


def _run_child(name: str, call: Callable[[], Any]) -> _Outcome:
    """In a child: one file's work, with its logging, warnings and output kept for the task."""
    # The task's own handlers (Airflow's, whose signals mean "stop the task") are not the child's: the task kills
    # its children when it is stopped.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    keep = _Keep()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(keep)
    # No logger may keep a handler that writes to the task's streams. One that does not propagate (Airflow sets up
    # some) keeps its records here itself; one that does reaches the root's, and keeping them twice would log twice.
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger) and logger.handlers:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            if not logger.propagate:
                logger.addHandler(keep)
    out = io.StringIO()
    sys.stdout = sys.stderr = out
    outcome: _Outcome = _Outcome(records=keep.records)
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            outcome.result = call()
        except BaseException as exc:    # noqa: BLE001 - every error goes back to the task, which raises it
            outcome.error = _passable(exc)
    log.info("file %s: %s in %.2f s in process %d (peak RSS %.2f GB, with what it shares with the task)", name,
             "failed" if outcome.error else "done", time.perf_counter() - started, os.getpid(),
             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    for w in caught:
        keep.records.append(("py.warnings", logging.WARNING,
                             warnings.formatwarning(w.message, w.category, w.filename, w.lineno).strip()))
    outcome.output = out.getvalue()
    return outcome


def _pickled(name: str, outcome: _Outcome) -> bytes:
    """A child's outcome as bytes; a result that cannot be pickled becomes the error that says so."""
    try:
        return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:            # noqa: BLE001 - say what could not come back, rather than leave no result
        outcome.result, outcome.error = None, FileWorkFailed(
            f"file {name}: its result could not be passed back to the task ({type(exc).__name__}: {exc})")
        return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)


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
    if _RUNNING:
        raise RuntimeError("file_workers.each_file is already running in this process (it does not nest)")
    order = sorted(names, key=lambda n: -sizes.get(n, 0))
    log.info("%d files in %d processes (largest first: %s)", len(names), processes, ", ".join(order))
    _RUNNING.append(True)
    # The task's objects are frozen while it forks (gc.freeze, as Airflow's own executors do): a child's full
    # collections would otherwise visit every one of them, and so copy on write every page that holds one. Measured
    # forked from a 0.3 GB process: 75-180 MB less private memory per child; from the DAG benchmark's task, no
    # change (its children seldom collect fully). Unfrozen after, unless something froze them before this.
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        outcomes = _run_forked(work, order, processes)
    finally:
        if not frozen_before:
            gc.unfreeze()
        _RUNNING.clear()
    for name in names:
        _replay(name, outcomes[name])
    for name in names:
        if outcomes[name].error is not None:
            raise outcomes[name].error
    return {name: outcomes[name].result for name in names}


def _run_forked(work: Mapping[str, Callable[[], Any]], order: list[str], processes: int) -> dict[str, _Outcome]:
    """Fork a child per file, at most ``processes`` at once, in ``order``; read each one's pickled outcome from its
    pipe (as it comes, so that no child blocks on a full pipe) and reap it. Plain ``os.fork``, not
    ``multiprocessing``: a Celery worker's pool processes are daemonic, and multiprocessing refuses children to a
    daemonic process (measured: every task failed so in a real deployment). If this process is interrupted, the
    children still running are killed."""
    pending = list(order)
    running: dict[int, tuple[str, int, list[bytes]]] = {}      # pipe -> (file, pid, what it sent so far)
    outcomes: dict[str, _Outcome] = {}
    with selectors.DefaultSelector() as selector:
        try:
            while pending or running:
                while pending and len(running) < processes:
                    name = pending.pop(0)
                    pid, pipe = _fork(work[name], name)
                    running[pipe] = (name, pid, [])
                    selector.register(pipe, selectors.EVENT_READ)
                for key, _ in selector.select():
                    chunk = os.read(key.fd, 1 << 20)
                    if chunk:
                        running[key.fd][2].append(chunk)
                        continue
                    selector.unregister(key.fd)
                    os.close(key.fd)
                    name, pid, chunks = running.pop(key.fd)
                    _, status = os.waitpid(pid, 0)
                    outcomes[name] = pickle.loads(b"".join(chunks)) if chunks else _Outcome(error=FileWorkFailed(
                        f"file {name}: its process ended with no result ({_status_text(status)})"))
        finally:
            for pipe, (_, pid, _) in running.items():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                with contextlib.suppress(OSError):
                    os.close(pipe)
    return outcomes


def _fork(call: Callable[[], Any], name: str) -> tuple[int, int]:
    """A child that runs ``call`` and writes its pickled :class:`_Outcome` to a pipe; returns (pid, the pipe's end)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                    # the child: never returns into the task's code
        code = 1
        try:
            os.close(read)
            data = _pickled(name, _run_child(name, call))
            with os.fdopen(write, "wb") as out:
                out.write(data)
            code = 0
        finally:
            os._exit(code)          # no exit handlers, no flushing of the task's buffers
    os.close(write)
    return pid, read


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


__all__: Sequence[str] = ["FileWorkFailed", "each_file", "processes_for", "usable_cores"]
