"""The HTML quality report as a browser shows it: headless Chromium opens the page written for the third supply of
a feed (late, with a week of no records) and the DOM it builds holds the grades, the trend charts with a labelled
point per supply, the arrival line and the gap. Skipped when Chromium is not installed (scripts/setup.sh installs
Debian's package ``chromium``)."""
from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from csp_observatory import postcodes_sources, report_demo
from csp_observatory.schema import SCHEMA_DIR
from csp_observatory.schema_loading import load_schema

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PERIODS = ["202607", "202608", "202609"]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # --no-sandbox: the tests may run as root, where Chromium's sandbox refuses to start
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
                          capture_output=True, text=True, timeout=120, check=True)


def no_records_10_to_16(name: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The offences of 10-16 September moved to the 3rd: a week with no records."""
    if name != "offences":
        return frame
    frame = frame.copy()
    day = frame["committed_from_date"].dt.day
    frame.loc[day.between(10, 16).fillna(False), "committed_from_date"] = pd.Timestamp("2026-09-03")
    frame["committed_to_date"] = pd.NaT
    return frame


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; scripts/setup.sh installs it)")
    tmp = tmp_path_factory.mktemp("report_browser")
    schema = load_schema(SCHEMA_DIR / "police_recorded_crime.yaml")
    due = schema.supply_due("202609")
    reports = report_demo.write_series(
        schema, PERIODS, postcodes_sources.shipped_reference(), tmp / "reports",
        arrived={"202607": "2026-08-05T09:00:00+00:00", "202608": "2026-09-05T09:00:00+00:00",
                 "202609": (due + pd.Timedelta(days=2, hours=3)).isoformat()},
        spoil={"202609": no_records_10_to_16})
    html_path = sorted((tmp / "reports" / schema.feed / "202609").glob("*.html"))[-1]
    dom = chromium(tmp, "--dump-dom", html_path.as_uri()).stdout
    shot = tmp / "report.png"
    chromium(tmp, "--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}", html_path.as_uri())
    return {"report": reports[-1], "dom": dom, "shot": shot}


def text(fragment: str) -> str:
    """The visible text of a DOM fragment, one space between words."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", fragment))).strip()


def test_the_browser_shows_each_qualitys_grade_for_the_supply(page):
    cards = re.findall(r'<div class="quality supply (\w+)"><div class="q">(\w+)</div><div class="score">([^<]+)</div>'
                       r'<div class="grade">([^<]+)</div>', page["dom"])
    shown = {q.lower(): (cls, score, grade) for cls, q, score, grade in cards}
    expected = page["report"]["qualities"]
    assert set(shown) == set(expected)
    for q, s in expected.items():
        assert shown[q][2] == s["grade"] and shown[q][0] == s["grade"].replace("n/a", "na")
        assert shown[q][1] == f"{s['score']:.1f}%"
    assert shown["currency"][2] != "good"                 # it came late
    assert "How the grades and scores are worked out" in page["dom"]
    assert "at least 99.5% and no failed check" in text(page["dom"])


def test_the_browser_shows_the_trend_with_a_labelled_point_per_supply(page):
    charts = re.findall(r'<figure class="chart" id="trend-(\w+)">(.*?)</figure>', page["dom"], re.S)
    assert [q for q, _ in charts] == ["completeness", "accuracy", "precision", "currency"]
    points = page["report"]["trend"]["points"]
    assert [p["period"] for p in points] == PERIODS
    for quality, svg in charts:
        assert svg.count("<circle") == len(PERIODS)       # the browser parsed the inline SVG into elements
        labels = text(svg)
        for p in points:
            score = p["qualities"][quality]["score"]
            assert f"{score:.1f}%" in labels
        assert "2026-07" in labels and "2026-08" in labels and "2026-09 (this)" in labels


def test_the_browser_shows_the_arrival_line_and_the_gap(page):
    arrival = re.search(r'<p id="arrival"[^>]*>(.*?)</p>', page["dom"], re.S)
    assert arrival and "3 days late" in text(arrival.group(1)) and "due by 2026-10-16" in text(arrival.group(1))
    assert page["report"]["arrival"]["days_late"] == 3
    completeness = text(page["dom"][page["dom"].index('id="completeness"'):])
    gaps = page["report"]["gaps"]["offences"]["gaps"]
    assert any(g["from"] <= "2026-09-10" and g["to"] >= "2026-09-16" for g in gaps)
    for g in gaps:
        assert f"offences {g['from']} {g['to']} {g['days']}" in completeness


def test_the_page_renders_to_a_screenshot(page):
    data = page["shot"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
