"""Pausing and unpausing a partner's feeds in this machine's Airflow, through Airflow's own CLI.

:class:`Airflow` finds the Airflow that ``AIRFLOW_HOME`` (or the clone's ``.run/airflow.env``) configures and runs
``airflow dags pause|unpause`` there; :func:`_set_feeds` does it for a partner's feeds and says what happened, or
what to run by hand when Airflow could not be reached. ``scripts/partner airflow-sync`` (:func:`_airflow_sync`)
enables the active partners' feeds in an Airflow that has not had them enabled yet.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from csp_observatory.config import read_registry
from csp_observatory.onboarding_site import Site, _write_if_changed
from csp_observatory.schema import REPO_ROOT

#: The Airflow home's note of the feeds this command has enabled there: after that, their pause state is the
#: engineers' own (``airflow-sync`` only enables feeds this Airflow has not had enabled yet).
ENABLED_STAMP: Final = "csp-observatory-enabled-feeds"


# ---------------------------------------------------------------------------------------------------- Airflow


@dataclass
class AirflowOutcome:
    """What a pause or unpause did: DAG ids changed, already so, not in Airflow; or why Airflow was not used."""

    changed: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    error: str = ""


@dataclass(frozen=True)
class Airflow:
    """This machine's Airflow, driven through its own CLI (``airflow dags ...``)."""

    home: Path
    cli: str
    env: dict[str, str]

    @classmethod
    def find(cls, environ: dict[str, str] | None = None) -> tuple[Airflow | None, str]:
        """The Airflow that AIRFLOW_HOME (or the clone's .run/airflow.env) configures, or None and why not."""
        env = dict(os.environ if environ is None else environ)
        if not env.get("AIRFLOW_HOME"):
            env.update(_airflow_env_file(REPO_ROOT / ".run" / "airflow.env"))
        home = env.get("AIRFLOW_HOME")
        if not home:
            return None, "AIRFLOW_HOME is not set (and there is no .run/airflow.env: run scripts/setup.sh)"
        if not (Path(home) / "airflow.cfg").exists() and not env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
            return None, f"{home} has no airflow.cfg and AIRFLOW__DATABASE__SQL_ALCHEMY_CONN is not set"
        cli = Path(sys.executable).with_name("airflow")
        found = str(cli) if cli.exists() else shutil.which("airflow", path=env.get("PATH"))
        if not found:
            return None, "the airflow command is not installed here"
        # the DAG files import csp_observatory when they are parsed (airflow dags reserialize)
        plugins = str(REPO_ROOT / "plugins")
        if plugins not in env.get("PYTHONPATH", "").split(":"):
            env["PYTHONPATH"] = ":".join(p for p in (plugins, str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        return cls(Path(home), found, env), ""

    def _cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.cli, *args], env=self.env, capture_output=True, text=True, timeout=900)

    def _toggle(self, dag_ids: Sequence[str], paused: bool) -> list[str]:
        """Pause or unpause these DAGs in the metadata DB; returns the ids that changed."""
        regex = "^(" + "|".join(re.escape(d) for d in dag_ids) + ")$"
        done = self._cli("dags", "pause" if paused else "unpause", "-y", "-o", "json", "--treat-dag-id-as-regex",
                         regex)
        if done.returncode != 0:
            raise RuntimeError(_tail(done))
        for line in reversed(done.stdout.splitlines()):
            if line.startswith("[{"):
                return sorted(row["dag_id"] for row in json.loads(line))
        return []      # "No paused DAGs were found"

    def _present(self) -> dict[str, bool]:
        """Every DAG in the metadata DB and whether it is paused."""
        done = self._cli("dags", "list", "-o", "json")
        if done.returncode != 0:
            raise RuntimeError(_tail(done))
        line = next((ln for ln in reversed(done.stdout.splitlines()) if ln.startswith("[")), "[]")
        return {row["dag_id"]: str(row.get("is_paused")).lower() == "true" for row in json.loads(line)}

    def set_paused(self, dag_ids: Sequence[str], paused: bool, serialize_first: bool = False) -> AirflowOutcome:
        """Pause or unpause DAGs. ``airflow dags unpause`` only finds DAGs that are in the metadata DB, and a DAG the
        DAG processor has not parsed yet is not: then the DAG files are serialized (``airflow dags reserialize``
        parses them and updates the DB, dropping nothing) and the DAGs unpaused. ``serialize_first`` does that
        straight away (a new metadata DB). Pausing needs no such step: a feed DAG not in the DB is created paused."""
        out = AirflowOutcome()
        if not dag_ids:
            return out
        try:
            if serialize_first and not paused:
                self._reserialize()
            out.changed = self._toggle(dag_ids, paused)
            rest = [d for d in dag_ids if d not in out.changed]
            if rest:
                present = self._present()
                if not paused and not serialize_first and any(d not in present for d in rest):
                    self._reserialize()
                    out.changed += self._toggle(rest, paused)
                    rest = [d for d in rest if d not in out.changed]
                    present = self._present() if rest else present
                out.already = [d for d in rest if d in present]
                out.missing = [d for d in rest if d not in present]
        except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError) as exc:
            out.error = str(exc)
        return out

    def _reserialize(self) -> None:
        done = self._cli("dags", "reserialize")
        if done.returncode != 0:
            raise RuntimeError(_tail(done))

    @property
    def stamp(self) -> Path:
        return self.home / ENABLED_STAMP

    def enabled_here(self) -> set[str]:
        """The feeds this command has enabled in this Airflow."""
        try:
            return set(self.stamp.read_text(encoding="utf-8").split())
        except OSError:
            return set()

    def note_enabled(self, feeds: Iterable[str], enabled: bool) -> None:
        now = self.enabled_here()
        now = now | set(feeds) if enabled else now - set(feeds)
        try:
            _write_if_changed(self.stamp, "".join(f"{f}\n" for f in sorted(now)), 0o644)
        except OSError:
            pass        # a note only: without it, airflow-sync may enable a feed twice


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    text = (done.stderr or "") + (done.stdout or "")
    return " | ".join(ln for ln in text.strip().splitlines()[-4:])


def _airflow_env_file(path: Path) -> dict[str, str]:
    """The plain ``export NAME='value'`` lines of a clone's .run/airflow.env (values that expand nothing)."""
    out: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        m = re.fullmatch(r"export ([A-Z_][A-Z0-9_]*)='([^'$]*)'", line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out


def dag_id(feed: str) -> str:
    """The feed's DAG (dags/feeds.py)."""
    return f"feed_{feed}"


def _airflow_report(airflow: Airflow | None, why: str, feeds: Sequence[str], paused: bool,
                    outcome: AirflowOutcome | None) -> list[str]:
    """Lines saying what happened to the feeds' DAGs, and what to run if Airflow could not be reached."""
    if not feeds:
        return []
    verb = "pause" if paused else "unpause"
    dags = " ".join(dag_id(f) for f in feeds)
    todo = (f"run, where Airflow runs: airflow dags {verb} DAG_ID for each of {dags}"
            + ("" if paused else " (after airflow dags reserialize if the DAG is not listed), "
                                 "or scripts/partner airflow-sync"))
    if airflow is None and why == "--no-airflow":
        return [f"Airflow: left alone (--no-airflow); {dags} not {verb}d here"
                + ("" if paused else ": scripts/partner airflow-sync does it")]
    if airflow is None:
        return [f"Airflow: not reached ({why}). The registry is updated, but the DAGs are not {verb}d: {todo}"]
    assert outcome is not None
    if outcome.error:
        return [f"Airflow at {airflow.home}: {verb} failed ({outcome.error}). The registry is updated: {todo}"]
    lines = []
    if outcome.changed:
        lines.append(f"Airflow: {verb}d {', '.join(outcome.changed)}")
    if outcome.already:
        lines.append(f"Airflow: {', '.join(outcome.already)} already {verb}d")
    if outcome.missing:
        lines.append(f"Airflow: {', '.join(outcome.missing)} not in Airflow"
                     + (" (created paused when it is parsed)" if paused
                        else " even after airflow dags reserialize: see airflow dags list-import-errors"))
    return lines


def _set_feeds(airflow: Airflow | None, why: str, feeds: Sequence[str], paused: bool,
               serialize_first: bool = False) -> list[str]:
    """Pause or unpause the feeds' DAGs, note which this command has enabled there; lines to print."""
    outcome = None
    if airflow is not None and feeds:
        outcome = airflow.set_paused([dag_id(f) for f in feeds], paused, serialize_first)
        if not outcome.error:
            done = set(outcome.changed) | set(outcome.already)
            airflow.note_enabled([f for f in feeds if dag_id(f) in done or paused], not paused)
    return _airflow_report(airflow, why, feeds, paused, outcome)


def _airflow_ok(lines: Sequence[str]) -> bool:
    return not any(" failed (" in ln or "not reached" in ln or "even after" in ln for ln in lines)


def _airflow_sync(site: Site) -> int:
    """Unpause the feeds of active partners that this Airflow has not had enabled by this command yet (a new
    Airflow metadata DB, or one that was unreachable when the partner was onboarded)."""
    airflow, why = Airflow.find()
    active = sorted({f for e in read_registry(site.registry_dir).values() if e["status"] == "active"
                     for f in e.get("feeds") or ()})
    if airflow is None:
        print(f"Airflow: not reached ({why})", file=sys.stderr)
        return 1
    enabled = airflow.enabled_here()
    todo = [f for f in active if f not in enabled]
    if not todo:
        print(f"Airflow at {airflow.home}: every active partner's feed is already enabled")
        return 0
    # nothing enabled here yet: most likely a new metadata DB, where no DAG has been parsed
    lines = _set_feeds(airflow, why, todo, False, serialize_first=not enabled)
    for line in lines:
        print(line)
    return 0 if _airflow_ok(lines) else 1
