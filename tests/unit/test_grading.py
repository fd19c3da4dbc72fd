"""The grade rules: boundaries, a failed check never reads as good, and a supply takes its worst file's grade."""
import pytest

from csp_observatory import grading


@pytest.mark.unit
@pytest.mark.parametrize("score,failed,grade", [
    (100.0, 0, "good"), (grading.GOOD_FROM, 0, "good"), (99.4, 0, "fair"), (100.0, 1, "fair"),
    (grading.POOR_BELOW, 0, "fair"), (89.99, 0, "poor"), (50.0, 3, "poor"), (None, 0, "n/a"),
])
def test_quality_grade_boundaries(score, failed, grade):
    assert grading.quality_grade(score, failed) == grade


@pytest.mark.unit
def test_worst_ignores_unscored_files():
    assert grading.worst(["good", "n/a", "fair"]) == "fair"
    assert grading.worst(["good", "poor", "fair"]) == "poor"
    assert grading.worst(["n/a", "n/a"]) == "n/a"
    assert grading.worst([]) == "n/a"
