#!/usr/bin/env bash
# Set everything up (scripts/setup.sh), then run pytest in the project's venv; arguments go to pytest.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$REPO/scripts/setup.sh"
set +u   # airflow.env extends PYTHONPATH, which may be unset
# shellcheck source=/dev/null
. "$REPO/.run/airflow.env"
set -u
cd "$REPO"
exec "$REPO/.venv/bin/python" -m pytest "$@"
