"""Whether the load takes a second connection (``pipeline_load._two_connections``, ``loading.split_files``): by
default for a supply as large as the stages share between processes, never for a small one, on one core, or with
``load_connections: 1``."""
from __future__ import annotations

import pytest

from csp_observatory import file_workers, loading, pipeline_load
from csp_observatory.config import Settings

pytestmark = pytest.mark.unit

MB = 1 << 20
COUNTS = {"offences": 1_000_000, "offenders": 830_000, "victims": 1_200_000}


class _Staged:
    """A manifest whose sanitised frames have the sizes given (what ``_two_connections`` reads)."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes

    def staged_sizes(self, stage: str | None) -> dict[str, int]:
        assert stage == "sanitised"
        return self.sizes


def _settings(**changes: int) -> object:
    """The settings ``_two_connections`` reads, at their defaults unless changed."""
    return type("S", (), {"load_connections": Settings.load_connections,
                          "file_workers_min_mb": Settings.file_workers_min_mb, **changes})()


def test_a_large_supply_takes_a_second_connection_by_default(monkeypatch):
    monkeypatch.setattr(file_workers, "usable_cores", lambda: 2)
    large = _Staged({"offences": 90 * MB, "offenders": 60 * MB, "victims": 110 * MB})
    assert pipeline_load._two_connections(_settings(), large)
    assert loading.split_files(COUNTS, second=True) == (["victims"], ["offences", "offenders"])


def test_a_small_supply_or_load_connections_1_keeps_one_connection(monkeypatch):
    monkeypatch.setattr(file_workers, "usable_cores", lambda: 2)
    small = _Staged({"offences": 2 * MB, "offenders": MB, "victims": 3 * MB})
    large = _Staged({"offences": 90 * MB, "offenders": 60 * MB, "victims": 110 * MB})
    assert not pipeline_load._two_connections(_settings(), small)
    assert not pipeline_load._two_connections(_settings(load_connections=1), large)
    assert not pipeline_load._two_connections(_settings(), _Staged({"offences": 0, "victims": 0}))   # remote store


def test_on_one_core_every_file_stays_on_the_loads_connection(monkeypatch):
    monkeypatch.setattr(file_workers, "usable_cores", lambda: 1)
    assert loading.split_files(COUNTS, second=True) == (["victims", "offences", "offenders"], [])
