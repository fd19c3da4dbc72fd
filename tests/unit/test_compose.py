"""docker-compose.yaml (production layout) is a valid Compose file and wires Airflow 3 the way it needs.

No Docker engine runs here, so the file is checked against the official compose-spec JSON schema (vendored as
tests/data/compose-spec.json) and against the installed Airflow's own list of configuration options.
"""
from __future__ import annotations

import importlib.metadata
import json
import re
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
PROVIDER_SECTIONS = {"celery": {"broker_url", "result_backend"}}
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
    assert services["postgis"]["image"].startswith("postgis/postgis:")


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
    for section, options in PROVIDER_SECTIONS.items():
        known.setdefault(section, set()).update(options)
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
