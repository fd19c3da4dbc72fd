"""The observatory's stages for one feed, as the DAG calls them.

Each stage takes the work folders of the supplies in flight and returns those still going. A supply's
state lives in ``manifest.json`` in its private staging folder; its data passes between stages as
parquet beside it, so nothing personal ever goes through Airflow's XCom or metadata database.

A supply's metadata file (guidance section 3.4, ``metadata.py``) travels with its data files: collected,
decrypted and verified like them, read and checked against them at parse time (``stages["metadata"]``), and
catalogued with its table and column comments inside the load's transaction. The load refuses a feed's first
supply without one.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ContextManager, Iterator, Protocol

import numpy as np
import pandas as pd
import psycopg2

from csp_observatory import staging
from csp_observatory.config import Settings, load_settings
from csp_observatory.schema import CONTENT_KEY_COLUMN, FeedSchema
from csp_observatory.schema_loading import schema_for

log = logging.getLogger(__name__)

REJECTED_COLUMNS = ["source_file", "source_row", "reason", "stage"]


@dataclass
class SupplyFile:
    """One file of a supply, from the inbox to the load."""

    name: str                    # the schema's file name: offences, offenders, victims
    remote_name: str             # the partner's file name on SFTP
    sha256: str
    size: int
    encrypted_path: str          # in the staging store (staging.py): a path, or a URL every worker reaches
    plaintext_path: str | None = None   # likewise, in the supply's work area until the supply is done
    signer: str | None = None
    rows_in_file: int | None = None


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
        """The partner the supply came from: its files are archived, refused and reported in that inbox."""
        return self.partner_id or schema_for(self.feed).partner.id

    @property
    def ok(self) -> bool:
        return self.status == "collected"

    @property
    def path(self) -> staging.Location:
        """The supply's work area in the staging store (a local Path, or a remote UPath)."""
        return staging.location(self.work_dir)

    @property
    def all_files(self) -> list[SupplyFile]:
        """The data files, then the metadata file if there is one: what is decrypted, archived or refused."""
        return [*self.files.values(), *([self.metadata] if self.metadata else [])]

    def save(self) -> None:
        staging.write_text(self.path / "manifest.json", json.dumps(asdict(self), indent=1, default=str))

    @classmethod
    def read(cls, work_dir: str | Path) -> Manifest:
        raw = json.loads(staging.read_text(staging.location(work_dir) / "manifest.json"))
        raw["files"] = {k: SupplyFile(**v) for k, v in raw["files"].items()}
        if raw.get("metadata"):
            raw["metadata"] = SupplyFile(**raw["metadata"])
        return cls(**raw)

    # Frames between stages: one parquet per file per stage.
    def frame_path(self, stage: str, file_name: str) -> staging.Location:
        return self.path / stage / f"{file_name}.parquet"

    def write_frame(self, stage: str, file_name: str, frame: pd.DataFrame) -> None:
        staging.write_frame(self.frame_path(stage, file_name), frame)

    def read_frame(self, stage: str, file_name: str) -> pd.DataFrame:
        return staging.read_frame(self.frame_path(stage, file_name))

    def _set_rows(self, kind: str, step: str, file_name: str, rows: pd.DataFrame | None) -> None:
        # Each (step, file) has its own parquet, written whole: a stage that fails after recording its rows and
        # is retried writes the same file again, so a retry gives exactly what one clean run gives.
        p = self.path / kind / f"{step}.{file_name}.parquet"
        frame = pd.DataFrame(columns=REJECTED_COLUMNS) if rows is None or rows.empty else rows[REJECTED_COLUMNS]
        staging.write_frame(p, frame.astype({"source_file": str, "source_row": "Int64", "reason": str,
                                             "stage": str}))

    def _rows(self, kind: str) -> pd.DataFrame:
        frames = [f for f in (staging.read_frame(p) for p in staging.files_in(self.path / kind, "*.parquet"))
                  if not f.empty]
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


def _in_flight(work_dirs: list[str] | None) -> list[Manifest]:
    return [Manifest.read(w) for w in work_dirs or []]


def _quarantine(settings: Settings, sftp_client: Any, conn: Any, partner_id: str, file: SupplyFile,
                reason: str) -> None:
    """Move a file to the partner's quarantine with a reason, and say so in the ledger."""
    from csp_observatory import intake, ledger

    intake.quarantine(sftp_client, settings, partner_id, file.remote_name, reason)
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


# --- stage 1: collect ------------------------------------------------------------------------------

def ready_periods(feed: str, settings: Settings | None = None, services: Services | None = None) -> list[str]:
    """Periods whose every file is in the partner's inbox and no longer being written.

    Strays (misnamed files, bad periods, links, folders, empty files) are quarantined here with their reason:
    when nothing in the inbox is ready no run starts, and the partner must still hear about every one.
    """
    from csp_observatory import intake

    settings = settings or load_settings()
    svc = _services(settings, services)
    schema = schema_for(feed)
    with svc.sftp() as client:
        ready = intake.find_ready_supplies(client, schema, settings)
        intake.quarantine_strays(client, settings, schema, ready)
    return sorted(s.period for s in ready.supplies)


def collect(feed: str, periods: list[str], run_id: str, settings: Settings | None = None,
            services: Services | None = None) -> list[str]:
    """Download each ready supply into staging, record its hashes, and set aside duplicates and strays."""
    from csp_observatory import agreements, intake, ledger

    settings = settings or load_settings()
    svc = _services(settings, services)
    schema = schema_for(feed)
    work_dirs: list[str] = []
    with svc.sftp() as client, svc.db() as conn:
        ledger.ensure_ledger(conn)
        conn.commit()
        ready = intake.find_ready_supplies(client, schema, settings)
        # Strays that arrived since the sensor's look; one never stops another, nor a supply.
        intake.quarantine_strays(client, settings, schema, ready)
        for pending in ready.supplies:
            if pending.period not in periods:
                continue
            collected = intake.collect(client, conn, schema, settings, pending)
            conn.commit()
            # The work area is in the staging store every worker reaches (staging.py), not on this worker's disk.
            work = staging.supply_area(settings, feed, pending.period)
            staging.remove(work)  # what an earlier, interrupted run left: this run starts the supply afresh
            staging.make_private_dir(work)
            m = Manifest(feed=feed, period=pending.period, work_dir=str(work), files={}, run_id=run_id,
                         collected_at=datetime.now(timezone.utc).isoformat(), partner_id=collected.partner_id)
            for cf in collected.files:
                m.files[cf.file_name] = SupplyFile(name=cf.file_name, remote_name=cf.remote_name,
                                                   sha256=cf.sha256, size=cf.size,
                                                   encrypted_path=_into_store(cf.local_path, work))
            if (cf := collected.metadata) is not None:
                m.metadata = SupplyFile(name=cf.file_name, remote_name=cf.remote_name, sha256=cf.sha256,
                                        size=cf.size, encrypted_path=_into_store(cf.local_path, work))
            # Guidance 2.2: a feed is taken only under a current information sharing agreement (agreements.py).
            standing = agreements.standing(m.partner, feed)
            if standing.warning:
                log.warning("%s: %s", m.supply_id, standing.warning)
            if standing.agreement is not None:
                m.stages["agreement"] = {"id": standing.agreement.id, "title": standing.agreement.title(),
                                         "review_date": standing.agreement.review_date.isoformat(),
                                         "review_due": standing.warning is not None}
            if not standing.current:
                for f in m.all_files:
                    _refuse(m, settings, client, f, standing.refusal or "", "refused", conn)
                _delete_plaintext(m)
            elif all(cf.duplicate_of for cf in collected.all_files):
                # The same bytes were loaded before: never load them twice. The partner is told where.
                for cf in collected.all_files:
                    intake.archive(client, settings, m.partner, cf.remote_name)
                    m.problems.append({"file": cf.file_name, "remote_name": cf.remote_name,
                                       "reason": f"identical to a delivery already loaded as supply "
                                                 f"{cf.duplicate_of}; not loaded again"})
                m.status = "duplicate"
                _delete_plaintext(m)
            # A supply where only some files are new is loaded whole again: the load replaces the period's
            # rows, so unchanged files neither duplicate nor go missing.
            m.save()
            work_dirs.append(str(work))
    return work_dirs


def _into_store(local_path: str, work: staging.Location) -> str:
    """A file this task downloaded to its own disk, moved into the supply's work area (``encrypted/``): the decrypt
    task may run on another worker. The download's own folder, now empty, goes too."""
    local = Path(local_path)
    stored = staging.adopt(local, work / "encrypted" / local.name)
    try:
        local.parent.rmdir()
    except OSError:
        pass            # not empty (another file of the supply), or already gone
    return stored


# --- stage 2: decrypt and verify --------------------------------------------------------------------

def decrypt_and_verify(work_dirs: list[str], settings: Settings | None = None,
                       services: Services | None = None) -> list[str]:
    """Decrypt each file; only a file signed by the partner's pinned key goes on."""
    from csp_observatory import decryption

    settings = settings or load_settings()
    svc = _services(settings, services)
    out: list[str] = []
    with svc.sftp() as client, svc.db() as conn:
        for m in _in_flight(work_dirs):
            if not m.ok:
                out.append(m.work_dir)
                continue
            schema = schema_for(m.feed)
            fingerprint = settings.partner(m.partner).signing_fingerprint
            for f in m.all_files:
                plaintext = m.path / "plain" / (f"{f.name}.csv" if f is not m.metadata else
                                                 Path(f.remote_name).with_suffix("").name)
                # gpg reads and writes real files: for a remote store, private copies on this worker, deleted
                # when it is done (the plaintext goes up into the supply's work area only once verified).
                try:
                    with staging.local_file(f.encrypted_path) as encrypted, \
                            staging.local_output(plaintext) as written:
                        verified = decryption.decrypt_and_verify(settings.gnupg_home, encrypted, written,
                                                                fingerprint, settings.gpg_passphrase)
                except decryption.RefusedFile as refused:
                    _refuse(m, settings, client, f, refused.reason, "refused", conn)
                    continue
                f.plaintext_path, f.signer = str(plaintext), verified.signer_fingerprint
            if not m.ok:
                _delete_plaintext(m)
            m.save()
            out.append(m.work_dir)
    return out


# --- stage 3: parse and validate --------------------------------------------------------------------

def parse_and_validate(work_dirs: list[str], settings: Settings | None = None,
                       services: Services | None = None) -> list[str]:
    """Read each CSV against its schema; set aside rows that cannot be used; run the GX suite."""
    from csp_observatory import parsing, validation

    settings = settings or load_settings()
    svc = _services(settings, services)
    for m in _in_flight(work_dirs):
        with _one_supply(m, "parse and validate", alone=len(work_dirs) <= 1):
            if not m.ok:
                continue
            schema = schema_for(m.feed)
            summaries: dict[str, Any] = {}
            headers: dict[str, list[str]] = {}
            for f in m.files.values():
                feed_file = schema.file(f.name)
                try:
                    # a remote store's plaintext is read from a private copy on this worker (the canonical copy of
                    # a partner layout is written beside it and goes with it)
                    with staging.local_file(f.plaintext_path or "") as plain:
                        source, mapped = _in_canonical_layout(m, f.name, plain, feed_file)
                        parsed = parsing.parse_csv(source, feed_file)
                        headers[f.name] = _header(source)
                except parsing.MalformedFile as bad:
                    with svc.sftp() as client, svc.db() as conn:
                        _refuse(m, settings, client, f, bad.reason, "malformed", conn)
                    continue
                if mapped is not None:
                    # Row numbers are the partner's own, in their file, not the canonical copy's.
                    parsed.frame["source_row"] = _partner_rows(parsed.frame["source_row"], mapped.source_rows)
                    parsed.rejected["source_row"] = _partner_rows(parsed.rejected["source_row"], mapped.source_rows)
                    parsed.header_problems[:0] = [f"read as the declared layout '{mapped.layout}'", *mapped.notes]
                m.set_rejected("layout", f.name, mapped.rejected if mapped is not None else None)
                f.rows_in_file = len(parsed.frame) + len(parsed.rejected) + (len(mapped.rejected) if mapped else 0)
                m.set_rejected("parse", f.name, parsed.rejected)
                kept, rejected, nulled = validation.apply_row_rules(parsed.frame, feed_file)
                m.set_rejected("validate", f.name, rejected)
                summary = validation.validate(kept, feed_file, schema, period=m.period, received=parsed.frame)
                summary.pop("gx_result", None)  # GX samples values; the manifest outlives the plaintext
                summaries[f.name] = {"summary": summary, "header_problems": parsed.header_problems,
                                     "nulled_values": nulled}
                m.write_frame("parsed", f.name, kept)
            m.stages["validation"] = summaries
            if m.ok:
                m.stages["metadata"] = _check_metadata(m, schema, headers)
            else:
                _delete_plaintext(m)
            m.save()
    return work_dirs


def _header(path: Path) -> list[str]:
    """The header cells of a CSV file the parser has read (its first non-blank record)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = head.decode("cp1252", errors="replace")      # as the parser falls back; names only
    for record in csv.reader(io.StringIO(text, newline="")):
        if any(c.strip() for c in record):
            return record
    return []


def _check_metadata(m: Manifest, schema: FeedSchema, headers: dict[str, list[str]]) -> dict[str, Any]:
    """The supply's metadata file read and checked against its files (counts, period, datafields), for the load
    and the report.

    Nothing personal is kept: the manifest outlives the plaintext, so the supplier's name and contact are left out
    (the load reads the file again to catalogue it). Headers are those the parser read: the canonical copy's for
    a file in a declared partner layout, whose datafields the metadata names as the schema does.
    """
    from csp_observatory import metadata, metadata_checks, metadata_docs, metadata_file

    out: dict[str, Any] = {"file": None, "expected": metadata.metadata_file_name(schema, m.period),
                           "supplied": m.metadata is not None, "refused": [], "document": None, "mismatches": []}
    if m.metadata is None:
        return out
    out["file"] = m.metadata.remote_name
    try:
        with staging.local_file(m.metadata.plaintext_path or "") as plain:
            md = metadata_file.read_metadata(plain, schema)
    except metadata.MetadataError as bad:
        out["refused"] = list(bad.problems)
        return out
    counts = {name: f.rows_in_file for name, f in m.files.items() if f.rows_in_file is not None}
    out["document"] = metadata_docs.shown_document(md)
    out["mismatches"] = [x.to_dict() for x in metadata_checks.check_against(md, schema, m.period, counts, headers)]
    return out


def _in_canonical_layout(m: Manifest, file_name: str, plaintext: Path, feed_file: Any) -> tuple[Path, Any]:
    """The file to parse: the partner's own if it is in the canonical layout, else its canonical copy.

    A feed file with declared partner layouts (include/layouts/) is matched to one by its header or root element,
    and rewritten to the schema's datafield names and codes beside the plaintext (deleted with it). Returns the
    path and the layout's result (None for the canonical layout). A file in no known layout is malformed.
    """
    from csp_observatory import layouts, layouts_loading, layouts_reading, parsing

    candidates = layouts_loading.layouts_for(m.feed, file_name)
    if len(candidates) <= 1:
        return plaintext, None
    chosen = layouts_reading.detect(plaintext, candidates)
    if chosen is None:
        known = "; ".join(lay.title for lay in candidates)
        raise parsing.MalformedFile(f"the file's columns match none of the layouts the observatory knows for this "
                                    f"file ({known}). Send it in one of them, or ask the observatory to declare yours.")
    if chosen.id == "canonical":
        return plaintext, None
    canonical = plaintext.with_name(f"{file_name}.canonical.csv")
    return canonical, layouts.apply(chosen, plaintext, canonical, feed_file)


def _partner_rows(rows: pd.Series, source_rows: list[int]) -> pd.Series:
    """Canonical-copy row numbers (1-based) as the partner's row numbers."""
    lookup = np.asarray(source_rows, dtype=np.int64)
    values = pd.to_numeric(rows).to_numpy(dtype=np.int64)
    return pd.Series(lookup[values - 1] if len(values) else values, index=rows.index, dtype=rows.dtype)


# --- stage 4: clean ---------------------------------------------------------------------------------

def clean(work_dirs: list[str], settings: Settings | None = None, services: Services | None = None) -> list[str]:
    """Normalise postcodes, dates, codes and whitespace; remove duplicates by reference number."""
    from csp_observatory import cleaning

    for m in _in_flight(work_dirs):
        with _one_supply(m, "clean", alone=len(work_dirs) <= 1):
            if not m.ok:
                continue
            schema = schema_for(m.feed)
            changes: dict[str, Any] = {}
            link_columns = _link_columns(schema)
            kept: dict[str, pd.DataFrame] = {}
            for name in m.files:
                result = cleaning.clean(m.read_frame("parsed", name), schema.file(name))
                m.set_rejected("clean", name, result.removed)
                m.write_frame("clean", name, result.frame)
                changes[name] = result.changes
                if name in link_columns:    # only the link columns, for _link_problems: no re-reading
                    kept[name] = result.frame[[c for c in dict.fromkeys(link_columns[name]) if c in result.frame]]
                del result
            m.stages["cleaning"] = changes
            m.stages["links"] = _link_problems(m, schema, kept)
            m.save()
    return work_dirs


def _link_columns(schema: FeedSchema) -> dict[str, list[str]]:
    """The columns ``_link_problems`` reads, per file: each link's column, and the linked file's row numbers."""
    out: dict[str, list[str]] = {}
    for feed_file in schema.files:
        if feed_file.links_to:
            on = feed_file.links_to["column"]
            out.setdefault(feed_file.links_to["file"], []).append(on)
            out.setdefault(feed_file.name, []).extend([on, "source_row"])
    return out


def _link_problems(m: Manifest, schema: FeedSchema,
                   frames: dict[str, pd.DataFrame] | None = None) -> dict[str, int]:
    """Rows of linked files (offenders, victims) whose crime reference has no offence in this supply.

    They are loaded (something rather than nothing, section 3.2.1) but flagged row by row for the partner, and
    counted, so analysts know the join is short. ``frames``: the cleaned frames (or their link columns) in
    memory; a file not in it is read from staging.
    """
    import pyarrow.compute as pac

    from csp_observatory import textkernels

    frames = frames or {}

    def frame(name: str) -> pd.DataFrame:
        return frames[name] if name in frames else m.read_frame("clean", name)

    problems: dict[str, int] = {}
    for feed_file in schema.files:
        if not feed_file.links_to or feed_file.links_to["file"] not in m.files:
            continue
        on, target = feed_file.links_to["column"], feed_file.links_to["file"]
        targets = frame(target)[on].dropna()
        linked = frame(feed_file.name)
        if isinstance(linked[on].dtype, pd.StringDtype) and isinstance(targets.dtype, pd.StringDtype):
            # one Arrow hash lookup for the column (equal strings, as isin compares them)
            found = pac.is_in(textkernels.arrow_strings(linked[on]),
                              value_set=textkernels.arrow_strings(targets)).to_numpy(zero_copy_only=False)
        else:
            found = linked[on].isin(targets).to_numpy(bool)
        orphan = linked[on].notna().to_numpy(bool) & ~found
        problems[feed_file.name] = int(orphan.sum())
        m.set_flagged("link", feed_file.name, pd.DataFrame({
            "source_file": feed_file.name, "source_row": linked.loc[orphan, "source_row"].to_numpy(),
            "reason": f"its {on} matches no row of the {target} file in this supply "
                      f"(the linked record is missing or was set aside)",
            "stage": "link"}))
    return problems


# --- stage 5: geocode -------------------------------------------------------------------------------

def _postcode_reference(conn: Any) -> pd.DataFrame:
    from csp_observatory import postcodes_postgis

    reference = postcodes_postgis.read_reference(conn)
    if reference.empty:
        raise RuntimeError("reference.postcodes is empty: load the postcode reference first "
                           "(scripts/load_reference.py)")
    return reference


def geocode(work_dirs: list[str], settings: Settings | None = None,
            services: Services | None = None) -> list[str]:
    """Give every record an easting/northing and say how it got them."""
    from csp_observatory import geocoding

    settings = settings or load_settings()
    svc = _services(settings, services)
    manifests = [m for m in _in_flight(work_dirs) if m.ok]
    if not manifests:
        return work_dirs
    from csp_observatory import gazetteer

    with svc.db() as conn:
        reference, places = _postcode_reference(conn), gazetteer.read_places(conn)
    for m in manifests:
        with _one_supply(m, "geocode", alone=len(work_dirs) <= 1):
            schema = schema_for(m.feed)
            counts: dict[str, Any] = {}
            for name in m.files:
                feed_file = schema.file(name)
                result = geocoding.geocode(m.read_frame("clean", name), feed_file, reference, places,
                                           coverage_max_m=schema.coverage_max_m)
                m.write_frame("geocoded", name, result.frame)
                unplaced = result.frame["geocode_method"].isin(list(geocoding.UNPLACED)).to_numpy(bool) \
                    if feed_file.location.columns else np.zeros(len(result.frame), bool)
                reasons = geocoding.problem_reasons(result.frame.loc[unplaced, "geocode_note"])
                # Loaded without a point: the partner is told which rows and why, never the values.
                m.set_flagged("geocode", name, pd.DataFrame({
                    "source_file": name, "source_row": result.frame.loc[unplaced, "source_row"].to_numpy(),
                    "reason": reasons.to_numpy(object), "stage": "geocode"}))
                counts[name] = {**result.counts, "unplaced": int(unplaced.sum()),
                                "unplaced_by_reason": {str(k): int(v) for k, v in reasons.value_counts().items()}}
            m.stages["geocoding"] = counts
            m.save()
    return work_dirs


# --- stage 6: sanitise ------------------------------------------------------------------------------

def _period_end(schema: FeedSchema, period: str) -> pd.Timestamp:
    start = pd.Timestamp(datetime.strptime(period, schema.period_format))
    return (start + pd.offsets.MonthEnd(0)).normalize()


def sanitise(work_dirs: list[str], settings: Settings | None = None,
             services: Services | None = None) -> list[str]:
    """Depersonalise each record (Appendix 1) and measure what could still single anyone out."""
    from csp_observatory import disclosure, sanitising, sanitising_checks, sanitising_displacement

    settings = settings or load_settings()
    svc = _services(settings, services)
    manifests = [m for m in _in_flight(work_dirs) if m.ok]
    if not manifests:
        return work_dirs
    with svc.db() as conn:
        reference = _postcode_reference(conn)
    maps: dict[tuple[int, str], Any] = {}
    for m in manifests:
        with _one_supply(m, "sanitise", alone=len(work_dirs) <= 1):
            schema = schema_for(m.feed)
            if schema.personalised:
                # Personalised feeds are stored whole, apart, with restricted access (section 3.2).
                for name in m.files:
                    m.write_frame("sanitised", name, _keyed(m.read_frame("geocoded", name), schema.file(name)))
                m.save()
                continue
            # One map per (threshold, displacement), kept on disk per reference version: built once, then reused.
            # Beside staging, not in it: staging holds only a supply's plaintext and goes with it.
            key = (schema.household_threshold, schema.displacement)
            if key not in maps:
                maps[key] = sanitising_displacement.cached_displacement(
                    reference, *key, cache_dir=Path(settings.staging_dir).parent / "cache" / "displacement_maps")
            summaries: dict[str, Any] = {}
            risks: dict[str, Any] = {}
            for name in m.files:
                feed_file = schema.file(name)
                result = sanitising.sanitise(m.read_frame("geocoded", name), feed_file, maps[key],
                                             period_end=_period_end(schema, m.period))
                problems = sanitising_checks.check_sanitised(result.frame, maps[key], feed_file)
                if problems:
                    # Never load something that breaks Appendix 1: stop the supply and say why.
                    raise RuntimeError(f"{m.supply_id} {name}: sanitised output breaks Appendix 1: {problems[:5]}")
                frame = result.frame
                categories = feed_file.by_role("category")
                report = disclosure.k_anonymity(frame, disclosure.quasi_identifiers_for(feed_file),
                                                k_threshold=schema.min_k,
                                                sensitive=categories[0].name if categories else None)
                if schema.min_k:
                    try:
                        frame, withheld = disclosure.enforce_min_k(frame, report, schema.min_k, mode=schema.min_k_mode)
                        m.set_rejected("disclosure", name, withheld.assign(source_file=name, stage="disclosure"))
                    except disclosure.DisclosureBlocked as blocked:
                        m.status = "blocked"
                        m.problems.append({"file": name, "remote_name": m.files[name].remote_name,
                                           "reason": str(blocked)})
                m.write_frame("sanitised", name, _keyed(frame, feed_file))
                summaries[name] = result.summary
                risks[name] = report.as_dict()
            m.stages["sanitising"] = summaries
            m.stages["disclosure"] = risks
            m.save()
    return work_dirs


def _keyed(frame: pd.DataFrame, feed_file: Any) -> pd.DataFrame:
    """The frame with its content key, for a file with no reference number (``key: content``)."""
    from csp_observatory import loading

    if not feed_file.content_key:
        return frame
    columns = [c for c in feed_file.field_names if c in frame.columns]
    return frame.assign(**{CONTENT_KEY_COLUMN: loading.content_keys(frame, columns)})


# --- stage 7: load ----------------------------------------------------------------------------------

def load(work_dirs: list[str], settings: Settings | None = None, confirmed: list[str] | None = None,
         services: Services | None = None) -> list[str]:
    """Load each supply in one transaction; the ledger marks its files loaded in the same commit.

    A re-sent period that would remove more than the feed's ``resend_max_loss`` of the rows loaded for it (a
    header-only file, a partial extract) is held, not loaded, until an engineer confirms it by triggering the
    feed's DAG with ``{"confirm_replace": ["<period>"]}``; the files stay in the inbox for that run.
    """
    from csp_observatory import ddl, ledger, loading, metadata, metadata_catalogue, metadata_docs, metadata_file

    settings = settings or load_settings()
    svc = _services(settings, services)
    for m in _in_flight(work_dirs):
        with _one_supply(m, "load", alone=len(work_dirs) <= 1):
            if not m.ok:
                continue
            schema = schema_for(m.feed)
            # Read one file at a time while it is loaded, never all at once (memory at 1M offences: issue 9).
            tables = loading.LazyFrames(m.files, lambda name, m=m: m.read_frame("sanitised", name))
            shas = [f.sha256 for f in m.files.values()]
            # Read at parse time; a manifest from before metadata was read (an older run) is read now.
            checked = m.stages.get("metadata") or _check_metadata(m, schema, {})
            m.stages["metadata"] = checked
            with svc.db() as conn:
                ddl.ensure_database(conn)
                ddl.ensure_feed_tables(conn, schema)
                metadata_catalogue.ensure_catalogue(conn)
                conn.commit()
                # The feed's first supply must bring its metadata (section 3.4): without it nothing is loaded and
                # the files stay in the inbox until it arrives.
                checked["required"] = metadata_catalogue.first_supply_needs_metadata(conn, schema.feed)
                md = None
                if m.metadata is not None and not checked.get("refused"):
                    with staging.local_file(m.metadata.plaintext_path or "") as plain:
                        md = metadata_file.read_metadata(plain, schema)
                if checked["required"] and md is None:
                    if m.metadata is None:
                        m.status = "needs_metadata"
                        m.problems.append({"file": "metadata", "remote_name": checked["expected"],
                                           "reason": metadata.missing_reason(schema, m.period)})
                        log.warning("%s not loaded: the feed's first supply carries no metadata file", m.supply_id)
                    else:
                        with svc.sftp() as client:
                            _refuse(m, settings, client, m.metadata, metadata.refused_reason(
                                schema, checked["refused"], required=True, remote_name=m.metadata.remote_name),
                                "refused", conn)
                    m.save()
                    continue
                losses = loading.resend_losses(loading.loaded_counts(conn, schema, m.supply_id),
                                               {name: tables.shape(name)[1] for name in tables}, schema.resend_max_loss)
                if losses and m.period not in (confirmed or []):
                    m.status = "held"
                    for name, (was, now) in losses.items():
                        m.problems.append({"file": name, "remote_name": m.files[name].remote_name, "reason": (
                            f"this re-sent {name} file has {now:,} usable rows where {was:,} are loaded for the "
                            f"period: loading it would remove {was - now:,} of them. It is held for an engineer to "
                            f"confirm; if it is a mistake, send the full file again.")})
                    log.warning("%s held: a re-send would remove most of the loaded rows %s; confirm with the DAG "
                                "param confirm_replace=[%r]", m.supply_id, losses, m.period)
                    m.save()
                    continue
                if md is not None:
                    shas.append(m.metadata.sha256)      # type: ignore[union-attr]  # md came from it
                shown: list[Any] = []

                def catalogue(c: Any, md: Any = md, sid: str = m.supply_id, found: Any = checked["mismatches"],
                              shown: list[Any] = shown) -> None:
                    shown.append(_catalogue(c, schema, sid, md, found))

                result = loading.load_supply(
                    conn, schema, m.supply_id, m.period, tables,
                    lineage={name: f.sha256 for name, f in m.files.items()},
                    rejected=m.rejected(),
                    validation={k: v["summary"] for k, v in m.stages.get("validation", {}).items()},
                    on_commit_ledger=lambda c, shas=shas, sid=m.supply_id: ledger.mark_loaded(c, shas, sid),
                    in_transaction=catalogue,
                )
            m.status = "loaded"
            m.stages["load"] = result.to_dict() if hasattr(result, "to_dict") else asdict(result)
            checked["recorded"] = md is not None
            m.save()
            try:
                metadata_docs.write_dag_doc(settings.reports_dir, schema.feed, shown[0] if shown else None)
            except OSError:
                log.exception("%s loaded, but the DAG docs' caveats could not be written", m.supply_id)
    return work_dirs


def loaded_supplies(work_dirs: list[str] | None) -> list[dict[str, Any]]:
    """What the load committed, per supply: ``{"supply_id", "feed", "period", "rows": {table: n}}`` for each supply of
    the run whose status is ``loaded`` (none for a held, refused or failed one). The DAG layer puts it in the asset
    events of the feed's tables, so that the refreshes downstream know which feed and period changed."""
    out = []
    for m in _in_flight(work_dirs):
        if m.status != "loaded":
            continue
        rows = (m.stages.get("load") or {}).get("rows") or {}
        out.append({"supply_id": m.supply_id, "feed": m.feed, "period": m.period,
                    "rows": {str(k): int(v) for k, v in rows.items()}})
    return out


def _catalogue(conn: Any, schema: FeedSchema, supply_id: str, md: Any, mismatches: list[dict[str, Any]]) -> Any:
    """Inside the load's transaction: catalogue the supply's metadata (if it has any), and put the feed's latest
    caveats and explanations in its tables' and columns' comments (``ensure_feed_tables`` may just have written
    the schema's own over them). Returns the latest metadata, for the DAG's docs once the load has committed."""
    from csp_observatory import metadata, metadata_catalogue

    if md is not None:
        metadata_catalogue.record(conn, supply_id, md, [metadata.Mismatch(**x) for x in mismatches])
    latest = metadata_catalogue.latest(conn, schema.feed)
    if latest is not None:
        metadata_catalogue.apply_comments(conn, schema, latest)
    return latest


# --- stage 8: report and archive --------------------------------------------------------------------

def report_and_archive(feed: str, work_dirs: list[str] | None, settings: Settings | None = None,
                       services: Services | None = None) -> dict[str, Any]:
    """Write each supply's quality report, give the partner a copy, move loaded originals to processed/."""
    from csp_observatory import intake, reporting, sftp

    settings = settings or load_settings()
    svc = _services(settings, services)
    schema = schema_for(feed)
    outcome: dict[str, Any] = {"feed": feed, "supplies": []}
    manifests = _in_flight(work_dirs)
    if not manifests:
        return outcome
    with svc.sftp() as client:
        for m in manifests:
            if m.status == "collected":
                # A stage failed part-way (the task log says why); the original stays in the inbox for a re-run.
                m.status = "failed"
            if m.status == "loaded":
                for f in m.files.values():
                    intake.archive(client, settings, m.partner, f.remote_name)
                if m.metadata is not None:
                    _archive_metadata(m, schema, settings, client, svc)
            elif m.status == "blocked":
                # Publishing it would single people out: the partner gets it back with the reason.
                reason = "; ".join(p["reason"] for p in m.problems)
                with svc.db() as conn:
                    for f in m.all_files:
                        _quarantine(settings, client, conn, m.partner, f, reason)
            report = reporting.build_report(schema, m, settings)
            folder = Path(settings.reports_dir) / feed / m.period
            json_path, html_path = reporting.write_report(report, folder)
            # The quality stamp analysts read (dq schema) and the report in observatory.supplies, in one transaction.
            from csp_observatory.stamp import stamp_supply
            stamp_supply(settings, schema, report, m.partner, m.collected_at, db=svc.db)
            partner = reporting.partner_view(report)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            base = f"{feed}_{m.period}_quality_{stamp}"
            reports = settings.partner_folder(m.partner, "reports")
            sftp.put_text(client, f"{reports}/{base}.html", reporting.render_html(partner))
            sftp.put_text(client, f"{reports}/{base}.json", json.dumps(partner, indent=1, default=str))
            _delete_plaintext(m)
            m.save()
            outcome["supplies"].append({"supply_id": m.supply_id, "status": m.status, "report": str(html_path),
                                        "json": str(json_path), "headline": report["headline"],
                                        **{k: report["outcome"][k] for k in ("level", "reasons")}})
    return outcome


def _archive_metadata(m: Manifest, schema: FeedSchema, settings: Settings, client: Any, svc: Services) -> None:
    """After a load: the metadata file goes to processed/, or, if it could not be read, to quarantine/ with why."""
    from csp_observatory import intake, metadata

    refused = (m.stages.get("metadata") or {}).get("refused")
    f = m.metadata
    assert f is not None
    if not refused:
        intake.archive(client, settings, m.partner, f.remote_name)
        return
    reason = metadata.refused_reason(schema, refused, required=False, remote_name=f.remote_name)
    with svc.db() as conn:
        _quarantine(settings, client, conn, m.partner, f, reason)
    m.problems.append({"file": f.name, "remote_name": f.remote_name, "reason": reason})


class SupplyNotLoaded(RuntimeError):
    """A supply of the run was not loaded (refused, malformed, held, blocked or failed)."""


class SupplyHasProblems(RuntimeError):
    """Every supply of the run loaded, but at least one with problems to look at (amber)."""


def verdict(outcome: dict[str, Any] | None) -> str:
    """The run's verdict from ``report_and_archive``'s outcome: raise unless every supply is green.

    Red (not loaded) raises SupplyNotLoaded, amber (loaded with problems) SupplyHasProblems, so that the task,
    and with it the Airflow run, shows that this is not a plain success; the message names each supply and why.
    A run that found no supply is fine: most daily polls find nothing.
    """
    supplies = (outcome or {}).get("supplies") or []
    lines = [f"{s['supply_id']}: {s.get('level', 'red').upper()}: {s.get('headline', s['status'])}"
             + "".join(f"\n  - {r}" for r in s.get("reasons") or []) for s in supplies]
    if any(s.get("level") == "red" for s in supplies):
        raise SupplyNotLoaded("\n".join(lines))
    if any(s.get("level") == "amber" for s in supplies):
        raise SupplyHasProblems("\n".join(lines))
    return "\n".join(lines) or "no supply was ready"
