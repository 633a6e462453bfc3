"""EPIC-KITCHENS-100 CSV files for the tests: the columns of the public files, reading and writing them."""
from __future__ import annotations

import csv
from pathlib import Path

SEG_COLS = ["narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp", "stop_timestamp",
            "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun", "noun_class", "all_nouns",
            "all_noun_classes"]  # EPIC_100_train.csv / EPIC_100_validation.csv
TEST_COLS = SEG_COLS[:8]  # EPIC_100_test_timestamps.csv


def write_csv(path: Path, cols: list[str], rows: list[dict]) -> Path:
    """`rows` as a CSV with columns `cols` (other keys of a row are dropped); returns `path`."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def read_rows(paths: list[Path]) -> list[dict]:
    """The rows of the CSV files, in order, as dicts."""
    out = []
    for p in paths:
        with open(p, newline="") as f:
            out += list(csv.DictReader(f))
    return out
