"""Orphan links found from the cleaned frames in memory are exactly those a plain set lookup over the staged
clean files finds (issue 9: the clean stage no longer reads its own output back)."""
from __future__ import annotations

import pytest

from csp_observatory import demo_data, fixtures, pipeline, pipeline_geo, postcodes_sources
from csp_observatory.pipeline_supply import Manifest
from csp_observatory.schema_loading import schema_for

pytestmark = pytest.mark.unit
PERIOD = "202608"


def test_links_from_memory_match_a_set_lookup_and_the_staged_files(tmp_path):
    reference = postcodes_sources.shipped_reference()
    files = demo_data.make_police_recorded_crime(PERIOD, reference[~reference["terminated"]], n_offences=120).files
    lines = files["offences"].splitlines(keepends=True)
    files = dict(files, offences="".join(lines[:1] + lines[4:9] + lines[15:]))     # 9 offences gone
    work = fixtures.decrypted_work_area(tmp_path, schema_for("police_recorded_crime"), PERIOD, files)
    pipeline.parse_and_validate([work], fixtures.OfflineSettings())
    pipeline.clean([work], fixtures.OfflineSettings())
    m = Manifest.read(work)
    offences = set(m.read_frame("clean", "offences")["crime_reference"].dropna())
    flagged = m.flagged()
    total = 0
    for name in ("offenders", "victims"):
        linked = m.read_frame("clean", name)
        expected = sorted(int(r) for r, ref in zip(linked["source_row"], linked["crime_reference"])
                          if isinstance(ref, str) and ref not in offences)
        got = sorted(int(r) for r in flagged.loc[flagged["source_file"] == name, "source_row"])
        assert got == expected and m.stages["links"][name] == len(expected)
        total += len(expected)
    assert total > 0
    # the same counts when the frames are read back from staging (the path a caller without frames takes)
    assert pipeline_geo._link_problems(m, schema_for(m.feed)) == m.stages["links"]
