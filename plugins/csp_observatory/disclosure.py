"""Disclosure-risk checks after sanitising: what an attacker could still single out.

k-anonymity: records are grouped by their quasi-identifiers (the combination an attacker could know from
elsewhere); a group of k records means each of them hides among k. l-diversity: how many distinct
categories share one sanitised location point; l == 1 means everyone at that point has the same category,
so knowing someone is there discloses the category.

Quasi-identifiers are named by frame column. ``"<column>:month"`` means the column's calendar month
(an incident's date is known to an attacker to the month, not the day, in the published series).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import pandas as pd

from csp_observatory.schema import FeedFile

DEFAULT_K: Final = 5
POINT: Final = ("sanitised_easting", "sanitised_northing")


class DisclosureBlocked(RuntimeError):
    """A supply would publish records that can be singled out, and its feed blocks such a supply."""


@dataclass(frozen=True)
class DisclosureReport:
    """k-anonymity and l-diversity of one sanitised frame."""

    quasi_identifiers: tuple[str, ...]
    k_threshold: int
    records: int
    groups: int
    k: int | None                      # the smallest group size (None for an empty frame)
    small_cells: int                   # groups with fewer than k_threshold records
    records_in_small_cells: int
    sensitive: str | None = None
    points: int = 0                    # distinct sanitised points holding records
    min_l: int | None = None           # fewest distinct sensitive categories at one point
    points_with_l1: int = 0
    #: size of each record's group, aligned with the frame's index (for enforce_min_k)
    group_size: pd.Series = field(default_factory=lambda: pd.Series(dtype="int64"), repr=False, compare=False)

    def as_dict(self) -> dict[str, object]:
        """The report without per-record data, for quality reports and logs."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items() if k != "group_size"}


def quasi_identifiers_for(feed_file: FeedFile) -> list[str]:
    """The quasi-identifier columns of a sanitised frame of this file, derived from datafield roles."""
    roles = {r: [f.name for f in feed_file.datafields if f.role == r] for r in
             ("category", "gender", "ethnicity", "age", "date_of_birth")}
    located = bool(feed_file.location.columns)
    if feed_file.event_date and located:
        # incidents: where (sanitised point) x when (month) x what (category)
        return [*POINT, f"{feed_file.event_date}:month", *roles["category"][:1]]
    person = roles["gender"] or roles["ethnicity"] or roles["age"] or roles["date_of_birth"]
    if person:
        # people: sanitised postcode x age x gender x ethnicity (date of birth becomes age when sanitised)
        age = roles["age"][:1] or (["age"] if roles["date_of_birth"] else [])
        return ["sanitised_postcode", *age, *roles["gender"][:1], *roles["ethnicity"][:1]]
    return [*POINT, *roles["category"][:1]] if located else roles["category"][:1]


def _qi_frame(frame: pd.DataFrame, quasi_identifiers: list[str]) -> pd.DataFrame:
    cols = {}
    for qi in quasi_identifiers:
        name, _, unit = qi.partition(":")
        if name not in frame:
            raise KeyError(f"quasi-identifier {name!r} is not a column of the frame")
        col = frame[name]
        if unit == "month":
            col = pd.to_datetime(col).dt.to_period("M")
        elif unit:
            raise ValueError(f"unknown quasi-identifier unit {unit!r} in {qi!r}")
        cols[qi] = col
    return pd.DataFrame(cols, index=frame.index)


def k_anonymity(frame: pd.DataFrame, quasi_identifiers: list[str], k_threshold: int | None = None,
                sensitive: str | None = None, point: tuple[str, str] = POINT) -> DisclosureReport:
    """Smallest group over the quasi-identifiers, cells under k_threshold, and l-diversity per point."""
    k_threshold = DEFAULT_K if k_threshold is None else int(k_threshold)
    qis = list(quasi_identifiers)
    if len(frame) == 0:
        return DisclosureReport(tuple(qis), k_threshold, 0, 0, None, 0, 0, sensitive)
    # missing values form their own group: a record without a point still belongs to "no point". One grouping
    # gives each record its group and each group its size (records per group, then per record by indexing).
    if qis:
        group = _qi_frame(frame, qis).groupby(qis, dropna=False, sort=False, observed=True).ngroup().to_numpy()
    else:
        group = np.zeros(len(frame), dtype=np.int64)
    counts = np.bincount(group)
    small = counts[counts < k_threshold]
    report = dict(quasi_identifiers=tuple(qis), k_threshold=k_threshold, records=len(frame),
                  groups=int(len(counts)), k=int(counts.min()), small_cells=int(len(small)),
                  records_in_small_cells=int(small.sum()), sensitive=sensitive,
                  group_size=pd.Series(counts[group], index=frame.index, dtype="int64",
                                       name=qis[0] if qis else None))
    if sensitive is not None and all(c in frame for c in point):
        # only the columns the l-diversity needs, not a copy of the whole frame
        located = frame.loc[frame[point[0]].notna().to_numpy(bool) & frame[point[1]].notna().to_numpy(bool),
                            [*point, sensitive]]
        if len(located):
            ls = located.groupby(list(point), sort=False)[sensitive].nunique(dropna=False)
            report.update(points=int(len(ls)), min_l=int(ls.min()), points_with_l1=int((ls == 1).sum()))
    return DisclosureReport(**report)


def enforce_min_k(frame: pd.DataFrame, report: DisclosureReport, min_k: int | None,
                  mode: Literal["rows", "supply"] = "rows") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply a feed's min_k: withhold records in smaller groups ("rows") or refuse the supply ("supply").

    Returns (publishable, withheld); withheld carries a ``reason`` column.
    """
    if mode not in ("rows", "supply"):
        raise ValueError(f"mode must be 'rows' or 'supply', not {mode!r}")
    if min_k is None:
        return frame, frame.iloc[0:0].assign(reason=pd.Series(dtype="string"))
    size = report.group_size.reindex(frame.index)
    if size.isna().any():
        raise ValueError("the disclosure report was computed on a different frame")
    offending = (size < min_k).to_numpy()
    qis = ", ".join(report.quasi_identifiers)
    if mode == "supply" and offending.any():
        raise DisclosureBlocked(
            f"{int(offending.sum())} record(s) share their combination of {qis} with fewer than {min_k - 1} "
            f"other record(s) (smallest group: {int(size.min())}); the feed's min_k is {min_k}, so this supply "
            "is not published. Aggregate or coarsen the data, or lower min_k in the feed schema.")
    withheld = frame[offending].copy()
    withheld["reason"] = pd.array(
        [f"in a group of {int(n)} record(s) with the same {qis}; publication needs at least {min_k}"
         for n in size[offending]], dtype="string")
    return frame[~offending], withheld
