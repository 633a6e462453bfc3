"""The one failure-threshold rule every `max_failed_frac` command ends with (features.errors.check_failed_fraction)."""
from __future__ import annotations

import pytest

from features.errors import RunFailure, UsageError, check_failed_fraction


@pytest.mark.parametrize("failed,total,frac", [(0, 0, 0.0), (0, 10, 0.0), (1, 100, 0.01), (5, 10, 0.5), (3, 3, 1.0)])
def test_at_or_below_the_threshold_passes(failed, total, frac):
    check_failed_fraction(failed, total, frac, what="rows failed", where="f.jsonl")


@pytest.mark.parametrize("failed,total,frac", [(1, 10, 0.0), (2, 100, 0.01), (6, 10, 0.5), (1, 0, 0.5)])
def test_past_the_threshold_raises_one_line_naming_count_share_threshold_and_file(failed, total, frac):
    with pytest.raises(RunFailure) as err:
        check_failed_fraction(failed, total, frac, what="clips failed", where="out/failures.jsonl", outcome="kept")
    line = str(err.value)
    assert "\n" not in line and err.value.exit_code == 1
    assert line.startswith(f"{failed} of {total} clips failed (")
    assert f"max_failed_frac={frac}" in line and "reasons in out/failures.jsonl; kept" in line


def test_the_error_class_is_the_callers():
    with pytest.raises(UsageError):
        check_failed_fraction(2, 2, 0.0, what="x", where="y", error=UsageError)
