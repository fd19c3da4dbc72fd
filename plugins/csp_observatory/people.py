"""Named logins: every person who reads the observatory's PostGIS has a login of their own (guidance 4.3.6).

A person is a PostgreSQL login role (``jsmith``) that is a member of the group roles of its profile; the group
roles hold every privilege (``database.ensure_database``), a person's role holds none of its own:

=====================  ======================================  ================================================
profile                group roles                             reads
=====================  ======================================  ================================================
``analyst``            csp_analyst                             depersonalised, reference, dq
``restricted_analyst`` csp_analyst, csp_personal_reader        the same and personal (restricted)
``engineer``           csp_engineer                            observatory, depersonalised, reference, dq
=====================  ======================================  ================================================

The register of people, ``governance.people`` (login, name, e-mail, profile, when and by whom it was made, when,
by whom and why it was disabled), lets an auditor map a login in the database's logs to a person. It lives in a
schema of its own, owned by the administrator who runs this command, so that the pipeline's login (which owns the
other schemas) can neither change nor drop it. Roles are shared by every database of a cluster, so the register is
kept in each database a person can connect to (``/etc/csp-observatory/people.yaml`` lists them; ``--db`` names
one). A role is also marked as a person by its comment, which every database of the cluster sees.

Disabling a person makes the role NOLOGIN and records when and why; the role is never dropped, so audit records
that name it still lead to a person. Passwords are random, shown once (or written to a 0600 file), and sent to
the server only as a SCRAM verifier, so no statement log or audit trail ever holds one.

``scripts/people`` (root) is the command: ``add``, ``disable``, ``list``, ``password`` (docs/GOVERNANCE.md).
"""
from __future__ import annotations

import argparse
import getpass
import os
import re
import secrets
import sys
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import psycopg2
import psycopg2.extensions
import yaml
from psycopg2 import sql

CONFIG: Final = Path("/etc/csp-observatory/people.yaml")
PROFILES: Final[dict[str, tuple[str, ...]]] = {
    "analyst": ("csp_analyst",),
    "restricted_analyst": ("csp_analyst", "csp_personal_reader"),
    "engineer": ("csp_engineer",),
}
GROUP_ROLES: Final = ("csp_analyst", "csp_engineer", "csp_personal_reader")
#: A login: a lower-case SQL identifier that needs no quoting, short enough for every client.
LOGIN: Final = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
#: Never a person: service and group roles, PostgreSQL's own, and the shared login this register replaced.
RESERVED_PREFIXES: Final = ("csp_", "pg_")
RESERVED: Final = frozenset({"postgres", "public", "root", "analyst", "airflow", "cspobs", "none", "all",
                             "current_user", "session_user", "current_role"})
EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
#: The comment that marks a role as a registered person (pg_shdescription: every database sees it).
MARK: Final = "csp-observatory person"

REGISTER_SQL: Final = """
CREATE SCHEMA IF NOT EXISTS governance;
REVOKE ALL ON SCHEMA governance FROM PUBLIC;
CREATE TABLE IF NOT EXISTS governance.people (
    login text PRIMARY KEY CHECK (login ~ '^[a-z][a-z0-9_]{1,39}$'),
    name text NOT NULL CHECK (btrim(name) <> ''),
    email text NOT NULL,
    profile text NOT NULL CHECK (profile IN ('analyst', 'restricted_analyst', 'engineer')),
    created timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    disabled_at timestamptz,
    disabled_by text,
    reason text,
    CHECK ((disabled_at IS NULL) = (reason IS NULL))
);
COMMENT ON TABLE governance.people IS
    'Named logins (scripts/people): who each login role is, its profile, and when and why it was disabled';
GRANT USAGE ON SCHEMA governance TO csp_engineer;
GRANT SELECT ON governance.people TO csp_engineer;
"""


class PeopleError(ValueError):
    """A request the register refuses (bad login, reserved name, unknown person...)."""


@dataclass(frozen=True)
class Person:
    """One row of the register, with whether the role can log in now."""

    login: str
    name: str
    email: str
    profile: str
    created: datetime
    created_by: str
    disabled_at: datetime | None
    disabled_by: str | None
    reason: str | None
    can_login: bool


def check_login(login: str) -> str:
    """``login`` if it may be a person's login, else PeopleError saying why."""
    if not LOGIN.fullmatch(login):
        raise PeopleError(f"login {login!r} must be 2 to 40 lower-case letters, digits or _, starting with a letter")
    if login in RESERVED or login.startswith(RESERVED_PREFIXES):
        raise PeopleError(f"{login!r} is a service, group or shared role name: a person needs a login of their own")
    return login


def new_password() -> str:
    """A random password (about 190 bits), safe in a URL and a pgpass file."""
    return secrets.token_urlsafe(24)


def ensure_register(conn: Any) -> None:
    """The register's schema and table (idempotent; no commit)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('csp_observatory.people'))")
        cur.execute(REGISTER_SQL)


def _actor() -> str:
    """Who runs the command: the person behind sudo if any, and the OS account."""
    user = getpass.getuser()
    sudo = os.environ.get("SUDO_USER")
    return f"{sudo} (as {user})" if sudo and sudo != user else user


def _role(cur: Any, login: str) -> tuple[bool, str | None] | None:
    """(can log in, comment) of a role, or None when there is none."""
    cur.execute("SELECT r.rolcanlogin, shobj_description(r.oid, 'pg_authid') FROM pg_roles r WHERE rolname = %s",
                (login,))
    row = cur.fetchone()
    return (bool(row[0]), row[1]) if row else None


def _set_password(cur: Any, conn: Any, login: str, password: str) -> None:
    # The SCRAM verifier, made here: the password itself never reaches the server's logs or its audit trail.
    verifier = psycopg2.extensions.encrypt_password(password, login, conn, "scram-sha-256")
    cur.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(login), sql.Literal(verifier)))


def add(conn: Any, login: str, name: str, email: str, profile: str, password: str | None) -> bool:
    """Make ``login`` a person with ``profile`` and register them; False when already registered as such.

    The role is made when missing (a role of another cluster database's register is taken over); a role that
    exists but is not a person is refused. ``password`` (None: leave it) is set as a SCRAM verifier. Commits.
    """
    check_login(login)
    if profile not in PROFILES:
        raise PeopleError(f"profile {profile!r} is not one of {', '.join(PROFILES)}")
    if not name.strip():
        raise PeopleError("a person needs a name")
    if not EMAIL.fullmatch(email):
        raise PeopleError(f"{email!r} is not an e-mail address")
    ident = sql.Identifier(login)
    with conn, conn.cursor() as cur:
        ensure_register(conn)
        cur.execute("SELECT name, email, profile, disabled_at FROM governance.people WHERE login = %s FOR UPDATE",
                    (login,))
        known = cur.fetchone()
        if known and known[3] is not None:
            raise PeopleError(f"{login} was disabled on {known[3]:%Y-%m-%d}: a login is never reused; choose another")
        if known and (known[0], known[1], known[2]) != (name, email, profile):
            raise PeopleError(f"{login} is already registered as {known[0]} <{known[1]}>, {known[2]}")
        role = _role(cur, login)
        if role is not None and not (role[1] or "").startswith(MARK):
            raise PeopleError(f"a role {login} already exists and is not a registered person: choose another login")
        if role is None:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                                "NOBYPASSRLS").format(ident))
        elif not role[0] and not known:
            raise PeopleError(f"{login} is disabled in another database's register: a login is never reused")
        cur.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(ident, sql.Literal(f"{MARK}: {name} <{email}>, "
                                                                                  f"{profile}")))
        for group in GROUP_ROLES:
            verb = "GRANT {} TO {}" if group in PROFILES[profile] else "REVOKE {} FROM {}"
            cur.execute(sql.SQL(verb).format(sql.Identifier(group), ident))
        if password is not None:
            _set_password(cur, conn, login, password)
        if not known:
            cur.execute("INSERT INTO governance.people (login, name, email, profile, created_by) "
                        "VALUES (%s, %s, %s, %s, %s)", (login, name, email, profile, _actor()))
    return not known


def _disabled_at(cur: Any, login: str, for_update: bool = False) -> Any:
    """When a registered person's login was disabled (None while enabled); PeopleError if not registered."""
    cur.execute("SELECT disabled_at FROM governance.people WHERE login = %s" + (" FOR UPDATE" if for_update else ""),
                (login,))
    row = cur.fetchone()
    if row is None:
        raise PeopleError(f"{login} is not in the register of people")
    return row[0]


def disable(conn: Any, login: str, reason: str) -> bool:
    """Stop ``login`` logging in (NOLOGIN, sessions ended) and record when, by whom and why; the role and its
    register row stay. False when it was already disabled. Commits."""
    check_login(login)
    if not reason.strip():
        raise PeopleError("say why the login is disabled (--reason)")
    with conn, conn.cursor() as cur:
        ensure_register(conn)
        disabled_at = _disabled_at(cur, login, for_update=True)
        cur.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(login)))
        cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE usename = %s AND pid <> pg_backend_pid()", (login,))
        if disabled_at is not None:
            return False
        cur.execute("UPDATE governance.people SET disabled_at = now(), disabled_by = %s, reason = %s "
                    "WHERE login = %s", (_actor(), reason, login))
    return True


def set_password(conn: Any, login: str, password: str) -> None:
    """Give a registered, enabled person ``password``. Commits."""
    check_login(login)
    with conn, conn.cursor() as cur:
        ensure_register(conn)
        if _disabled_at(cur, login) is not None:
            raise PeopleError(f"{login} is disabled: it gets no new password")
        _set_password(cur, conn, login, password)


def people(conn: Any) -> list[Person]:
    """Everyone in the register, oldest first, with whether their role can log in now."""
    with conn, conn.cursor() as cur:
        ensure_register(conn)
        cur.execute("""SELECT p.login, p.name, p.email, p.profile, p.created, p.created_by, p.disabled_at,
                              p.disabled_by, p.reason, coalesce(r.rolcanlogin, false)
                         FROM governance.people p LEFT JOIN pg_roles r ON r.rolname = p.login
                        ORDER BY p.created, p.login""")
        return [Person(*row) for row in cur.fetchall()]


# ------------------------------------------------------------------ the command

def load_config(path: Path) -> dict[str, Any]:
    """The machine's people.yaml (written by scripts/setup.sh): ``databases`` (admin URLs) and ``connect``."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise PeopleError(f"{path} is missing: run scripts/setup.sh, or name a database with --db") from None
    if not raw.get("databases"):
        raise PeopleError(f"{path} names no databases")
    return raw


@contextmanager
def _connections(urls: Sequence[str]) -> Iterator[list[Any]]:
    conns: list[Any] = []
    try:
        for url in urls:
            conns.append(psycopg2.connect(url, connect_timeout=10))
        yield conns
    finally:
        for c in conns:
            c.close()


def _deliver(login: str, password: str, out: Path | None, connect: dict[str, Any]) -> None:
    """Show a new password once, or write it to a new 0600 file; say how to connect."""
    if out is not None:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(password + "\n")
        print(f"{login}'s password is in {out} (0600): hand it over securely, then delete the file")
    else:
        print(f"{login}'s password (shown once, kept nowhere): {password}")
    if connect:
        query = "sslmode=verify-full" + (f"&sslrootcert={connect['sslrootcert']}" if connect.get("sslrootcert") else "")
        print(f"connect: postgresql://{login}@{connect.get('host', '127.0.0.1')}:{connect.get('port', 5432)}/"
              f"{connect.get('dbname', 'csp_observatory')}?{query}")


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/people add|disable|list|password``."""
    p = argparse.ArgumentParser(prog="scripts/people", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=Path(os.environ.get("CSP_PEOPLE_CONFIG") or CONFIG),
                   help=f"the machine's people file (default: CSP_PEOPLE_CONFIG or {CONFIG})")
    p.add_argument("--db", action="append", default=[], metavar="URL",
                   help="an administrator's URL of a database whose register to keep (repeatable; default: every "
                        "database of the people file)")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add", help="make a person's login with a profile, and register them")
    a.add_argument("--login", required=True)
    a.add_argument("--name", required=True)
    a.add_argument("--email", required=True)
    a.add_argument("--profile", required=True, choices=sorted(PROFILES))
    a.add_argument("--out", type=Path, help="write the new password to this new file (0600) instead of showing it")
    a.add_argument("--password-stdin", action="store_true",
                   help="take the password from stdin (scripts/setup.sh's demo person: a stored secret)")
    d = sub.add_parser("disable", help="stop a person logging in (the role and its register entry stay)")
    d.add_argument("--login", required=True)
    d.add_argument("--reason", required=True)
    sub.add_parser("list", help="the register of people")
    w = sub.add_parser("password", help="give a person a new random password")
    w.add_argument("--login", required=True)
    w.add_argument("--out", type=Path, help="write it to this new file (0600) instead of showing it")
    args = p.parse_args(argv)
    try:
        connect: dict[str, Any] = {}
        urls = list(args.db)
        if not urls:
            cfg = load_config(args.config)
            urls, connect = list(cfg["databases"]), dict(cfg.get("connect") or {})
        if getattr(args, "out", None) is not None and args.out.exists():
            raise PeopleError(f"{args.out} exists: a password file is never overwritten")
        with _connections(urls) as conns:
            if args.cmd == "add":
                password = None
                if args.password_stdin:
                    password = sys.stdin.readline().rstrip("\n")
                    if len(password) < 12:
                        raise PeopleError("a password from stdin must be at least 12 characters")
                new = [add(c, args.login, args.name, args.email, args.profile, None) for c in conns]
                if any(new) and password is None:
                    password = new_password()
                if password is not None:
                    for c in conns:
                        set_password(c, args.login, password)
                print(f"{'registered' if any(new) else 'already registered:'} {args.login}, {args.name} "
                      f"<{args.email}>, profile {args.profile} ({', '.join(PROFILES[args.profile])})")
                if any(new) and not args.password_stdin:
                    _deliver(args.login, password or "", args.out, connect)
            elif args.cmd == "disable":
                done = [disable(c, args.login, args.reason) for c in conns]
                print(f"disabled {args.login}: it can no longer log in; its role and register entry stay"
                      if any(done) else f"{args.login} was already disabled")
            elif args.cmd == "password":
                password = new_password()
                for c in conns:
                    set_password(c, args.login, password)
                _deliver(args.login, password, args.out, connect)
            else:
                for person in people(conns[0]):
                    state = (f"disabled {person.disabled_at:%Y-%m-%d %H:%M} by {person.disabled_by}: {person.reason}"
                             if person.disabled_at else "active" if person.can_login else "active (NOLOGIN!)")
                    print(f"{person.login}\t{person.name} <{person.email}>\t{person.profile}\t"
                          f"created {person.created:%Y-%m-%d} by {person.created_by}\t{state}")
    except (PeopleError, psycopg2.Error, OSError) as exc:
        print(f"scripts/people: {str(exc).strip()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
