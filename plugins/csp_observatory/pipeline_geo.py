"""Stages 4 to 6 of a supply: clean it (and count broken links between its files), geocode it, and sanitise
it (Appendix 1 of the guidance, then the disclosure check)."""
from __future__ import annotations

from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from csp_observatory.config import Settings, load_settings
from csp_observatory.pipeline_supply import (Manifest, Services, _in_flight, _one_supply, _services, each_file,
                                             supply_schema)
from csp_observatory.schema import CONTENT_KEY_COLUMN, FeedSchema


# --- stage 4: clean ---------------------------------------------------------------------------------

def clean(work_dirs: list[str], settings: Settings | None = None, services: Services | None = None) -> list[str]:
    """Normalise postcodes, dates, codes and whitespace; remove duplicates by reference number."""
    for m in _in_flight(work_dirs):
        with _one_supply(m, "clean", alone=len(work_dirs) <= 1):
            if not m.ok:
                continue
            schema = supply_schema(m)
            link_columns = _link_columns(schema)
            done = each_file(settings, m, "parsed",
                             {name: partial(_clean_file, m, schema, name, link_columns.get(name)) for name in m.files})
            m.stages["cleaning"] = {name: changes for name, (changes, _) in done.items()}
            # only the link columns, for _link_problems: no re-reading
            m.stages["links"] = _link_problems(m, schema, {name: kept for name, (_, kept) in done.items()
                                                           if kept is not None})
            m.save()
    return work_dirs


def _clean_file(m: Manifest, schema: FeedSchema, name: str,
                link_columns: list[str] | None) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """One file cleaned and staged (``clean``), its removed rows recorded: returns its changes, and its link columns
    (``link_columns``) for :func:`_link_problems`."""
    from csp_observatory import cleaning

    result = cleaning.clean(m.read_frame("parsed", name), schema.file(name))
    m.set_rejected("clean", name, result.removed)
    m.write_frame("clean", name, result.frame)
    kept = result.frame[[c for c in dict.fromkeys(link_columns) if c in result.frame]] if link_columns else None
    return result.changes, kept


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


def _located_supplies(work_dirs: list[str], settings: Settings | None, services: Services | None,
                      with_places: bool = False) -> tuple[Settings, list[Manifest], pd.DataFrame, Any]:
    """What the geocode and sanitise stages start from: the settings, the supplies still in flight, and the postcode
    reference (and the gazetteer, ``with_places``) read once for all of them; with no supply, nothing is read."""
    settings = settings or load_settings()
    manifests = [m for m in _in_flight(work_dirs) if m.ok]
    if not manifests:
        return settings, [], pd.DataFrame(), None
    from csp_observatory import gazetteer

    with _services(settings, services).db() as conn:
        return (settings, manifests, _postcode_reference(conn),
                gazetteer.read_places(conn) if with_places else None)


def geocode(work_dirs: list[str], settings: Settings | None = None,
            services: Services | None = None) -> list[str]:
    """Give every record an easting/northing and say how it got them."""
    settings, manifests, reference, places = _located_supplies(work_dirs, settings, services, with_places=True)
    for m in manifests:
        with _one_supply(m, "geocode", alone=len(work_dirs) <= 1):
            schema = supply_schema(m)
            m.stages["geocoding"] = each_file(settings, m, "clean", {
                name: partial(_geocode_file, m, schema, name, reference, places) for name in m.files})
            m.save()
    return work_dirs


def _geocode_file(m: Manifest, schema: FeedSchema, name: str, reference: pd.DataFrame,
                  places: Any) -> dict[str, Any]:
    """One file geocoded and staged (``geocoded``), its unplaced rows flagged; returns its counts."""
    from csp_observatory import geocoding

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
    return {**result.counts, "unplaced": int(unplaced.sum()),
            "unplaced_by_reason": {str(k): int(v) for k, v in reasons.value_counts().items()}}


# --- stage 6: sanitise ------------------------------------------------------------------------------

def _period_end(schema: FeedSchema, period: str) -> pd.Timestamp:
    start = pd.Timestamp(datetime.strptime(period, schema.period_format))
    return (start + pd.offsets.MonthEnd(0)).normalize()


def sanitise(work_dirs: list[str], settings: Settings | None = None,
             services: Services | None = None) -> list[str]:
    """Depersonalise each record (Appendix 1) and measure what could still single anyone out."""
    from csp_observatory import sanitising_displacement

    settings, manifests, reference, _ = _located_supplies(work_dirs, settings, services)
    maps: dict[tuple[int, str], Any] = {}
    for m in manifests:
        with _one_supply(m, "sanitise", alone=len(work_dirs) <= 1):
            schema = supply_schema(m)
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
            done = each_file(settings, m, "geocoded",
                             {name: partial(_sanitise_file, m, schema, name, maps[key]) for name in m.files})
            for name, (_, _, blocked) in done.items():
                if blocked is not None:
                    m.status = "blocked"
                    m.problems.append({"file": name, "remote_name": m.files[name].remote_name, "reason": blocked})
            m.stages["sanitising"] = {name: summary for name, (summary, _, _) in done.items()}
            m.stages["disclosure"] = {name: risk for name, (_, risk, _) in done.items()}
            m.save()
    return work_dirs


def _sanitise_file(m: Manifest, schema: FeedSchema, name: str,
                   displacement: Any) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """One file sanitised (Appendix 1), checked, held to the feed's minimum k and staged (``sanitised``): returns
    its sanitising summary, its disclosure risk, and why it blocks the supply (None if it does not)."""
    from csp_observatory import disclosure, sanitising, sanitising_checks

    feed_file = schema.file(name)
    result = sanitising.sanitise(m.read_frame("geocoded", name), feed_file, displacement,
                                 period_end=_period_end(schema, m.period))
    problems = sanitising_checks.check_sanitised(result.frame, displacement, feed_file)
    if problems:
        # Never load something that breaks Appendix 1: stop the supply and say why.
        raise RuntimeError(f"{m.supply_id} {name}: sanitised output breaks Appendix 1: {problems[:5]}")
    frame = result.frame
    categories = feed_file.by_role("category")
    report = disclosure.k_anonymity(frame, disclosure.quasi_identifiers_for(feed_file), k_threshold=schema.min_k,
                                    sensitive=categories[0].name if categories else None)
    blocked = None
    if schema.min_k:
        try:
            frame, withheld = disclosure.enforce_min_k(frame, report, schema.min_k, mode=schema.min_k_mode)
            m.set_rejected("disclosure", name, withheld.assign(source_file=name, stage="disclosure"))
        except disclosure.DisclosureBlocked as exc:
            blocked = str(exc)
    m.write_frame("sanitised", name, _keyed(frame, feed_file))
    return result.summary, report.as_dict(), blocked


def _keyed(frame: pd.DataFrame, feed_file: Any) -> pd.DataFrame:
    """The frame with its content key, for a file with no reference number (``key: content``)."""
    from csp_observatory import record_keys

    if not feed_file.content_key:
        return frame
    columns = [c for c in feed_file.field_names if c in frame.columns]
    return frame.assign(**{CONTENT_KEY_COLUMN: record_keys.content_keys(frame, columns)})
