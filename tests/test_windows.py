"""Windows: exact key sets for both conventions, rows, and input validation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from features.annotations import load_split
from features.windows import build_windows


def _dataset(tmp_path, lengths: dict[str, int]):
    """Annotations with clips of the given segment counts (labels: verb = action_idx % 5, noun = action_idx % 7)."""
    records = []
    for uid, length in lengths.items():
        for a in range(length):
            records.append({"clip_uid": uid, "action_idx": a, "action_clip_start_sec": 2.0 * a,
                            "action_clip_end_sec": 2.0 * a + 2.5, "verb_label": a % 5, "noun_label": a % 7})
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "fho_lta_taxonomy.json").write_text(json.dumps({"verbs": list("abcde"), "nouns": list("abcdefg")}))
    (ann / "fho_lta_val.json").write_text(json.dumps({"split": "val", "clips": records[::-1]}))
    return load_split(tmp_path, "val")


def test_challenge_and_plus_one_keys(tmp_path):
    ann = _dataset(tmp_path, {"clipA": 30, "clipB": 28, "clipC": 27, "clipD": 29})
    plus_one = build_windows(ann, num_input=8, num_future=20, num_seen=8, convention="plus_one")
    challenge = build_windows(ann, num_input=8, num_future=20, num_seen=8, convention="challenge")
    # plus_one: last observed position p in [7, L-21]; challenge drops the last one per clip
    assert plus_one.keys == ["clipA_7", "clipA_8", "clipA_9", "clipB_7", "clipD_7", "clipD_8"]
    assert challenge.keys == ["clipA_7", "clipA_8", "clipD_7"]
    # AntGPT's submission check: keys f"{uid}_{i}" for i in range(7, L - 20)
    expected = [f"{u}_{i}" for u, n in [("clipA", 30), ("clipB", 28), ("clipC", 27), ("clipD", 29)] for i in range(7, n - 20)]
    assert plus_one.keys == expected


def test_rows_and_labels(tmp_path):
    ann = _dataset(tmp_path, {"clipA": 30, "clipB": 28})
    w = build_windows(ann, num_input=2, num_future=20, num_seen=8)
    first = w.keys.index("clipA_9")
    assert ann.action_idx[w.observed[first]].tolist() == [8, 9]
    assert ann.action_idx[w.future[first]].tolist() == list(range(10, 30))
    assert ann.verb[w.future[first]].tolist() == [a % 5 for a in range(10, 30)]
    b = w.keys.index("clipB_7")
    assert (ann.clip_uid[w.future[b]] == "clipB").all()
    assert w.observed.shape == (len(w), 2) and w.future.shape == (len(w), 20)
    # num_seen defaults to num_input: fewer observed segments -> more keys
    w2 = build_windows(ann, num_input=2)
    assert w2.keys[:3] == ["clipA_1", "clipA_2", "clipA_3"] and len(w2) == 9 + 7
    sub = w.subset(np.array([k.startswith("clipB") for k in w.keys]))
    assert sub.keys == ["clipB_7"] and sub.future.shape == (1, 20)


def test_short_clips_give_no_windows_and_bad_args_fail(tmp_path):
    ann = _dataset(tmp_path, {"short": 27})
    w = build_windows(ann, num_input=8, num_seen=8)
    assert len(w) == 0 and w.observed.shape == (0, 8) and w.future.shape == (0, 20)
    with pytest.raises(ValueError, match="unknown window convention"):
        build_windows(ann, num_input=2, convention="other")
    with pytest.raises(ValueError, match="num_input"):
        build_windows(ann, num_input=9, num_seen=8)
