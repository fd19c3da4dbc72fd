"""The tests' services lock excludes a second holder, and a process forked while it is held never keeps it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from csp_observatory import services_lock

pytestmark = pytest.mark.unit

TRY = """
import sys
from csp_observatory import services_lock
from pathlib import Path
try:
    with services_lock.hold(0.5, path=Path(sys.argv[1])):
        print("took it")
except TimeoutError:
    print("busy", Path(sys.argv[1]).read_text().strip())   # the holder writes its pid into the file
"""


def _other_process_tries(path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", TRY, str(path)], capture_output=True, text=True, env=env,
                          timeout=60, check=True).stdout.strip()


def test_a_second_process_waits_and_a_forked_child_never_keeps_the_lock(tmp_path):
    lock = tmp_path / "services.lock"
    child = 0
    try:
        with services_lock.hold(5, path=lock):
            # (never read the file here: closing any descriptor of it would end this process's record lock)
            assert _other_process_tries(lock) == f"busy {os.getpid()}"
            child = os.fork()
            if child == 0:                                                  # a task runner or daemon, outliving us
                time.sleep(60)
                os._exit(0)
        # the holder has let go; the forked child still runs, and holds nothing
        assert os.waitpid(child, os.WNOHANG) == (0, 0)
        assert _other_process_tries(lock) == "took it"
    finally:
        if child:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)


def test_a_wait_that_runs_out_says_who_holds_it(tmp_path):
    lock, told = tmp_path / "services.lock", []
    with services_lock.hold(5, path=lock):
        # the same process cannot test its own lock (record locks are per process): a child holds it instead
        pass
    holder = subprocess.Popen([sys.executable, "-c", TRY.replace("0.5", "60").replace('print("took it")',
                               'print("took it", flush=True); import time; time.sleep(30)'), str(lock)],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "took it"
        with pytest.raises(TimeoutError, match=str(holder.pid)):
            with services_lock.hold(2.5, on_wait=told.append, path=lock):
                pass
        assert told == [str(holder.pid)]
    finally:
        holder.kill()
        holder.wait()
