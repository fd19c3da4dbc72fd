"""The observatory's Celery settings (``celery_config``): Airflow's own, plus the stages' modules imported once per
worker (``worker_preload``). That the preload holds everything the stages import is checked by running them:
``tests/integration/test_worker_preload.py``; that a real worker preloads, by ``test_celery_workers``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

CONFIG_PATH = "csp_observatory.celery_config.CELERY_CONFIG"


def _python(code: str, **env: str) -> dict:
    """``code``'s last line of output, as JSON, from a fresh Python run in ``/`` with ``env`` added; when ``env``
    drops PYTHONPATH (value ""), the package is found only as docker-compose.yaml finds it."""
    merged = {**os.environ, **env}
    merged = {k: v for k, v in merged.items() if v != ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=merged,
                         cwd="/", check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_settings_are_airflows_with_the_preload_added():
    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

    from csp_observatory import celery_config

    config = celery_config.CELERY_CONFIG
    assert {k: v for k, v in config.items() if k != "imports"} == {
        k: v for k, v in DEFAULT_CELERY_CONFIG.items() if k != "imports"}
    assert list(config["imports"]) == [*(DEFAULT_CELERY_CONFIG.get("imports") or ()), "csp_observatory.worker_preload"]


def test_airflows_celery_app_takes_them_and_publishing_imports_nothing_heavy():
    """What the scheduler does with ``[celery] celery_config_options``: Airflow's app is built from our settings, and
    building it imports neither the preload nor Great Expectations (only a starting worker imports them). As in
    docker-compose.yaml, nothing but Airflow's plugins folder (which Airflow puts on ``sys.path``) finds the package."""
    got = _python(
        "import json, sys\n"
        "from airflow.providers.celery.executors.celery_executor_utils import app\n"
        "print(json.dumps({'imports': list(app.conf.imports),\n"
        "                  'loaded': [m for m in ('csp_observatory.worker_preload', 'great_expectations', 'scipy')\n"
        "                             if m in sys.modules]}))\n",
        AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=CONFIG_PATH, PYTHONPATH="",
        AIRFLOW__CORE__PLUGINS_FOLDER=str(Path(__file__).resolve().parents[2] / "plugins"))
    assert got["imports"][-1] == "csp_observatory.worker_preload"
    assert got["loaded"] == []


def test_the_preload_imports_the_stages_and_great_expectations_as_a_run_sets_it_up():
    got = _python(
        "import json, sys\n"
        "from csp_observatory import worker_preload\n"
        "from great_expectations.execution_engine import pandas_execution_engine as engine\n"
        "print(json.dumps({'missing': [m for m in worker_preload.MODULES if m not in sys.modules],\n"
        "                  'gx': 'great_expectations.validator.v1_validator' in sys.modules,\n"
        "                  'hash_threshold': engine.HASH_THRESHOLD}))\n")
    assert got["missing"] == []
    assert got["gx"] is True
    # the batch fingerprint is off, as validation_gx runs GX (a preloaded worker must not bring it back)
    assert got["hash_threshold"] == 0
