"""One supply in flight, and what every stage of ``pipeline.py`` shares.

:class:`Manifest` (with a :class:`SupplyFile` per file) is the supply's one typed record from its download to its
report: made when intake downloads the supply (``intake_download.collect``), given its work area by the collect
stage (``pipeline_collect.py``), saved as ``manifest.json`` in that private work area of the staging store, read
back by each later stage, and read by the report (``reporting.py``) and the quality stamp. Before the download a
supply is an ``intake.PendingSupply`` (files listed in the partner's inbox, nothing downloaded).

:class:`Services` is where a stage reaches PostGIS and SFTP. The helpers here refuse or quarantine a file, delete a
supply's plaintext, and keep one supply's failure from stopping the others in its run (:func:`_one_supply`); the
verdict's exceptions close the run.
"""
from __future__ import annotations

import json
import logging
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Final, Iterator, Protocol

import pandas as pd
import psycopg2

from csp_observatory import staging
from csp_observatory.config import Settings, load_settings
from csp_observatory.schema import FeedSchema
from csp_observatory.schema_loading import schema_for

log = logging.getLogger("csp_observatory.pipeline")

REJECTED_COLUMNS = ["source_file", "source_row", "reason", "stage"]

#: The name ending of a staged frame: an Arrow IPC file (``staging.write_frame``). Work areas written before issue 9
#: hold ``.parquet`` frames; a supply in flight across the upgrade still reads them (``_or_parquet_twin``).
FRAME_SUFFIX: Final = ".arrow"
_PARQUET: Final = ".parquet"


def _parquet_twin(loc: staging.Location) -> staging.Location:
    return loc.with_name(loc.name[: -len(FRAME_SUFFIX)] + _PARQUET)


def _or_parquet_twin(loc: staging.Location) -> staging.Location:
    """``loc``, or the parquet frame an older run left in its place."""
    if staging.exists(loc):
        return loc
    twin = _parquet_twin(loc)
    return twin if staging.exists(twin) else loc


def _write_replacing_parquet(loc: staging.Location, frame: pd.DataFrame) -> None:
    """Write a frame, removing an older run's parquet twin so that a retried stage never counts rows twice."""
    staging.write_frame(loc, frame)
    staging.remove(_parquet_twin(loc))


@dataclass
class SupplyFile:
    """One file of a supply, from its download to the report: the one shape intake, the stages and the report read.

    ``intake_download.collect`` fills the first fields (and ``duplicate_of``); decrypt adds ``plaintext_path`` and
    ``signer``, parse ``rows_in_file``. The report reads it as it stands (``reporting.SupplyOutcome.files``).
    """

    name: str                    # the schema's file name: offences, offenders, victims (or ``metadata``)
    remote_name: str             # the partner's file name on SFTP
    sha256: str
    size: int
    # Where the encrypted bytes are: first the collecting worker's private download, then (``pipeline_collect``)
    # the supply's work area in the staging store (staging.py): a path, or a URL every worker reaches.
    encrypted_path: str = ""
    plaintext_path: str | None = None   # likewise, in the supply's work area until the supply is done
    signer: str | None = None
    rows_in_file: int | None = None
    duplicate_of: str | None = None     # supply_id it was already loaded as; such a file is never loaded again

    @property
    def duplicate(self) -> bool:
        """The same bytes were loaded before (the ledger said so at collect)."""
        return self.duplicate_of is not None


@dataclass
class Manifest:
    """What the observatory knows about one supply in flight."""

    feed: str
    period: str
    work_dir: str
    files: dict[str, SupplyFile]
    # collected | refused | malformed | blocked | held | needs_metadata | failed | duplicate | loaded
    status: str = "collected"
    problems: list[dict[str, str]] = field(default_factory=list)   # file-level: {file, remote_name, reason}
    stages: dict[str, Any] = field(default_factory=dict)           # per-stage summaries for the report
    run_id: str = ""
    collected_at: str = ""
    metadata: SupplyFile | None = None                             # the supply's metadata file, if it has one
    partner_id: str = ""                                           # whose inbox it came from ("": the schema's)

    @property
    def supply_id(self) -> str:
        return f"{self.feed}/{self.period}"

    @property
    def partner(self) -> str:
        """The partner the supply came from: its files are archived, refused and reported in that inbox.

        The collect stage records it; :func:`supply_schema` fills it in for a manifest written before it did."""
        return self.partner_id

    @property
    def ok(self) -> bool:
        return self.status == "collected"

    @property
    def path(self) -> staging.Location:
        """The supply's work area in the staging store (a local Path, or a remote UPath)."""
        return staging.location(self.work_dir)

    def plaintext_location(self, f: SupplyFile) -> staging.Location:
        """Where decrypt puts ``f``'s plaintext in the work area: a data file by its schema name (``offences.csv``),
        the metadata file by the name the partner gave it, less ``.gpg``."""
        name = f"{f.name}.csv" if f is not self.metadata else Path(f.remote_name).with_suffix("").name
        return self.path / "plain" / name

    @property
    def all_files(self) -> list[SupplyFile]:
        """The data files, then the metadata file if there is one: what is decrypted, archived or refused."""
        return [*self.files.values(), *([self.metadata] if self.metadata else [])]

    @property
    def duplicates(self) -> list[SupplyFile]:
        """The files whose bytes were loaded before, as an earlier supply."""
        return [f for f in self.all_files if f.duplicate]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (what ``manifest.json`` holds)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        """The inverse of :meth:`to_dict`."""
        md = raw.get("metadata")
        return cls(**{**raw, "files": {k: SupplyFile(**v) for k, v in raw["files"].items()},
                      "metadata": SupplyFile(**md) if md else None})

    def save(self) -> None:
        staging.write_text(self.path / "manifest.json", json.dumps(self.to_dict(), indent=1, default=str))

    @classmethod
    def read(cls, work_dir: str | Path) -> Manifest:
        return cls.from_dict(json.loads(staging.read_text(staging.location(work_dir) / "manifest.json")))

    # Frames between stages: one Arrow IPC file (staging.write_frame) per file per stage.
    def frame_path(self, stage: str, file_name: str) -> staging.Location:
        return self.path / stage / f"{file_name}{FRAME_SUFFIX}"

    def write_frame(self, stage: str, file_name: str, frame: pd.DataFrame) -> None:
        _write_replacing_parquet(self.frame_path(stage, file_name), frame)

    def read_frame(self, stage: str, file_name: str) -> pd.DataFrame:
        return staging.read_frame(_or_parquet_twin(self.frame_path(stage, file_name)))

    def staged_sizes(self, stage: str | None) -> dict[str, int]:
        """Bytes of each file's frame of a stage (``None``: its plaintext), what the stage after it reads: 0 where
        the file is not there or the store is remote (whose supplies :func:`each_file` keeps in one process)."""
        return {name: staging.local_size(self.plaintext_location(f) if stage is None
                                         else _or_parquet_twin(self.frame_path(stage, name)))
                for name, f in self.files.items()}

    def _set_rows(self, kind: str, step: str, file_name: str, rows: pd.DataFrame | None) -> None:
        # Each (step, file) has its own frame file, written whole: a stage that fails after recording its rows and
        # is retried writes the same file again, so a retry gives exactly what one clean run gives.
        p = self.path / kind / f"{step}.{file_name}{FRAME_SUFFIX}"
        frame = pd.DataFrame(columns=REJECTED_COLUMNS) if rows is None or rows.empty else rows[REJECTED_COLUMNS]
        _write_replacing_parquet(p, frame.astype({"source_file": str, "source_row": "Int64", "reason": str,
                                                  "stage": str}))

    def _rows(self, kind: str) -> pd.DataFrame:
        found = [*staging.files_in(self.path / kind, f"*{FRAME_SUFFIX}"),
                 *staging.files_in(self.path / kind, f"*{_PARQUET}")]
        frames = [f for f in (staging.read_frame(p) for p in found) if not f.empty]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=REJECTED_COLUMNS)

    def set_rejected(self, step: str, file_name: str, rejected: pd.DataFrame | None) -> None:
        """Record the rows one step set aside from one file (not loaded), replacing what it recorded before."""
        self._set_rows("rejected", step, file_name, rejected)

    def rejected(self) -> pd.DataFrame:
        """Every row set aside so far, at any stage, with its reason: counted, reported and never lost."""
        return self._rows("rejected")

    def set_flagged(self, step: str, file_name: str, flagged: pd.DataFrame | None) -> None:
        """Record rows one step loads but that need the partner's attention (no location, a broken link)."""
        self._set_rows("flagged", step, file_name, flagged)

    def flagged(self) -> pd.DataFrame:
        """Every row loaded with a problem the partner should fix, with its (value-free) reason."""
        return self._rows("flagged")


class Services(Protocol):
    """Where a stage gets PostGIS and SFTP: ``db()`` yields a psycopg2 connection (the caller commits), ``sftp()`` a
    paramiko SFTP client with the server's host key pinned; both closed after the block.

    The DAG layer hands the stages ``hooks.HookServices`` (Airflow Connections ``csp_postgis`` and ``csp_sftp``, read
    through the providers' hooks); without one a stage builds :class:`SettingsServices` from the settings, so the
    tests without Airflow and the command-line scripts need no Airflow.
    """

    def db(self) -> ContextManager[Any]: ...

    def sftp(self) -> ContextManager[Any]: ...


@dataclass(frozen=True)
class SettingsServices:
    """:class:`Services` from the observatory's own settings (``database_url``, ``sftp_*``)."""

    settings: Settings

    def db(self) -> ContextManager[Any]:
        return _db(self.settings)

    def sftp(self) -> ContextManager[Any]:
        return _sftp(self.settings)


def _services(settings: Settings, services: Services | None) -> Services:
    return services if services is not None else SettingsServices(settings)


@contextmanager
def _db(settings: Settings) -> Iterator[Any]:
    with closing(psycopg2.connect(settings.database_url)) as conn:
        yield conn


@contextmanager
def _sftp(settings: Settings) -> Iterator[Any]:
    from csp_observatory import sftp

    with sftp.connect_observatory(settings) as client:
        yield client


def each_file(settings: Settings | None, m: Manifest, stage: str | None, work: dict[str, Any]) -> dict[str, Any]:
    """Each of a supply's files' work for a stage (``work``: file name -> a call with no arguments), in processes of
    their own when the supply is large (:mod:`file_workers`); ``stage``: whose frames the work reads (``None``:
    the plaintext), whose sizes decide. Without settings, the configured ones (``load_settings``: the config file
    and the environment), as the DAG's clean task calls its stage."""
    from csp_observatory import file_workers

    chosen = settings or load_settings()
    return file_workers.each_file(work, m.staged_sizes(stage), workers=chosen.file_workers,
                                  min_bytes=chosen.file_workers_min_mb << 20)


def _in_flight(work_dirs: list[str] | None) -> list[Manifest]:
    return [Manifest.read(w) for w in work_dirs or []]


def supply_schema(m: Manifest) -> FeedSchema:
    """The supply's feed schema: each stage resolves it once per supply and hands it to the helpers it calls, so
    that no helper looks it up again by the feed's name.

    A manifest written before the collect stage recorded the partner gets the schema's partner here."""
    schema = schema_for(m.feed)
    if not m.partner_id:
        m.partner_id = schema.partner.id
    return schema


def _quarantine(settings: Settings, sftp_client: Any, conn: Any, partner_id: str, file: SupplyFile,
                reason: str) -> None:
    """Move a file to the partner's quarantine with a reason, and say so in the ledger."""
    from csp_observatory import intake_quarantine, ledger

    intake_quarantine.quarantine(sftp_client, settings, partner_id, file.remote_name, reason)
    ledger.mark_quarantined(conn, file.sha256, reason)
    conn.commit()


def _refuse(m: Manifest, settings: Settings, sftp_client: Any, file: SupplyFile, reason: str, status: str,
            conn: Any) -> None:
    """Quarantine a refused file and stop its supply; the supply's other files stay in the inbox."""
    _quarantine(settings, sftp_client, conn, m.partner, file, reason)
    m.problems.append({"file": file.name, "remote_name": file.remote_name, "reason": reason})
    m.status = status
    log.warning("%s: %s refused: %s", m.supply_id, file.remote_name, reason)


def _delete_plaintext(m: Manifest) -> None:
    """Remove every decrypted or derived copy of a supply's data; keep only the manifest and reports.

    Everything of the supply is in its work area of the staging store (the encrypted originals too, under
    ``encrypted/``), so this is the same on a local folder and on object storage. An encrypted file an older run
    left outside the work area (on the collecting worker's disk) is removed too when this worker can see it.
    """
    staging.clear(m.path, keep=("manifest.json", "report"))
    for f in m.all_files:
        f.plaintext_path = None
        outside = staging.location(f.encrypted_path)
        if staging.is_local(outside) and outside.exists():
            outside.unlink()
            parent = outside.parent
            if parent.exists() and parent != m.path and not any(parent.iterdir()):
                parent.rmdir()


@contextmanager
def _one_supply(m: Manifest, stage: str, alone: bool) -> Iterator[None]:
    """One supply's share of a stage: an error in it stops that supply, never the others in the run.

    A supply that fails is marked ``failed`` with the stage in its problems (its report says so, the verdict turns
    the run red, its files stay in the inbox for the next run). When it is the run's only supply the error is raised
    instead, so that Airflow retries the stage for a transient fault.
    """
    try:
        yield
    except Exception as exc:
        if alone:
            raise
        log.exception("%s: %s failed; the run's other supplies go on", m.supply_id, stage)
        m.status = "failed"
        m.problems.append({"file": "", "remote_name": "", "reason": f"processing stopped at the {stage} stage "
                                                                     f"({type(exc).__name__}); the observatory is "
                                                                     f"looking into it"})
        m.save()


class SupplyNotLoaded(RuntimeError):
    """A supply of the run was not loaded (refused, malformed, held, blocked or failed)."""


class SupplyHasProblems(RuntimeError):
    """Every supply of the run loaded, but at least one with problems to look at (amber)."""
