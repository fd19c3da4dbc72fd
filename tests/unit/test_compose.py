"""docker-compose.yaml (production layout) is a valid Compose file and wires Airflow 3 the way it needs.

No Docker engine runs here, so the file is checked against the official compose-spec JSON schema (vendored as
tests/data/compose-spec.json) and against the installed Airflow's own list of configuration options. Partners are
never built in: the SFTP server jails the partners' group and makes their accounts from the registry volume, and
the partner-admin service runs scripts/partner's code against the same volumes (checked with the real
site-file reader, the real sshd -t and the registry format scripts/partner writes).
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
SPEC = REPO / "tests" / "data" / "compose-spec.json"
AIRFLOW_SERVICES = {"airflow-init", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker"}
# sections that come from providers baked into the apache/airflow image, not from airflow-core's config.yml
SECRET_WORDS = ("PASSWORD", "SECRET", "FERNET")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with open(COMPOSE, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _depends(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec["condition"] for name, spec in deps.items()}


def test_vendored_schema_is_the_compose_spec():
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(spec)
    assert spec["title"] == "Compose Specification"
    assert "depends_on" in spec["definitions"]["service"]["properties"]


def test_compose_file_validates_against_the_compose_spec(compose):
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft7Validator(spec).iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_check_catches_a_broken_file(compose):
    # proof the validation above has teeth: an unknown service key and a bad depends_on condition are errors
    spec = json.loads(SPEC.read_text(encoding="utf-8"))
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["restart_on_tuesdays"] = True
    broken["services"]["airflow-worker"]["depends_on"]["redis"]["condition"] = "service_ready"
    assert len(list(jsonschema.Draft7Validator(spec).iter_errors(broken))) >= 2


def test_the_stack_has_every_service(services):
    assert AIRFLOW_SERVICES <= services.keys()
    assert {"redis", "airflow-db", "postgis", "sftp"} <= services.keys()
    # PostGIS's own image with Debian's pgaudit added (docs/AUDIT.md)
    dockerfile = services["postgis"]["build"]["dockerfile_inline"]
    assert dockerfile.startswith("FROM postgis/postgis:15-") and "postgresql-15-pgaudit" in dockerfile


def test_every_depends_on_target_exists_and_waits_properly(services):
    for name, service in services.items():
        for target, condition in _depends(service).items():
            assert target in services, f"{name} depends on {target}, which is not a service"
            assert target != name
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy: it has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is a one-shot job and must not restart"


def test_long_running_services_have_healthchecks(services):
    for name, service in services.items():
        if service.get("restart") != "no":
            assert "healthcheck" in service, f"{name} has no healthcheck"


def test_airflow_runs_3_3_2_with_celery(services):
    pinned = importlib.metadata.version("apache-airflow")
    for name in AIRFLOW_SERVICES:
        service = services[name]
        env = _env(service)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert f"FROM apache/airflow:{pinned}" in service["build"]["dockerfile_inline"], name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://"), name
        assert "@redis:" in env["AIRFLOW__CELERY__BROKER_URL"]
        assert "@airflow-db:" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-api-server:8080/")
    commands = {services[n]["command"] if isinstance(services[n]["command"], str) else " ".join(services[n]["command"])
                for n in AIRFLOW_SERVICES}
    for role in ("api-server", "scheduler", "dag-processor", "triggerer", "celery worker"):
        assert role in commands


def test_every_airflow_service_mounts_dags_plugins_and_include(services):
    for name in AIRFLOW_SERVICES:
        mounts = {v.split(":")[0]: v.split(":")[1] for v in services[name]["volumes"] if isinstance(v, str)}
        assert mounts.get("./dags") == "/opt/airflow/dags", name
        assert mounts.get("./plugins") == "/opt/airflow/plugins", name
        # the package finds include/ beside plugins/ (schema.REPO_ROOT is plugins/..)
        assert mounts.get("./include") == "/opt/airflow/include", name
        assert (REPO / "dags").is_dir() and (REPO / "plugins").is_dir() and (REPO / "include").is_dir()


def test_airflow_settings_are_real_airflow_options(services):
    # the names are checked against the installed Airflow's config template, not guessed
    template = Path(importlib.metadata.distribution("apache-airflow-core")
                    .locate_file("airflow/config_templates/config.yml"))
    known = {section: set(body.get("options", {})) for section, body in yaml.safe_load(template.read_text()).items()}
    # and the Celery provider's own options, from the installed provider's declaration
    from airflow.providers.celery.get_provider_info import get_provider_info

    for section, body in get_provider_info()["config"].items():
        known.setdefault(section, set()).update(body.get("options", {}))
    for name in AIRFLOW_SERVICES:
        for key in _env(services[name]):
            if not key.startswith("AIRFLOW__"):
                continue
            section, option = (part.lower() for part in key[len("AIRFLOW__"):].split("__", 1))
            assert option in known.get(section, set()), f"{name}: {key} is not an Airflow {section}.{option} option"


def test_secrets_come_from_the_environment_and_must_be_set(compose):
    text = COMPOSE.read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    secret_vars = {v for v in used if any(w in v for w in SECRET_WORDS)}
    assert {"AIRFLOW_DB_PASSWORD", "REDIS_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET",
            "POSTGIS_PASSWORD", "CSP_LOADER_PASSWORD"} <= secret_vars
    for var in secret_vars:
        # every use is ${VAR:?...}: compose refuses to start without it, and there is no default to leak
        assert not re.search(r"\$\{" + var + r"(:?-|\})", text), f"{var} has a default or may be empty"
    # no credentials written into a URL
    for service in compose["services"].values():
        for value in _env(service).values():
            assert not re.search(r"://[^:/@]+:(?!\$\{)[^@/]+@", value), value


# ------------------------------------------------------------------ partners: onboarded, never hard-coded

def _content(compose: dict[str, Any], config: str) -> str:
    """A config's content as the container sees it (compose turns $$ into $; ${VAR} would be the environment's)."""
    return compose["configs"][config]["content"].replace("$$", "$")


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """container path -> (source, options) of a service's volumes (a source may be ${VAR:?message})."""
    out = {}
    for v in service["volumes"]:
        source, rest = (v[:v.index("}") + 1], v[v.index("}") + 2:]) if v.startswith("${") else v.split(":", 1)
        target, _, options = rest.partition(":")
        out[target] = (source, options)
    return out


def test_no_partner_is_built_into_the_sftp_server(compose, services):
    from csp_observatory.onboarding_checks import feed_partners

    sftp = json.dumps(services["sftp"]) + _content(compose, "sshd-config") + _content(compose, "sftp-accounts")
    for partner_id in set(feed_partners().values()):
        assert not re.search(rf"\b{partner_id}\b", sftp), f"partner {partner_id!r} is hard-coded in the SFTP server"
    sshd = _content(compose, "sshd-config")
    assert "AllowUsers" not in sshd and "AllowGroups cspobs csp-partners" in sshd
    assert re.search(r"Match Group csp-partners\n\s+ChrootDirectory /srv/csp-observatory/sftp/%u\n"
                     r"\s+ForceCommand internal-sftp", sshd)
    assert re.findall(r"Match User (\S+)", sshd) == ["cspobs"]


def test_the_sftp_server_reads_partners_and_keys_from_volumes(services):
    mounts = _mounts(services["sftp"])
    assert mounts["/etc/csp-observatory/partners"] == ("${CSP_PARTNER_REGISTRY_DIR:?set CSP_PARTNER_REGISTRY_DIR}", "ro")
    assert mounts["/etc/csp-observatory/authorized_keys"][1] == "ro"
    assert services["sftp"]["entrypoint"] == ["/usr/local/sbin/csp-sftp-accounts", "serve"]
    # the pipeline reads the same registry
    for name in AIRFLOW_SERVICES:
        airflow = _mounts(services[name])
        assert airflow[_env(services[name])["CSP_PARTNERS_DIR"]] == mounts["/etc/csp-observatory/partners"], name


def test_the_partner_admin_runs_scripts_partner_against_the_same_volumes(compose, services, tmp_path):
    from csp_observatory.onboarding_site import load_site

    admin, sftp = services["partner-admin"], services["sftp"]
    assert admin["profiles"] == ["tools"] and admin["restart"] == "no" and admin["user"] == "0:0"
    assert admin["entrypoint"][:3] == ["python", "-m", "csp_observatory.onboarding"]
    # its site file is one scripts/partner reads, and every path in it is mounted where the SFTP server has it
    site_text = re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: {"CSP_OBSERVATORY_FINGERPRINT": "A" * 40}.get(m.group(1),
                                                                                                "sftp.example.org"),
                       _content(compose, "partner-site"))
    (tmp_path / "site.yaml").write_text(site_text)
    site = load_site(tmp_path / "site.yaml")
    assert site.external and site.observatory_gid is not None
    ours, theirs = _mounts(admin), _mounts(sftp)
    for path in (site.registry_dir, site.authorized_keys_dir, *(t.root for t in site.trees)):
        assert str(path) in ours and str(path) in theirs and ours[str(path)][0] == theirs[str(path)][0], path
        assert ours[str(path)][1] == "", f"partner-admin must write {path}"
    assert any(str(site.observatory_gnupg_home).startswith(target) for target in ours)
    assert str(site.host_key) in {s["target"] for s in admin["secrets"]}
    # the SFTP image's numbers are the ones scripts/partner uses for folders
    image = sftp["build"]["dockerfile_inline"]
    assert f"groupadd --system -g {site.observatory_gid} cspobs" in image
    assert "csp-partners" in image


def test_the_sftp_accounts_script_reads_the_registry_scripts_partner_writes(compose, tmp_path):
    from csp_observatory import onboarding_site

    site = onboarding_site.Site(registry_dir=tmp_path, authorized_keys_dir=tmp_path, observatory_gnupg_home=tmp_path,
                                observatory_fingerprint="A" * 40, observatory_public_key=tmp_path / "o.asc",
                                trees=(onboarding_site.Tree(tmp_path, 22),), sftp_host="h", sftp_port=22,
                                host_key=tmp_path)
    onboarding_site._write_entry(site, {"id": "police_ppo", "status": "removed", "sftp_user": "police_ppo", "uid": 2007,
                                        "signing_fingerprint": "B" * 40, "feeds": ["prolific_priority_offenders"],
                                        "contact": "a: b, 'c'", "onboarded_at": "2026-01-01T00:00:00Z",
                                        "removed_at": "2026-02-01T00:00:00Z", "history": [{"event": "onboarded"}]})
    script = _content(compose, "sftp-accounts")
    reads = [ln.strip() for ln in script.splitlines() if "sed -n" in ln]
    assert len(reads) == 3
    shell = f"entry={tmp_path / 'police_ppo.yaml'}\n" + "\n".join(reads) + '\necho "$user $uid $status"'
    done = subprocess.run(["sh", "-eu", "-c", shell], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["police_ppo", "2007", "removed"]


def test_the_compose_sshd_config_is_valid_for_sshd(compose, tmp_path):
    sshd = Path("/usr/sbin/sshd")
    if not sshd.exists() or os.geteuid() != 0:
        pytest.skip("needs OpenSSH's sshd, run as root, to check a config")
    key = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = tmp_path / "sshd_config"
    config.write_text(_content(compose, "sshd-config").replace("/etc/csp-observatory/ssh_host_ed25519_key", str(key)))
    done = subprocess.run([str(sshd), "-t", "-f", str(config)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------ PostGIS: TLS only, no shared login

def _postgres_settings(service: dict[str, Any]) -> dict[str, str]:
    """The ``-c name=value`` settings of a postgres command line."""
    cmd = service["command"]
    return dict(cmd[i + 1].split("=", 1) for i, arg in enumerate(cmd) if arg == "-c")


def test_postgis_takes_tcp_logins_over_tls_only(compose, services):
    postgis = services["postgis"]
    settings = _postgres_settings(postgis)
    assert settings["ssl"] == "on" and settings["password_encryption"] == "scram-sha-256"
    # the key and certificate the server reads are the ones its entrypoint installs from the secrets, the key 0600
    entry = " ".join(postgis["entrypoint"])
    assert re.search(r"install -o postgres -g postgres -m 0600 /run/secrets/(\S+) " + re.escape(settings["ssl_key_file"]),
                     entry)
    assert settings["ssl_cert_file"] in entry and 'exec docker-entrypoint.sh "$$@"' in entry
    assert {s["source"] for s in postgis["secrets"]} == {"postgis-tls-cert", "postgis-tls-key"}
    # its pg_hba: hostssl with scram, every TCP login without TLS rejected, no plain "host" line
    hba_target = {c["target"]: c["source"] for c in postgis["configs"]}[settings["hba_file"]]
    rules = [line.split() for line in _content(compose, hba_target).splitlines() if line.strip()]
    assert ["hostnossl", "all", "all", "0.0.0.0/0", "reject"] in rules
    assert ["hostnossl", "all", "all", "::/0", "reject"] in rules
    assert not [r for r in rules if r[0] == "host"]
    assert all(r[-1] == "scram-sha-256" for r in rules if r[0] == "hostssl")


def test_every_postgis_url_verifies_the_server(compose, services):
    urls = 0
    for name, service in services.items():
        targets = {f"/run/secrets/{s['target']}" for s in service.get("secrets") or [] if isinstance(s, dict)}
        for value in _env(service).values():
            if "@postgis:" not in value:
                continue
            urls += 1
            tail = value.split("@postgis:", 1)[1]          # after the credentials (${VAR:?...} has a "?" too)
            query = dict(kv.split("=", 1) for kv in tail.split("?", 1)[1].split("&")) if "?" in tail else {}
            assert query.get("sslmode") == "verify-full", (name, value)
            assert query.get("sslrootcert") in targets, f"{name}: its sslrootcert is not a secret it mounts"
    assert urls >= len(AIRFLOW_SERVICES)


def test_no_shared_login_is_made(compose):
    roles = _content(compose, "postgis-roles")
    logins = re.findall(r"CREATE ROLE (\w+) LOGIN", roles)
    assert logins == ["csp_loader"], "people get their own logins with scripts/people, never one in this file"
    text = COMPOSE.read_text(encoding="utf-8")
    assert "CSP_ANALYST_PASSWORD" not in text and "csp_observatory.people" in text


def _connection(value: str) -> dict[str, Any]:
    """An ``AIRFLOW_CONN_*`` JSON value with its ``${VAR...}`` references filled in, as compose would."""
    return json.loads(re.sub(r"\$\{[^}]*\}", "x", value))


def test_every_airflow_service_defines_the_feeds_connections(compose, services):
    """The feed DAGs reach SFTP and PostGIS only through the Connections csp_sftp and csp_postgis (hooks.py)."""
    for name in AIRFLOW_SERVICES:
        env = _env(services[name])
        targets = {f"/run/secrets/{s['target']}" for s in services[name].get("secrets") or [] if isinstance(s, dict)}
        db, sftp = _connection(env["AIRFLOW_CONN_CSP_POSTGIS"]), _connection(env["AIRFLOW_CONN_CSP_SFTP"])
        assert (db["conn_type"], db["host"], db["login"]) == ("postgres", "postgis", "csp_loader"), name
        assert db["extra"]["sslmode"] == "verify-full" and db["extra"]["sslrootcert"] in targets, name
        assert (sftp["conn_type"], sftp["host"]) == ("sftp", "sftp"), name
        # the server's key is pinned: never trust whatever answers
        assert sftp["extra"]["no_host_key_check"] is False and sftp["extra"]["host_key"], name
        assert sftp["extra"]["key_file"].startswith("/opt/airflow/secrets/"), name


def _setup_audit_settings() -> dict[str, str]:
    """The server settings scripts/setup_audit.sh writes for the project's own cluster."""
    text = (REPO / "scripts" / "setup_audit.sh").read_text(encoding="utf-8")
    conf = text.split('csp-audit.conf" 0644 postgres:postgres <<EOF', 1)[1].split("\n", 1)[1].split("\nEOF", 1)[0]
    role = re.search(r"^AUDIT_ROLE=(\w+)", text, re.M).group(1)
    return {k.strip(): v.strip().strip("'").replace("$AUDIT_ROLE", role) for k, v in
            (line.split("=", 1) for line in conf.splitlines() if "=" in line and not line.startswith("#"))}


def test_postgis_audits_reads_of_personal_data_as_set_up_does(compose, services):
    """The production PostGIS loads pgaudit with the settings set-up gives the project's cluster, keeps its log
    where the Airflow containers read it for the monthly report, and makes the audit role."""
    command = services["postgis"]["command"]
    given = dict(command[i + 1].split("=", 1) for i, arg in enumerate(command) if arg == "-c")
    expected = _setup_audit_settings()
    assert expected["shared_preload_libraries"] == "pgaudit" and expected["pgaudit.log_statement"] == "off"
    for key, value in expected.items():
        if key in ("log_directory", "log_file_mode", "log_line_prefix"):    # the container's own paths and modes
            continue
        assert given.get(key) == value, key
    log_dir = given["log_directory"]
    assert any(v.endswith(f":{log_dir}") for v in services["postgis"]["volumes"])
    volume = next(v.split(":")[0] for v in services["postgis"]["volumes"] if v.endswith(f":{log_dir}"))
    for name in AIRFLOW_SERVICES:
        mounts = {v.split(":")[0]: v.split(":")[1:] for v in services[name]["volumes"] if isinstance(v, str)}
        assert mounts[volume][-1] == "ro", name                                 # read, never written
        assert _env(services[name])["CSP_AUDIT_LOG_DIR"] == mounts[volume][0], name
    roles = _content(compose, "postgis-roles")
    assert "CREATE ROLE csp_auditor NOLOGIN" in roles and "CREATE EXTENSION IF NOT EXISTS pgaudit" in roles
    assert "GRANT SELECT ON TABLES TO csp_auditor" in roles


def test_the_workers_and_the_scheduler_take_the_observatorys_celery_settings(services):
    """Each worker imports the stages' modules once (csp_observatory.worker_preload); the scheduler publishes with
    the same settings."""
    for name in ("airflow-worker", "airflow-scheduler"):
        path = _env(services[name])["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"]
        module, _, attr = path.rpartition(".")
        config = getattr(importlib.import_module(module), attr)
        assert "csp_observatory.worker_preload" in config["imports"], name
