"""The information sharing agreements register: what it accepts, and which supplies it lets through."""
from __future__ import annotations

from datetime import date, timedelta

import pytest
import yaml

from csp_observatory import agreements
from csp_observatory.agreements import AgreementError, parse_agreement, read_register, standing
from csp_observatory.schema_loading import load_schemas

pytestmark = pytest.mark.unit

TODAY = date(2026, 11, 29)


def _raw(**over):
    raw = {
        "id": "wy-police-2026", "status": "active",
        "protocol": {"name": "West Yorkshire CSP ISP", "version": "2.1"},
        "legal_basis": "Crime and Disorder Act 1998 s.115", "purpose": "strategic assessment",
        "agency": "Local police force", "partners": ["police"], "feeds": ["police_recorded_crime"],
        "signatories": [{"name": "A Chief", "email": "a@police.example", "agency": "police"},
                        {"name": "B Co-ordinator", "email": "b@csp.example", "agency": "CSP"}],
        "liaison_officers": {"partner": {"name": "C Liaison", "email": "c@police.example"},
                             "observatory": {"name": "D Liaison", "email": "d@csp.example"}},
        "signed": "2026-01-01", "review_date": "2027-01-01",
    }
    raw.update(over)
    return raw


def test_a_valid_agreement_round_trips_through_its_register_file(tmp_path):
    a = parse_agreement(_raw())
    assert agreements.write_agreement(a, tmp_path)
    assert not agreements.write_agreement(a, tmp_path)            # never overwritten unless asked
    assert read_register(tmp_path) == {a.id: a}
    assert (tmp_path / f"{a.id}.yaml").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("change, words", [
    ({"partners": []}, "partners"),
    ({"partners": ["Bad Id"]}, "partners"),
    ({"feeds": []}, "feeds"),
    ({"signatories": [{"name": "only one", "email": "x@y.example"}]}, "signatories"),
    ({"liaison_officers": {"partner": {"name": "C", "email": "c@police.example"}}}, "observatory"),
    ({"liaison_officers": {"partner": {"name": "C", "email": "not-an-address"},
                           "observatory": {"name": "D", "email": "d@csp.example"}}}, "e-mail"),
    ({"review_date": "2025-12-31"}, "review_date"),
    ({"review_date": "soon"}, "review_date"),
    ({"legal_basis": ""}, "legal_basis"),
    ({"protocol": {"name": "ISP"}}, "version"),
    ({"status": "maybe"}, "status"),
])
def test_an_incomplete_agreement_is_refused_with_what_is_wrong(change, words):
    with pytest.raises(AgreementError, match=words):
        parse_agreement(_raw(**change))


def test_unknown_feeds_and_misnamed_files_are_errors_never_skipped(tmp_path):
    with pytest.raises(AgreementError, match="no feed schema"):
        parse_agreement(_raw(feeds=["no_such_feed"]), feeds_known={s.feed for s in load_schemas()})
    (tmp_path / "other-name.yaml").write_text(yaml.safe_dump(_raw()))
    with pytest.raises(AgreementError, match="must be named"):
        read_register(tmp_path)


def test_a_feed_without_a_current_agreement_is_refused_with_a_reason_the_partner_can_read():
    a = parse_agreement(_raw())
    register = {a.id: a}
    assert standing("police", "police_recorded_crime", TODAY, register).current
    for partner, feed in (("police", "council_asb"), ("council", "police_recorded_crime")):
        st = standing(partner, feed, TODAY, register)
        assert not st.current and "no information sharing agreement" in st.refusal and "2.2" in st.refusal
    # not yet signed, ended, withdrawn: none of them covers a supply
    for later in (parse_agreement(_raw(signed="2026-12-01", review_date="2027-12-01")),
                  parse_agreement(_raw(ends="2026-11-28")), parse_agreement(_raw(status="withdrawn"))):
        st = standing("police", "police_recorded_crime", TODAY, {later.id: later})
        assert not st.current and "West Yorkshire CSP ISP v2.1" in st.refusal
    assert not standing("police", "police_recorded_crime", TODAY, {}).current


def test_an_agreement_past_its_review_date_still_covers_supplies_but_warns_the_engineers():
    a = parse_agreement(_raw(review_date="2026-11-28"))
    st = standing("police", "police_recorded_crime", TODAY, {a.id: a})
    assert st.current and st.warning and "2026-11-28" in st.warning and "c@police.example" in st.warning
    assert standing("police", "police_recorded_crime", TODAY - timedelta(days=2), {a.id: a}).warning is None
    assert [x.id for x in agreements.review_due(TODAY, {a.id: a})] == [a.id]
    # the newest current agreement is the one that counts
    b = parse_agreement(_raw(id="wy-police-2027", review_date="2027-11-28", protocol={"name": "ISP", "version": "3"}))
    st = standing("police", "police_recorded_crime", TODAY, {a.id: a, b.id: b})
    assert st.current and st.warning is None and st.agreement == b


def test_the_governance_docs_list_agreements_due_for_review(tmp_path):
    agreements.write_agreement(parse_agreement(_raw(review_date="2026-11-28")), tmp_path)
    doc = agreements.doc_md(TODAY, tmp_path)
    assert "1 agreement(s) past their review date" in doc and "wy-police-2026" in doc
    (tmp_path / "broken.yaml").write_text("id: [")
    assert "cannot be read" in agreements.doc_md(TODAY, tmp_path)


def test_the_demo_register_covers_every_feed_from_every_account_of_its_agency(tmp_path):
    made = agreements.demo_agreements(TODAY)
    for a in made:
        agreements.write_agreement(a, tmp_path)
    register = read_register(tmp_path)
    assert all(a.demo for a in register.values())
    schemas = load_schemas()
    for s in schemas:
        assert standing(s.partner.id, s.feed, TODAY, register).current, s.feed
    # a force's accounts share its protocol: the main police account may take over the stop-and-search feed
    assert standing("police", "stop_and_search", TODAY, register).current
    # but an agency never sends another agency's feed under it
    assert not standing("fire", "police_recorded_crime", TODAY, register).current


def test_the_command_registers_lists_checks_and_withdraws(tmp_path, capsys, monkeypatch):
    src = tmp_path / "new.yaml"
    src.write_text(yaml.safe_dump(_raw()))
    folder = tmp_path / "register"
    assert agreements.main(["--dir", str(folder), "add", str(src)]) == 0
    assert agreements.main(["--dir", str(folder), "add", str(src)]) == 1      # already there
    src.write_text(yaml.safe_dump(_raw(partners=[])))
    assert agreements.main(["--dir", str(folder), "add", str(src), "--replace"]) == 2
    assert agreements.main(["--dir", str(folder), "list"]) == 0
    assert "wy-police-2026" in capsys.readouterr().out
    assert agreements.main(["--dir", str(folder), "withdraw", "--id", "wy-police-2026"]) == 0
    assert read_register(folder)["wy-police-2026"].status == "withdrawn"
