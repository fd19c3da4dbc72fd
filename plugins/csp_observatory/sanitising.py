"""Sanitise geocoded records (Appendix 1 of the guidance): move every point to a safe postcode centroid.

Appendix 1 rule: a record geocoded to an address takes the centroid of its postcode; if that postcode
holds fewer than ``threshold`` (four) households, it takes the centroid of the next nearest postcode
that holds at least ``threshold``. The address loses its house number, house name and flat number,
and a postcode with too few households is replaced by the postcode the record moved to.

Beyond Appendix 1 (issue 6): every free-text datafield of a depersonalised feed has a rule in its schema.
``free_text: drop`` removes the column; ``free_text: scrub`` replaces postcodes, house numbers with a street,
dates, phone numbers, e-mail addresses and names with markers (``scrubbing.py``, which says what it cannot
catch); a code list is validated upstream. Address text is scrubbed too, after ``addresses.py``. What columns
are dropped or rewritten by role is listed once, in ``schema.py`` (``DROPPED_ON_SANITISING``,
``REWRITTEN_ON_SANITISING``).

How "next nearest" is decided (``build_displacement``), and documented here because it must be exact
and reproducible (the PostGIS oracle test and the benchmark check it record by record):

- Targets are the live (not terminated) postcodes with ``households >= threshold``. Terminated
  postcodes are origins only: a record in one always moves.
- A target postcode maps to itself (rule ``own_postcode``).
- Any other postcode maps, by the feed's ``sanitising.displacement`` setting, either
  - (``nearest``, the default: Appendix 1's "next nearest postcode") to the nearest target (``next_nearest``), or
  - (``same_ward_first``, a per-feed option that keeps points inside their ward where it can) to the nearest
    target in the **same ward** (``same_ward``); if its ward has no target, the nearest in the **same
    district** (``same_district``); otherwise the nearest **anywhere** (``anywhere``). A postcode with no
    ward (or district) skips that level.
- Distance is Euclidean between postcode centroids in EPSG:27700 metres (integer coordinates, so equal
  distances are exactly equal in floating point).
- **Ties** (several targets at exactly the same distance) are broken by the target postcode string in
  ascending order (Python / PostgreSQL ``COLLATE "C"`` byte order), i.e. ``ORDER BY distance, postcode``.

Implementation: one cKDTree per level over the targets, with the ward (or district) as a third
coordinate scaled far beyond any distance in Great Britain, so the nearest neighbour in 3-D is the
nearest in the same ward whenever the ward has a target. Queries ask for several neighbours and widen
where all of them tie, so the tie rule is applied exactly.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pac
from scipy.spatial import cKDTree

from csp_observatory import scrubbing
from csp_observatory.addresses import address_leaks, sanitise_addresses
from csp_observatory.postcodes import PostcodeLookup
from csp_observatory.schema import FeedFile

RULES: Final = ("own_postcode", "next_nearest", "same_ward", "same_district", "anywhere", "non_addressable",
                 "not_geocoded")
POSTCODE_RULES: Final = RULES[:5]
#: Rules of records moved to another postcode's centroid.
MOVED_RULES: Final = RULES[1:5]
#: How a postcode with too few households finds its target (schema ``sanitising.displacement``), level by level.
DISPLACEMENTS: Final = {
    "nearest": (("next_nearest", None),),
    "same_ward_first": (("same_ward", "ward_code"), ("same_district", "district_code"), ("anywhere", None)),
}
#: Histogram bins of displacement in metres, as reported in the summary.
DISPLACEMENT_BINS: Final = (("0", 0.0, 0.0), ("1-50", 0.0, 50.0), ("50-100", 50.0, 100.0),
                            ("100-250", 100.0, 250.0), ("250-500", 250.0, 500.0),
                            ("500-1000", 500.0, 1000.0), (">1000", 1000.0, np.inf))
#: Larger than any distance between two points of the national grid, so levels never mix.
_LEVEL_GAP: Final = 1.0e7
_NO_POINT_METHODS: Final = frozenset({"failed"})
_GEO_COLUMNS: Final = ("geo_easting", "geo_northing", "geo_postcode", "geocode_note")


@dataclass(frozen=True)
class PostcodeMap:
    """Where a record in each postcode goes: one row per reference postcode, indexed by postcode."""

    #: index ``postcode``; columns ``target_postcode``, ``target_easting``, ``target_northing``, ``rule``,
    #: ``distance_m`` (origin centroid to target centroid), ``easting``, ``northing``, ``terminated``.
    table: pd.DataFrame
    threshold: int
    #: The displacement setting the map was built with (a key of DISPLACEMENTS).
    displacement: str = "nearest"
    _live_tree: Any = field(default=None, repr=False, compare=False)
    _arrays: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def _array(self, name: str) -> Any:
        """Column arrays (and the postcode index) converted once: lookups run per supply, on 1M records."""
        if name not in self._arrays:
            if name == "index":
                self._arrays[name] = pa.array(self.table.index.to_numpy(object), type=pa.string())
            elif name == "lookup":
                # integer codes, sorted once per map: a search per record, no hash table of 1.8M postcodes
                self._arrays[name] = PostcodeLookup(self._array("index"))
            elif name == "target_row":
                # each postcode's target as a row of the map (every target is a postcode of the map)
                self._arrays[name] = self._array("lookup").positions(self._array("target_postcode"))
            elif name == "rule_code":
                rules = self._array("rule")
                self._arrays[name] = pac.index_in(rules, value_set=pa.array(RULES)).fill_null(-1).to_numpy(
                    zero_copy_only=False).astype(np.int64)
            elif name in ("target_postcode", "rule"):
                self._arrays[name] = pa.array(self.table[name].to_numpy(object), type=pa.string())
            else:
                self._arrays[name] = self.table[name].to_numpy(float)
        return self._arrays[name]

    def prepare(self) -> PostcodeMap:
        """Build the lookup structures now (they are otherwise built on first use), so that sanitising a supply
        costs only its own records."""
        for name in ("lookup", "target_row", "rule_code", "target_easting", "target_northing", "easting",
                     "northing"):
            self._array(name)
        return self

    def positions(self, postcodes: pd.Series) -> np.ndarray:
        """Row number of each postcode in the map, -1 where it is not in the reference."""
        return self._array("lookup").positions(pa.array(pd.Series(postcodes).astype("string").array))

    def lookup(self, postcodes: pd.Series, pos: np.ndarray | None = None) -> pd.DataFrame:
        """The map rows for a Series of postcodes (NaN rows where a postcode is not in the reference)."""
        pos = self.positions(postcodes) if pos is None else pos
        hit = pos >= 0
        take = np.where(hit, pos, 0)
        cols = {}
        taker = pa.array(take, mask=~hit)
        for name in ("target_postcode", "rule"):
            # take in Arrow: no Python string objects for a million records
            cols[name] = pd.arrays.ArrowStringArray(self._array(name).take(taker))
        for name in ("target_easting", "target_northing", "distance_m", "easting", "northing"):
            cols[name] = np.where(hit, self._array(name)[take], np.nan)
        return pd.DataFrame(cols, index=postcodes.index)

    def targets(self) -> pd.DataFrame:
        """The eligible target postcodes (live, households >= threshold) with their centroids."""
        t = self.table
        return t.loc[t["rule"] == "own_postcode", ["easting", "northing"]]

    def nearest_live(self, easting: np.ndarray, northing: np.ndarray) -> np.ndarray:
        """The nearest live postcode to each point (for records with a point but no known postcode)."""
        live = self.table.index[~self.table["terminated"].to_numpy(bool)]
        tree = self._live_tree
        if tree is None:
            t = self.table.loc[live]
            tree = cKDTree(np.column_stack([t["easting"].to_numpy(float), t["northing"].to_numpy(float)]))
            object.__setattr__(self, "_live_tree", tree)
        _, idx = tree.query(np.column_stack([easting, northing]), k=1)
        return live.to_numpy(object)[idx]


@dataclass(frozen=True)
class SanitiseResult:
    """The depersonalised frame and what was done to it."""

    frame: pd.DataFrame
    summary: dict[str, Any]


def _nearest(target_xyz: np.ndarray, target_rank: np.ndarray, origin_xyz: np.ndarray,
             k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Index and distance of the nearest target per origin, ties broken by smallest rank (postcode order)."""
    n = len(origin_xyz)
    if n == 0 or len(target_xyz) == 0:
        return np.full(n, -1, dtype=np.int64), np.full(n, np.inf)
    tree = cKDTree(target_xyz, balanced_tree=False, compact_nodes=False)
    best = np.full(n, -1, dtype=np.int64)
    best_d = np.full(n, np.inf)
    todo = np.arange(n)
    while len(todo):
        kk = min(k, len(target_xyz))
        d, i = tree.query(origin_xyz[todo], k=kk, workers=-1)
        d = d.reshape(len(todo), kk)
        i = i.reshape(len(todo), kk)
        tied = d == d[:, :1]
        ranks = np.where(tied, target_rank[np.minimum(i, len(target_xyz) - 1)], np.iinfo(np.int64).max)
        pick = ranks.argmin(axis=1)
        rows = np.arange(len(todo))
        best[todo] = i[rows, pick]
        best_d[todo] = d[:, 0]
        # every neighbour returned ties with the nearest: there may be more tied targets beyond k
        widen = tied[:, -1] & (kk < len(target_xyz))
        todo = todo[widen]
        k *= 4
    return best, best_d


def build_displacement(reference: pd.DataFrame, threshold: int = 4, displacement: str = "nearest") -> PostcodeMap:
    """Decide, for every reference postcode, which postcode centroid a record in it is moved to."""
    ref = reference.drop_duplicates("postcode", keep="first").reset_index(drop=True)
    pc = ref["postcode"].astype(str).to_numpy(object)
    e = pd.to_numeric(ref["easting"]).to_numpy(float)
    n = pd.to_numeric(ref["northing"]).to_numpy(float)
    hh = pd.to_numeric(ref["households"]).fillna(0).to_numpy(float)
    terminated = ref["terminated"].fillna(False).to_numpy(bool)
    eligible = (~terminated) & (hh >= threshold)

    target_idx = np.flatnonzero(eligible)
    # rank of each target in ascending postcode order: the documented tie-break
    order = np.argsort(pc[target_idx].astype(str), kind="stable")
    target_rank = np.empty(len(target_idx), dtype=np.int64)
    target_rank[order] = np.arange(len(target_idx))

    result = np.where(eligible, np.arange(len(ref)), -1)
    rule = np.where(eligible, "own_postcode", "").astype(object)
    pending = np.flatnonzero(~eligible)
    if displacement not in DISPLACEMENTS:
        raise ValueError(f"displacement must be one of {sorted(DISPLACEMENTS)}, not {displacement!r}")
    for level, col in DISPLACEMENTS[displacement]:
        if len(pending) == 0:
            break
        if col is None:
            z = np.zeros(len(ref))
            has = np.ones(len(ref), dtype=bool)
        else:
            codes, _ = pd.factorize(ref[col].astype(object).where(ref[col].notna() & (ref[col] != ""), None))
            z = codes.astype(float) * _LEVEL_GAP
            has = codes >= 0
        origins = pending[has[pending]]
        txyz = np.column_stack([e[target_idx], n[target_idx], z[target_idx]])
        oxyz = np.column_stack([e[origins], n[origins], z[origins]])
        hit, dist = _nearest(txyz, target_rank, oxyz)
        found = (hit >= 0) & (dist < _LEVEL_GAP / 2)
        chosen = origins[found]
        result[chosen] = target_idx[hit[found]]
        rule[chosen] = level
        pending = np.setdiff1d(pending, chosen, assume_unique=True)
    if len(pending):
        raise ValueError(f"no postcode in the reference has at least {threshold} households")

    table = pd.DataFrame({
        "target_postcode": pd.array(pc[result], dtype="string"),
        "target_easting": e[result], "target_northing": n[result],
        "rule": pd.array(rule, dtype="string"),
        "distance_m": np.hypot(e[result] - e, n[result] - n),
        "easting": e, "northing": n, "terminated": terminated,
    }, index=pd.Index(pc, name="postcode", dtype=object))
    return PostcodeMap(table=table, threshold=threshold, displacement=displacement)


#: Bump when build_displacement's rules or the map's columns change: older cached maps are then never read.
MAP_FORMAT: Final = 1
_REFERENCE_COLUMNS: Final = ("postcode", "easting", "northing", "households", "terminated", "ward_code",
                             "district_code")


def reference_digest(reference: pd.DataFrame) -> str:
    """A checksum of what the displacement map depends on: every reference row's postcode, point, households,
    terminated flag, ward and district, in order (hashing 1.8M rows takes well under a second)."""
    cols = [c for c in _REFERENCE_COLUMNS if c in reference.columns]
    digest = hashlib.sha256(f"{MAP_FORMAT}:{len(reference)}:{','.join(cols)}".encode())
    digest.update(pd.util.hash_pandas_object(reference[cols], index=False).to_numpy().tobytes())
    return digest.hexdigest()[:32]


def cached_displacement(reference: pd.DataFrame, threshold: int = 4, displacement: str = "nearest",
                        cache_dir: Path | None = None) -> PostcodeMap:
    """``build_displacement``, kept on disk per reference version (its checksum), threshold and setting.

    The map depends only on those, so a supply reuses the map an earlier run built from the same reference;
    a reloaded reference has another checksum and gets a new map. Without ``cache_dir`` it is built.
    """
    if cache_dir is None:
        return build_displacement(reference, threshold, displacement)
    path = Path(cache_dir) / f"map-{reference_digest(reference)}-{int(threshold)}-{displacement}.parquet"
    if path.exists():
        try:
            table = pd.read_parquet(path)
            table.index = pd.Index(table.index.to_numpy(object), name="postcode", dtype=object)   # as built
            return PostcodeMap(table=table, threshold=threshold, displacement=displacement).prepare()
        except Exception:       # a damaged file (a full disk, a killed write): build it again
            path.unlink(missing_ok=True)
    built = build_displacement(reference, threshold, displacement)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.name}.{os.getpid()}.part")
    built.table.to_parquet(part)
    os.replace(part, path)      # atomic: a concurrent reader sees the whole map or none
    return built.prepare()


def _whole_years(born: pd.Series, at: pd.Series) -> pd.Series:
    """Age in completed years at a date (vectorised; NaT gives <NA>)."""
    born = pd.to_datetime(born)
    at = pd.to_datetime(at)
    years = at.dt.year - born.dt.year
    before_birthday = (at.dt.month < born.dt.month) | ((at.dt.month == born.dt.month) & (at.dt.day < born.dt.day))
    return (years - before_birthday.astype("Int64")).astype("Int64")


def _taken(values: pa.Array, rows: np.ndarray, index: pd.Index) -> pd.Series:
    """``values[rows]`` as a ``string`` Series (missing where a row is -1), taken in Arrow."""
    taken = values.take(pa.array(rows, mask=rows < 0))
    return pd.Series(pd.arrays.ArrowStringArray(taken.cast(pa.large_string())), index=index).astype("string")


def sanitise(frame: pd.DataFrame, feed_file: FeedFile, postcode_map: PostcodeMap,
             event_dates: pd.Series | None = None, period_end: Any = None) -> SanitiseResult:
    """Depersonalise a geocoded frame: safe points and postcodes, clean addresses, no names or birth dates."""
    out = frame.copy(deep=False)     # columns are replaced, never changed in place (copy-on-write)
    idx = out.index
    method = out["geocode_method"].astype("string").fillna("failed") if "geocode_method" in out \
        else pd.Series("failed", index=idx, dtype="string")
    geo_e = pd.to_numeric(out.get("geo_easting", pd.Series(np.nan, index=idx)), errors="coerce").astype(float)
    geo_n = pd.to_numeric(out.get("geo_northing", pd.Series(np.nan, index=idx)), errors="coerce").astype(float)
    geo_pc = out.get("geo_postcode", pd.Series(pd.NA, index=idx)).astype("string")

    gazetteer = (method == "gazetteer").to_numpy(bool)
    has_point = geo_e.notna().to_numpy() & geo_n.notna().to_numpy()
    addressable = ~gazetteer & ~method.isin(list(_NO_POINT_METHODS)).to_numpy(bool)
    # a record with a point but no postcode we know goes to the nearest live postcode first
    pos = postcode_map.positions(geo_pc)
    need_nearest = addressable & (pos < 0) & has_point
    if need_nearest.any():
        geo_pc = geo_pc.copy()
        geo_pc.iloc[np.flatnonzero(need_nearest)] = postcode_map.nearest_live(
            geo_e.to_numpy()[need_nearest], geo_n.to_numpy()[need_nearest])
        pos = postcode_map.positions(geo_pc)
    # integer rows of the map throughout: no Python string per record (1M records in a fraction of a second)
    hit = pos >= 0
    at = np.where(hit, pos, 0)
    target = np.where(hit, postcode_map._array("target_row")[at], -1)
    mapped = addressable & (target >= 0)

    s_e = np.where(mapped, postcode_map._array("target_easting")[at], np.nan)
    s_n = np.where(mapped, postcode_map._array("target_northing")[at], np.nan)
    s_e = np.where(gazetteer & has_point, geo_e.to_numpy(), s_e)
    s_n = np.where(gazetteer & has_point, geo_n.to_numpy(), s_n)
    s_pc = _taken(postcode_map._array("index"), np.where(mapped | gazetteer, target, -1), idx)
    rules = np.where(mapped, postcode_map._array("rule_code")[at], RULES.index("not_geocoded"))
    rules[gazetteer & has_point] = RULES.index("non_addressable")
    # where the record had no precise point (postcode-only), displacement is from its postcode centroid
    from_e = np.where(has_point, geo_e.to_numpy(), np.where(hit, postcode_map._array("easting")[at], np.nan))
    from_n = np.where(has_point, geo_n.to_numpy(), np.where(hit, postcode_map._array("northing")[at], np.nan))
    disp = np.where(mapped, np.hypot(s_e - from_e, s_n - from_n), np.nan)
    disp[gazetteer & has_point] = 0.0

    loc = feed_file.location
    scrubbed: dict[str, dict[str, int]] = {}
    if loc.address and loc.address in out:
        text = out[loc.address]
        # Every text is cleaned, non-addressable ones too: Appendix 1 does not require it for a park or a car
        # park, but a text wrongly taken for one must not keep a house name ("Rose Cottage, ...").
        # Then what addresses.py does not look for (an e-mail address, "c/o Mrs Smith") is scrubbed.
        out[loc.address], scrubbed[loc.address] = scrubbing.scrub(sanitise_addresses(text, postcodes=s_pc),
                                                                   "address")
    for f in feed_file.datafields:
        if f.free_text == "scrub" and f.name in out:
            out[f.name], scrubbed[f.name] = scrubbing.scrub(out[f.name])
    if loc.postcode and loc.postcode in out:
        out[loc.postcode] = s_pc
    others = {name: sanitise_other_location(out, other, postcode_map, scrubbed)
              for name, other in feed_file.other_locations}

    # each date of birth -> its own person's age at the event (or at the end of the supply period); every date of
    # birth is then dropped by role below, paired or not
    pairs = [(dob, age) for dob, age in feed_file.age_pairs if dob in out]
    if pairs:
        if event_dates is None and feed_file.event_date and feed_file.event_date in out:
            event_dates = out[feed_file.event_date]
        at = pd.Series(pd.NaT, index=idx, dtype="datetime64[ns]")
        if event_dates is not None:
            at = pd.to_datetime(pd.Series(event_dates, index=idx))
        if period_end is not None:
            at = at.fillna(pd.Timestamp(period_end))
        for dob, age_col in pairs:
            age = _whole_years(out[dob], at)
            if age_col in out:
                # the age sent stands where there is no date of birth (or no date to measure it at)
                age = age.fillna(pd.to_numeric(out[age_col], errors="coerce").astype("Int64"))
            out[age_col] = age

    drop = [f.name for f in feed_file.datafields if f.dropped_on_sanitising and f.name in out]
    drop += [c for c in _GEO_COLUMNS if c in out]
    out = out.drop(columns=drop)
    out["sanitised_postcode"] = s_pc
    out["sanitised_easting"] = pd.array(s_e, dtype="Float64")
    out["sanitised_northing"] = pd.array(s_n, dtype="Float64")
    out["sanitise_rule"] = _taken(pa.array(RULES, pa.string()), rules, idx).array
    out["displacement_m"] = pd.array(disp, dtype="Float64")
    summary = summarise(out)
    summary["displacement"] = postcode_map.displacement    # named in the report: how "next nearest" was read
    if others:
        summary["other_locations"] = others
    # counts by kind per column, never the values (the report shows them)
    summary["scrubbed"] = scrubbed
    return SanitiseResult(frame=out, summary=summary)


def sanitise_other_location(out: pd.DataFrame, loc: Any, postcode_map: PostcodeMap,
                            scrubbed: dict[str, dict[str, int]]) -> dict[str, int]:
    """Sanitise a further location of a record (a vehicle keeper's or a patient's home) to postcode level, in place.

    Its postcode becomes the map's target (itself when it has enough households, else the next nearest that has);
    a postcode the reference does not know is removed. Its address loses house numbers and names, keeps only that
    sanitised postcode, and is scrubbed. Its coordinates are dropped by role, like every exact point.
    Returns counts by outcome, never values.
    """
    from csp_observatory.postcodes import normalise_postcodes

    idx = out.index
    if loc.postcode and loc.postcode in out:
        given = normalise_postcodes(out[loc.postcode])
        looked = postcode_map.lookup(given)
        target = pd.Series(looked["target_postcode"].to_numpy(object), index=idx, dtype="string")
        rule = pd.Series(looked["rule"].to_numpy(object), index=idx, dtype="string")
        out[loc.postcode] = target
    else:
        given = target = pd.Series(pd.NA, index=idx, dtype="string")
        rule = pd.Series(pd.NA, index=idx, dtype="string")
    if loc.address and loc.address in out:
        out[loc.address], scrubbed[loc.address] = scrubbing.scrub(
            sanitise_addresses(out[loc.address], postcodes=target), "address")
    return {"own_postcode": int((rule == "own_postcode").sum()),
            "moved": int((rule.notna() & (rule != "own_postcode")).sum()),
            "postcode_unknown": int((given.notna() & target.isna()).sum()),
            "no_postcode": int(given.isna().sum())}


def summarise(frame: pd.DataFrame) -> dict[str, Any]:
    """Counts per rule and the distribution of displacement over records moved to a postcode centroid."""
    # compared in Arrow, never as a million Python strings (a missing rule counts under none)
    rules = frame["sanitise_rule"].astype("string")
    counts = {r: int((rules == r).fillna(False).sum()) for r in RULES}
    moved = rules.isin(POSTCODE_RULES).fillna(False).to_numpy(bool)
    d = frame.loc[moved, "displacement_m"].astype(float).dropna().to_numpy()
    dist: dict[str, Any] = {"records": int(len(d))}
    if len(d):
        q = np.percentile(d, [50, 90, 99])
        dist.update(min=float(d.min()), median=float(q[0]), p90=float(q[1]), p99=float(q[2]),
                    max=float(d.max()))
    hist = {}
    for label, lo, hi in DISPLACEMENT_BINS:
        hist[label] = int((d == 0).sum()) if label == "0" else int(((d > lo) & (d <= hi)).sum())
    dist["histogram"] = hist
    return {"records": int(len(frame)), "rules": counts, "displacement_m": dist}


def check_sanitised(frame: pd.DataFrame, postcode_map: PostcodeMap, feed_file: FeedFile) -> list[str]:
    """Invariant check of a sanitised frame, driven by its schema; returns the problems found (empty when safe).

    Points sit on the centroid of a postcode with enough households; nothing dropped on sanitising survives
    (``schema.DROPPED_ON_SANITISING`` roles, ``free_text: drop`` columns, the exact geocoded point); no free-text
    column lacks a rule; scrubbed free text holds none of the patterns ``scrubbing.py`` removes; address text
    holds no house or flat number, none of those patterns, and no postcode but the record's sanitised one.
    Problems name columns and row labels, never values.
    """
    problems: list[str] = []
    rules = frame["sanitise_rule"].astype(str)
    targets = postcode_map.targets()
    checked = ~rules.isin(["non_addressable", "not_geocoded"]).to_numpy()
    pc = frame["sanitised_postcode"].astype("string")
    pos = targets.index.get_indexer(pc.astype(object).where(pc.notna(), None))
    e = frame["sanitised_easting"].astype(float).to_numpy()
    n = frame["sanitised_northing"].astype(float).to_numpy()
    ok_pc = pos >= 0
    te = np.where(ok_pc, targets["easting"].to_numpy(float)[np.maximum(pos, 0)], np.nan)
    tn = np.where(ok_pc, targets["northing"].to_numpy(float)[np.maximum(pos, 0)], np.nan)
    bad = checked & ~(ok_pc & (te == e) & (tn == n))
    if bad.any():
        problems.append(f"{int(bad.sum())} record(s) have a sanitised point that is not the centroid of a postcode "
                        f"with at least {postcode_map.threshold} households (first rows: "
                        f"{list(frame.index[bad][:5])})")
    leaked_pc = (rules == "not_geocoded").to_numpy() & (pc.notna().to_numpy() | ~np.isnan(e))
    if leaked_pc.any():
        problems.append(f"{int(leaked_pc.sum())} record(s) not geocoded still carry a postcode or point")
    personal = [f.name for f in feed_file.datafields if f.dropped_on_sanitising and f.name in frame.columns]
    personal += [c for c in frame.columns if c in _GEO_COLUMNS]
    if personal:
        problems.append(f"personal, precise-location or dropped free-text columns survive: {sorted(personal)}")
    unruled = [f.name for f in feed_file.datafields
               if f.needs_free_text_rule and f.free_text is None and f.name in frame.columns]
    if unruled:
        problems.append(f"free-text columns without a sanitising rule (scrub, drop or codes): {sorted(unruled)}")
    for col in [f.name for f in feed_file.datafields if f.free_text == "scrub" and f.name in frame.columns]:
        problems += _scrub_leaks(frame[col], col, "free_text")
    address = feed_file.location.address
    if address and address in frame.columns:
        text = frame.loc[(rules != "non_addressable").to_numpy(), address]
        leaks = text[address_leaks(text)]
        if len(leaks):
            problems.append(f"{len(leaks)} address(es) in {address} still hold a house or flat number "
                            f"(first rows: {list(leaks.index[:5])})")
        problems += _scrub_leaks(frame[address], address, "address")
        problems += _foreign_postcodes(frame[address], pc, address)
    for name, other in feed_file.other_locations:
        own = frame[other.postcode].astype("string") if other.postcode and other.postcode in frame else \
            pd.Series(pd.NA, index=frame.index, dtype="string")
        unsafe = own.notna().to_numpy() & (targets.index.get_indexer(own.astype(object).where(own.notna(), None)) < 0)
        if unsafe.any():
            problems.append(f"{int(unsafe.sum())} value(s) in {other.postcode} ({name}) are not a postcode with at "
                            f"least {postcode_map.threshold} households (first rows: "
                            f"{list(frame.index[unsafe][:5])})")
        if other.address and other.address in frame.columns:
            text = frame[other.address]
            leaks = text[address_leaks(text)]
            if len(leaks):
                problems.append(f"{len(leaks)} address(es) in {other.address} ({name}) still hold a house or flat "
                                f"number (first rows: {list(leaks.index[:5])})")
            problems += _scrub_leaks(frame[other.address], other.address, "address")
            problems += _foreign_postcodes(frame[other.address], own, other.address)
    return problems


def _scrub_leaks(texts: pd.Series, col: str, profile: scrubbing.Profile) -> list[str]:
    """One problem per kind of personal data still found in a column (counts and row labels only)."""
    found = scrubbing.find(texts, profile)
    out = []
    for kind in found.columns:
        rows = found.index[found[kind].to_numpy() > 0]
        if len(rows):
            out.append(f"{len(rows)} value(s) in {col} still hold a {kind} after scrubbing "
                       f"(first rows: {list(rows[:5])})")
    return out


_ANY_POSTCODE: Final = r"(?i)\b(?P<outward>[A-Z]{1,2}[0-9][A-Z0-9]?)\s*(?P<inward>[0-9][A-Z]{2})\b"


def _foreign_postcodes(texts: pd.Series, sanitised: pd.Series, col: str) -> list[str]:
    """Address text may hold only the record's own sanitised postcode (Appendix 1), never the one supplied."""
    values = scrubbing.as_arrow(texts)
    n = pac.count_substring_regex(values, _ANY_POSTCODE).fill_null(0).to_numpy(zero_copy_only=False)
    has = np.flatnonzero(n > 0)
    if not len(has):
        return []
    first = pac.extract_regex(values.take(pa.array(has)), _ANY_POSTCODE)
    outward, inward = first.field("outward"), first.field("inward")
    found = pac.utf8_upper(pac.binary_join_element_wise(outward, inward, pa.scalar(" ", type=outward.type)))
    own = scrubbing.as_arrow(sanitised).take(pa.array(has)).cast(found.type)
    # no sanitised postcode (not geocoded): any postcode in the text is the supplied one
    bad = pac.fill_null(pac.not_equal(found, own), True).to_numpy(zero_copy_only=False).astype(bool)
    # several postcodes in one text are rare: those rows are compared one by one (ASCII \b, as RE2 above)
    for i in np.flatnonzero((n[has] > 1) & ~bad):
        text = str(values[int(has[i])].as_py())
        codes = {f"{a} {b}".upper() for a, b in re.findall(_ANY_POSTCODE, text, flags=re.ASCII)}
        bad[i] = codes != {own[i].as_py()}
    rows = texts.index[has[bad]]
    if not len(rows):
        return []
    return [f"{len(rows)} address(es) in {col} hold a postcode other than the record's sanitised postcode "
            f"(first rows: {list(rows[:5])})"]
