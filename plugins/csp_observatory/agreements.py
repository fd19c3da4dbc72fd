"""The information sharing agreements register: which protocol lets each partner send each feed (guidance 2.2).

The guidance asks that every agency sharing community safety information is signed up to an Information Sharing
Protocol (section 2.2), that the legal basis and purpose of a supply are agreed before it is made (4.3.1-4.3.4,
and for personal information a clear legal basis), that each responsible authority names a Designated Liaison
Officer (2.2.1), and that a protocol says how it is reviewed (2.2.5). The register holds one YAML file per
agreement, beside the partner registry: ``/etc/csp-observatory/agreements/<id>.yaml`` (``CSP_AGREEMENTS_DIR`` for
another), written by ``scripts/agreements`` and validated whenever it is read (:func:`read_register`).

The pipeline asks :func:`standing` when it first takes a supply's files (``pipeline.collect``): a feed with no
current agreement for the partner whose inbox it comes from is refused, its files quarantined with a reason the
partner can read; an agreement past its review date is still current, but the run logs a warning and the
governance DAG's docs list it (``dags/retention.py``). docs/GOVERNANCE.md says how to add one.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

import yaml

from csp_observatory.config import PARTNER_ID, read_yaml

AGREEMENTS_DIR: Final = Path("/etc/csp-observatory/agreements")
STATES: Final = ("active", "withdrawn")
AGREEMENT_ID: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,63}$")
HEADER: Final = "# written by scripts/agreements (docs/GOVERNANCE.md); change it with that command, not by hand\n"
#: Days before its review date from which an agreement is listed as due for review (a warning, not a refusal).
REVIEW_NOTICE_DAYS: Final = 0


class AgreementError(ValueError):
    """An agreement file that cannot be used: it is never skipped, it is an error to fix."""


@dataclass(frozen=True)
class Officer:
    """A Designated Liaison Officer (guidance 2.2.1): who to ask about the sharing, on one side."""

    name: str
    email: str
    agency: str = ""


@dataclass(frozen=True)
class Agreement:
    """One information sharing agreement (a protocol's schedule for some feeds of one supplying agency)."""

    id: str
    protocol_name: str
    protocol_version: str
    legal_basis: str
    purpose: str
    agency: str
    partners: tuple[str, ...]             # the SFTP accounts (partner ids) of the agency that send under it
    feeds: tuple[str, ...]
    signatories: tuple[Officer, ...]      # who signed it (name, role in ``agency``), both sides
    partner_liaison: Officer
    observatory_liaison: Officer
    signed: date
    review_date: date
    status: str = "active"
    ends: date | None = None              # after this day the agreement no longer covers any supply
    demo: bool = False                    # registered by scripts/setup.sh for the demo partners: not a real one

    def current(self, today: date) -> bool:
        """Whether it covers a supply taken on ``today``."""
        return self.status == "active" and self.signed <= today and (self.ends is None or today <= self.ends)

    def overdue(self, today: date) -> bool:
        """Whether its review date has passed (it still covers supplies; engineers are warned)."""
        return today > self.review_date - timedelta(days=REVIEW_NOTICE_DAYS)

    def covers(self, partner_id: str, feed: str) -> bool:
        return partner_id in self.partners and feed in self.feeds

    def title(self) -> str:
        return f"{self.protocol_name} v{self.protocol_version} ({self.id}{', demo' if self.demo else ''})"


@dataclass(frozen=True)
class Standing:
    """What the register says about one partner sending one feed today."""

    partner_id: str
    feed: str
    agreement: Agreement | None
    refusal: str | None = None            # the partner-readable reason its supplies are refused; None: covered
    warning: str | None = None            # for engineers: the agreement is past its review date

    @property
    def current(self) -> bool:
        return self.refusal is None


def agreements_dir() -> Path:
    """The register's folder: ``CSP_AGREEMENTS_DIR``, else /etc/csp-observatory/agreements."""
    return Path(os.environ.get("CSP_AGREEMENTS_DIR") or AGREEMENTS_DIR)


def _text(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, (str, int, float)) or not str(value).strip():
        raise AgreementError(f"{where}: {key} is missing or empty")
    return str(value).strip()


def _date(value: Any, key: str, where: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise AgreementError(f"{where}: {key} must be a date (YYYY-MM-DD), not {value!r}") from None


def _officer(raw: Any, where: str) -> Officer:
    if not isinstance(raw, dict):
        raise AgreementError(f"{where}: must give name and email")
    name, email = _text(raw, "name", where), _text(raw, "email", where)
    if not re.fullmatch(r"[^@\s]+@[^@\s]+", email):
        raise AgreementError(f"{where}: {email!r} is not an e-mail address")
    return Officer(name=name, email=email, agency=str(raw.get("agency") or raw.get("role") or ""))


def parse_agreement(raw: Any, where: str = "agreement", feeds_known: set[str] | None = None) -> Agreement:
    """An Agreement from a parsed YAML document, checked; AgreementError says what is wrong."""
    if not isinstance(raw, dict):
        raise AgreementError(f"{where}: not a mapping")
    aid = _text(raw, "id", where)
    if not AGREEMENT_ID.fullmatch(aid):
        raise AgreementError(f"{where}: id {aid!r} must be lower case letters, digits, '.', '_' or '-'")
    protocol = raw.get("protocol") or {}
    if not isinstance(protocol, dict):
        raise AgreementError(f"{where}: protocol must give name and version")
    partners = tuple(str(p) for p in raw.get("partners") or ())
    feeds = tuple(str(f) for f in raw.get("feeds") or ())
    if not partners or any(not PARTNER_ID.fullmatch(p) for p in partners):
        raise AgreementError(f"{where}: partners must list the partner ids (SFTP accounts) that send under it")
    if not feeds:
        raise AgreementError(f"{where}: feeds must list the feeds it covers")
    if feeds_known is not None and (unknown := sorted(set(feeds) - feeds_known)):
        raise AgreementError(f"{where}: no feed schema for {', '.join(unknown)}")
    signatories = raw.get("signatories") or []
    if not isinstance(signatories, list) or len(signatories) < 2:
        raise AgreementError(f"{where}: signatories must name at least two (the partner's and the observatory's)")
    liaison = raw.get("liaison_officers") or {}
    if not isinstance(liaison, dict):
        raise AgreementError(f"{where}: liaison_officers must give partner and observatory")
    status = str(raw.get("status") or "active")
    if status not in STATES:
        raise AgreementError(f"{where}: status must be one of {', '.join(STATES)}")
    agreement = Agreement(
        id=aid, protocol_name=_text(protocol, "name", f"{where}: protocol"),
        protocol_version=_text(protocol, "version", f"{where}: protocol"),
        legal_basis=_text(raw, "legal_basis", where), purpose=_text(raw, "purpose", where),
        agency=_text(raw, "agency", where), partners=partners, feeds=feeds,
        signatories=tuple(_officer(s, f"{where}: signatories[{i}]") for i, s in enumerate(signatories)),
        partner_liaison=_officer(liaison.get("partner"), f"{where}: liaison_officers.partner"),
        observatory_liaison=_officer(liaison.get("observatory"), f"{where}: liaison_officers.observatory"),
        signed=_date(raw.get("signed"), "signed", where),
        review_date=_date(raw.get("review_date"), "review_date", where),
        status=status, ends=None if raw.get("ends") in (None, "") else _date(raw["ends"], "ends", where),
        demo=bool(raw.get("demo", False)),
    )
    if agreement.review_date <= agreement.signed:
        raise AgreementError(f"{where}: review_date must come after signed")
    if agreement.ends is not None and agreement.ends < agreement.signed:
        raise AgreementError(f"{where}: ends must not come before signed")
    return agreement


def to_yaml(a: Agreement) -> str:
    """The register file of an agreement (what :func:`parse_agreement` reads back)."""
    doc: dict[str, Any] = {
        "id": a.id, "status": a.status, "demo": a.demo,
        "protocol": {"name": a.protocol_name, "version": a.protocol_version},
        "legal_basis": a.legal_basis, "purpose": a.purpose, "agency": a.agency,
        "partners": list(a.partners), "feeds": list(a.feeds),
        "signatories": [asdict(s) for s in a.signatories],
        "liaison_officers": {"partner": asdict(a.partner_liaison), "observatory": asdict(a.observatory_liaison)},
        "signed": a.signed.isoformat(), "review_date": a.review_date.isoformat(),
        "ends": a.ends.isoformat() if a.ends else None,
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def read_register(folder: Path | None = None) -> dict[str, Agreement]:
    """Every agreement in the register folder, by id. A missing folder is an empty register (nothing is covered);
    an entry that cannot be read is an error, never skipped: it decides whose files are taken."""
    folder = Path(folder) if folder is not None else agreements_dir()
    if not folder.is_dir():
        return {}
    out: dict[str, Agreement] = {}
    for path in sorted(folder.glob("*.yaml")):
        try:
            raw = read_yaml(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise AgreementError(f"agreement {path} cannot be read: {exc}") from None
        a = parse_agreement(raw, str(path))
        if a.id != path.stem:
            raise AgreementError(f"agreement {path} has id {a.id!r}: the file must be named <id>.yaml")
        out[a.id] = a
    return out


def standing(partner_id: str, feed: str, today: date | None = None,
             register: dict[str, Agreement] | None = None) -> Standing:
    """Whether a current agreement lets ``partner_id`` send ``feed`` today, and whether it is due for review."""
    today = today or datetime.now(timezone.utc).date()
    register = read_register() if register is None else register
    covering = [a for a in register.values() if a.covers(partner_id, feed)]
    live = sorted((a for a in covering if a.current(today)), key=lambda a: (a.review_date, a.id), reverse=True)
    if not live:
        lapsed = max(covering, key=lambda a: a.signed, default=None)
        why = ("no information sharing agreement covers this feed from your organisation" if lapsed is None else
               f"the information sharing agreement {lapsed.protocol_name} v{lapsed.protocol_version} that covered "
               f"this feed is {'withdrawn' if lapsed.status == 'withdrawn' else 'not in force today'}")
        return Standing(partner_id, feed, lapsed, refusal=(
            f"{why} (Home Office guidance section 2.2: an agency shares information under an agreed protocol). "
            f"The observatory cannot take or keep these files until one is signed and registered: please contact "
            f"your Designated Liaison Officer or the observatory's, then send the files again"))
    a = live[0]
    warning = None
    if a.overdue(today):
        warning = (f"information sharing agreement {a.title()} for feed {feed} from partner {partner_id} was due "
                   f"for review on {a.review_date.isoformat()}: review it with {a.partner_liaison.name} "
                   f"({a.partner_liaison.email}) and register the new version (scripts/agreements add)")
    return Standing(partner_id, feed, a, warning=warning)


def review_due(today: date | None = None, register: dict[str, Agreement] | None = None) -> list[Agreement]:
    """The active agreements past their review date, oldest review first."""
    today = today or datetime.now(timezone.utc).date()
    register = read_register() if register is None else register
    return sorted((a for a in register.values() if a.status == "active" and a.overdue(today)),
                  key=lambda a: (a.review_date, a.id))


def doc_md(today: date | None = None, folder: Path | None = None) -> str:
    """Markdown for the governance DAG's docs: the register, with the agreements due for review first; never
    raises (a DAG must parse whatever became of the register)."""
    try:
        register = read_register(folder)
    except Exception as exc:  # noqa: BLE001
        return f"**The agreements register cannot be read:** {exc}"
    today = today or datetime.now(timezone.utc).date()
    due = review_due(today, register)
    lines = ["## Information sharing agreements (guidance 2.2)", ""]
    if due:
        lines += [f"**{len(due)} agreement(s) past their review date:**", ""]
        lines += [f"- {a.title()}: review was due {a.review_date}; partners {', '.join(a.partners)}; feeds "
                  f"{', '.join(a.feeds)}; liaison {a.partner_liaison.name} <{a.partner_liaison.email}>" for a in due]
        lines.append("")
    lines += [f"{len(register)} agreement(s) in `{folder or agreements_dir()}`; `scripts/agreements list` shows them."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- the demo's agreements

def demo_agreements(today: date | None = None) -> list[Agreement]:
    """One demo agreement per feed schema, covering every demo partner account of the feed's agency (a force's
    accounts all share its protocol), reviewed a year after ``today``. Marked ``demo``: not a real protocol."""
    from csp_observatory.schema_loading import load_schemas

    today = today or datetime.now(timezone.utc).date()
    schemas = load_schemas()
    by_agency: dict[str, set[str]] = {}
    for s in schemas:
        by_agency.setdefault(s.partner.agency, set()).add(s.partner.id)
    observatory = Officer("Demo Observatory DLO", "dlo@csp-observatory.invalid", "CSP observatory (demo)")
    out = []
    for s in schemas:
        partner = Officer(f"Demo DLO, {s.partner.name}", f"dlo@{s.partner.id}.example", s.partner.agency)
        personal = s.personalised
        out.append(Agreement(
            id=f"demo-{s.feed}".replace("_", "-"), protocol_name="Demo CSP Information Sharing Protocol",
            protocol_version="1.0",
            legal_basis=("Crime and Disorder Act 1998 s.115 and s.17A; Data Protection Act s.29 (crime), for "
                         "personal information" if personal else
                         "Crime and Disorder Act 1998 s.17A (depersonalised information: no legal bar between "
                         "partners, guidance 4.3.4)"),
            purpose=f"{s.title}: strategic assessment and problem profiles of the CSP (guidance 2.3)",
            agency=s.partner.agency, partners=tuple(sorted(by_agency[s.partner.agency])), feeds=(s.feed,),
            signatories=(Officer(f"Demo signatory, {s.partner.name}", partner.email, s.partner.agency),
                         Officer("Demo CSP Co-ordinator", observatory.email, "Community Safety Partnership")),
            partner_liaison=partner, observatory_liaison=observatory, signed=today - timedelta(days=1),
            review_date=today + timedelta(days=365), demo=True))
    return out


def write_agreement(a: Agreement, folder: Path | None = None, replace: bool = False) -> bool:
    """Write ``a`` into the register (0644, atomically); False when the same id is there and ``replace`` is not set."""
    folder = Path(folder) if folder is not None else agreements_dir()
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = folder / f"{a.id}.yaml"
    if path.exists() and not replace:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(to_yaml(a), encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


# ------------------------------------------------------------------------------------------------ the command

def _feeds_known() -> set[str]:
    from csp_observatory.schema_loading import load_schemas

    return {s.feed for s in load_schemas()}


def _supplied_feeds() -> dict[str, str]:
    """feed -> the active partner whose inbox it is collected from (the partner registry and the schemas)."""
    from csp_observatory.config import load_settings
    from csp_observatory.schema_loading import load_schemas

    try:
        settings = load_settings()
    except FileNotFoundError:
        return {}
    return {s.feed: settings.supplier(s.feed, s.partner.id) for s in load_schemas() if settings.feed_enabled(s.feed)}


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/agreements add|list|check|withdraw|demo``."""
    p = argparse.ArgumentParser(prog="scripts/agreements", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=None, help="the register (default: CSP_AGREEMENTS_DIR or "
                                                          f"{AGREEMENTS_DIR})")
    sub = p.add_subparsers(dest="cmd", required=True)
    add = sub.add_parser("add", help="check an agreement YAML file and register it")
    add.add_argument("file", type=Path)
    add.add_argument("--replace", action="store_true", help="replace a registered agreement of the same id")
    sub.add_parser("list", help="every registered agreement")
    sub.add_parser("check", help="exit 1 if a supplied feed has no current agreement or one is past its review")
    wd = sub.add_parser("withdraw", help="mark an agreement withdrawn: its feeds' supplies are refused from then on")
    wd.add_argument("--id", required=True)
    sub.add_parser("demo", help="register the demo partners' agreements (scripts/setup.sh; keeps existing ones)")
    args = p.parse_args(argv)
    folder = args.dir or agreements_dir()
    today = datetime.now(timezone.utc).date()
    try:
        if args.cmd == "add":
            a = parse_agreement(yaml.safe_load(args.file.read_text(encoding="utf-8")), str(args.file), _feeds_known())
            if not write_agreement(a, folder, args.replace):
                print(f"agreement {a.id} is already registered: --replace to replace it", file=sys.stderr)
                return 1
            print(f"registered {a.title()} in {folder}")
        elif args.cmd == "withdraw":
            register = read_register(folder)
            if args.id not in register:
                print(f"no agreement {args.id} in {folder}", file=sys.stderr)
                return 1
            old = register[args.id]
            write_agreement(Agreement(**{**old.__dict__, "status": "withdrawn", "ends": today}), folder, replace=True)
            print(f"withdrew {old.title()}: supplies of {', '.join(old.feeds)} are refused from now on")
        elif args.cmd == "demo":
            made = [a.id for a in demo_agreements(today) if write_agreement(a, folder)]
            print(f"registered {len(made)} demo agreement(s) in {folder}" + (f": {', '.join(made)}" if made else ""))
        elif args.cmd == "list":
            for a in read_register(folder).values():
                state = a.status if a.current(today) or a.status != "active" else "not in force"
                print(f"{a.id}\t{state}{' REVIEW DUE' if a.overdue(today) and a.status == 'active' else ''}\t"
                      f"{a.protocol_name} v{a.protocol_version}\treview {a.review_date}\t"
                      f"partners {','.join(a.partners)}\tfeeds {','.join(a.feeds)}" + ("\tdemo" if a.demo else ""))
        else:
            register = read_register(folder)
            problems = 0
            for feed, partner in sorted(_supplied_feeds().items()):
                st = standing(partner, feed, today, register)
                if st.refusal or st.warning:
                    problems += 1
                    print(f"{feed} from {partner}: " + (f"REFUSED: {st.refusal}" if st.refusal else st.warning or ""))
            print(f"{problems} problem(s)" if problems else "every supplied feed has a current agreement")
            return 1 if problems else 0
    except AgreementError as exc:
        print(f"scripts/agreements: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
