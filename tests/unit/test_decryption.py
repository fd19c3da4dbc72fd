"""decrypt_and_verify accepts only files encrypted to the observatory and signed by the partner's pinned key.

gpg is a real binary on every machine that runs the observatory, so these tests make throw-away keyrings
(ed25519/cv25519 keys take milliseconds) once per session.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import gnupg
import pytest

from csp_observatory import decryption, partner
from csp_observatory.decryption import RefusedFile, check_status, decrypt_and_verify, normalise_fingerprint

pytestmark = pytest.mark.unit

CSV = "crime_reference,ho_offence_code\n" + "".join(f"CR{i:06d},028\n" for i in range(5000))


@dataclass(frozen=True)
class Keyring:
    home: Path
    fingerprint: str


def _gpg(home: Path, *args: str) -> None:
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
                    *args], check=True, capture_output=True)


def _make_keyring(root: Path, name: str) -> Keyring:
    home = root / name
    home.mkdir(mode=0o700)
    _gpg(home, "--quick-gen-key", f"{name} <{name}@example.org>", "ed25519", "sign", "0")
    fpr = gnupg.GPG(gnupghome=str(home)).list_keys()[0]["fingerprint"]
    _gpg(home, "--quick-add-key", fpr, "cv25519", "encr", "0")
    return Keyring(home, fpr)


def _exchange(a: Keyring, b: Keyring) -> None:
    """Import a's public key into b's keyring."""
    exported = subprocess.run(["gpg", "--homedir", str(a.home), "--export", a.fingerprint], check=True,
                              capture_output=True).stdout
    subprocess.run(["gpg", "--homedir", str(b.home), "--batch", "--import"], input=exported, check=True,
                   capture_output=True)


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    """observatory; police (the pinned partner); fire (another partner the observatory knows); rogue (unknown)."""
    root = tmp_path_factory.mktemp("gpg")
    rings = {n: _make_keyring(root, n) for n in ("observatory", "police", "fire", "rogue")}
    for other in ("police", "fire", "rogue"):
        _exchange(rings["observatory"], rings[other])
    for known in ("police", "fire"):
        _exchange(rings[known], rings["observatory"])
    # A recipient the observatory has no secret key for.
    _exchange(rings["fire"], rings["police"])
    yield rings
    for ring in rings.values():
        subprocess.run(["gpgconf", "--homedir", str(ring.home), "--kill", "gpg-agent"], capture_output=True)


@pytest.fixture()
def plaintext(tmp_path) -> Path:
    p = tmp_path / "partner" / "prc_offences_202609.csv"
    p.parent.mkdir()
    p.write_text(CSV, encoding="utf-8")
    return p


@pytest.fixture()
def staging(tmp_path) -> Path:
    s = tmp_path / "staging"
    s.mkdir(mode=0o700)
    return s


def _signed_by(keys, signer: str, plaintext: Path, recipient: str = "observatory") -> Path:
    out = plaintext.with_name(plaintext.name + f".{signer}.gpg")
    partner.encrypt_and_sign(keys[signer].home, plaintext, out, keys[recipient].fingerprint, keys[signer].fingerprint)
    return out


def _refused(keys, encrypted: Path, staging: Path) -> RefusedFile:
    output = staging / "offences.csv"
    with pytest.raises(RefusedFile) as caught:
        decrypt_and_verify(keys["observatory"].home, encrypted, output, keys["police"].fingerprint)
    # No plaintext, partial or whole, under any name.
    assert list(staging.iterdir()) == []
    assert caught.value.detail, "engineers need gpg's status"
    return caught.value


def test_good_file_decrypts_to_the_output_only(keys, plaintext, staging):
    enc = _signed_by(keys, "police", plaintext)
    output = staging / "offences.csv"
    # The pin may be written as gpg --fingerprint prints it: spaced, lower case.
    spaced = " ".join(keys["police"].fingerprint.lower()[i:i + 4] for i in range(0, 40, 4))
    verified = decrypt_and_verify(keys["observatory"].home, enc, output, spaced)
    assert output.read_text(encoding="utf-8") == CSV
    assert verified.plaintext_path == output
    assert verified.plaintext_size == len(CSV.encode())
    assert verified.signer_fingerprint == keys["police"].fingerprint
    assert verified.signature_time is not None and verified.signature_time.tzinfo is not None
    assert os.stat(output).st_mode & 0o077 == 0
    assert [p.name for p in staging.iterdir()] == ["offences.csv"]


def test_unsigned_file_is_refused(keys, plaintext, staging):
    enc = plaintext.with_name("unsigned.gpg")
    gpg = gnupg.GPG(gnupghome=str(keys["police"].home))
    with open(plaintext, "rb") as fh:
        assert gpg.encrypt_file(fh, [keys["observatory"].fingerprint], always_trust=True, armor=False,
                                output=str(enc)).ok
    refused = _refused(keys, enc, staging)
    assert refused.kind == "unsigned"
    assert "not signed" in refused.reason
    assert keys["police"].fingerprint in refused.reason


def test_file_signed_by_unknown_key_is_refused(keys, plaintext, staging):
    refused = _refused(keys, _signed_by(keys, "rogue", plaintext), staging)
    assert refused.kind == "unknown_signer"
    assert "does not know" in refused.reason
    assert keys["rogue"].fingerprint in refused.reason
    assert keys["police"].fingerprint in refused.reason


def test_file_signed_by_another_known_partner_is_refused(keys, plaintext, staging):
    refused = _refused(keys, _signed_by(keys, "fire", plaintext), staging)
    assert refused.kind == "wrong_signer"
    assert keys["fire"].fingerprint in refused.reason
    assert "not the key registered" in refused.reason


def test_truncated_file_is_refused_and_partial_plaintext_removed(keys, plaintext, staging):
    enc = _signed_by(keys, "police", plaintext)
    data = enc.read_bytes()
    enc.write_bytes(data[: len(data) // 2])
    refused = _refused(keys, enc, staging)
    assert refused.kind == "damaged"
    assert "truncated" in refused.reason


def test_tampered_file_is_refused(keys, plaintext, staging):
    enc = _signed_by(keys, "police", plaintext)
    data = bytearray(enc.read_bytes())
    data[len(data) // 2] ^= 0xFF
    enc.write_bytes(bytes(data))
    refused = _refused(keys, enc, staging)
    assert refused.kind == "damaged"
    assert "altered" in refused.reason


def test_plain_text_is_not_a_pgp_file(keys, plaintext, staging):
    refused = _refused(keys, plaintext, staging)
    assert refused.kind == "not_pgp"
    assert "not an OpenPGP" in refused.reason


def test_file_encrypted_to_another_recipient_is_unreadable(keys, plaintext, staging):
    refused = _refused(keys, _signed_by(keys, "police", plaintext, recipient="fire"), staging)
    assert refused.kind == "unreadable"
    assert "not encrypted to the observatory" in refused.reason


def test_signed_but_not_encrypted_is_refused(keys, plaintext, staging):
    enc = plaintext.with_name("signed-only.gpg")
    gpg = gnupg.GPG(gnupghome=str(keys["police"].home))
    with open(plaintext, "rb") as fh:
        assert gpg.sign_file(fh, keyid=keys["police"].fingerprint, binary=True, output=str(enc))
    refused = _refused(keys, enc, staging)
    assert refused.kind == "not_encrypted"


def test_refusal_removes_a_stale_output_from_an_earlier_attempt(keys, plaintext, staging):
    (staging / "offences.csv").write_text("old plaintext")
    refused = _refused(keys, _signed_by(keys, "rogue", plaintext), staging)
    assert refused.kind == "unknown_signer"


def test_bad_signature_status_is_refused_as_altered():
    # A BADSIG inside an intact encrypted packet cannot be made with gpg's own tools; check the reading of it.
    stderr = "\n".join([
        "[GNUPG:] ENC_TO 8D76714048E5C9B9 18 0", "[GNUPG:] BEGIN_DECRYPTION", "[GNUPG:] PLAINTEXT 62 0 ",
        "[GNUPG:] NEWSIG", "[GNUPG:] BADSIG 8077D4FBAA92F0E3 police", "[GNUPG:] DECRYPTION_OKAY",
        "[GNUPG:] GOODMDC", "[GNUPG:] END_DECRYPTION"])
    with pytest.raises(RefusedFile) as caught:
        check_status(stderr, "B75DF987978C02D2473E38568077D4FBAA92F0E3")
    assert caught.value.kind == "bad_signature"
    assert "BADSIG" in caught.value.detail


def test_two_signatures_one_of_them_foreign_is_refused():
    good = "VALIDSIG B75DF987978C02D2473E38568077D4FBAA92F0E3 2026-01-01 1767225600 0 4 0 22 10 00 " \
           "B75DF987978C02D2473E38568077D4FBAA92F0E3"
    other = good.replace("B75DF987978C02D2473E38568077D4FBAA92F0E3", "32E0EF7819B960341CE601509044B8530269C711")
    stderr = "\n".join("[GNUPG:] " + s for s in [
        "ENC_TO 1 18 0", "BEGIN_DECRYPTION", "PLAINTEXT 62 0 ", "GOODSIG 1 a", good, "GOODSIG 2 b", other,
        "DECRYPTION_OKAY"])
    with pytest.raises(RefusedFile) as caught:
        check_status(stderr, "B75DF987978C02D2473E38568077D4FBAA92F0E3")
    assert caught.value.kind == "wrong_signer"
    signer, when = check_status(stderr.replace(other, good), "b75d f987 978c 02d2 473e 3856 8077 d4fb aa92 f0e3")
    assert signer == "B75DF987978C02D2473E38568077D4FBAA92F0E3"
    assert when is not None and when.year == 2026


def test_normalise_fingerprint():
    assert normalise_fingerprint(" b75d F987 978c\t02d2 ") == "B75DF987978C02D2"
    assert normalise_fingerprint(None) == ""
    assert set(decryption.KINDS) >= {"unsigned", "unknown_signer", "wrong_signer", "damaged", "not_pgp"}
