"""Test-suite policy: every test is marked unit or integration, and integration tests live in tests/integration."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [i.nodeid for i in items if not ({"unit", "integration"} & {m.name for m in i.iter_markers()})]
    if unmarked:
        raise pytest.UsageError("tests must be marked unit or integration: " + ", ".join(unmarked))
    # Only tests/integration's conftest takes the services' lock, and scripts/test.sh runs the rest of tests/ beside
    # it in a second process: an integration test anywhere else would share the services with another session.
    astray = [i.nodeid for i in items if i.get_closest_marker("integration")
              and INTEGRATION_DIR not in Path(str(i.path)).resolve().parents]
    if astray:
        raise pytest.UsageError("integration tests must be in tests/integration: " + ", ".join(astray))
