"""Test-suite policy: every test is marked unit or integration."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [i.nodeid for i in items if not ({"unit", "integration"} & {m.name for m in i.iter_markers()})]
    if unmarked:
        raise pytest.UsageError("tests must be marked unit or integration: " + ", ".join(unmarked))
