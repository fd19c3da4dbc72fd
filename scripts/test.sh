#!/usr/bin/env bash
# Set everything up (scripts/setup.sh), then run pytest in the project's venv; arguments go to pytest.
#
# Without arguments (the whole suite, as .ci/run runs it) there are two pytest processes at once: tests/integration
# in the foreground, and the rest of tests/ (the unit tests, which use no services) beside it, its output shown
# when both have ended. The integration tests run one at a time (they share the services) and spend most of their
# time waiting for Airflow, so the second core runs the unit tests meanwhile. Every test still runs exactly once
# (tests/conftest.py keeps integration tests inside tests/integration); the exit code is non-zero if either failed.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$REPO/scripts/setup.sh"
set +u   # airflow.env extends PYTHONPATH, which may be unset
# shellcheck source=/dev/null
. "$REPO/.run/airflow.env"
set -u
cd "$REPO"
PYTEST=("$REPO/.venv/bin/python" -m pytest)
if [ "$#" -gt 0 ]; then
    exec "${PYTEST[@]}" "$@"
fi

others_log=$(mktemp "${TMPDIR:-/tmp}/csp-tests-others.XXXXXX")
others_pid=""
# the background run ends with this script, however it ends (a failure, Ctrl-C, a CI time-out)
cleanup() {
    if [ -n "$others_pid" ]; then kill "$others_pid" 2>/dev/null || true; fi
    rm -f "$others_log"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"${PYTEST[@]}" tests --ignore=tests/integration >"$others_log" 2>&1 &
others_pid=$!
set +e
"${PYTEST[@]}" tests/integration
integration_rc=$?
wait "$others_pid"
others_rc=$?
set -e
others_pid=""
echo
echo "== the rest of the suite (pytest tests --ignore=tests/integration), run beside the integration tests:"
cat "$others_log"
echo "== exit codes: tests/integration $integration_rc, the rest $others_rc"
# a failure wins over "no tests collected" (pytest's 5, which .ci/run reports as a failure too)
for rc in "$integration_rc" "$others_rc"; do
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
done
for rc in "$integration_rc" "$others_rc"; do
    if [ "$rc" -ne 0 ]; then exit "$rc"; fi
done
exit 0
