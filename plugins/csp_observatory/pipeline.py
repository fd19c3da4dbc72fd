"""The observatory's stages for one feed, as the DAG calls them.

Each stage takes the work folders of the supplies in flight and returns those still going. A supply's
state lives in ``manifest.json`` in its private staging folder; its data passes between stages as
parquet beside it, so nothing personal ever goes through Airflow's XCom or metadata database.

A supply's metadata file (guidance section 3.4, ``metadata.py``) travels with its data files: collected,
decrypted and verified like them, read and checked against them at parse time (``stages["metadata"]``), and
catalogued with its table and column comments inside the load's transaction. The load refuses a feed's first
supply without one.

The stages live in modules named for what they do, in the order a supply meets them:
``pipeline_collect.py`` (wait, collect, decrypt and verify), ``pipeline_parse.py`` (parse and validate),
``pipeline_geo.py`` (clean, geocode, sanitise), ``pipeline_load.py`` and ``pipeline_report.py`` (report, archive
and the run's verdict). The supply's record, :class:`Manifest`, and what the stages share are in
``pipeline_supply.py``. This module names the stages as the DAG (``dags/feeds.py``), ``arrival.py`` and the tests
call them: ``pipeline.collect``, ``pipeline.load`` and so on.
"""
from __future__ import annotations

from csp_observatory.pipeline_collect import ReadyLook, collect, decrypt_and_verify, ready_look, ready_periods
from csp_observatory.pipeline_geo import clean, geocode, sanitise
from csp_observatory.pipeline_load import load, loaded_supplies
from csp_observatory.pipeline_parse import parse_and_validate
from csp_observatory.pipeline_report import report_and_archive, verdict
from csp_observatory.pipeline_supply import (Manifest, Services, SettingsServices, SupplyFile, SupplyHasProblems,
                                             SupplyNotLoaded)

__all__ = ["Manifest", "ReadyLook", "Services", "SettingsServices", "SupplyFile", "SupplyHasProblems",
           "SupplyNotLoaded", "clean", "collect", "decrypt_and_verify", "geocode", "load", "loaded_supplies",
           "parse_and_validate", "ready_look", "ready_periods", "report_and_archive", "sanitise", "verdict"]
