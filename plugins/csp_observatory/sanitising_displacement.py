"""The displacement map of Appendix 1: where each postcode's records go, to a postcode with enough households.

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
where all of them tie, so the tie rule is applied exactly. A map is built once per reference, threshold and
displacement and kept on disk (``cached_displacement``, keyed by ``reference_digest``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pac

from csp_observatory.postcodes import PostcodeLookup

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


#: Larger than any distance between two points of the national grid, so levels never mix.
_LEVEL_GAP: Final = 1.0e7


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

    def target_rows(self, postcodes: pd.Series) -> np.ndarray:
        """Row in the map of each postcode that is an eligible target (``targets()``), -1 for any other."""
        pos = self.positions(postcodes)
        at = np.maximum(pos, 0)
        own = self._array("rule_code")[at] == RULES.index("own_postcode") if len(self.table) else pos >= 0
        return np.where((pos >= 0) & own, pos, -1)

    def nearest_live(self, easting: np.ndarray, northing: np.ndarray) -> np.ndarray:
        """The nearest live postcode to each point (for records with a point but no known postcode)."""
        live = self.table.index[~self.table["terminated"].to_numpy(bool)]
        tree = self._live_tree
        if tree is None:
            from scipy.spatial import cKDTree       # here, not at import: a cached map never needs a tree

            t = self.table.loc[live]
            tree = cKDTree(np.column_stack([t["easting"].to_numpy(float), t["northing"].to_numpy(float)]))
            object.__setattr__(self, "_live_tree", tree)
        _, idx = tree.query(np.column_stack([easting, northing]), k=1)
        return live.to_numpy(object)[idx]


def _nearest(target_xyz: np.ndarray, target_rank: np.ndarray, origin_xyz: np.ndarray,
             k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Index and distance of the nearest target per origin, ties broken by smallest rank (postcode order)."""
    n = len(origin_xyz)
    if n == 0 or len(target_xyz) == 0:
        return np.full(n, -1, dtype=np.int64), np.full(n, np.inf)
    from scipy.spatial import cKDTree

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
