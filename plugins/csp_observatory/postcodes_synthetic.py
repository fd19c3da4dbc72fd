"""Synthetic postcode data, labelled so: household counts for real postcodes, and a Great-Britain-sized reference.

:func:`synthetic_households_csv` made ``include/postcodes/households_SYNTHETIC_calderdale.csv`` (integer arithmetic
only, so it is byte for byte the same on every CPU). :func:`national_synthetic_reference` makes a reference the
size of Great Britain's for the benchmarks and the sanitiser's tests; neither is real data.
"""
from __future__ import annotations

from typing import Any, Final, Iterable

import numpy as np
import pandas as pd

from csp_observatory.postcodes import SHIPPED_HOUSEHOLDS_SEED, _typed

#: Households in a residential postcode, 4 to 60: weights per 100,000 of a lognormal with median 16 and
#: sigma 0.55, rounded to whole households and clipped (tails folded into 4 and 60). Written out as integers
#: so that no machine's floating point decides a count; they sum to 100,000.
_HOUSEHOLD_WEIGHTS: Final = (
    1054, 1555, 2464, 3343, 4090, 4655, 5027, 5222, 5267, 5192, 5028, 4801, 4532, 4241, 3938, 3636, 3341, 3057,
    2789, 2538, 2304, 2088, 1890, 1709, 1544, 1395, 1259, 1136, 1025, 925, 834, 753, 680, 614, 554, 501, 453,
    410, 371, 335, 304, 275, 250, 227, 206, 187, 170, 154, 140, 128, 116, 106, 97, 88, 81, 74, 847)
_HOUSEHOLDS_MIN: Final = 4
#: Households of a small (non-residential) postcode: 0, 1, 2 or 3, weighted 45:20:20:15.
_SMALL_WEIGHTS: Final = (45, 20, 20, 15)


def _integer_choice(weights: Iterable[int], size: int, rng: np.random.Generator) -> np.ndarray:
    """Indexes drawn with replacement in proportion to integer weights, in integer arithmetic only.

    ``Generator.choice(p=...)`` compares random doubles with a float cumulative sum; integers give the same
    draws on every CPU and platform.
    """
    cumulative = np.cumsum(np.asarray(list(weights), dtype=np.int64))
    return np.searchsorted(cumulative, rng.integers(0, int(cumulative[-1]), size), side="right")


def _household_counts(weights: np.ndarray, rng: np.random.Generator,
                      small_share: float = 0.11) -> tuple[np.ndarray, np.ndarray]:
    """Households and residents per postcode; the postcodes with 0-3 households cluster where ``weights`` are high.

    ``weights`` are positive integers (higher = more central: shops, offices, communal establishments). Each
    postcode gets 0-3 households with probability ``small_share * n * weight / sum(weights)`` (so about
    ``small_share`` of them do); the rest get 4 to 60, skewed towards 10-25 like real residential postcodes.

    Every decision is made on integers (``rng.integers``, integer products and comparisons): the shipped
    synthetic file must come out byte for byte the same on every CPU, and NumPy's float functions (``**``,
    ``log``, ``exp``) and its SIMD partition/sort code differ in the last bit or in order between CPUs.
    """
    weights = np.asarray(weights, dtype=np.int64)
    n = len(weights)
    if n and weights.min() < 1:
        raise ValueError("household weights must be positive integers")
    households = _HOUSEHOLDS_MIN + _integer_choice(_HOUSEHOLD_WEIGHTS, n, rng).astype(np.int64)
    n_small = int(round(small_share * n))
    if n_small:
        total = int(weights.sum())
        # P(small) = n_small * w / total, decided exactly: draw an integer in [0, total) per postcode.
        small = rng.integers(0, total, n) < n_small * weights
        households[small] = _integer_choice(_SMALL_WEIGHTS, int(small.sum()), rng)
    # 1.70 to 2.90 residents per household, rounded half up in integer arithmetic.
    residents = (households * rng.integers(170, 291, n) + 50) // 100
    zero = households == 0
    # Half the zero-household postcodes house people in communal establishments; the rest have nobody.
    communal = zero & (rng.integers(0, 2, n) == 1)
    residents[zero] = 0
    residents[communal] = rng.integers(3, 80, int(communal.sum()))
    return households, residents


def synthetic_households(reference: pd.DataFrame, seed: int = SHIPPED_HOUSEHOLDS_SEED,
                         two_space_share: float = 0.02) -> pd.DataFrame:
    """SYNTHETIC household estimates in the ONS 2011 layout (``Postcode, Total, Males, Females,
    Occupied_Households``) for the live postcodes of a reference; deterministic for a seed, on every CPU.

    Like the real file: postcodes with no residents are absent, communal establishments have residents
    and 0 households, and a few postcodes are written with two spaces. Non-residential postcodes
    cluster in town centres (the densest parts of the reference). Integer arithmetic throughout (see
    :func:`_household_counts`), so the shipped file can be regenerated exactly anywhere.
    """
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    live = reference[~reference["terminated"].to_numpy(bool)].sort_values("postcode").reset_index(drop=True)
    if len(live) == 0:
        return pd.DataFrame(columns=["Postcode", "Total", "Males", "Females", "Occupied_Households"])
    # Town centres are where postcodes are densest: count neighbours within 200 m. Reference coordinates are
    # whole metres, so every distance test is exact and every machine counts the same neighbours.
    xy = live[["easting", "northing"]].to_numpy(float)
    density = cKDTree(xy).query_ball_point(xy, r=200.0, return_length=True).astype(np.int64)
    # Weight 0.03 + (density / densest)^2, times 100 * densest^2 to stay an integer.
    densest = max(int(density.max()), 1)
    weights = 3 * densest * densest + 100 * density * density
    households, residents = _household_counts(weights, rng)
    n = len(live)
    # 45% to 55% of residents are male, rounded half up in integer arithmetic.
    males = (residents * rng.integers(45, 56, n) + 50) // 100
    postcode = live["postcode"].astype(str).to_numpy().copy()
    twin = rng.integers(0, 1_000_000, n) < int(round(two_space_share * 1_000_000))
    postcode[twin] = [p.replace(" ", "  ") for p in postcode[twin]]
    frame = pd.DataFrame({"Postcode": postcode, "Total": residents, "Males": males, "Females": residents - males,
                          "Occupied_Households": households})
    return frame[frame["Total"] > 0].reset_index(drop=True)


def synthetic_households_csv(reference: pd.DataFrame, seed: int = SHIPPED_HOUSEHOLDS_SEED) -> str:
    """:func:`synthetic_households` as CSV text, byte for byte as shipped in ``SHIPPED_HOUSEHOLDS``.

    Regenerate the shipped file with
    ``SHIPPED_HOUSEHOLDS.write_text(synthetic_households_csv(read_codepoint_open(SHIPPED_CODEPOINT)))``.
    """
    return synthetic_households(reference, seed).to_csv(index=False, lineterminator="\n")


# --- a Great-Britain-sized synthetic reference --------------------------------------------------------

_UNIT_LETTERS: Final = "ABDEFGHJLNPQRSTUWXYZ"  # letters Royal Mail uses in inward codes


def _take(table: list[str], index: np.ndarray) -> Any:
    """A pyarrow string array of ``table[index]``: fast for millions of rows from a small table."""
    import pyarrow as pa

    return pa.array(table, pa.string()).take(pa.array(index))


def _synthetic_postcodes(index: np.ndarray) -> pd.Series:
    """Distinct, well-formed (but invented) postcodes for integer indexes; neighbours share a sector."""
    import pyarrow.compute as pc

    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    areas = [a + b for a in letters for b in letters]
    units = [a + b for a in _UNIT_LETTERS for b in _UNIT_LETTERS]
    area = _take(areas, (index // (4000 * 99)) % len(areas))
    district = _take([str(d) for d in range(1, 100)], (index // 4000) % 99)
    sector = _take([str(d) for d in range(10)], (index // 400) % 10)
    unit = _take(units, index % 400)
    joined = pc.binary_join_element_wise(area, district, " ", sector, unit, "")
    return pd.Series(pd.array(joined, dtype="string"))


def _z_order(e: np.ndarray, n: np.ndarray, cell: float = 50.0) -> np.ndarray:
    """Morton (Z-order) keys on a grid: sorting by them keeps nearby points together."""
    x = (e / cell).astype(np.uint64)
    y = (n / cell).astype(np.uint64)

    def spread(v: np.ndarray) -> np.ndarray:
        v = v & np.uint64(0xFFFFFFFF)
        for shift, mask in ((16, 0x0000FFFF0000FFFF), (8, 0x00FF00FF00FF00FF), (4, 0x0F0F0F0F0F0F0F0F),
                            (2, 0x3333333333333333), (1, 0x5555555555555555)):
            v = (v | (v << np.uint64(shift))) & np.uint64(mask)
        return v

    return spread(x) | (spread(y) << np.uint64(1))


def _chunk_ids(n: int, low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    """Group ids for n consecutive items in runs of ``low..high`` items."""
    sizes = rng.integers(low, high + 1, n // low + 2)
    return np.repeat(np.arange(len(sizes)), sizes)[:n]


def national_synthetic_reference(n_live: int = 1_700_000, n_terminated: int = 100_000,
                                 seed: int = 0) -> pd.DataFrame:
    """A SYNTHETIC Great-Britain-sized reference frame for benchmarks (invented postcodes, real structure).

    Postcodes cluster in towns (10-20 m apart in centres, hundreds of metres on the edges), wards hold
    100-300 postcodes, districts about 40 wards, households as :func:`synthetic_households`; terminated
    postcodes lie among the live ones with 0 households. Vectorised: a few seconds for 1.8M rows.
    """
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    # Town sizes follow a heavy-tailed (Pareto) law, like real settlements.
    sizes = np.maximum(20, rng.pareto(1.1, max(n_live // 400, 1)) * 120).astype(np.int64)
    sizes = np.maximum(1, np.round(sizes * n_live / sizes.sum())).astype(np.int64)
    sizes[-1] += n_live - sizes.sum()
    while sizes[-1] < 1:  # rounding can overshoot; take the excess from the largest town
        sizes[np.argmax(sizes)] += sizes[-1] - 1
        sizes[-1] = 1
    town = np.repeat(np.arange(len(sizes)), sizes)
    centre_e = rng.uniform(150_000, 650_000, len(sizes))
    centre_n = rng.uniform(20_000, 1_100_000, len(sizes))
    # A town of N postcodes spreads over sigma ~ 14 m * sqrt(N): dense cores, sparse fringes.
    sigma = 14.0 * np.sqrt(sizes)
    radius = np.abs(rng.standard_t(4, n_live)) * sigma[town]
    angle = rng.uniform(0, 2 * np.pi, n_live)
    e = np.clip(centre_e[town] + radius * np.cos(angle), 1000, 699_000)
    n = np.clip(centre_n[town] + radius * np.sin(angle), 1000, 1_249_000)
    order = np.argsort(_z_order(e, n), kind="stable")
    e, n, town, radius = e[order], n[order], town[order], radius[order]
    centrality = np.exp(-radius / (0.6 * sigma[town]))
    # Weights 0.05 + centrality^2 as integers per million. This reference is made for benchmarks and compared
    # only with itself on one machine; the shipped Calderdale file does not depend on float maths at all.
    weights = 50_000 + np.round(1_000_000 * centrality * centrality).astype(np.int64)
    households, _ = _household_counts(weights, rng)
    ward = _chunk_ids(n_live, 100, 300, rng)
    district = _chunk_ids(int(ward.max()) + 1, 30, 50, rng)[ward]

    # Terminated postcodes: old codes near live ones, no households, terminated 1980-2024.
    pick = rng.integers(0, n_live, n_terminated)
    t_e = np.clip(e[pick] + rng.normal(0, 40, n_terminated), 1000, 699_000)
    t_n = np.clip(n[pick] + rng.normal(0, 40, n_terminated), 1000, 1_249_000)
    months = [f"{y}-{m:02d}" for y in range(1980, 2025) for m in range(1, 13)]
    t_date = _take(months, rng.integers(0, len(months), n_terminated))

    total = n_live + n_terminated
    ward_all = np.concatenate([ward, ward[pick]])
    district_all = np.concatenate([district, district[pick]])
    frame = pd.DataFrame({
        "postcode": _synthetic_postcodes(np.arange(total)),
        "easting": np.round(np.concatenate([e, t_e])).astype(np.int64),
        "northing": np.round(np.concatenate([n, t_n])).astype(np.int64),
        "households": np.concatenate([households, np.zeros(n_terminated, np.int64)]),
        "ward_code": pd.array(_take([f"X05{i:06d}" for i in range(ward_all.max() + 1)], ward_all), dtype="string"),
        "district_code": pd.array(_take([f"X08{i:06d}" for i in range(district_all.max() + 1)], district_all),
                                  dtype="string"),
        "terminated": np.concatenate([np.zeros(n_live, bool), np.ones(n_terminated, bool)]),
        "source": "SYNTHETIC national",
        "terminated_date": pd.array(pa.concat_arrays([pa.nulls(n_live, pa.string()), t_date]), dtype="string"),
    })
    return _typed(frame)
