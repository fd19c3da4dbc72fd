"""Intake's decisions: which inbox files form a ready supply, size stability, staging, duplicates, manifests."""
from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from csp_observatory import intake, intake_download, intake_quarantine, ledger, sftp
from csp_observatory.config import PartnerKeys, Settings
from csp_observatory.pipeline_supply import Manifest
from csp_observatory.schema_loading import schema_for
from csp_observatory.sftp import RemoteFile

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def schema():
    return schema_for("police_recorded_crime")


def _names(period: str, *files: str) -> list[str]:
    return [f"prc_{f}_{period}.csv.gpg" for f in files]


def _listing(names: list[str], size: int = 100) -> list[RemoteFile]:
    return [RemoteFile(n, size, 0) for n in names]


ALL = ("offences", "offenders", "victims")


def test_complete_stable_period_is_ready_with_every_file_classified(schema):
    listing = _listing(_names("202609", *ALL))
    ready = intake.plan_supplies(schema, listing, {f.name: f.size for f in listing})
    assert [s.period for s in ready.supplies] == ["202609"]
    supply = ready.supplies[0]
    assert supply.supply_id == "police_recorded_crime/202609"
    assert supply.partner_id == "police"
    assert {f.file_name: f.remote_name for f in supply.files} == dict(zip(ALL, _names("202609", *ALL)))
    assert ready.unrecognised == [] and ready.waiting == {}
    assert list(ready) == ready.supplies and len(ready) == 1


def test_periods_are_grouped_and_only_complete_ones_taken(schema):
    names = _names("202609", *ALL) + _names("202610", "offences", "victims")
    listing = _listing(names)
    ready = intake.plan_supplies(schema, listing, {n: 100 for n in names})
    assert [s.period for s in ready.supplies] == ["202609"]
    assert "offenders" in ready.waiting["202610"]


def test_part_files_are_ignored_and_hold_back_their_period(schema):
    names = _names("202609", "offences", "offenders") + [_names("202609", "victims")[0] + ".part"]
    ready = intake.plan_supplies(schema, _listing(names), {n: 100 for n in names})
    assert ready.supplies == []
    assert ready.unrecognised == []            # an upload in progress is not a stray file
    assert "victims" in ready.waiting["202609"]


def test_a_replacement_still_uploading_holds_back_a_complete_period(schema):
    names = _names("202609", *ALL)
    listing = _listing(names + [names[0] + ".part"])
    ready = intake.plan_supplies(schema, listing, {n: 100 for n in names})
    assert ready.supplies == []
    assert "still uploading" in ready.waiting["202609"]


def test_unrecognised_names_are_reported_not_ignored(schema):
    names = _names("202609", *ALL) + ["offences_sept.csv", "prc_offences_2026.csv.gpg"]
    ready = intake.plan_supplies(schema, _listing(names), {n: 100 for n in names})
    assert sorted(ready.unrecognised) == ["offences_sept.csv", "prc_offences_2026.csv.gpg"]
    assert [s.period for s in ready.supplies] == ["202609"]


@pytest.mark.parametrize("previous", [None, {}, "grew", "one_missing"])
def test_size_must_match_the_previous_poll(schema, previous):
    names = _names("202609", *ALL)
    listing = _listing(names, size=500)
    if previous == "grew":
        previous = {n: 500 for n in names} | {names[1]: 400}
    elif previous == "one_missing":
        previous = {n: 500 for n in names[:2]}
    ready = intake.plan_supplies(schema, listing, previous)
    assert ready.supplies == []
    assert "not yet stable" in ready.waiting["202609"]
    # The sizes seen now become the next poll's previous sizes, and then the period is taken.
    assert ready.sizes == {n: 500 for n in names}
    assert [s.period for s in intake.plan_supplies(schema, listing, ready.sizes).supplies] == ["202609"]


@dataclass
class _Attr:
    filename: str
    st_size: int
    st_mtime: int = 0
    st_mode: int = stat.S_IFREG | 0o644


class FakeSFTP:
    """Just enough of paramiko.SFTPClient: folders of bytes, with sizes that can change between listings.

    ``modes`` gives an entry another kind than a regular file (a link, a folder); ``stuck`` names paths that
    cannot be renamed. By default every folder listed also holds an empty sub-folder, as a real inbox might.
    """

    def __init__(self, files: dict[str, bytes], growth: dict[str, list[int]] | None = None,
                 modes: dict[str, int] | None = None, stuck: set[str] | None = None,
                 subfolder: bool = True) -> None:
        self.files = dict(files)
        self.growth = growth or {}   # path -> sizes reported at successive listings
        self.modes = dict(modes or {})
        self.stuck = stuck or set()
        self.subfolder = subfolder
        self.listings = 0
        self.writes: list[str] = []

    def listdir_attr(self, folder: str) -> list[_Attr]:
        self.listings += 1
        out = []
        for path, data in self.files.items():
            head, _, name = path.rpartition("/")
            if head == folder:
                sizes = self.growth.get(path)
                size = sizes[min(self.listings - 1, len(sizes) - 1)] if sizes else len(data)
                out.append(_Attr(name, size, st_mode=self.modes.get(path, stat.S_IFREG | 0o644)))
        if self.subfolder:
            out.append(_Attr("subfolder", 0, st_mode=stat.S_IFDIR | 0o755))
        return out

    def open(self, path: str, mode: str = "rb"):
        if "w" in mode:
            self.writes.append(path)
            return _Writable(self.files, path)
        return _Readable(self.files[path])

    def lstat(self, path: str) -> _Attr:
        if path not in self.files:
            raise FileNotFoundError(path)
        return _Attr(path.rpartition("/")[2], len(self.files[path]))

    def posix_rename(self, src: str, dst: str) -> None:
        if src in self.stuck:
            raise PermissionError(13, "Permission denied")
        if src not in self.files:
            raise FileNotFoundError(2, "No such file")
        self.files[dst] = self.files.pop(src)
        if src in self.modes:
            self.modes[dst] = self.modes.pop(src)


class _Readable(io.BytesIO):
    def prefetch(self) -> None:
        pass


class _Writable(io.BytesIO):
    def __init__(self, files: dict[str, bytes], path: str) -> None:
        super().__init__()
        self._files, self._path = files, path

    def close(self) -> None:
        self._files[self._path] = self.getvalue()
        super().close()


def test_wait_until_stable_drops_a_file_still_growing(monkeypatch):
    monkeypatch.setattr(intake.time, "sleep", lambda s: None)
    fake = FakeSFTP({"/in/a": b"x" * 10, "/in/b": b"y" * 30}, growth={"/in/b": [10, 20, 30]})
    assert intake.wait_until_stable(fake, "/in", ["a", "b"], polls=3, interval=0.1) == {"a": 10}
    assert fake.listings == 3
    fake = FakeSFTP({"/in/a": b"x" * 10, "/in/b": b"y" * 30}, growth={"/in/b": [10, 30, 30]})
    assert intake.wait_until_stable(fake, "/in", ["a", "b"], polls=2, interval=0.1) == {"a": 10}
    fake.listings = 1
    assert intake.wait_until_stable(fake, "/in", ["a", "b"], polls=2, interval=0.1) == {"a": 10, "b": 30}


def test_list_files_skips_folders():
    fake = FakeSFTP({"/in/a": b"abc"})
    assert sftp.list_files(fake, "/in") == [RemoteFile("a", 3, 0)]


def _settings(tmp_path: Path) -> Settings:
    return Settings(database_url="postgresql://unused", sftp_host="127.0.0.1", sftp_port=2222, sftp_user="cspobs",
                    sftp_key_file=tmp_path / "key", sftp_host_key="ssh-ed25519 AAAA", sftp_root="",
                    gnupg_home=tmp_path / "gnupg", staging_dir=tmp_path / "staging",
                    reports_dir=tmp_path / "reports",
                    partners={"police": PartnerKeys("police", "B75DF987978C02D2473E38568077D4FBAA92F0E3")},
                    poll_interval_s=0.0)


def test_find_ready_supplies_polls_until_sizes_hold(schema, tmp_path, monkeypatch):
    monkeypatch.setattr(intake.time, "sleep", lambda s: None)
    settings = _settings(tmp_path)
    names = _names("202609", *ALL)
    files = {f"/police/inbox/{n}": b"z" * 50 for n in names} | {"/police/inbox/notes.txt": b"hi"}
    ready = intake.find_ready_supplies(FakeSFTP(files), schema, settings)
    assert [s.period for s in ready] == ["202609"] and ready.unrecognised == ["notes.txt", "subfolder"]
    assert "folder" in ready.strays["subfolder"] and ready.kinds["subfolder"] == "folder"
    growing = FakeSFTP(files, growth={f"/police/inbox/{names[2]}": [10, 20, 50, 50]})
    ready = intake.find_ready_supplies(growing, schema, settings)
    assert ready.supplies == [] and "202609" in ready.waiting


def test_collect_stages_privately_and_flags_bytes_already_loaded(schema, tmp_path, monkeypatch):
    settings = _settings(tmp_path)
    contents = {f: f"encrypted {f}".encode() for f in ALL}
    names = dict(zip(ALL, _names("202609", *ALL)))
    fake = FakeSFTP({f"/police/inbox/{names[f]}": contents[f] for f in ALL})
    loaded_sha = hashlib.sha256(contents["victims"]).hexdigest()
    recorded = []

    def find(conn, sha):
        if sha == loaded_sha:
            return ledger.Delivery(sha, "police_recorded_crime", names["victims"], "police_recorded_crime/202608",
                                   9, None, "loaded", None, None)
        return None

    monkeypatch.setattr(ledger, "find", find)
    monkeypatch.setattr(ledger, "record_received", lambda conn, *args: recorded.append(args))
    listing = [RemoteFile(names[f], len(contents[f]), 0) for f in ALL]
    pending = intake.plan_supplies(schema, listing, {f.name: f.size for f in listing}).supplies[0]
    collected = intake_download.collect(fake, None, schema, settings, pending)

    by_name = collected.files
    assert list(by_name) == list(ALL)
    assert [f.name for f in collected.duplicates] == ["victims"]
    assert by_name["victims"].duplicate_of == "police_recorded_crime/202608"
    assert sorted(a[2] for a in recorded) == sorted([names["offences"], names["offenders"]])
    for f in ALL:
        local = Path(by_name[f].encrypted_path)
        assert local.read_bytes() == contents[f]
        assert by_name[f].sha256 == hashlib.sha256(contents[f]).hexdigest()
        assert local.parent.name == by_name[f].sha256[:16]
        assert stat.S_IMODE(os.stat(local).st_mode) == 0o600
        for d in (local.parent, local.parent.parent, local.parent.parent.parent, settings.staging_dir):
            assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    # The download is the supply's record, not yet given its work area; it survives JSON (manifest.json) unchanged.
    assert isinstance(collected, Manifest) and collected.work_dir == "" and collected.status == "collected"
    assert collected.partner_id == "police" and collected.metadata is None
    again = Manifest.from_dict(json.loads(json.dumps(collected.to_dict())))
    assert again == collected and again.supply_id == "police_recorded_crime/202609"
    assert again.files["victims"].duplicate and not again.files["offences"].duplicate
    assert intake.PendingSupply.from_dict(json.loads(json.dumps(pending.to_dict()))) == pending


def test_collect_refuses_a_short_download(schema, tmp_path, monkeypatch):
    settings = _settings(tmp_path)
    names = _names("202609", *ALL)
    fake = FakeSFTP({f"/police/inbox/{n}": b"abc" for n in names})
    monkeypatch.setattr(ledger, "find", lambda conn, sha: None)
    monkeypatch.setattr(ledger, "record_received", lambda conn, *a: None)
    listing = [RemoteFile(n, 3, 0) for n in names[:2]] + [RemoteFile(names[2], 4, 0)]
    pending = intake.plan_supplies(schema, listing, {f.name: f.size for f in listing}).supplies[0]
    with pytest.raises(intake_download.IncompleteDownload, match="3 bytes"):
        intake_download.collect(fake, None, schema, settings, pending)
    assert not [p for p in settings.staging_dir.rglob("*") if p.name.startswith(names[2])]


def test_reason_text_tells_the_partner_what_to_do():
    text = intake_quarantine.reason_text("prc_victims_202609.csv.gpg", "The file is not signed. Sign it with key ABC.")
    assert "prc_victims_202609.csv.gpg" in text
    assert "The file is not signed. Sign it with key ABC." in text
    assert "inbox/" in text and ".part" in text


# --- hostile or clumsy names and entries (issue 6, section 8) ---------------------------------------

def test_a_name_ending_in_a_newline_is_not_the_file_it_looks_like(schema):
    good = _names("209901", *ALL)
    evil = good[0] + "\n"
    assert schema.classify(evil) is None and schema.classify("x" + good[0]) is None
    listing = _listing(good + [evil])
    ready = intake.plan_supplies(schema, listing, {f.name: f.size for f in listing})
    (supply,) = ready.supplies
    # The correctly named file is the one taken (the newline name sorted after it and used to replace it).
    assert {f.file_name: f.remote_name for f in supply.files}["offences"] == good[0]
    assert list(ready.strays) == [evil]
    assert "cannot be shown" in ready.strays[evil] and "prc_offences_YYYYMM.csv.gpg" in ready.strays[evil]
    assert intake.shown_name(evil) == good[0] + "%0A"


@pytest.mark.parametrize("period, words", [
    ("201113", "not a valid period"),
    ("000000", "not a valid period"),
    ("\u0662\u0660\u0662\u0666\u0660\u0669", "digits 0 to 9"),     # Arabic-Indic 202609: \d accepts them
    ("2026\u0969\u0966", "digits 0 to 9"),                           # Devanagari 30 after ASCII 2026
])
def test_a_period_that_is_not_a_month_is_refused_at_intake(schema, period, words):
    bad = _names(period, *ALL)
    good = _names("209902", *ALL)
    names = bad + good + [bad[0] + ".part"]
    ready = intake.plan_supplies(schema, _listing(names), {n: 100 for n in names})
    assert [s.period for s in ready.supplies] == ["209902"]       # the good supply beside it is not blocked
    assert sorted(ready.strays) == sorted(bad)
    assert all(words in why and "YYYYMM" in why for why in ready.strays.values())
    assert period not in ready.waiting                           # nor is the bad period waited for


def test_links_folders_and_empty_files_are_strays_with_reasons(schema):
    good = _names("209903", *ALL)
    listing = _listing(good) + [
        RemoteFile(_names("209904", "offences")[0], 12, 0, "link"),
        RemoteFile("september", 0, 0, "folder"),
        RemoteFile("fifo", 0, 0, "other"),
        RemoteFile(_names("209905", "victims")[0], 0, 0),
    ]
    stable = {f.name: f.size for f in listing if f.kind == "file"}
    ready = intake.plan_supplies(schema, listing, stable)
    assert [s.period for s in ready.supplies] == ["209903"]
    assert ready.kinds == {_names("209904", "offences")[0]: "link", "september": "folder", "fifo": "other",
                           _names("209905", "victims")[0]: "file"}
    assert "symbolic link" in ready.strays[_names("209904", "offences")[0]]
    assert "folder" in ready.strays["september"]
    assert "not a regular file" in ready.strays["fifo"]
    assert "empty" in ready.strays[_names("209905", "victims")[0]]
    # An empty file that has not yet held still may be an upload starting: it is waited for, not refused.
    ready = intake.plan_supplies(schema, listing, {})
    assert _names("209905", "victims")[0] not in ready.strays
    assert "209905" in ready.waiting


def test_quarantine_strays_moves_each_with_a_note_and_never_stops(schema, tmp_path):
    settings = _settings(tmp_path)
    inbox, quarantine = "/police/inbox", "/police/quarantine"
    newline = _names("209906", "offences")[0] + "\n"
    files = {f"{inbox}/notes.txt": b"hi", f"{inbox}/{newline}": b"x", f"{inbox}/link": b"",
             f"{inbox}/september": b"", f"{inbox}/gone.csv": b""}
    fake = FakeSFTP(files, modes={f"{inbox}/link": stat.S_IFLNK | 0o777, f"{inbox}/september": stat.S_IFDIR | 0o755},
                    stuck={f"{inbox}/september"}, subfolder=False)
    ready = intake.plan_supplies(schema, sftp.list_entries(fake, inbox), {})
    del fake.files[f"{inbox}/gone.csv"]           # the partner removed it between the listing and the move
    done = intake_quarantine.quarantine_strays(fake, settings, schema, ready)
    assert sorted(done) == sorted(["notes.txt", newline, "link", "september"])
    assert sorted(p for p in fake.files if p.startswith(inbox)) == [f"{inbox}/september"]   # could not move
    shown = intake.shown_name(newline)
    assert fake.files[f"{quarantine}/{shown}"] == b"x"
    note = fake.files[f"{quarantine}/{shown}.reason.txt"].decode()
    assert shown in note and "cannot be shown" in note and "\n" + newline not in note
    assert "symbolic link" in fake.files[f"{quarantine}/link.reason.txt"].decode()
    # A misnamed file's note cannot say which name to use as it stands; it says to use the expected one.
    assert "under its expected name" in fake.files[f"{quarantine}/notes.txt.reason.txt"].decode()
    stuck = fake.files[f"{quarantine}/september.reason.txt"].decode()
    assert "folder" in stuck and "still there" in stuck
    assert not any(".part" in p for p in fake.files)
    # The sensor looks again five minutes later: the note for what could not be moved is not written twice.
    writes = len(fake.writes)
    again = intake.plan_supplies(schema, sftp.list_entries(fake, inbox), {})
    intake_quarantine.quarantine_strays(fake, settings, schema, again)
    assert len(fake.writes) == writes


def test_the_sensor_quarantines_strays_even_when_nothing_is_ready(schema, tmp_path, monkeypatch):
    from contextlib import contextmanager

    from csp_observatory import pipeline, pipeline_supply

    monkeypatch.setattr(intake.time, "sleep", lambda s: None)
    settings = _settings(tmp_path)
    misnamed = ["prc_offences_sept.csv.gpg", _names("201113", "offenders")[0], _names("209907", "victims")[0] + "\n"]
    fake = FakeSFTP({f"/police/inbox/{n}": b"data" for n in misnamed}, subfolder=False)

    @contextmanager
    def fake_sftp(_settings):
        yield fake

    monkeypatch.setattr(pipeline_supply, "_sftp", fake_sftp)
    assert pipeline.ready_periods("police_recorded_crime", settings) == []
    assert not [p for p in fake.files if p.startswith("/police/inbox/")]
    notes = [p for p in fake.files if p.startswith("/police/quarantine/") and p.endswith(".reason.txt")]
    assert len(notes) == 3


def test_list_entries_reports_links_and_folders_and_list_files_leaves_them_out():
    fake = FakeSFTP({"/in/a": b"abc", "/in/l": b""}, modes={"/in/l": stat.S_IFLNK | 0o777})
    assert [(e.name, e.kind) for e in sftp.list_entries(fake, "/in")] == [("a", "file"), ("l", "link"),
                                                                          ("subfolder", "folder")]
    assert sftp.list_files(fake, "/in") == [RemoteFile("a", 3, 0)]


def test_reason_text_for_something_that_could_not_be_moved():
    text = intake_quarantine.reason_text("odd\tname", "This is a folder.", kind="folder", moved=False)
    assert "the folder odd%09name" in text and "still there" in text and "\t" not in text


# --- the supply's metadata file (guidance section 3.4) --------------------------------------------------------------

META = "prc_metadata_202609.yaml.gpg"


def test_a_metadata_file_is_part_of_its_periods_supply_not_a_stray(schema):
    names = _names("202609", *ALL) + [META]
    ready = intake.plan_supplies(schema, _listing(names), {n: 100 for n in names})
    assert ready.unrecognised == [] and [s.period for s in ready] == ["202609"]
    supply = ready.supplies[0]
    assert supply.metadata == intake.PendingFile("metadata", META, 100, 0)
    assert [f.file_name for f in supply.files] == list(ALL)
    assert intake.PendingSupply.from_dict(json.loads(json.dumps(supply.to_dict()))) == supply
    # optional: the same supply without it is ready too
    without = intake.plan_supplies(schema, _listing(names[:3]), {n: 100 for n in names}).supplies[0]
    assert without.metadata is None
    assert intake.PendingSupply.from_dict(without.to_dict()) == without


@pytest.mark.parametrize("name", ["prc_metadata_202609.json.gpg", "prc_metadata_202609.yml.gpg"])
def test_json_and_yml_metadata_names_are_taken(schema, name):
    names = _names("202609", *ALL) + [name]
    supply = intake.plan_supplies(schema, _listing(names), {n: 100 for n in names}).supplies[0]
    assert supply.metadata is not None and supply.metadata.remote_name == name


def test_a_metadata_file_alone_waits_like_an_incomplete_supply(schema):
    ready = intake.plan_supplies(schema, _listing([META]), {META: 100})
    assert ready.supplies == [] and ready.unrecognised == []
    assert ready.waiting["202609"] == "waiting for offences, offenders, victims"


def test_a_metadata_file_still_uploading_or_growing_holds_back_its_period(schema):
    names = _names("202609", *ALL)
    uploading = intake.plan_supplies(schema, _listing(names + [META + ".part"]), {n: 100 for n in names})
    assert uploading.supplies == [] and "still uploading" in uploading.waiting["202609"]
    growing = intake.plan_supplies(schema, _listing(names + [META]), {n: 100 for n in names} | {META: 50})
    assert growing.supplies == [] and "not yet stable" in growing.waiting["202609"]


def test_misnamed_bad_period_empty_or_doubled_metadata_files_are_strays(schema):
    names = _names("202609", *ALL)
    odd = ["prc_metadata_202613.yaml.gpg", "prc_metadata_202609.yaml", "prc_meta_202609.yaml.gpg",
           "prc_metadata_202610.yaml.gpg"]
    listing = _listing(names + odd[:3]) + [RemoteFile(odd[3], 0, 0)]
    ready = intake.plan_supplies(schema, listing, {n: 100 for n in names} | {odd[3]: 0})
    assert sorted(ready.unrecognised) == sorted(odd)
    assert "not a valid period" in ready.strays[odd[0]]
    assert "prc_metadata_YYYYMM.yaml.gpg" in ready.strays[odd[1]]       # the expected names say it may come
    assert "empty" in ready.strays[odd[3]]
    assert ready.supplies[0].metadata is None
    both = [META, "prc_metadata_202609.json.gpg"]
    ready = intake.plan_supplies(schema, _listing(names + both), {n: 100 for n in names + both})
    assert sorted(ready.unrecognised) == sorted(both) and "more than one metadata file" in ready.strays[META]
    assert [s.period for s in ready] == ["202609"] and ready.supplies[0].metadata is None


def test_collect_downloads_and_ledgers_the_metadata_file_with_the_data(schema, tmp_path, monkeypatch):
    settings = _settings(tmp_path)
    names = _names("202609", *ALL) + [META]
    fake = FakeSFTP({f"/police/inbox/{n}": f"encrypted {n}".encode() for n in names})
    recorded = []
    monkeypatch.setattr(ledger, "find", lambda conn, sha: None)
    monkeypatch.setattr(ledger, "record_received", lambda conn, *args: recorded.append(args))
    listing = [RemoteFile(n, len(f"encrypted {n}"), 0) for n in names]
    pending = intake.plan_supplies(schema, listing, {f.name: f.size for f in listing}).supplies[0]
    collected = intake_download.collect(fake, None, schema, settings, pending)
    assert [f.name for f in collected.files.values()] == list(ALL)
    md = collected.metadata
    assert md is not None and md.name == "metadata" and md.remote_name == META
    assert Path(md.encrypted_path).read_bytes() == f"encrypted {META}".encode()
    assert stat.S_IMODE(os.stat(md.encrypted_path).st_mode) == 0o600
    assert sorted(a[2] for a in recorded) == sorted(names)
    assert collected.all_files[-1] is md
    assert Manifest.from_dict(json.loads(json.dumps(collected.to_dict()))) == collected
    # each file's hash, taken as it was downloaded, is the SHA-256 of the bytes the inbox held and staging holds
    for f in collected.all_files:
        sent = f"encrypted {f.remote_name}".encode()
        assert f.sha256 == hashlib.sha256(sent).hexdigest() == hashlib.sha256(
            Path(f.encrypted_path).read_bytes()).hexdigest()


# --- one partner's inbox serving several feeds ---------------------------------------------------------------

def _settings_serving(tmp_path: Path, feeds: tuple[str, ...]) -> Settings:
    return Settings(database_url="postgresql://x@localhost/x", sftp_host="h", sftp_port=22, sftp_user="u",
                    sftp_key_file=tmp_path / "k", sftp_host_key="ssh-ed25519 AAAA", sftp_root="",
                    gnupg_home=tmp_path, staging_dir=tmp_path, reports_dir=tmp_path,
                    partners={"force": PartnerKeys("force", "AB" * 20, feeds=feeds)})


def test_a_partners_inbox_serves_each_of_its_feeds_and_no_feed_takes_anothers_files(schema, tmp_path):
    settings = _settings_serving(tmp_path, ("police_recorded_crime", "police_incidents"))
    incidents = schema_for("police_incidents")
    assert settings.supplier("police_recorded_crime", "police") == "force"      # the registry's, not the schema's
    assert settings.supplier("fire_incidents", "fire") == "fire"                 # nobody registered: the schema's
    names = [*_names("202609", *ALL), "pi_incidents_202609.csv.gpg", "pi_incidents_metadata_202609.yaml.gpg",
             "pi_incidents_202610.csv.gpg.part", "crime.xlsx"]
    listing = _listing(names)
    sizes = {f.name: f.size for f in listing}
    for feed_schema, other in ((schema, incidents), (incidents, schema)):
        siblings = intake.sibling_schemas(feed_schema, settings)
        assert siblings == (other,)
        ready = intake.plan_supplies(feed_schema, listing, sizes, siblings, "force")
        # each feed takes its own supply, from the partner's inbox, and leaves the other's files alone
        assert [(s.feed, s.partner_id, s.period) for s in ready.supplies] == [(feed_schema.feed, "force", "202609")]
        assert list(ready.strays) == ["crime.xlsx"]
        # the partner is told every name the inbox takes, for both feeds
        assert "prc_offences_YYYYMM.csv.gpg" in ready.strays["crime.xlsx"]
        assert "pi_incidents_YYYYMM.csv.gpg" in ready.strays["crime.xlsx"]
    # without the registry saying so, the incidents files are strays of the crime feed, as before
    alone = intake.plan_supplies(schema, listing, sizes)
    assert "pi_incidents_202609.csv.gpg" in alone.strays


def test_a_feed_has_one_supplier_at_a_time(tmp_path):
    settings = _settings_serving(tmp_path, ("police_recorded_crime",))
    two = Settings(**{**settings.__dict__, "partners": {**settings.partners,
                                                        "other": PartnerKeys("other", "CD" * 20,
                                                                             feeds=("police_recorded_crime",))}})
    with pytest.raises(KeyError, match="more than one active partner"):
        two.supplier("police_recorded_crime", "police")
