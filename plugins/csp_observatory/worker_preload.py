"""What a Celery worker imports once, so that each task process does not import it again.

Airflow 3 runs each task in a process forked from the Celery worker (``airflow.sdk.execution_time.supervisor``), so
a module the worker has imported is already in every task process, for nothing. Airflow preloads a few of its own
(``celery_executor_utils.on_celery_import_modules``); this module adds the stages' own: pandas and pyarrow in every
stage, the SFTP and PostgreSQL hooks, Great Expectations in ``parse_and_validate`` (2.5-4.2 s per task process,
measured by ``benchmarks/end_to_end.py``), scipy's k-d tree and PROJ in ``geocode`` and ``sanitise``. In a
deployment a task's overhead fell from 2.2-3.5 s to 0.4-0.6 s (``benchmarks/deployed_tiny_supply.py``); the worker's
own process is about 250 MB larger (measured: 140 -> 395 MB), shared with the task processes it forks.

The worker imports this module because ``celery_config.CELERY_CONFIG`` names it in Celery's ``imports``: set
``AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=csp_observatory.celery_config.CELERY_CONFIG`` on the workers (and on the
scheduler, which publishes with the same settings). Nothing here leaves a file, a socket or a thread open: a forked
task process must not share any of those with its worker.
"""
from __future__ import annotations

import gc
import importlib
from typing import Final

#: What the stages import when they run, beyond what ``dags/feeds.py`` imports to parse.
#: ``tests/integration/test_worker_preload.py`` runs a supply's stages after the preload and lists what they still
#: import: add here what it names.
MODULES: Final = (
    # the stages, and what they import only when they run
    "csp_observatory.pipeline", "csp_observatory.hooks", "csp_observatory.sftp", "csp_observatory.decryption",
    "csp_observatory.intake", "csp_observatory.intake_download", "csp_observatory.intake_quarantine",
    "csp_observatory.ledger", "csp_observatory.agreements", "csp_observatory.file_workers", "csp_observatory.parsing",
    "csp_observatory.layouts", "csp_observatory.layouts_loading", "csp_observatory.layouts_model",
    "csp_observatory.layouts_reading",
    "csp_observatory.metadata", "csp_observatory.metadata_file", "csp_observatory.metadata_checks",
    "csp_observatory.validation", "csp_observatory.validation_scores", "csp_observatory.record_keys",
    "csp_observatory.cleaning", "csp_observatory.addresses", "csp_observatory.gazetteer",
    "csp_observatory.geocoding", "csp_observatory.postcodes", "csp_observatory.postcodes_postgis",
    "csp_observatory.sanitising", "csp_observatory.sanitising_displacement", "csp_observatory.sanitising_checks",
    "csp_observatory.scrubbing", "csp_observatory.disclosure", "csp_observatory.fitness",
    "csp_observatory.loading", "csp_observatory.partitions", "csp_observatory.feed_tables",
    "csp_observatory.copy_binary", "csp_observatory.copy_stream", "csp_observatory.metadata_catalogue",
    "csp_observatory.metadata_docs", "csp_observatory.stamp", "csp_observatory.ward_month",
    "csp_observatory.reporting", "csp_observatory.report_writing", "csp_observatory.report_html",
    "csp_observatory.report_html_parts", "csp_observatory.report_quality_html", "csp_observatory.report_metadata",
    "csp_observatory.trends",
    # third-party modules those import lazily
    "gnupg", "pyarrow.csv", "pyarrow.feather", "pyarrow.parquet", "pyarrow.dataset", "pyproj", "scipy.spatial",
    "pandas.core.arrays.arrow.extension_types", "pandas.core.arrays.arrow._arrow_utils",
    "pandas.core.methods.to_dict",
)


def preload() -> None:
    """Import :data:`MODULES` and Great Expectations as a validation run does."""
    for name in MODULES:
        importlib.import_module(name)
    from csp_observatory import validation_gx

    validation_gx.import_gx()


preload()
# As Airflow's own preload does: the imported objects move out of the collector's generations, so a forked task
# process's collections do not touch (and copy) the pages they share with the worker. Airflow unfreezes on
# worker_ready, after this module is imported.
gc.freeze()
