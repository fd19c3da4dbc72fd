"""What the arrival triggers make of one inbox listing, without SFTP: intake's plan of the listing summarised as an
``InboxLook`` (the arrival's signature, the sizes for the next look, whether the inbox held still)."""
from __future__ import annotations

import stat

import pytest

from csp_observatory import arrival, intake, sftp
from csp_observatory.schema_loading import schema_for

pytestmark = pytest.mark.unit

FEED = "police_recorded_crime"
NAMES = ("prc_offences_{p}.csv.gpg", "prc_offenders_{p}.csv.gpg", "prc_victims_{p}.csv.gpg")


def _listing(period: str, mtime: int = 1000, extra: tuple[sftp.RemoteFile, ...] = ()) -> list[sftp.RemoteFile]:
    return sorted([*(sftp.RemoteFile(n.format(p=period), 100, mtime) for n in NAMES), *extra], key=lambda f: f.name)


def _look(listing: list[sftp.RemoteFile], previous: dict[str, int]) -> arrival.InboxLook:
    return arrival.summarise(intake.plan_supplies(schema_for(FEED), listing, previous), previous)


def test_nothing_in_the_inbox_is_no_arrival() -> None:
    assert _look([], {}) == arrival.InboxLook([], [], "", {}, True)


def test_a_supply_is_an_arrival_once_its_sizes_held_between_two_looks() -> None:
    first = _look(_listing("209901"), {})
    assert first.periods == [] and first.signature == "" and not first.settled
    second = _look(_listing("209901"), first.sizes)
    assert second.periods == ["209901"] and second.signature and second.settled
    # the same names re-sent later (a new modification time) are another arrival
    assert _look(_listing("209901", mtime=2000), first.sizes).signature != second.signature


def test_a_file_to_refuse_is_an_arrival_and_a_link_is_never_a_supply_file() -> None:
    link = sftp.RemoteFile("prc_victims_209902.csv.gpg", 10, 1000, "link")
    seen = _look([sftp.RemoteFile("crime sept.xlsx", 10, 1000), link], {})
    assert seen.periods == [] and seen.strays == ["crime sept.xlsx", "prc_victims_209902.csv.gpg"] and seen.signature


def test_an_entry_kind_is_read_from_paramiko_and_asyncssh_modes_alike() -> None:
    assert [sftp.entry_kind(m) for m in (stat.S_IFREG | 0o640, stat.S_IFLNK | 0o777, stat.S_IFDIR | 0o755,
                                         stat.S_IFIFO | 0o600, None)] == ["file", "link", "folder", "other", "file"]


def test_a_look_certifies_the_files_whose_size_held_for_the_runs_sensor() -> None:
    """What the arrival event carries (``InboxLook.certified``): only files seen at the same size on both looks."""
    first = _look(_listing("209901"), {})
    assert first.certified == {}
    grown = {**first.sizes, "prc_victims_209901.csv.gpg": 90}       # the victims file was still being written
    second = _look(_listing("209901"), grown)
    assert second.certified == {n.format(p="209901"): [100, 1000] for n in NAMES if "victims" not in n}
    third = _look(_listing("209901"), second.sizes)
    assert third.certified == {n.format(p="209901"): [100, 1000] for n in NAMES}
