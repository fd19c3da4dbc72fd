#!/usr/bin/env bash
# Install and start everything csp-observatory needs on a fresh Debian 12 / Ubuntu machine, as root.
#
# Idempotent: a second run (or a run from another clone on the same machine) finds the services running,
# keeps the machine-wide pieces (PostGIS cluster, sshd, SFTP tree, host key) and re-keys the parts that belong
# to this clone (database passwords, SSH client keys, config files under <repo>/.run).
#
# Environment:
#   CSP_DATABASE_URL  use this PostGIS database instead of the project's own cluster on 127.0.0.1:5433
#                     (its user needs CREATEROLE to make the roles; the extension needs a superuser or a
#                     trusted-extension setup)
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
OBS_USER=cspobs
PARTNERS=(police)               # partner ids; each is also its SFTP user name (see include/schemas/*.yaml)
PARTNER_FOLDERS=(inbox quarantine processed reports)

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

apt_install postgresql openssh-server openssh-client gnupg ca-certificates util-linux
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
want_stamp="$(sha256sum "$REPO/requirements.lock" | cut -d' ' -f1) $("$PY" -V 2>&1)"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null \
   || ! python_ok "$VENV/bin/python"; then
    rm -rf "$VENV"
    quiet "$PY" -m venv "$VENV"
fi
if [ ! -f "$LOCK_STAMP" ] || [ "$(cat "$LOCK_STAMP")" != "$want_stamp" ]; then
    quiet "$VENV/bin/python" -m pip install --disable-pip-version-check -q uv || true
    if ! { [ -x "$VENV/bin/uv" ] && quiet "$VENV/bin/uv" pip install --python "$VENV/bin/python" \
                                         -r "$REPO/requirements.lock"; }; then
        echo "uv failed or is unavailable: falling back to pip" >>"$LOG"
        quiet "$VENV/bin/python" -m pip install --disable-pip-version-check -r "$REPO/requirements.lock"
    fi
    echo "$want_stamp" >"$LOCK_STAMP"
fi
VPY="$VENV/bin/python"

# ---------------------------------------------------------------- PostGIS
step "PostGIS"
newpw() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
LOADER_PW=$(newpw)
ANALYST_PW=$(newpw)
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
SELECT format('CREATE ROLE %I LOGIN', r)
  FROM unnest(ARRAY['csp_loader', 'analyst']) AS r
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) \gexec
ALTER ROLE csp_loader WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'loader_pw';
ALTER ROLE analyst WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'analyst_pw';
GRANT csp_analyst TO analyst;
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

if [ -n "${CSP_DATABASE_URL:-}" ]; then
    # An existing PostGIS: make the extension and the roles there, and use the URL as given.
    quiet psql -X -q "$CSP_DATABASE_URL" -v loader_pw="$LOADER_PW" -v analyst_pw="$ANALYST_PW" <<<"$ROLES_SQL"
    quiet psql -X -q "$CSP_DATABASE_URL" <<<"$DB_SQL"
    DATABASE_URL=$CSP_DATABASE_URL
    ADMIN_URL=$CSP_DATABASE_URL
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
    replace_if_changed "$PG_ETC/conf.d/csp-observatory.conf" 0644 postgres:postgres <<EOF && restart_pg=1 || true
# written by csp-observatory scripts/setup.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
password_encryption = 'scram-sha-256'
EOF
    # TCP needs a password (scram); on the socket only root and postgres may become postgres (for setup
    # and the tests' admin connection), everyone else is matched by peer name.
    replace_if_changed "$PG_ETC/pg_hba.conf" 0640 postgres:postgres <<'EOF' && reload_pg=1 || true
# written by csp-observatory scripts/setup.sh
local   all   postgres                    peer map=csp_admin
local   all   all                         peer
host    all   all        127.0.0.1/32     scram-sha-256
host    all   all        ::1/128          scram-sha-256
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
    quiet pgsu -d postgres -v loader_pw="$LOADER_PW" -v analyst_pw="$ANALYST_PW" <<<"$ROLES_SQL"
    if [ -z "$(pgsu -d postgres -tA -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ]; then
        quiet pgsu -d postgres -c "CREATE DATABASE $PG_DB OWNER csp_loader"
    fi
    quiet pgsu -d postgres -c "ALTER DATABASE $PG_DB OWNER TO csp_loader"
    quiet pgsu -d "$PG_DB" <<<"$DB_SQL"
    DATABASE_URL="postgresql://csp_loader:$LOADER_PW@127.0.0.1:$PG_PORT/$PG_DB"
    ADMIN_URL="postgresql://postgres@/$PG_DB?host=/var/run/postgresql&port=$PG_PORT"
    DB_MODE="cluster $PG_VER/$PG_CLUSTER on 127.0.0.1:$PG_PORT"
fi
# The analyst's URL: the database's host, port and name with the analyst's credentials.
ANALYST_URL=$("$VPY" - "$DATABASE_URL" "$ANALYST_PW" <<'PY'
import sys
from urllib.parse import urlsplit, urlunsplit
u = urlsplit(sys.argv[1])
host = u.hostname or "127.0.0.1"
netloc = f"analyst:{sys.argv[2]}@{host}" + (f":{u.port}" if u.port else "")
print(urlunsplit((u.scheme, netloc, u.path, "", "")))
PY
)
# Prove the loader's TCP login works before writing it into the config.
quiet psql -X -q "$DATABASE_URL" -c "SELECT postgis_version()"

# ---------------------------------------------------------------- SFTP (the project's own sshd)
step "sshd"
mkdir -p -m 755 /run/sshd
install -d -o root -g root -m 0755 "$ETC" "$ETC/authorized_keys" /srv/csp-observatory "$SFTP_ROOT"
[ -f "$HOST_KEY" ] || quiet ssh-keygen -q -t ed25519 -N '' -C "csp-observatory sftp host key" -f "$HOST_KEY"
chmod 0600 "$HOST_KEY"

getent group "$OBS_USER" >/dev/null || quiet groupadd --system "$OBS_USER"
id -u "$OBS_USER" >/dev/null 2>&1 \
    || quiet useradd --system -g "$OBS_USER" -d "$SFTP_ROOT" -M -s /usr/sbin/nologin "$OBS_USER"
# With UsePAM no, an account whose password field is "!" is locked and refuses even key logins.
usermod -p '*' "$OBS_USER"
for p in "${PARTNERS[@]}"; do
    if ! id -u "$p" >/dev/null 2>&1; then
        if getent group "$p" >/dev/null; then grp=(-g "$p"); else grp=(--user-group); fi
        quiet useradd --system "${grp[@]}" -d "$SFTP_ROOT/$p" -M -s /usr/sbin/nologin "$p"
    fi
    # in the observatory's group, so the partner can read the reports the observatory writes (0660, group cspobs)
    usermod -a -G "$OBS_USER" "$p"
    usermod -p '*' "$p"
    # the chroot: every component root-owned, not group/world writable; the partner writes in its subfolders
    install -d -o root -g root -m 0755 "$SFTP_ROOT/$p"
    for sub in "${PARTNER_FOLDERS[@]}"; do
        install -d "$SFTP_ROOT/$p/$sub"
        chown "$p:$OBS_USER" "$SFTP_ROOT/$p/$sub"
        chmod 2770 "$SFTP_ROOT/$p/$sub"
    done
done

# SSH client keys: one pair per clone, in .run/keys; their public halves replace the authorized keys.
KEYS="$RUN/keys"
install -d -m 0700 "$KEYS"
for u in "$OBS_USER" "${PARTNERS[@]}"; do
    k="$KEYS/${u}_ed25519"
    [ -f "$k" ] || quiet ssh-keygen -q -t ed25519 -N '' -C "$u@csp-observatory" -f "$k"
    chmod 0600 "$k" "$k.pub"
    install -o root -g root -m 0644 "$k.pub" "$ETC/authorized_keys/$u"
done

ALLOW_USERS="$OBS_USER ${PARTNERS[*]}"
sshd_config() {
    cat <<EOF
# csp-observatory's own sshd: SFTP only, key auth only (written by scripts/setup.sh; edits are overwritten)
ListenAddress 127.0.0.1
Port $SSHD_PORT
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
AllowUsers $ALLOW_USERS
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

# partners: each jailed in its own folder
EOF
    for p in "${PARTNERS[@]}"; do
        cat <<EOF
Match User $p
    ChrootDirectory $SFTP_ROOT/%u
    ForceCommand internal-sftp -u 0007
    AllowTcpForwarding no
    AllowAgentForwarding no
    X11Forwarding no
    PermitTunnel no
EOF
    done
    cat <<EOF

# the observatory: sees every partner's folder
Match User $OBS_USER
    ChrootDirectory $SFTP_ROOT
    ForceCommand internal-sftp -u 0007
    AllowTcpForwarding no
    AllowAgentForwarding no
    X11Forwarding no
    PermitTunnel no
EOF
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
    kill "$pid"
    for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
fi
if ! sshd_pid >/dev/null; then
    quiet /usr/sbin/sshd -f "$SSHD_CONFIG" -E /var/log/csp-observatory-sshd.log
fi
HOST_KEY_PUB=$(cut -d' ' -f1,2 "$HOST_KEY.pub")
# Wait until it answers with the host key we pin.
served=""
for _ in $(seq 50); do
    served=$(ssh-keyscan -T 2 -t ed25519 -p "$SSHD_PORT" 127.0.0.1 2>/dev/null | awk '{print $2, $3}') || true
    [ -n "$served" ] && break
    sleep 0.1
done
[ "$served" = "$HOST_KEY_PUB" ] || fail "sshd on 127.0.0.1:$SSHD_PORT serves '${served:-nothing}', not $HOST_KEY.pub (see /var/log/csp-observatory-sshd.log)"

# ---------------------------------------------------------------- GnuPG demo keyrings
step "gnupg"
GNUPG="$RUN/gnupg"
OBS_HOME="$GNUPG/observatory"
install -d -m 0700 "$GNUPG" "$OBS_HOME"
G() { local home=$1; shift; gpg --batch --no-tty --quiet --homedir "$home" "$@"; }
secret_fpr() { G "$1" --with-colons --list-secret-keys 2>/dev/null | awk -F: '$1 == "sec" {s = 1} s && $1 == "fpr" {print $10; exit}'; }
ensure_key() {  # home uid -> prints the primary fingerprint
    local home=$1 uid=$2 fpr
    fpr=$(secret_fpr "$home")
    if [ -z "$fpr" ]; then
        quiet G "$home" --pinentry-mode loopback --passphrase '' --quick-gen-key "$uid" ed25519 sign never
        fpr=$(secret_fpr "$home")
        quiet G "$home" --pinentry-mode loopback --passphrase '' --quick-add-key "$fpr" cv25519 encr never
    fi
    echo "$fpr"
}
# certify (locally) a key in a keyring, once: python-gnupg cannot encrypt to an uncertified key
lsign_once() {  # home signer_fpr key_fpr
    G "$1" --with-colons --check-sigs "$3" 2>/dev/null | awk -F: -v k="${2: -16}" '$1 == "sig" && $5 == k {f = 1} END {exit !f}' \
        || quiet G "$1" --pinentry-mode loopback --passphrase '' --quick-lsign-key "$3"
}
OBS_FPR=$(ensure_key "$OBS_HOME" "CSP Observatory (demo key) <observatory@csp-observatory.invalid>")
declare -A PARTNER_FPR
for p in "${PARTNERS[@]}"; do
    home="$GNUPG/$p"
    install -d -m 0700 "$home"
    fpr=$(ensure_key "$home" "$p partner (demo key) <$p@csp-observatory.invalid>")
    PARTNER_FPR[$p]=$fpr
    G "$home" --export "$fpr" | quiet G "$OBS_HOME" --import
    G "$OBS_HOME" --export "$OBS_FPR" | quiet G "$home" --import
    lsign_once "$home" "$fpr" "$OBS_FPR"
    lsign_once "$OBS_HOME" "$OBS_FPR" "$fpr"
    gpgconf --homedir "$home" --kill all >/dev/null 2>&1 || true
done
gpgconf --homedir "$OBS_HOME" --kill all >/dev/null 2>&1 || true

# ---------------------------------------------------------------- config files
step "config"
install -d -m 0700 "$RUN/staging"
install -d -m 0755 "$RUN/reports"
AIRFLOW_HOME="$RUN/airflow"
install -d -m 0700 "$AIRFLOW_HOME"
partner_args=()
for p in "${PARTNERS[@]}"; do partner_args+=("$p=${PARTNER_FPR[$p]}"); done
(umask 077
 REPO="$REPO" RUN="$RUN" DATABASE_URL="$DATABASE_URL" ADMIN_URL="$ADMIN_URL" ANALYST_URL="$ANALYST_URL" \
 ANALYST_PW="$ANALYST_PW" HOST_KEY_PUB="$HOST_KEY_PUB" SFTP_PORT="$SSHD_PORT" OBS_USER="$OBS_USER" \
 OBS_FPR="$OBS_FPR" AIRFLOW_HOME="$AIRFLOW_HOME" \
 "$VPY" - "${partner_args[@]}" <<'PY'
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

env = os.environ
run = Path(env["RUN"])
partners = dict(a.split("=", 1) for a in sys.argv[1:])
settings = {
    "database_url": env["DATABASE_URL"],
    "sftp_host": "127.0.0.1",
    "sftp_port": int(env["SFTP_PORT"]),
    "sftp_user": env["OBS_USER"],
    "sftp_key_file": str(run / "keys" / f"{env['OBS_USER']}_ed25519"),
    "sftp_host_key": env["HOST_KEY_PUB"],
    "sftp_root": "",
    "gnupg_home": str(run / "gnupg" / "observatory"),
    "staging_dir": str(run / "staging"),
    "reports_dir": str(run / "reports"),
    "partners": {
        pid: {"sftp_user": pid, "signing_fingerprint": fpr,
              "contact": f"data-quality@{pid}.example (demo partner)"}
        for pid, fpr in partners.items()
    },
}
first = next(iter(partners))
analyst = urlsplit(env["ANALYST_URL"])
demo = {
    "partner": first,
    "partner_sftp_user": first,
    "partner_ssh_key": str(run / "keys" / f"{first}_ed25519"),
    "partner_gnupg_home": str(run / "gnupg" / first),
    "partner_fingerprint": partners[first],
    "observatory_fingerprint": env["OBS_FPR"],
    "analyst_url": env["ANALYST_URL"],
    "analyst_host": analyst.hostname,
    "analyst_port": analyst.port or 5432,
    "analyst_database": analyst.path.lstrip("/"),
    "analyst_user": "analyst",
    "analyst_password": env["ANALYST_PW"],
    "admin_url": env["ADMIN_URL"],
    "airflow_home": env["AIRFLOW_HOME"],
    "partners": {
        pid: {"sftp_user": pid, "ssh_key": str(run / "keys" / f"{pid}_ed25519"),
              "gnupg_home": str(run / "gnupg" / pid), "fingerprint": fpr}
        for pid, fpr in partners.items()
    },
}
for name, doc in (("observatory.yaml", settings), ("demo.yaml", demo)):
    tmp = run / f".{name}.tmp"
    tmp.write_text("# written by scripts/setup.sh; re-run it rather than editing\n"
                   + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    tmp.chmod(0o600)
    tmp.replace(run / name)
PY
)
# The settings must load through the project's own reader.
quiet env CSP_CONFIG="$RUN/observatory.yaml" PYTHONPATH="$REPO/plugins" "$VPY" -c \
    'from csp_observatory.config import load_settings; s = load_settings(); print("config ok:", s.sftp_user, sorted(s.partners))'

# ---------------------------------------------------------------- Airflow (SQLite metadata, for dag.test())
step "airflow"
cat >"$RUN/airflow.env" <<EOF
# written by scripts/setup.sh: source it before running airflow or pytest from this clone
export AIRFLOW_HOME='$AIRFLOW_HOME'
export AIRFLOW__CORE__DAGS_FOLDER='$REPO/dags'
export AIRFLOW__CORE__PLUGINS_FOLDER='$REPO/plugins'
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export CSP_CONFIG='$RUN/observatory.yaml'
export GX_ANALYTICS_ENABLED=false
export PYTHONPATH='$REPO/plugins:$REPO'\${PYTHONPATH:+:\$PYTHONPATH}
export PATH='$VENV/bin':"\$PATH"
EOF
chmod 0600 "$RUN/airflow.env"
AIRFLOW_VERSION=$("$VPY" -c 'import importlib.metadata as m; print(m.version("apache-airflow-core"))')
MIGRATED="$AIRFLOW_HOME/.csp-migrated"
if [ ! -f "$AIRFLOW_HOME/airflow.db" ] || [ "$(cat "$MIGRATED" 2>/dev/null)" != "$AIRFLOW_VERSION" ]; then
    (set +u; . "$RUN/airflow.env"; quiet "$VENV/bin/airflow" db migrate)
    echo "$AIRFLOW_VERSION" >"$MIGRATED"
fi

# ---------------------------------------------------------------- summary
cat <<EOF
csp-observatory is set up ($(( $(date +%s) - START )) s; log: $LOG)
  PostGIS   $DB_MODE (roles csp_loader, csp_analyst, csp_engineer, csp_personal_reader, analyst)
  SFTP      sftp -P $SSHD_PORT -i $KEYS/${OBS_USER}_ed25519 $OBS_USER@127.0.0.1 (partners: ${PARTNERS[*]})
  GnuPG     observatory $OBS_FPR; ${PARTNERS[0]} ${PARTNER_FPR[${PARTNERS[0]}]}
  config    $RUN/observatory.yaml, $RUN/demo.yaml, $RUN/airflow.env (Airflow $AIRFLOW_VERSION)
EOF
