# shellcheck shell=bash
# The audit of every read of personal data (docs/AUDIT.md), sourced by scripts/setup.sh once the cluster, the
# roles and both databases exist: it uses setup.sh's variables (PG_VER, PG_CLUSTER, PG_ETC, PG_PORT, PG_DB,
# PG_TEST_DB, PGCTL, LOG) and functions (apt_install, replace_if_changed, pgsu, quiet, step, fail).
#
# pgaudit's object audit (Debian's postgresql-$PG_VER-pgaudit): a relation is audited when the role named by
# pgaudit.role holds the privilege the statement needs on it. csp_auditor (NOLOGIN, no members) holds SELECT on
# every table and view in the schema personal, now and later, so every statement that reads one (a SELECT, and
# an UPDATE or DELETE whose WHERE reads its columns) is logged with the object's name, by whoever runs it. The
# server writes it as JSON lines (jsonlog), which scripts/access_report reads. Idempotent: a second run changes
# nothing and restarts nothing.

AUDIT_ROLE=csp_auditor
# The audit log: the cluster's whole server log as JSON lines (and its plain text twin), one file per day of the
# year, each overwritten a year later (log_truncate_on_rotation): about twelve months are kept.
AUDIT_LOG_DIR="/var/log/postgresql/$PG_VER-$PG_CLUSTER"

if [ "${DB_MODE:-}" = "CSP_DATABASE_URL" ] || [ -z "${PG_ETC:-}" ]; then
    echo "audit: CSP_DATABASE_URL names an existing PostGIS: its administrator must set up the audit of reads of" \
         "the schema personal there (pgaudit with pgaudit.role = $AUDIT_ROLE, jsonlog; docs/AUDIT.md);" \
         "scripts/access_report --log-dir reads that server's log" >>"$LOG"
elif ! apt_install "postgresql-$PG_VER-pgaudit"; then
    # like Chromium, best effort: set-up goes on, says so, and the audit's tests skip with the reason
    echo "setup.sh: WARNING Debian's postgresql-$PG_VER-pgaudit could not be installed (see $LOG): reads of" \
         "personal data are NOT audited" >&2
    echo "audit: postgresql-$PG_VER-pgaudit could not be installed: the audit is not set up" >>"$LOG"
else
    install -d -o postgres -g postgres -m 0700 "$AUDIT_LOG_DIR"
    audit_restart=0
    replace_if_changed "$PG_ETC/conf.d/csp-audit.conf" 0644 postgres:postgres <<EOF && audit_restart=1 || true
# written by csp-observatory scripts/setup_audit.sh: the audit of reads of personal data (docs/AUDIT.md)
shared_preload_libraries = 'pgaudit'
# object audit only: what csp_auditor may SELECT (the schema personal) is logged, nothing else
pgaudit.role = '$AUDIT_ROLE'
pgaudit.log = 'none'
pgaudit.log_rows = on
# who, when and which relation, never the statement's text: a WHERE clause can hold a person's name
pgaudit.log_statement = off
pgaudit.log_parameter = off
# a log scripts/access_report parses: one JSON object per line (user, dbname, session_id, timestamp, message)
logging_collector = on
log_destination = 'stderr,jsonlog'
log_directory = '$AUDIT_LOG_DIR'
log_filename = 'postgresql-%m-%d.log'
log_file_mode = 0600
log_rotation_age = 1d
log_rotation_size = 0
log_truncate_on_rotation = on
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d session=%c '
EOF
    audit_loaded() { pgsu -d postgres -tA -c "SHOW shared_preload_libraries" 2>/dev/null | grep -qw pgaudit; }
    # restart only when the file changed, or when an earlier run wrote it but the server never loaded it
    if [ "$audit_restart" -eq 1 ] || ! audit_loaded; then
        echo "audit: restarting $PG_VER/$PG_CLUSTER to load pgaudit and the log settings" >>"$LOG"
        quiet "${PGCTL[@]}" restart
    fi
    if ! audit_loaded; then
        # another conf file may set shared_preload_libraries after this one: it must name pgaudit too
        echo "setup.sh: WARNING pgaudit is not in shared_preload_libraries of $PG_VER/$PG_CLUSTER (another file in" \
             "$PG_ETC overrides $PG_ETC/conf.d/csp-audit.conf?): reads of personal data are NOT audited" >&2
        echo "audit: pgaudit not loaded after the restart: the audit is not set up" >>"$LOG"
    else
        quiet pgsu -d postgres <<SQL
\set ON_ERROR_STOP on
SELECT 'CREATE ROLE $AUDIT_ROLE NOLOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$AUDIT_ROLE') \gexec
-- the audit role only marks what is audited: nobody logs in as it or is a member of it
ALTER ROLE $AUDIT_ROLE WITH NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
SQL
        for db in "$PG_DB" "$PG_TEST_DB"; do
            quiet pgsu -d "$db" <<SQL
\set ON_ERROR_STOP on
CREATE EXTENSION IF NOT EXISTS pgaudit;
-- as database.ensure_database makes it (owned by the loader, closed to PUBLIC), if no load has made it yet
CREATE SCHEMA IF NOT EXISTS personal AUTHORIZATION csp_loader;
REVOKE ALL ON SCHEMA personal FROM PUBLIC;
GRANT SELECT ON ALL TABLES IN SCHEMA personal TO $AUDIT_ROLE;
-- tables and views made later: by the loader (every load), or by an administrator
ALTER DEFAULT PRIVILEGES FOR ROLE csp_loader IN SCHEMA personal GRANT SELECT ON TABLES TO $AUDIT_ROLE;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA personal GRANT SELECT ON TABLES TO $AUDIT_ROLE;
SQL
        done
        echo "audit: reads of personal.* in $PG_DB and $PG_TEST_DB are logged to $AUDIT_LOG_DIR (jsonlog)" >>"$LOG"
    fi
fi
