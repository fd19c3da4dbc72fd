#!/usr/bin/env bash
# The end-to-end demo: set everything up (idempotent), then a partner drops a month of police recorded crime
# on SFTP with its metadata file (guidance section 3.4), encrypted and signed, and the feed's DAG runs it through to
# PostGIS. Extra arguments go to the demo (e.g. --period 202610 --offences 2000).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup.sh"
set +u   # airflow.env extends PYTHONPATH, which may be unset
# shellcheck source=/dev/null
. "$REPO/.run/airflow.env"
set -u
export CSP_RETRY_DELAY_S="${CSP_RETRY_DELAY_S:-1}"
cd "$REPO"
exec "$REPO/.venv/bin/python" -m csp_observatory.demo "$@"
