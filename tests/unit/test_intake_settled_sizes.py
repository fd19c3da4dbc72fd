"""Fixed costs of a supply (issue 9): the collect task trusts the sizes the sensor saw hold only when nothing changed
since, and the decrypt stage logs in to SFTP and PostGIS only when it must refuse a file."""
from __future__ import annotations

import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from csp_observatory import arrival, decryption, intake, pipeline_collect
from csp_observatory.config import PartnerKeys, Settings
from csp_observatory.pipeline_supply import Manifest, SupplyFile
from csp_observatory.schema_loading import schema_for

pytestmark = pytest.mark.unit

FEED = "police_recorded_crime"
NAMES = [f"prc_{f}_202609.csv.gpg" for f in ("offences", "offenders", "victims")]
INBOX = "/police/inbox"


@dataclass
class _Attr:
    filename: str
    st_size: int
    st_mtime: int
    st_mode: int = stat.S_IFREG | 0o644


class _Inbox:
    """An inbox whose files' (size, mtime) change between listings as ``states`` says (the last state stays)."""

    def __init__(self, states: dict[str, list[tuple[int, int]]]) -> None:
        self.states, self.listings = states, 0

    def listdir_attr(self, folder: str) -> list[_Attr]:
        assert folder == INBOX
        self.listings += 1
        return [_Attr(name, *seq[min(self.listings - 1, len(seq) - 1)]) for name, seq in self.states.items()]


def _settings(tmp_path: Path) -> Settings:
    return Settings(database_url="postgresql://unused", sftp_host="127.0.0.1", sftp_port=2222, sftp_user="cspobs",
                    sftp_key_file=tmp_path / "key", sftp_host_key="ssh-ed25519 AAAA", sftp_root="",
                    gnupg_home=tmp_path / "gnupg", staging_dir=tmp_path / "staging", reports_dir=tmp_path / "reports",
                    partners={"police": PartnerKeys("police", "B75DF987978C02D2473E38568077D4FBAA92F0E3")},
                    poll_interval_s=1.0)


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(intake.time, "sleep", slept.append)
    return slept


def _sensor_look(tmp_path: Path, states: dict[str, list[tuple[int, int]]]) -> intake.ReadySupplies:
    return intake.find_ready_supplies(_Inbox(states), schema_for(FEED), _settings(tmp_path))


def test_the_sensor_certifies_only_the_sizes_it_saw_hold(tmp_path, sleeps):
    growing = "prc_offences_202610.csv.gpg"
    seen = _sensor_look(tmp_path, {**{n: [(50, 7)] for n in NAMES}, growing: [(10, 8), (20, 9), (30, 10), (40, 11)]})
    assert [s.period for s in seen] == ["202609"] and sleeps == [1.0]
    assert seen.settled == {n: [50, 7] for n in NAMES}     # the growing file is not certified


def test_collect_does_not_poll_again_when_every_file_is_as_the_sensor_saw_it(tmp_path, sleeps):
    settled = _sensor_look(tmp_path, {n: [(50, 7)] for n in NAMES}).settled
    sleeps.clear()
    inbox = _Inbox({n: [(50, 7)] for n in NAMES})
    ready = intake.find_ready_supplies(inbox, schema_for(FEED), _settings(tmp_path), settled=settled)
    assert [s.period for s in ready] == ["202609"]
    assert sleeps == [] and inbox.listings == 2            # one listing to compare, one to plan: no wait


@pytest.mark.parametrize("change", ["grew", "rewritten", "new file"])
def test_collect_polls_again_when_anything_changed_since_the_sensor(tmp_path, sleeps, change):
    settled = {n: [50, 7] for n in NAMES}
    now = {n: [(50, 7)] for n in NAMES}
    if change == "grew":            # still being written: it grows between collect's own polls too
        now[NAMES[0]] = [(60, 9), (70, 10), (80, 11), (90, 12)]
    elif change == "rewritten":     # same size, written again since the sensor looked (its mtime moved)
        now[NAMES[0]] = [(50, 8)]
    else:                           # a file the sensor never saw, still growing
        now["prc_offences_202610.csv.gpg"] = [(1, 9), (2, 10), (3, 11), (4, 12)]
    inbox = _Inbox(now)
    ready = intake.find_ready_supplies(inbox, schema_for(FEED), _settings(tmp_path), settled=settled)
    assert sleeps == [1.0] and inbox.listings == 4         # polled as before: two listings a second apart
    if change == "grew":
        assert ready.supplies == [] and "size not yet stable" in ready.waiting["202609"]
    else:
        assert [s.period for s in ready] == ["202609"]
        assert "202610" not in [s.period for s in ready]


def test_trusted_sizes_needs_every_candidate_exactly_as_certified():
    listing = [intake.RemoteFile(n, 50, 7) for n in NAMES]
    certified = {n: [50, 7] for n in NAMES}
    assert intake.trusted_sizes(listing, NAMES, certified) == {n: 50 for n in NAMES}
    assert intake.trusted_sizes(listing, NAMES, None) is None
    assert intake.trusted_sizes(listing, NAMES, {n: [50, 7] for n in NAMES[:2]}) is None
    assert intake.trusted_sizes(listing, NAMES, {**certified, NAMES[2]: [49, 7]}) is None


def test_the_sensor_hands_its_certified_sizes_to_the_collect_task(monkeypatch):
    pushed: dict[str, Any] = {}

    class _TI:
        def xcom_push(self, key: str, value: Any) -> None:
            pushed[key] = value

    look = pipeline_collect.ReadyLook(["202609"], {NAMES[0]: [50, 7]})
    # the sensor looks through csp_observatory.pipeline's name for it (bound when that module is first imported)
    from csp_observatory import pipeline

    monkeypatch.setattr(pipeline, "ready_look", lambda feed, settings=None, services=None, **certificate: look)
    monkeypatch.setattr(arrival, "_connections", lambda: None)
    sensor = arrival.SupplySensor(task_id="wait_for_supply", feed=FEED)
    assert sensor._ready({"ti": _TI()}) == ["202609"]
    assert pushed == {arrival.SETTLED_XCOM: {NAMES[0]: [50, 7]}}


def test_the_sensor_of_a_run_an_arrival_started_hands_the_watchers_certificate_to_its_look(monkeypatch):
    """The arrival event's sizes reach the sensor's first look (which then need not wait for them to hold)."""
    from types import SimpleNamespace

    from csp_observatory import pipeline

    asked: dict[str, Any] = {}

    def look(feed, settings=None, services=None, settled=None, held_s=0.0):
        asked.update(settled=settled, held_s=held_s)
        return pipeline_collect.ReadyLook(["202609"], settled or {})

    monkeypatch.setattr(pipeline, "ready_look", look)
    monkeypatch.setattr(arrival, "_connections", lambda: None)
    certified = {n: [50, 7] for n in NAMES}
    event = SimpleNamespace(timestamp=1, extra={"from_trigger": True, "payload": {
        "feed": FEED, "periods": ["202609"], "settled": certified, "held_s": 60.0}})
    sensor = arrival.SupplySensor(task_id="wait_for_supply", feed=FEED)
    assert sensor.execute({"triggering_asset_events": {"supply": [event]}}) == ["202609"]
    assert asked == {"settled": certified, "held_s": 60.0}
    # a run no arrival started looks as before
    assert sensor.execute({}) == ["202609"] and asked == {"settled": None, "held_s": 0.0}


class _CountingServices:
    """Services whose sessions are stand-ins, counting how often each is opened."""

    def __init__(self) -> None:
        self.opened = {"sftp": 0, "db": 0}

    @contextmanager
    def sftp(self) -> Iterator[str]:
        self.opened["sftp"] += 1
        yield "sftp-session"

    @contextmanager
    def db(self) -> Iterator[str]:
        self.opened["db"] += 1
        yield "db-session"


def _work(tmp_path: Path) -> str:
    work = tmp_path / "work"
    (work / "encrypted").mkdir(parents=True)
    m = Manifest(feed=FEED, period="202609", work_dir=str(work), files={}, partner_id="police")
    for name in ("offences", "offenders", "victims"):
        enc = work / "encrypted" / f"prc_{name}_202609.csv.gpg"
        enc.write_bytes(b"pgp")
        m.files[name] = SupplyFile(name=name, remote_name=enc.name, sha256=name * 8, size=3, encrypted_path=str(enc))
    m.save()
    return str(work)


@pytest.mark.parametrize("refused", [set(), {"offenders"}, {"offences", "victims"}])
def test_decrypt_opens_sftp_and_postgis_only_to_refuse_a_file(tmp_path, monkeypatch, refused):
    def fake_decrypt(home, encrypted, output, fingerprint, passphrase=None):
        if Path(encrypted).name.split("_")[1] in refused:
            raise decryption.RefusedFile("The file is not signed.", kind="unsigned")
        Path(output).write_text("a,b\n")
        return decryption.Verified(fingerprint, None, Path(output), 4)

    quarantined: list[tuple[str, Any, Any]] = []
    monkeypatch.setattr(decryption, "decrypt_and_verify", fake_decrypt)
    monkeypatch.setattr(pipeline_collect, "_refuse",
                        lambda m, s, client, f, reason, status, conn: (quarantined.append((f.name, client, conn)),
                                                                       setattr(m, "status", status)))
    services = _CountingServices()
    (work,) = pipeline_collect.decrypt_and_verify([_work(tmp_path)], _settings(tmp_path), services)
    assert services.opened == ({"sftp": 1, "db": 1} if refused else {"sftp": 0, "db": 0})
    assert sorted(q[0] for q in quarantined) == sorted(refused)
    assert all(q[1:] == ("sftp-session", "db-session") for q in quarantined)
    m = Manifest.read(work)
    assert m.ok is not bool(refused)
