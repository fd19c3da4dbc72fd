#!/usr/bin/env bash
# Install and start everything csp-observatory needs on a fresh Debian 12 / Ubuntu machine, as root.
#
# Idempotent, and shared by every clone on the machine: a second run (from this clone or another) finds the
# services running and reuses the machine's secrets, so it never invalidates a clone set up before it.
#   machine-wide   PostGIS cluster, sshd, SFTP trees, host key (/etc/csp-observatory), and the secrets in
#                  /var/lib/csp-observatory (root only): database passwords, SSH client keys, demo gpg keyrings;
#                  each is made once and reused while it exists. The demo partners (one per partner.id of the
#                  feed schemas) are onboarded with scripts/partner, the command an engineer uses for a real one
#                  (docs/ONBOARDING.md): it reads /etc/csp-observatory/site.yaml, which this script writes, and
#                  keeps the partner registry in /etc/csp-observatory/partners
#   this clone     .venv, and under .run/ the config files that point at those secrets (observatory.yaml and
#                  demo.yaml for the demo; test/observatory.yaml and test/demo.yaml for the tests), staging,
#                  reports and the Airflow home
# The tests get their own services next to the demo's, so they never touch what the demo shows: the database
# csp_observatory_test, and the SFTP tree /srv/csp-observatory/sftp-test (same sshd and users, port 2223).
#
# Environment:
#   CSP_DATABASE_URL       use this PostGIS database instead of the project's own cluster on 127.0.0.1:5433
#                          (its user needs CREATEROLE to make the roles; the extension needs a superuser or a
#                          trusted-extension setup)
#   CSP_TEST_DATABASE_URL  with CSP_DATABASE_URL: the database the tests use (default: CSP_DATABASE_URL itself)
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN="$REPO/.run"
VENV="$REPO/.venv"
LOG="$RUN/logs/setup.log"

PG_CLUSTER=csp_observatory
PG_PORT=5433
PG_DB=csp_observatory
ETC=/etc/csp-observatory
SSHD_CONFIG="$ETC/sshd_config"
HOST_KEY="$ETC/ssh_host_ed25519_key"
SSHD_PIDFILE=/run/csp-observatory-sshd.pid
SSHD_PORT=2222
SFTP_ROOT=/srv/csp-observatory/sftp
# the tests' twin of the SFTP tree: the same sshd and users, another port, another chroot
TEST_SSHD_PORT=2223
TEST_SFTP_ROOT=/srv/csp-observatory/sftp-test
PG_TEST_DB=csp_observatory_test
# The machine's secrets, outside any clone: made once, then reused by every clone's set-up.
STORE=/var/lib/csp-observatory
OBS_USER=cspobs
# Partners are onboarded by scripts/partner (docs/ONBOARDING.md), never named here: set-up onboards one demo
# partner per partner.id of include/schemas/*.yaml with it. It reads what it needs to know from the site file.
PARTNER_GROUP=csp-partners      # sshd jails this group's members in their own folder
REGISTRY="$ETC/partners"        # the partner registry: one YAML file per partner (read by config.py)
SITE="$ETC/site.yaml"
PARTNER_FOLDERS=(inbox quarantine processed reports)
# The demo's named person (scripts/people): no shared login; each analyst or engineer gets their own.
DEMO_LOGIN=demo_analyst
PEOPLE_FILE="$ETC/people.yaml"   # which databases scripts/people keeps its register in (the project's cluster)
# TLS for every TCP login to the project's cluster: a local CA and the server's certificate, made once in the store;
# the CA certificate is published (world-readable) where clients' URLs point (sslrootcert).
TLS_STORE="$STORE/tls"
CA_CERT="$ETC/tls/ca.crt"

mkdir -p "$RUN/logs"
chmod 0700 "$RUN"
: >"$LOG"
START=$(date +%s)

step() { echo "== $* (at +$(( $(date +%s) - START )) s)" >>"$LOG"; }
fail() { echo "setup.sh: $*" >&2; exit 1; }
# Run a noisy command with its output in the log; the EXIT trap shows the log's tail if it fails.
# fd 9 (the setup lock) is closed for it: a daemon it starts must not keep the lock after we exit.
quiet() { echo "+ $*" >>"$LOG"; "$@" >>"$LOG" 2>&1 9>&-; }
on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "setup.sh failed (exit $rc). Last lines of $LOG:" >&2
        tail -n 40 "$LOG" >&2
    fi
}
trap on_exit EXIT

[ "$(id -u)" -eq 0 ] || fail "run me as root (sudo bash scripts/setup.sh): I install packages and start services"

# One setup at a time on a machine: two clones set up at once would race on the cluster, sshd and users.
exec 9>/run/csp-observatory-setup.lock
flock 9

# ---------------------------------------------------------------- system packages
step "system packages"
export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
apt_install() {
    local missing=() p
    for p in "$@"; do installed "$p" || missing+=("$p"); done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$APT_UPDATED" -eq 0 ]; then quiet apt-get update; APT_UPDATED=1; fi
    quiet apt-get install -y --no-install-recommends "${missing[@]}"
}

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
pick_python() {
    local c p
    for c in python3 python3.13 python3.12 python3.11 /usr/bin/python3; do
        p=$(command -v "$c" 2>/dev/null) || continue
        # resolve shims (pyenv) to the real interpreter, so the venv does not depend on them
        python_ok "$p" && { "$p" -c 'import sys; print(sys.executable)'; return 0; }
    done
    return 1
}

apt_install postgresql openssh-server openssh-client gnupg ca-certificates util-linux gdal-bin openssl
# headless Chromium: tests/integration/test_report_browser.py opens the quality report as a browser does. Debian
# packages it as chromium; Ubuntu ships only a snap wrapper, which a container cannot run: there set-up goes on
# without it and says so, and the browser test skips with the reason.
CHROMIUM_NOTE=""
if ! apt_install chromium; then
    CHROMIUM_NOTE="  WARNING   Debian's chromium package could not be installed (see $LOG): the report's browser test will skip"
fi
PY=$(pick_python) || { apt_install python3; PY=$(pick_python) || fail "Python >= 3.11 is needed"; }
if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
    # Debian/Ubuntu split ensurepip out of the interpreter; only their own python3 can be fixed with apt
    pyver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install python3-venv "python$pyver-venv"
    "$PY" -c 'import ensurepip, venv' 2>/dev/null || fail "$PY has no venv/ensurepip module"
fi

# The PostgreSQL major: the newest installed server (the postgresql package has just pulled one in).
PG_VER=$(find /usr/lib/postgresql -maxdepth 3 -path '*/bin/postgres' 2>/dev/null \
         | sed -E 's#/usr/lib/postgresql/([0-9]+)/bin/postgres#\1#' | sort -n | tail -n 1)
[ -n "$PG_VER" ] || fail "no PostgreSQL server found under /usr/lib/postgresql"
apt_install "postgresql-$PG_VER-postgis-3"

# ---------------------------------------------------------------- Python venv
step "venv"
LOCK_STAMP="$VENV/.csp-lock-stamp"
want_stamp="$(sha256sum "$REPO/requirements.lock" | cut -d' ' -f1) $("$PY" -V 2>&1) bytecode"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null \
   || ! python_ok "$VENV/bin/python"; then
    rm -rf "$VENV"
    quiet "$PY" -m venv "$VENV"
fi
if [ ! -f "$LOCK_STAMP" ] || [ "$(cat "$LOCK_STAMP")" != "$want_stamp" ]; then
    quiet "$VENV/bin/python" -m pip install --disable-pip-version-check -q uv || true
    # Bytecode is compiled at install: uv does not by default, and where PYTHONDONTWRITEBYTECODE is set (CI, these
    # machines) no process ever writes it, so every fresh Python (each Airflow task, scheduler, worker, test
    # subprocess) would compile Airflow and Great Expectations from source again: seconds per process.
    if ! { [ -x "$VENV/bin/uv" ] && quiet "$VENV/bin/uv" pip install --python "$VENV/bin/python" --compile-bytecode \
                                         -r "$REPO/requirements.lock"; }; then
        echo "uv failed or is unavailable: falling back to pip" >>"$LOG"
        quiet "$VENV/bin/python" -m pip install --disable-pip-version-check -r "$REPO/requirements.lock"
        quiet "$VENV/bin/python" -m compileall -q -j 0 "$VENV/lib"
    fi
    echo "$want_stamp" >"$LOCK_STAMP"
fi
VPY="$VENV/bin/python"

# ---------------------------------------------------------------- PostGIS
step "PostGIS"
newpw() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
install -d -o root -g root -m 0700 "$STORE" "$STORE/db"
# Replace a file only when its content changes; returns 0 when it did.
replace_if_changed() {  # target mode owner < content
    local target=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp "$target.XXXXXX")
    cat >"$tmp"
    if [ -f "$target" ] && cmp -s "$tmp" "$target"; then rm -f "$tmp"; return 1; fi
    chmod "$mode" "$tmp"; chown "$owner" "$tmp"; mv -f "$tmp" "$target"
    return 0
}

ROLES_SQL=$(cat <<'SQL'
\set ON_ERROR_STOP on
SELECT format('CREATE ROLE %I NOLOGIN', r)
  FROM unnest(ARRAY['csp_analyst', 'csp_engineer', 'csp_personal_reader']) AS r
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \gexec
SELECT 'CREATE ROLE csp_loader LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'csp_loader') \gexec
ALTER ROLE csp_loader WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'loader_pw';
-- The shared login "analyst" of earlier set-ups goes: people log in as themselves (scripts/people). Dropped where
-- nothing depends on it; otherwise it can no longer log in and is in no group.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'analyst') THEN
        BEGIN
            DROP ROLE analyst;
        EXCEPTION WHEN dependent_objects_still_exist THEN
            ALTER ROLE analyst NOLOGIN PASSWORD NULL;
            REVOKE csp_analyst FROM analyst;
        END;
    END IF;
END
$$;
SQL
)
DB_SQL=$(cat <<'SQL'
\set ON_ERROR_STOP on
CREATE EXTENSION IF NOT EXISTS postgis;
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database()) \gexec
SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO csp_loader, csp_analyst, csp_engineer, csp_personal_reader',
              current_database()) \gexec
SQL
)

# The passwords this clone's config holds, as "role password url" lines: a set-up from before the machine's
# store existed made them, and other processes may be using them right now.
old_db_passwords() {
    [ -f "$RUN/observatory.yaml" ] || return 0
    "$VPY" - "$RUN" <<'PY' 2>/dev/null || true
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

run = Path(sys.argv[1])
for name, key, role in (("observatory.yaml", "database_url", "csp_loader"), ("demo.yaml", "analyst_url", "demo_analyst")):
    try:
        url = (yaml.safe_load((run / name).read_text(encoding="utf-8")) or {}).get(key) or ""
    except OSError:
        continue
    u = urlsplit(url)
    if u.username == role and u.password:
        print(role, u.password, url)
PY
}
# A role's password, from the machine's store; made once. Adopts the one this clone's old config holds if it
# still logs in, so upgrading the set-up keeps the clones that use it working.
db_password() {  # role
    local f="$STORE/db/$1.password" role pw url
    if [ ! -s "$f" ]; then
        while read -r role pw url; do
            [ "$role" = "$1" ] || continue
            PGCONNECT_TIMEOUT=5 psql -X -q -w "$url" -c 'SELECT 1' >/dev/null 2>&1 || continue
            (umask 077; printf '%s' "$pw" >"$f.new"; mv -f "$f.new" "$f")
            echo "kept the $1 password this clone's config already used" >>"$LOG"
        done < <(old_db_passwords)
    fi
    [ -s "$f" ] || (umask 077; newpw >"$f.new"; mv -f "$f.new" "$f")
    chmod 0600 "$f"
    cat "$f"
}
# The roles' SQL with the password set on stdin, never on a command line (ps) or in the log.
roles_sql() {
    printf '\\set loader_pw %s\n' "'$LOADER_PW'"
    echo "$ROLES_SQL"
}
# The shared analyst login's password is no longer used by anything: one secret fewer in the store.
rm -f "$STORE/db/analyst.password"

# The project's cluster's TLS material, in the store (root only): made once, reused while it is valid. The server
# certificate is made again only when it no longer verifies against the CA, lacks a name, or ends within 30 days.
tls_material() {
    local d=$TLS_STORE ext
    install -d -o root -g root -m 0700 "$d"
    if [ ! -s "$d/ca.key" ] || [ ! -s "$d/ca.crt" ]; then
        rm -f "$d/ca.key.new" "$d/ca.crt.new" "$d/server.crt"
        quiet openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 -days 3650 \
            -subj "/CN=csp-observatory local CA ($(hostname))" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -keyout "$d/ca.key.new" -out "$d/ca.crt.new"
        chmod 0600 "$d/ca.key.new" "$d/ca.crt.new"
        mv -f "$d/ca.crt.new" "$d/ca.crt"; mv -f "$d/ca.key.new" "$d/ca.key"
    fi
    if [ ! -s "$d/server.key" ] || [ ! -s "$d/server.crt" ] \
       || ! openssl verify -CAfile "$d/ca.crt" "$d/server.crt" >/dev/null 2>&1 \
       || ! openssl x509 -in "$d/server.crt" -noout -checkend 2592000 >/dev/null 2>&1 \
       || ! openssl x509 -in "$d/server.crt" -noout -text 2>/dev/null | grep -q "IP Address:127.0.0.1"; then
        rm -f "$d/server.key.new" "$d/server.csr" "$d/server.crt.new"
        ext=$(mktemp)
        printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$ext"
        quiet openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
            -subj "/CN=localhost" -keyout "$d/server.key.new" -out "$d/server.csr"
        quiet openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
            -set_serial "0x$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" -days 825 -sha256 \
            -extfile "$ext" -out "$d/server.crt.new"
        rm -f "$ext" "$d/server.csr"
        chmod 0600 "$d/server.key.new" "$d/server.crt.new"
        mv -f "$d/server.crt.new" "$d/server.crt"; mv -f "$d/server.key.new" "$d/server.key"
    fi
    chmod 0600 "$d"/*
    # the CA certificate where every client's URL points: world-readable (a certificate is public)
    install -d -o root -g root -m 0755 "$ETC" "$ETC/tls"
    replace_if_changed "$CA_CERT" 0644 root:root <"$d/ca.crt" || true
}

if [ -n "${CSP_DATABASE_URL:-}" ]; then
    # An existing PostGIS: make the extension and the roles there, and use the URL as given.
    LOADER_PW=$(db_password csp_loader)
    TEST_DATABASE_URL=${CSP_TEST_DATABASE_URL:-$CSP_DATABASE_URL}
    for url in "$CSP_DATABASE_URL" "$TEST_DATABASE_URL"; do
        roles_sql | quiet psql -X -q "$url"
        quiet psql -X -q "$url" <<<"$DB_SQL"
    done
    DATABASE_URL=$CSP_DATABASE_URL
    ADMIN_URL=$CSP_DATABASE_URL
    TEST_ADMIN_URL=$TEST_DATABASE_URL
    DB_MODE="CSP_DATABASE_URL"
else
    PG_ETC="/etc/postgresql/$PG_VER/$PG_CLUSTER"
    cluster_status() { pg_lsclusters -h | awk -v v="$PG_VER" -v c="$PG_CLUSTER" '$1 == v && $2 == c {print $4}'; }
    if [ -z "$(cluster_status)" ]; then
        quiet pg_createcluster --port "$PG_PORT" --start-conf auto "$PG_VER" "$PG_CLUSTER" -- \
            --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8
    fi
    mkdir -p "$PG_ETC/conf.d"
    restart_pg=0; reload_pg=0
    # TLS: the server's key and certificate beside the cluster's config, readable by postgres only (the store is
    # root's); TLS settings and a new certificate take a reload, not a restart
    tls_material
    install -d -o postgres -g postgres -m 0700 "$PG_ETC/tls"
    replace_if_changed "$PG_ETC/tls/server.key" 0600 postgres:postgres <"$TLS_STORE/server.key" && reload_pg=1 || true
    replace_if_changed "$PG_ETC/tls/server.crt" 0644 postgres:postgres <"$TLS_STORE/server.crt" && reload_pg=1 || true
    replace_if_changed "$PG_ETC/conf.d/csp-observatory-tls.conf" 0644 postgres:postgres <<EOF && reload_pg=1 || true
# written by csp-observatory scripts/setup.sh: every TCP login is over TLS (pg_hba.conf refuses any other)
ssl = on
ssl_cert_file = '$PG_ETC/tls/server.crt'
ssl_key_file = '$PG_ETC/tls/server.key'
ssl_ca_file = ''
ssl_min_protocol_version = 'TLSv1.2'
EOF
    replace_if_changed "$PG_ETC/conf.d/csp-observatory.conf" 0644 postgres:postgres <<EOF && restart_pg=1 || true
# written by csp-observatory scripts/setup.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
password_encryption = 'scram-sha-256'
EOF
    # TCP needs TLS and a password (scram); a TCP login without TLS is refused whatever its password. On the
    # socket only root and postgres may become postgres (for setup and the tests' admin connection), everyone
    # else is matched by peer name.
    replace_if_changed "$PG_ETC/pg_hba.conf" 0640 postgres:postgres <<'EOF' && reload_pg=1 || true
# written by csp-observatory scripts/setup.sh
local     all   postgres                    peer map=csp_admin
local     all   all                         peer
hostssl   all   all        127.0.0.1/32     scram-sha-256
hostssl   all   all        ::1/128          scram-sha-256
hostnossl all   all        0.0.0.0/0        reject
hostnossl all   all        ::/0             reject
EOF
    replace_if_changed "$PG_ETC/pg_ident.conf" 0640 postgres:postgres <<'EOF' && reload_pg=1 || true
# written by csp-observatory scripts/setup.sh
csp_admin   postgres   postgres
csp_admin   root       postgres
EOF
    PGCTL=(pg_ctlcluster --skip-systemctl-redirect "$PG_VER" "$PG_CLUSTER")
    if [ "$(cluster_status)" != "online" ]; then
        quiet "${PGCTL[@]}" start
    elif [ "$restart_pg" -eq 1 ]; then
        quiet "${PGCTL[@]}" restart
    elif [ "$reload_pg" -eq 1 ]; then
        quiet "${PGCTL[@]}" reload
    fi
    [ "$(cluster_status)" = "online" ] || fail "cluster $PG_VER/$PG_CLUSTER did not start (is port $PG_PORT taken?)"
    pgsu() { (cd / && runuser -u postgres -- psql -X -q -p "$PG_PORT" "$@"); }
    LOADER_PW=$(db_password csp_loader)
    roles_sql | quiet pgsu -d postgres
    # the demo's database, and the tests' own (so the tests never touch what the demo shows)
    for db in "$PG_DB" "$PG_TEST_DB"; do
        if [ -z "$(pgsu -d postgres -tA -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
            quiet pgsu -d postgres -c "CREATE DATABASE $db OWNER csp_loader"
        fi
        quiet pgsu -d postgres -c "ALTER DATABASE $db OWNER TO csp_loader"
        quiet pgsu -d "$db" <<<"$DB_SQL"
    done
    # every TCP URL verifies the server's certificate against the project's CA (and its name, 127.0.0.1)
    TLS_QUERY="sslmode=verify-full&sslrootcert=$CA_CERT"
    DATABASE_URL="postgresql://csp_loader:$LOADER_PW@127.0.0.1:$PG_PORT/$PG_DB?$TLS_QUERY"
    TEST_DATABASE_URL="postgresql://csp_loader:$LOADER_PW@127.0.0.1:$PG_PORT/$PG_TEST_DB?$TLS_QUERY"
    ADMIN_URL="postgresql://postgres@/$PG_DB?host=/var/run/postgresql&port=$PG_PORT"
    TEST_ADMIN_URL="postgresql://postgres@/$PG_TEST_DB?host=/var/run/postgresql&port=$PG_PORT"
    DB_MODE="cluster $PG_VER/$PG_CLUSTER on 127.0.0.1:$PG_PORT"
fi
# Prove the loader's TCP login works before going on (the URLs are not logged: passwords).
for url in "$DATABASE_URL" "$TEST_DATABASE_URL"; do
    psql -X -q "$url" -c "SELECT postgis_version()" >>"$LOG" 2>&1 || fail "cannot log in to the database as in its URL (see $LOG)"
done

# ---------------------------------------------------------------- people (scripts/people)
step "people"
# The demo's analyst is a named person like any other (profile analyst), made with the command an engineer uses
# for a real one; its password is a stored secret, so every clone's demo.yaml keeps working.
DEMO_PW=$(db_password "$DEMO_LOGIN")
if [ -n "${CSP_DATABASE_URL:-}" ]; then
    people_args=(--db "$CSP_DATABASE_URL")
    [ "$TEST_DATABASE_URL" = "$CSP_DATABASE_URL" ] || people_args+=(--db "$TEST_DATABASE_URL")
else
    # the admin's socket URLs (no password): root becomes postgres by peer map. Root-only all the same.
    replace_if_changed "$PEOPLE_FILE" 0600 root:root <<EOF || true
# written by scripts/setup.sh: the databases whose register of people scripts/people keeps (roles are the
# cluster's, so a person is registered in each database they can connect to), and how people connect
databases:
  - $ADMIN_URL
  - $TEST_ADMIN_URL
connect: {host: 127.0.0.1, port: $PG_PORT, dbname: $PG_DB, sslrootcert: $CA_CERT}
EOF
    people_args=(--config "$PEOPLE_FILE")
fi
printf '%s\n' "$DEMO_PW" | quiet "$REPO/scripts/people" "${people_args[@]}" add --login "$DEMO_LOGIN" \
    --name "Demo Analyst" --email "demo.analyst@csp-observatory.invalid" --profile analyst --password-stdin \
    || fail "making the demo's named analyst $DEMO_LOGIN failed (see $LOG)"
# The analyst's URL: the database's host, port, name and TLS settings with the demo person's credentials.
analyst_url() {  # database_url
    "$VPY" - "$1" "$DEMO_LOGIN" "$DEMO_PW" <<'PY'
import sys
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit
u = urlsplit(sys.argv[1])
host = u.hostname or "127.0.0.1"   # a socket URL: the analyst logs in over TCP, on the same port
query = dict(parse_qsl(u.query))
port = u.port or query.get("port")
# the socket's host and port are not the analyst's; TLS and other settings are
query = {k: v for k, v in query.items() if k not in ("host", "port", "user", "password")}
netloc = f"{sys.argv[2]}:{quote(sys.argv[3], safe='')}@{host}" + (f":{port}" if port else "")
print(urlunsplit((u.scheme, netloc, u.path, urlencode(query, safe="/"), "")))
PY
}
ANALYST_URL=$(analyst_url "$DATABASE_URL")
TEST_ANALYST_URL=$(analyst_url "$TEST_DATABASE_URL")
# Prove the demo analyst's TLS login works before writing it into the config.
for url in "$ANALYST_URL" "$TEST_ANALYST_URL"; do
    psql -X -q "$url" -c "SELECT 1" >>"$LOG" 2>&1 || fail "the demo analyst $DEMO_LOGIN cannot log in (see $LOG)"
done

# ---------------------------------------------------------------- audit of reads of personal data
# scripts/setup_audit.sh (sourced: it sees this script's variables and functions) sets up the audit of every
# read of the restricted schema (docs/GOVERNANCE.md).
if [ -f "$REPO/scripts/setup_audit.sh" ]; then
    step "audit"
    # shellcheck source=/dev/null
    . "$REPO/scripts/setup_audit.sh"
fi

# ---------------------------------------------------------------- Celery: broker and Airflow's metadata database
step "celery"
# The CeleryExecutor (docker-compose.yaml, tests/integration/test_celery_workers.py) needs a broker: Redis on
# 127.0.0.1:6379. When nothing answers there, Debian's redis-server is installed and started, on loopback only.
REDIS_PORT=6379
redis_up() {
    timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$REDIS_PORT && printf 'PING\r\n' >&3 && head -c 5 <&3" 2>/dev/null \
        | grep -q PONG
}
if ! redis_up; then
    apt_install redis-server
    # Debian's package starts it under systemd; without systemd (a container) its init script or redis itself
    redis_up || quiet service redis-server start || true
    redis_up || quiet redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes --daemonize yes || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do redis_up && break; sleep 1; done
    redis_up || fail "no Redis answers on 127.0.0.1:$REDIS_PORT (see $LOG)"
fi
# A Celery deployment's metadata database (its result backend too) must be a real database, not SQLite: the tests'
# one is csp_airflow_test in the project's cluster, owned by the role csp_airflow (password in the machine's store).
# The Celery test reads where they are from .run/test/celery.yaml; without it (CSP_DATABASE_URL mode) it is skipped.
if [ -z "${CSP_DATABASE_URL:-}" ]; then
    AIRFLOW_DB_PW=$(db_password csp_airflow)
    printf '\\set pw %s\n%s\n' "'$AIRFLOW_DB_PW'" "$(cat <<'SQL'
\set ON_ERROR_STOP on
SELECT 'CREATE ROLE csp_airflow LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'csp_airflow') \gexec
ALTER ROLE csp_airflow WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'pw';
SQL
)" | quiet pgsu -d postgres
    if [ -z "$(pgsu -d postgres -tA -c "SELECT 1 FROM pg_database WHERE datname = 'csp_airflow_test'")" ]; then
        quiet pgsu -d postgres -c "CREATE DATABASE csp_airflow_test OWNER csp_airflow"
    fi
    quiet pgsu -d postgres -c "REVOKE ALL ON DATABASE csp_airflow_test FROM PUBLIC"
    install -d -m 0700 "$RUN/test"
    replace_if_changed "$RUN/test/celery.yaml" 0600 root:root <<EOF || true
# written by scripts/setup.sh: the tests' Celery deployment (tests/integration/test_celery_workers.py)
broker_url: redis://127.0.0.1:$REDIS_PORT/0
airflow_database_url: postgresql+psycopg2://csp_airflow:$AIRFLOW_DB_PW@127.0.0.1:$PG_PORT/csp_airflow_test?$TLS_QUERY
result_backend: db+postgresql://csp_airflow:$AIRFLOW_DB_PW@127.0.0.1:$PG_PORT/csp_airflow_test?$TLS_QUERY
EOF
    psql -X -q "postgresql://csp_airflow:$AIRFLOW_DB_PW@127.0.0.1:$PG_PORT/csp_airflow_test?$TLS_QUERY" -c "SELECT 1" >>"$LOG" 2>&1 \
        || fail "cannot log in to csp_airflow_test as csp_airflow (see $LOG)"
fi

# ---------------------------------------------------------------- SFTP (the project's own sshd): base
step "sshd"
mkdir -p -m 755 /run/sshd
install -d -o root -g root -m 0755 "$ETC" "$ETC/authorized_keys" /srv/csp-observatory "$SFTP_ROOT" "$TEST_SFTP_ROOT"
[ -f "$HOST_KEY" ] || quiet ssh-keygen -q -t ed25519 -N '' -C "csp-observatory sftp host key" -f "$HOST_KEY"
chmod 0600 "$HOST_KEY"

# The observatory's account; partners' accounts are made by scripts/partner (below), in the partners' group
# that the sshd config jails, so onboarding a partner never rewrites the sshd config.
getent group "$OBS_USER" >/dev/null || quiet groupadd --system "$OBS_USER"
getent group "$PARTNER_GROUP" >/dev/null || quiet groupadd --system "$PARTNER_GROUP"
id -u "$OBS_USER" >/dev/null 2>&1 \
    || quiet useradd --system -g "$OBS_USER" -d "$SFTP_ROOT" -M -s /usr/sbin/nologin "$OBS_USER"
# With UsePAM no, an account whose password field is "!" is locked and refuses even key logins.
usermod -p '*' "$OBS_USER"

# The demo's and the tests' partners: one per partner.id of the feed schemas (each is also its SFTP user), with
# the feeds whose schema names it. The police partner is the one the demo and most tests drop files as.
DEMO_PARTNER=police
mapfile -t PARTNER_FEEDS < <(PYTHONPATH="$REPO/plugins" "$VPY" -c '
from collections import defaultdict
from csp_observatory.onboarding import feed_partners
feeds = defaultdict(list)
for feed, pid in feed_partners().items():
    feeds[pid].append(feed)
for pid in sorted(feeds):
    print(pid, ",".join(sorted(feeds[pid])))')
PARTNERS=()
declare -A FEEDS_OF
for line in "${PARTNER_FEEDS[@]}"; do
    PARTNERS+=("${line%% *}")
    FEEDS_OF[${line%% *}]=${line#* }
done
[ -n "${FEEDS_OF[$DEMO_PARTNER]:-}" ] || fail "no feed schema in include/schemas names the partner $DEMO_PARTNER"

# SSH client keys: one pair per account for the whole machine, in the store; every clone's config points at them.
KEYS="$STORE/ssh"
install -d -o root -g root -m 0700 "$KEYS"
for u in "$OBS_USER" "${PARTNERS[@]}"; do
    k="$KEYS/${u}_ed25519"
    old="$RUN/keys/${u}_ed25519"
    if [ ! -f "$k" ]; then
        if [ -f "$old" ] && [ -f "$old.pub" ] && [ -f "$ETC/authorized_keys/$u" ] \
           && grep -qF "$(cut -d' ' -f1,2 "$old.pub")" "$ETC/authorized_keys/$u"; then
            # a set-up from before the store: keep the key sshd accepts now (clones in use hold it)
            cp -p "$old.pub" "$k.pub"; cp -p "$old" "$k.new"; mv -f "$k.new" "$k"
            echo "kept $u's SSH key from $old" >>"$LOG"
        else
            # made under a temporary name, so an interrupted run never leaves half a pair that looks whole
            rm -f "$k.new" "$k.new.pub"
            quiet ssh-keygen -q -t ed25519 -N '' -C "$u@csp-observatory" -f "$k.new"
            mv -f "$k.new.pub" "$k.pub"; mv -f "$k.new" "$k"
        fi
    fi
    [ -f "$k.pub" ] || ssh-keygen -y -f "$k" >"$k.pub"
    chmod 0600 "$k" "$k.pub"
done
# the observatory's own key; partners' keys are installed by scripts/partner when it onboards them
# (replaced only when it changes, and atomically: a login at this moment must not find it missing)
replace_if_changed "$ETC/authorized_keys/$OBS_USER" 0644 root:root <"$KEYS/${OBS_USER}_ed25519.pub" || true

# ---------------------------------------------------------------- GnuPG keyrings
step "gnupg"
# One keyring per party for the whole machine, in the store. Other clones' pipelines and tests may be using them
# right now, so a run that finds them complete only reads them, and never starts or stops their gpg-agent.
GNUPG="$STORE/gnupg"
OBS_HOME="$GNUPG/observatory"
# The demo partners' keys, each only signing, in one keyring: one gpg-agent makes them all. (A partner whose own
# keyring an earlier set-up made, gnupg/<id>, keeps it: its fingerprint is pinned in configs in use.)
PARTNERS_HOME="$GNUPG/partners"
install -d -o root -g root -m 0700 "$GNUPG"
G() { local home=$1; shift; gpg --batch --no-tty --quiet --homedir "$home" "$@" 9>&-; }
AGENT_USED=0
USED_HOMES=("$OBS_HOME")
# "fingerprint email" of every key whose secret part this keyring holds, read without the agent (public listing
# + the key file named by its keygrip).
own_keys() {  # home
    [ -d "$1/private-keys-v1.d" ] || return 0
    G "$1" --no-autostart --with-colons --with-keygrip --list-keys 2>/dev/null | awk -F: -v d="$1/private-keys-v1.d" '
        $1 == "pub" {p = 1; fpr = ""; grip = ""; next}
        $1 == "sub" {p = 0}
        p && $1 == "fpr" && fpr == "" {fpr = $10; next}
        p && $1 == "grp" && grip == "" {grip = $10; next}
        p && $1 == "uid" {
            p = 0; f = d "/" grip ".key"
            if ((getline line < f) > 0) {close(f); email = ""; if (match($10, /<[^>]*>/)) email = substr($10, RSTART + 1, RLENGTH - 2); print fpr, email}
        }'
}
own_fpr() { own_keys "$1" | awk 'NR == 1 {print $1}'; }  # home
ensure_key() {  # name uid -> KEY_FPR
    local home="$GNUPG/$1" uid=$2 old="$RUN/gnupg/$1"
    KEY_FPR=$(own_fpr "$home")
    [ -n "$KEY_FPR" ] && return 0
    # never replace a keyring that holds secret keys, even ones this script cannot make sense of
    [ -z "$(ls -A "$home/private-keys-v1.d" 2>/dev/null)" ] \
        || fail "$home holds secret keys but none with a public key I can use: move it away and run me again"
    rm -rf "$home.new"
    if [ -n "$(own_fpr "$old")" ]; then
        # a set-up from before the store: keep this clone's keyring (its fingerprints are pinned in configs in use)
        cp -a "$old" "$home.new"
        find "$home.new" -type s -delete      # the old agent's sockets
        echo "kept the $1 keyring from $old" >>"$LOG"
    else
        # made aside and moved in whole, so an interrupted run never leaves a key without its encryption subkey
        install -d -m 0700 "$home.new"
        quiet G "$home.new" --pinentry-mode loopback --passphrase '' --quick-gen-key "$uid" ed25519 sign never
        quiet G "$home.new" --pinentry-mode loopback --passphrase '' --quick-add-key "$(own_fpr "$home.new")" \
            cv25519 encr never
        gpgconf --homedir "$home.new" --kill all >/dev/null 2>&1 || true
    fi
    chmod 0700 "$home.new"
    rm -rf "$home"
    mv "$home.new" "$home"
    KEY_FPR=$(own_fpr "$home")
    [ -n "$KEY_FPR" ] || fail "no usable key in $home after making it (see $LOG)"
}
# import a public key into a keyring, unless it is there (public keys need no agent)
import_once() {  # from_home to_home fpr
    G "$2" --no-autostart --list-keys "$3" >/dev/null 2>&1 \
        || G "$1" --no-autostart --export "$3" | quiet G "$2" --no-autostart --import
}
# certify (locally) a key in a keyring, once: python-gnupg cannot encrypt to an uncertified key
lsign_once() {  # home signer_fpr key_fpr
    G "$1" --no-autostart --with-colons --check-sigs "$3" 2>/dev/null \
        | awk -F: -v k="${2: -16}" '$1 == "sig" && $5 == k {f = 1} END {exit !f}' && return 0
    AGENT_USED=1
    quiet G "$1" --pinentry-mode loopback --passphrase '' -u "$2" --quick-lsign-key "$3"
}
ensure_key observatory "CSP Observatory (demo key) <observatory@csp-observatory.invalid>"
OBS_FPR=$KEY_FPR

declare -A PARTNER_FPR PARTNER_HOME
shared=()
for p in "${PARTNERS[@]}"; do
    case "$p" in observatory|partners) fail "partner id $p is the name of a keyring in $GNUPG: choose another";; esac
    if [ -d "$GNUPG/$p" ] || [ -n "$(own_fpr "$RUN/gnupg/$p")" ]; then
        ensure_key "$p" "$p partner (demo key) <$p@csp-observatory.invalid>"
        PARTNER_FPR[$p]=$KEY_FPR; PARTNER_HOME[$p]="$GNUPG/$p"
        USED_HOMES+=("$GNUPG/$p")
    else
        shared+=("$p")
    fi
done
if [ "${#shared[@]}" -gt 0 ]; then
    demo_key_params() {  # partner ids -> a gpg --generate-key parameter file, one signing key each
        local p
        for p in "$@"; do
            printf '%%no-protection\nKey-Type: eddsa\nKey-Curve: ed25519\nKey-Usage: sign\nName-Real: %s\n' \
                "$p partner (demo key)"
            printf 'Name-Email: %s@csp-observatory.invalid\nExpire-Date: 0\n%%commit\n' "$p"
        done
    }
    declare -A HAVE
    while read -r fpr email; do HAVE[${email%@csp-observatory.invalid}]=$fpr; done < <(own_keys "$PARTNERS_HOME")
    missing=()
    for p in "${shared[@]}"; do [ -n "${HAVE[$p]:-}" ] || missing+=("$p"); done
    if [ "${#missing[@]}" -gt 0 ]; then
        # the first time, made aside and moved in whole; later, a new schema's partner is added in place (each key
        # is one signing key, complete on its own)
        target=$PARTNERS_HOME
        if [ ! -d "$PARTNERS_HOME" ]; then rm -rf "$PARTNERS_HOME.new"; install -d -m 0700 "$PARTNERS_HOME.new"; target="$PARTNERS_HOME.new"; fi
        demo_key_params "${missing[@]}" | quiet G "$target" --pinentry-mode loopback --generate-key
        AGENT_USED=1
        if [ "$target" != "$PARTNERS_HOME" ]; then
            # its agent goes with the name it was started for: a moved socket would lead to an agent that no
            # longer finds the keys
            gpgconf --homedir "$target" --kill all >/dev/null 2>&1 || true
            find "$target" -type s -delete
            mv "$target" "$PARTNERS_HOME"
        fi
        while read -r fpr email; do HAVE[${email%@csp-observatory.invalid}]=$fpr; done < <(own_keys "$PARTNERS_HOME")
    fi
    for p in "${shared[@]}"; do
        [ -n "${HAVE[$p]:-}" ] || fail "no demo key for $p in $PARTNERS_HOME after making it (see $LOG)"
        PARTNER_FPR[$p]=${HAVE[$p]}; PARTNER_HOME[$p]=$PARTNERS_HOME
    done
    USED_HOMES+=("$PARTNERS_HOME")
fi
# Every partner keyring knows the observatory's key and has certified it, so a partner can encrypt to it (the
# partner guide has partners do the same). The partners' keys reach the observatory's keyring by onboarding.
for home in "${USED_HOMES[@]:1}"; do
    import_once "$OBS_HOME" "$home" "$OBS_FPR"
    lsign_once "$home" "$(own_fpr "$home")" "$OBS_FPR"
done
# The agents this run started (to make or certify keys) go: set-up leaves no daemon of its own behind. A run
# that only reads the keyrings starts none and stops none (another clone's tests may be using them).
if [ "$AGENT_USED" -eq 1 ]; then
    for home in "${USED_HOMES[@]}"; do
        gpgconf --homedir "$home" --kill all >/dev/null 2>&1 || true
    done
fi

# Secrets a set-up from before the store left in this clone: copied into the store above (or superseded by it)
# and no longer named by any config here, so they go: one copy per machine.
for legacy in "$RUN/keys" "$RUN/gnupg"; do
    [ -e "$legacy" ] || continue
    for home in "$legacy"/*/; do gpgconf --homedir "$home" --kill all >/dev/null 2>&1 || true; done
    rm -rf "$legacy"
    echo "removed $legacy: the machine's secrets live in $STORE" >>"$LOG"
done

# ---------------------------------------------------------------- partners (scripts/partner)
step "partners"
# What scripts/partner needs to know about this machine; it reads nothing else of set-up's.
replace_if_changed "$SITE" 0644 root:root <<EOF || true
# written by scripts/setup.sh: this machine, for scripts/partner (docs/ONBOARDING.md); re-run set-up to change it
accounts: system
registry_dir: $REGISTRY
authorized_keys_dir: $ETC/authorized_keys
observatory_gnupg_home: $OBS_HOME
observatory_fingerprint: $OBS_FPR
observatory_public_key: $ETC/observatory.asc
partner_group: $PARTNER_GROUP
observatory_user: $OBS_USER
observatory_group: $OBS_USER
folders: [$(IFS=,; echo "${PARTNER_FOLDERS[*]}" | sed 's/,/, /g')]
sftp_trees:
  - {root: $SFTP_ROOT, port: $SSHD_PORT}
  - {root: $TEST_SFTP_ROOT, port: $TEST_SSHD_PORT}
sftp_host: 127.0.0.1
sftp_port: $SSHD_PORT
host_key: $HOST_KEY.pub
EOF
# Onboard every demo partner with the same command an engineer runs for a real one: accounts, folders, keys,
# registry entries. It changes nothing when they are already onboarded, and leaves removed ones removed. Airflow
# comes at the end, once its database is there.
ONBOARD_DIR=$(mktemp -d "$RUN/.onboard.XXXXXX")
trap 'rc=$?; rm -rf "$ONBOARD_DIR"; (exit $rc); on_exit' EXIT
for p in "${PARTNERS[@]}"; do
    G "${PARTNER_HOME[$p]}" --no-autostart --armor --export "${PARTNER_FPR[$p]}" >"$ONBOARD_DIR/$p.asc"
    cat <<EOF
- id: $p
  ssh_key: $KEYS/${p}_ed25519.pub
  gpg_key: $ONBOARD_DIR/$p.asc
  feeds: [${FEEDS_OF[$p]}]
  contact: data-quality@$p.example (demo partner)
EOF
done >"$ONBOARD_DIR/partners.yaml"
quiet env PYTHONPATH="$REPO/plugins" CSP_SITE="$SITE" "$REPO/scripts/partner" apply --keep-removed --no-airflow \
    "$ONBOARD_DIR/partners.yaml" || fail "onboarding the demo partners failed (see $LOG)"
rm -rf "$ONBOARD_DIR"
trap on_exit EXIT
# Each demo partner's feeds under a demo information sharing agreement (marked demo; docs/GOVERNANCE.md): without a
# current one a feed's supplies are refused (guidance 2.2). Agreements already registered, real or demo, are kept.
quiet env PYTHONPATH="$REPO/plugins" CSP_AGREEMENTS_DIR="$ETC/agreements" "$REPO/scripts/agreements" demo \
    || fail "registering the demo partners' information sharing agreements failed (see $LOG)"

# ---------------------------------------------------------------- sshd config
# No partner is named here: the partners' group is jailed in <tree>/<user>, so onboarding never rewrites this file.
sshd_config() {
    cat <<EOF
# csp-observatory's own sshd: SFTP only, key auth only (written by scripts/setup.sh; edits are overwritten)
Port $SSHD_PORT
Port $TEST_SSHD_PORT
ListenAddress 127.0.0.1
HostKey $HOST_KEY
PidFile $SSHD_PIDFILE
UsePAM no
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
PermitEmptyPasswords no
AuthorizedKeysFile $ETC/authorized_keys/%u
AllowGroups $OBS_USER $PARTNER_GROUP
StrictModes yes
AllowTcpForwarding no
AllowAgentForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitTunnel no
PermitTTY no
PermitUserRC no
GatewayPorts no
LogLevel INFO
Subsystem sftp internal-sftp -u 0007
EOF
    # port $SSHD_PORT serves the demo's tree, port $TEST_SSHD_PORT the tests' twin of it: same users, same keys
    local port root
    for port in "$SSHD_PORT" "$TEST_SSHD_PORT"; do
        root=$SFTP_ROOT
        [ "$port" = "$TEST_SSHD_PORT" ] && root=$TEST_SFTP_ROOT
        cat <<EOF

# port $port, tree $root
# partners (scripts/partner puts them in $PARTNER_GROUP): each jailed in its own folder
Match Group $PARTNER_GROUP LocalPort $port
    ChrootDirectory $root/%u
    ForceCommand internal-sftp -u 0007
    AllowTcpForwarding no
    AllowAgentForwarding no
    X11Forwarding no
    PermitTunnel no
# the observatory: sees every partner's folder
Match User $OBS_USER LocalPort $port
    ChrootDirectory $root
    ForceCommand internal-sftp -u 0007
    AllowTcpForwarding no
    AllowAgentForwarding no
    X11Forwarding no
    PermitTunnel no
EOF
    done
}
NEW_CONFIG="$ETC/sshd_config.new"
sshd_config >"$NEW_CONFIG"
quiet /usr/sbin/sshd -t -f "$NEW_CONFIG" || fail "the generated sshd config does not validate (see $LOG)"
sshd_changed=0
if ! cmp -s "$NEW_CONFIG" "$SSHD_CONFIG"; then mv -f "$NEW_CONFIG" "$SSHD_CONFIG"; sshd_changed=1; else rm -f "$NEW_CONFIG"; fi
chmod 0644 "$SSHD_CONFIG"

sshd_pid() {
    local pid
    [ -f "$SSHD_PIDFILE" ] || return 1
    pid=$(cat "$SSHD_PIDFILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    # the pid must still be our sshd, not a recycled pid
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$SSHD_CONFIG" || return 1
    echo "$pid"
}
if pid=$(sshd_pid) && [ "$sshd_changed" -eq 1 ]; then
    # SIGHUP: sshd re-executes itself with the new config; sessions in progress (other clones' tests) go on
    kill -HUP "$pid"
    sleep 0.5
fi
if ! sshd_pid >/dev/null; then
    quiet /usr/sbin/sshd -f "$SSHD_CONFIG" -E /var/log/csp-observatory-sshd.log
fi
HOST_KEY_PUB=$(cut -d' ' -f1,2 "$HOST_KEY.pub")
# Wait until both ports answer with the host key we pin.
for port in "$SSHD_PORT" "$TEST_SSHD_PORT"; do
    served=""
    for _ in $(seq 50); do
        served=$(ssh-keyscan -T 2 -t ed25519 -p "$port" 127.0.0.1 2>/dev/null | awk '{print $2, $3}') || true
        [ -n "$served" ] && break
        sleep 0.1
    done
    [ "$served" = "$HOST_KEY_PUB" ] || fail "sshd on 127.0.0.1:$port serves '${served:-nothing}', not $HOST_KEY.pub (see /var/log/csp-observatory-sshd.log)"
done

# ---------------------------------------------------------------- config files
step "config"
# The demo's config in .run/, the tests' twin in .run/test/: the same secrets, the tests' own database and SFTP tree.
install -d -m 0700 "$RUN/staging" "$RUN/test" "$RUN/test/staging"
install -d -m 0755 "$RUN/reports" "$RUN/test/reports"
AIRFLOW_HOME="$RUN/airflow"
install -d -m 0700 "$AIRFLOW_HOME"
partner_args=()
for p in "${PARTNERS[@]}"; do partner_args+=("$p=${PARTNER_FPR[$p]}=${PARTNER_HOME[$p]}"); done
(umask 077
 RUN="$RUN" STORE="$STORE" KEYS="$KEYS" GNUPG="$GNUPG" HOST_KEY_PUB="$HOST_KEY_PUB" OBS_USER="$OBS_USER" \
 OBS_FPR="$OBS_FPR" AIRFLOW_HOME="$AIRFLOW_HOME" DEMO_LOGIN="$DEMO_LOGIN" DEMO_PW="$DEMO_PW" REGISTRY="$REGISTRY" \
 DEMO_PARTNER="$DEMO_PARTNER" \
 DATABASE_URL="$DATABASE_URL" ADMIN_URL="$ADMIN_URL" ANALYST_URL="$ANALYST_URL" SFTP_PORT="$SSHD_PORT" \
 TEST_DATABASE_URL="$TEST_DATABASE_URL" TEST_ADMIN_URL="$TEST_ADMIN_URL" TEST_ANALYST_URL="$TEST_ANALYST_URL" \
 TEST_SFTP_PORT="$TEST_SSHD_PORT" \
 "$VPY" - "${partner_args[@]}" <<'PY'
import os
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

env = os.environ
run, keys, gnupg = Path(env["RUN"]), Path(env["KEYS"]), Path(env["GNUPG"])
# id -> (fingerprint, gnupg home) of every demo partner; the demo and most tests drop files as DEMO_PARTNER
partners = {pid: (fpr, home) for pid, fpr, home in (a.split("=", 2) for a in sys.argv[1:])}
first = env["DEMO_PARTNER"]


def documents(folder: Path, prefix: str) -> tuple[dict, dict]:
    """observatory.yaml and demo.yaml for one set of services ("" the demo's, "TEST_" the tests')."""
    settings = {
        "database_url": env[prefix + "DATABASE_URL"],
        "sftp_host": "127.0.0.1",
        "sftp_port": int(env[prefix + "SFTP_PORT"]),
        "sftp_user": env["OBS_USER"],
        "sftp_key_file": str(keys / f"{env['OBS_USER']}_ed25519"),
        "sftp_host_key": env["HOST_KEY_PUB"],
        "sftp_root": "",
        "gnupg_home": str(gnupg / "observatory"),
        "staging_dir": str(folder / "staging"),
        "reports_dir": str(folder / "reports"),
        # partners (their pinned keys and feeds) are in the machine's registry, written by scripts/partner
        "partners_dir": env["REGISTRY"],
    }
    analyst = urlsplit(env[prefix + "ANALYST_URL"])
    tls = {k: v[0] for k, v in parse_qs(analyst.query).items() if k in ("sslmode", "sslrootcert")}
    demo = {
        "partner": first,
        "partner_sftp_user": first,
        "partner_ssh_key": str(keys / f"{first}_ed25519"),
        "partner_gnupg_home": partners[first][1],
        "partner_fingerprint": partners[first][0],
        "observatory_fingerprint": env["OBS_FPR"],
        "analyst_url": env[prefix + "ANALYST_URL"],
        "analyst_host": analyst.hostname,
        "analyst_port": analyst.port or 5432,
        "analyst_database": analyst.path.lstrip("/"),
        # the demo's named person (scripts/people), not a shared login
        "analyst_user": env["DEMO_LOGIN"],
        "analyst_password": env["DEMO_PW"],
        "analyst_sslmode": tls.get("sslmode", "prefer"),
        "analyst_sslrootcert": tls.get("sslrootcert"),
        "admin_url": env[prefix + "ADMIN_URL"],
        "airflow_home": env["AIRFLOW_HOME"],
        "secrets_dir": env["STORE"],
        "partners": {
            pid: {"sftp_user": pid, "ssh_key": str(keys / f"{pid}_ed25519"), "gnupg_home": home, "fingerprint": fpr}
            for pid, (fpr, home) in partners.items()
        },
    }
    return settings, demo


for folder, prefix in ((run, ""), (run / "test", "TEST_")):
    settings, demo = documents(folder, prefix)
    for name, doc in (("observatory.yaml", settings), ("demo.yaml", demo)):
        text = "# written by scripts/setup.sh; re-run it rather than editing\n" + yaml.safe_dump(doc, sort_keys=False)
        target = folder / name
        if target.exists() and target.read_text(encoding="utf-8") == text:
            continue                      # unchanged: leave it alone for the processes reading it
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(target)
PY
)
# The settings must load through the project's own reader.
for cfg in "$RUN/observatory.yaml" "$RUN/test/observatory.yaml"; do
    quiet env CSP_CONFIG="$cfg" PYTHONPATH="$REPO/plugins" "$VPY" -c \
        'from csp_observatory.config import load_settings; s = load_settings(); print("config ok:", s.sftp_user, sorted(s.partners))'
done

# ---------------------------------------------------------------- Airflow (SQLite metadata, for dag.test())
step "airflow"
# The Airflow Connections csp_sftp and csp_postgis the feed DAGs reach SFTP and PostGIS through (hooks.py), made
# from the demo's settings; they hold the loader's password, so the file stays 0600.
CONN_ENV=$(env CSP_CONFIG="$RUN/observatory.yaml" PYTHONPATH="$REPO/plugins" "$VPY" -m csp_observatory.connections env) \
    || fail "could not make the Airflow Connections from $RUN/observatory.yaml"
# replaced whole and only when it changes: a test run in this clone may be sourcing it right now
replace_if_changed "$RUN/airflow.env" 0600 root:root <<EOF || true
# written by scripts/setup.sh: source it before running airflow or pytest from this clone
export AIRFLOW_HOME='$AIRFLOW_HOME'
export AIRFLOW__CORE__DAGS_FOLDER='$REPO/dags'
export AIRFLOW__CORE__PLUGINS_FOLDER='$REPO/plugins'
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export CSP_CONFIG='$RUN/observatory.yaml'
export GX_ANALYTICS_ENABLED=false
export PYTHONPATH='$REPO/plugins:$REPO'\${PYTHONPATH:+:\$PYTHONPATH}
export PATH='$VENV/bin':"\$PATH"
$CONN_ENV
EOF
AIRFLOW_VERSION=$("$VPY" -c 'import importlib.metadata as m; print(m.version("apache-airflow-core"))')
MIGRATED="$AIRFLOW_HOME/.csp-migrated"
if [ ! -f "$AIRFLOW_HOME/airflow.db" ]; then
    # a new metadata DB: no feed has been enabled in it yet (scripts/partner keeps this note in the Airflow home)
    rm -f "$AIRFLOW_HOME/csp-observatory-enabled-feeds"
fi
if [ ! -f "$AIRFLOW_HOME/airflow.db" ] || [ "$(cat "$MIGRATED" 2>/dev/null)" != "$AIRFLOW_VERSION" ]; then
    (set +u; . "$RUN/airflow.env"; quiet "$VENV/bin/airflow" db migrate)
    echo "$AIRFLOW_VERSION" >"$MIGRATED"
fi
# The onboarded partners' feeds, unpaused in this clone's Airflow once (the first time it sees them; after that
# their pause state is the engineers'). A failure leaves the DAGs paused, and set-up says so, but goes on.
AIRFLOW_NOTE=""
if ! (set +u; . "$RUN/airflow.env"; quiet env CSP_SITE="$SITE" "$REPO/scripts/partner" airflow-sync); then
    AIRFLOW_NOTE="  WARNING   the onboarded feeds' DAGs could not be unpaused in Airflow: see $LOG, then run scripts/partner airflow-sync"
fi

# ---------------------------------------------------------------- summary
cat <<EOF
csp-observatory is set up ($(( $(date +%s) - START )) s; log: $LOG)
  PostGIS   $DB_MODE (roles csp_loader, csp_analyst, csp_engineer, csp_personal_reader; TLS only over TCP)
  people    $DEMO_LOGIN (Demo Analyst, profile analyst); add people with scripts/people (docs/GOVERNANCE.md)
  SFTP      sftp -P $SSHD_PORT -i $KEYS/${OBS_USER}_ed25519 $OBS_USER@127.0.0.1
  partners  ${#PARTNERS[@]} demo partners onboarded (scripts/partner list; $DEMO_PARTNER is the demo's)
  GnuPG     observatory $OBS_FPR; $DEMO_PARTNER ${PARTNER_FPR[$DEMO_PARTNER]}
  secrets   $STORE (this machine's, made once and kept; every clone uses them)
  config    $RUN/observatory.yaml, $RUN/demo.yaml, $RUN/airflow.env (Airflow $AIRFLOW_VERSION)
  tests     $RUN/test/: their own database and SFTP tree (port $TEST_SSHD_PORT, $TEST_SFTP_ROOT)
EOF
[ -z "$CHROMIUM_NOTE" ] || echo "$CHROMIUM_NOTE"
[ -z "$AIRFLOW_NOTE" ] || echo "$AIRFLOW_NOTE"
