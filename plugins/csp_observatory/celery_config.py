"""The Celery settings of the observatory's workers: Airflow's defaults, and the stages' modules imported once per
worker (``worker_preload``) rather than once per task process.

Name it in ``[celery] celery_config_options`` (``AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=
csp_observatory.celery_config.CELERY_CONFIG``, as ``docker-compose.yaml`` does). Celery imports the modules in
``imports`` only when a worker starts (``app.loader.init_worker``), in the worker's main process before it forks
its pool: the scheduler, which reads the same settings to publish tasks, imports nothing more.
"""
from __future__ import annotations

from typing import Any, Final

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

PRELOAD_MODULE: Final = "csp_observatory.worker_preload"

CELERY_CONFIG: Final[dict[str, Any]] = {
    **DEFAULT_CELERY_CONFIG,
    "imports": (*tuple(DEFAULT_CELERY_CONFIG.get("imports") or ()), PRELOAD_MODULE),
}
