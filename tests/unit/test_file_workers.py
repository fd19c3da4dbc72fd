"""A stage's per-file work in forked processes (``file_workers.each_file``): results, errors and logs come back to
the task as if the work had run in it."""
from __future__ import annotations

import logging
import os
import threading
import time
import warnings

import pytest

from csp_observatory import file_workers
from csp_observatory.file_workers import FileWorkFailed, each_file, processes_for

pytestmark = pytest.mark.unit

BIG = {"offences": 300, "offenders": 200, "victims": 400}


class _Unpicklable(Exception):
    """An error whose constructor takes two arguments but passes one to Exception: it does not unpickle."""

    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"{what} ({code})")


def test_a_large_supply_of_several_files_gets_a_process_per_core_up_to_its_files(monkeypatch):
    monkeypatch.setattr(file_workers, "usable_cores", lambda: 2)
    assert processes_for(BIG, 0, 100) == 2
    assert processes_for(BIG, 8, 100) == 3          # never more processes than files
    assert processes_for(BIG, 1, 100) == 1          # file_workers: 1 keeps every file in the task's process
    assert processes_for(BIG, 0, 901) == 1          # under the threshold: forking costs more than it saves
    assert processes_for({"offences": 10_000}, 0, 0) == 1
    assert processes_for({"offences": 10_000, "victims": 0}, 0, 0) == 1    # an empty (or remote: 0) file
    monkeypatch.setattr(file_workers, "usable_cores", lambda: 1)
    assert processes_for(BIG, 0, 100) == 1


def test_work_runs_in_other_processes_and_results_come_back_in_the_files_order():
    work = {name: (lambda name=name: (name, os.getpid())) for name in BIG}
    got = each_file(work, BIG, workers=2, min_bytes=0)
    assert list(got) == list(BIG)
    assert [name for name, _ in got.values()] == list(BIG)
    pids = {pid for _, pid in got.values()}
    assert os.getpid() not in pids and len(pids) == len(BIG)        # a process of its own for each file


def test_the_children_fork_with_the_tasks_objects_frozen_and_the_task_thaws_them_after():
    """gc.freeze before the fork: a child's full collections then leave the task's pages alone (not copied)."""
    import gc

    assert gc.get_freeze_count() == 0
    got = each_file({name: gc.get_freeze_count for name in BIG}, BIG, workers=2, min_bytes=0)
    assert all(count > 1000 for count in got.values())             # the task's objects, frozen in each child
    assert gc.get_freeze_count() == 0                                # and thawed in the task afterwards
    gc.freeze()                                                      # frozen by someone else before: left frozen
    try:
        frozen = gc.get_freeze_count()
        each_file({name: gc.get_freeze_count for name in BIG}, BIG, workers=2, min_bytes=0)
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()


def test_a_small_supply_runs_in_the_task_process():
    got = each_file({name: os.getpid for name in BIG}, BIG, workers=2, min_bytes=10_000)
    assert set(got.values()) == {os.getpid()}


def test_the_largest_files_start_first():
    def timed() -> tuple[float, float]:
        started = time.monotonic()
        time.sleep(0.3)
        return started, time.monotonic()

    got = each_file({name: timed for name in BIG}, BIG, workers=2, min_bytes=0)
    # two processes: the two largest files (victims, offences) first, the smallest once one of them is done
    assert got["offenders"][0] >= min(got["victims"][1], got["offences"][1])
    assert max(got["victims"][0], got["offences"][0]) < got["offenders"][0]


def test_an_error_in_a_file_is_raised_as_itself_after_every_file_is_done(tmp_path):
    def fail() -> None:
        raise ValueError("victims: column 'age' is not a number")

    def finish(name: str) -> str:
        (tmp_path / name).write_text("finished")
        return name

    work = {"offences": lambda: finish("offences"), "victims": fail, "offenders": lambda: finish("offenders")}
    with pytest.raises(ValueError, match="column 'age' is not a number"):
        each_file(work, BIG, workers=2, min_bytes=0)
    assert (tmp_path / "offences").read_text() == "finished" and (tmp_path / "offenders").exists()


def test_an_error_that_cannot_be_passed_back_is_named_with_its_traceback():
    def fail() -> None:
        raise _Unpicklable("no partner key", 7)

    with pytest.raises(FileWorkFailed) as raised:
        each_file({"offences": fail, "victims": lambda: 1}, BIG, workers=2, min_bytes=0)
    assert "_Unpicklable: no partner key (7)" in str(raised.value)
    assert "in fail" in str(raised.value)           # the child's traceback


def test_a_result_that_cannot_be_passed_back_is_an_error_not_a_hang():
    with pytest.raises(FileWorkFailed, match="file victims: its result could not be passed back"):
        each_file({"offences": lambda: 1, "victims": lambda: threading.Lock()}, BIG, workers=2, min_bytes=0)


def test_what_a_child_logs_warns_and_prints_is_written_by_the_task(caplog):
    def noisy() -> int:
        logging.getLogger("csp_observatory.cleaning").info("victims: 3 postcodes normalised")
        warnings.warn("a column of mixed types", UserWarning)
        print("from a library")
        return 3

    with caplog.at_level(logging.INFO):
        got = each_file({"offences": lambda: 1, "victims": noisy}, BIG, workers=2, min_bytes=0)
    assert got == {"offences": 1, "victims": 3}
    ours = [r for r in caplog.records if r.process == os.getpid()]
    messages = [(r.name, r.getMessage()) for r in ours]
    assert ("csp_observatory.cleaning", "victims: 3 postcodes normalised") in messages
    assert any(name == "py.warnings" and "a column of mixed types" in text for name, text in messages)
    assert any("file victims printed:\nfrom a library" in text for _, text in messages)
    # and each file's time, with the process it ran in (not this one)
    done = [text for name, text in messages if text.startswith("file victims: done in")]
    assert len(done) == 1 and f"in process {os.getpid()} " not in done[0]


def test_it_does_not_nest():
    def inner() -> dict[str, int]:
        return each_file({"a": lambda: 1, "b": lambda: 2}, {"a": 5, "b": 5}, workers=2, min_bytes=0)

    with pytest.raises(RuntimeError, match="does not nest"):
        each_file({"offences": inner, "victims": lambda: 1}, BIG, workers=2, min_bytes=0)


def _in_a_daemonic_process(reply) -> None:
    try:
        got = each_file({name: os.getpid for name in BIG}, BIG, workers=2, min_bytes=0)
        reply.send(("ok", len(set(got.values()))))
    except BaseException as exc:    # noqa: BLE001 - sent back to the test
        reply.send(("error", f"{type(exc).__name__}: {exc}"))


def test_it_runs_in_a_daemonic_process_as_a_celery_workers_tasks_do():
    """A Celery worker's pool processes are daemonic, and multiprocessing gives such a process no children."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    mine, theirs = ctx.Pipe()
    process = ctx.Process(target=_in_a_daemonic_process, args=(theirs,), daemon=True)
    process.start()
    assert mine.poll(60), "no answer from the daemonic process"
    assert mine.recv() == ("ok", len(BIG))
    process.join(10)


def test_a_record_of_a_logger_with_a_handler_of_its_own_comes_back_once(caplog):
    own = logging.getLogger("csp_observatory.test_file_workers.own")
    own.addHandler(logging.NullHandler())            # it also propagates to the root, as most loggers do
    alone = logging.getLogger("csp_observatory.test_file_workers.alone")
    got_alone: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: got_alone.append(record.getMessage())
    alone.addHandler(handler)                        # as Airflow's task logger: its records never reach the root
    alone.propagate = False
    try:
        def log_once() -> int:
            own.warning("victims: one record")
            alone.warning("victims: one record of a logger that does not propagate")
            return 1

        with caplog.at_level(logging.INFO):
            each_file({"offences": lambda: 1, "victims": log_once}, BIG, workers=2, min_bytes=0)
    finally:
        own.handlers.clear()
        alone.handlers.clear()
        alone.propagate = True
    assert [r.getMessage() for r in caplog.records if r.name == own.name] == ["victims: one record"]
    # written once, by the task, through that logger's own handler (as if the work had run in the task)
    assert got_alone == ["victims: one record of a logger that does not propagate"]


def test_a_stage_called_without_settings_uses_the_configured_ones_not_the_defaults(monkeypatch):
    # The DAG's clean task calls its stage with no settings: file_workers and file_workers_min_mb from the
    # environment (or the config file) must still apply, as they do for the stages given settings.
    from types import SimpleNamespace

    from csp_observatory import pipeline_supply

    seen = {}

    def each(work, sizes, workers=0, min_bytes=0):
        seen.update(workers=workers, min_bytes=min_bytes)
        return {name: call() for name, call in work.items()}

    monkeypatch.setattr(file_workers, "each_file", each)
    monkeypatch.setenv("CSP_FILE_WORKERS", "1")
    monkeypatch.setenv("CSP_FILE_WORKERS_MIN_MB", "7")
    m = SimpleNamespace(staged_sizes=lambda stage: {"a": 1, "b": 2})
    assert pipeline_supply.each_file(None, m, "parsed", {"a": lambda: 1, "b": lambda: 2}) == {"a": 1, "b": 2}
    assert seen == {"workers": 1, "min_bytes": 7 << 20}
