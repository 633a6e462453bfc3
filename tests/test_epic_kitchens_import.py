"""`lta import-annotations format=epic-kitchens-100`: EK100 CSVs written here -> the Ego4D LTA layout.

The CSVs are generated in the test (random segment orders, ties, several videos per split), so
nothing depends on one fixture's contents; malformed rows must give one clear line naming the
file, the line and the field, and leave the output as it was.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from features.annotations import SPLIT_FILES, load_split, load_taxonomy
from pipelines import cli
from ek100_helpers import SEG_COLS, TEST_COLS, read_rows, write_csv

VERBS = ["take", "put", "open", "close", "wash"]
NOUNS = ["plate", "tap", "knife", "cupboard", "pan", "spoon"]


def ts(sec: float) -> str:
    h, rem = divmod(sec, 3600)
    m, s = divmod(rem, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:05.2f}"


def write_classes(src: Path) -> None:
    for name, keys in (("EPIC_100_verb_classes.csv", VERBS), ("EPIC_100_noun_classes.csv", NOUNS)):
        rows = [{"id": i, "key": k, "instances": f"['{k}']", "category": "x"} for i, k in enumerate(keys)]
        write_csv(src / name, ["id", "key", "instances", "category"], rows)


def make_segments(rng: np.random.Generator, videos: list[str], per_video: int, *, labelled: bool = True) -> list[dict]:
    """Rows of several videos, shuffled; some start times repeat (ties broken by narration order)."""
    rows = []
    for vid in videos:
        starts = np.round(np.sort(rng.uniform(0, 600, per_video)), 2)
        ties = rng.choice(per_video - 1, size=max(1, per_video // 5), replace=False)
        starts[ties + 1] = starts[ties]  # equal start times for some neighbours
        # narration order differs from start order in places: narrations are numbered in a shuffled order
        narr = rng.permutation(per_video)
        for i in range(per_video):
            v, n = int(rng.integers(len(VERBS))), int(rng.integers(len(NOUNS)))
            start = float(starts[i])
            stop = start + float(np.round(rng.uniform(0.3, 4.0), 2))
            row = {"narration_id": f"{vid}_{narr[i]}", "participant_id": vid.split("_")[0], "video_id": vid,
                   "narration_timestamp": ts(start + 0.1), "start_timestamp": ts(start), "stop_timestamp": ts(stop),
                   "start_frame": int(start * 50), "stop_frame": int(stop * 50), "narration": f"{VERBS[v]} {NOUNS[n]}",
                   "verb": VERBS[v], "verb_class": v, "noun": NOUNS[n], "noun_class": n, "all_nouns": f"['{NOUNS[n]}']",
                   "all_noun_classes": f"[{n}]"}
            rows.append(row if labelled else {k: row[k] for k in TEST_COLS})
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


@pytest.fixture
def ek_src(tmp_path):
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    src = tmp_path / "src"
    src.mkdir()
    write_classes(src)
    splits = {
        "train": [write_csv(src / "train_a.csv", SEG_COLS, make_segments(rng, ["P01_01", "P02_03"], 30)),
                  write_csv(src / "train_b.csv", SEG_COLS, make_segments(rng, ["P04_11"], 25))],
        "val": [write_csv(src / "val.csv", SEG_COLS, make_segments(rng, ["P05_02", "P05_07"], 20))],
        "test": [write_csv(src / "test.csv", TEST_COLS, make_segments(rng, ["P06_01"], 22, labelled=False))],
    }
    return src, splits


def run_import(src: Path, out: Path, splits: dict, *extra: str) -> int:
    names = {s: "[" + ",".join(p.name for p in ps) + "]" for s, ps in splits.items()}
    return cli.main(["import-annotations", "format=epic-kitchens-100", f"src={src}", f"out={out}",
                     f"train={names['train']}", f"val={names['val']}", f"test={names['test']}", *extra])


def secs(text: str) -> float:
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_import_layout_order_and_labels(ek_src, tmp_path, capsys):
    src, splits = ek_src
    out = tmp_path / "ds"
    assert run_import(src, out, splits) == 0
    tax = load_taxonomy(out / "annotations" / "fho_lta_taxonomy.json")
    assert list(tax.verbs) == VERBS and list(tax.nouns) == NOUNS
    for split, paths in splits.items():
        ann = load_split(out, split)  # the project's own validating loader reads it
        rows = read_rows(paths)
        assert ann.num_segments == len(rows)
        assert sorted(ann.clip_uids) == sorted({r["video_id"] for r in rows})
        for vid in ann.clip_uids:
            mine = [r for r in rows if r["video_id"] == vid]
            # expected: by start time, ties by the narration number
            mine.sort(key=lambda r: (secs(r["start_timestamp"]), int(r["narration_id"].rsplit("_", 1)[1])))
            sl = ann.clip_slices[vid]
            assert list(ann.action_idx[sl]) == list(range(len(mine)))
            np.testing.assert_allclose(ann.start_sec[sl], [secs(r["start_timestamp"]) for r in mine], atol=1e-9)
            np.testing.assert_allclose(ann.end_sec[sl], [secs(r["stop_timestamp"]) for r in mine], atol=1e-9)
            recs = ann.records[sl]
            assert [r["narration_id"] for r in recs] == [r["narration_id"] for r in mine]
            if split == "test":
                assert all("verb_label" not in r and "noun_label" not in r for r in recs)
            else:
                assert list(ann.verb[sl]) == [int(r["verb_class"]) for r in mine]
                assert list(ann.noun[sl]) == [int(r["noun_class"]) for r in mine]
                assert [r["verb"] for r in recs] == [VERBS[int(r["verb_class"])] for r in mine]
        assert ann.has_labels == (split != "test")
    # the shuffled input really had ties and out-of-order narration numbers (otherwise the order test is weak)
    rows = read_rows(splits["train"])
    starts = [(r["video_id"], r["start_timestamp"]) for r in rows]
    assert len(set(starts)) < len(starts)


def test_links_videos_as_clips_hq(ek_src, tmp_path):
    src, splits = ek_src
    videos = tmp_path / "videos"
    present = ["P01_01", "P05_02", "P06_01"]
    for vid in present:
        (videos / vid.split("_")[0] / "videos").mkdir(parents=True, exist_ok=True)
        (videos / vid.split("_")[0] / "videos" / f"{vid}.MP4").write_bytes(os.urandom(64))
    out = tmp_path / "ds"
    assert run_import(src, out, splits, f"videos={videos}") == 0
    from features.annotations import clip_path

    for vid in present:
        link = clip_path(out, vid, resized=False)
        assert link.is_file() and not link.is_symlink()
        assert link.read_bytes() == (videos / vid.split("_")[0] / "videos" / f"{vid}.MP4").read_bytes()
    assert not clip_path(out, "P02_03", resized=False).exists()  # missing videos get no link


def _single_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def _corrupt(path: Path, line: int, column: str, value: str | None) -> None:
    """Set `column` of data line `line` (1 = header) to `value`; None drops the column from the header."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    j = header.index(column)
    if value is None:
        rows = [r[:j] + r[j + 1:] for r in rows]
    else:
        rows[line - 1][j] = value
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


DEFECTS = {  # name -> (column, bad value, field named in the message); None drops the column
    "missing column": ("noun_class", None, "noun_class"),
    "bad timestamp": ("start_timestamp", "12.5s", "start_timestamp"),
    "bad minutes": ("stop_timestamp", "00:61:00.00", "stop_timestamp"),
    "verb class out of range": ("verb_class", str(len(VERBS)), "verb_class"),
    "negative noun class": ("noun_class", "-1", "noun_class"),
    "non-integer class": ("verb_class", "open", "verb_class"),
    "missing value": ("video_id", "", "video_id"),
    "stop before start": ("start_timestamp", "09:59:59.00", "stop_timestamp"),  # later than every stop
}


@pytest.mark.parametrize("defect", list(DEFECTS))
@pytest.mark.parametrize("existing", [False, True])
def test_malformed_row_one_line_nothing_written(ek_src, tmp_path, capsys, defect, existing):
    src, splits = ek_src
    out = tmp_path / "ds"
    before = {}
    if existing:  # a previous import must survive a failed overwrite byte for byte
        assert run_import(src, out, splits) == 0
        before = {p.name: p.read_bytes() for p in (out / "annotations").iterdir()}
        capsys.readouterr()
    rng = np.random.default_rng(len(defect))
    target = splits["val"][0] if defect != "bad minutes" else splits["train"][1]
    n_rows = len(read_rows([target]))
    line = int(rng.integers(2, n_rows + 2))  # a data line (line 1 is the header)
    column, value, field = DEFECTS[defect]
    _corrupt(target, line, column, value)
    code = run_import(src, out, splits, *(["overwrite=true"] if existing else []))
    assert code == 2
    err = _single_line_error(capsys)
    assert target.name in err and f"'{field}'" in err
    assert f"line {1 if value is None else line}" in err
    if existing:
        assert {p.name: p.read_bytes() for p in (out / "annotations").iterdir()} == before
    else:
        assert not (out / "annotations").exists()
    assert not [p for p in out.glob(".*")] if out.exists() else True  # no temp folders left


def test_duplicate_narration_id_names_both_places(ek_src, tmp_path, capsys):
    src, splits = ek_src
    val_rows = read_rows(splits["val"])
    train_rows = read_rows([splits["train"][0]])
    rng = np.random.default_rng(len(val_rows))
    i = int(rng.integers(len(val_rows)))
    # reuse a train narration_id in the val file: same id in two files
    _corrupt(splits["val"][0], i + 2, "narration_id", train_rows[0]["narration_id"])
    assert run_import(src, tmp_path / "ds", splits) == 2
    err = _single_line_error(capsys)
    assert f"{splits['val'][0].name}: line {i + 2}: field 'narration_id'" in err
    assert f"{splits['train'][0].name}:" in err  # where it was first seen
    assert not (tmp_path / "ds" / "annotations").exists()


def test_class_file_and_unknown_format_errors(ek_src, tmp_path, capsys):
    src, splits = ek_src
    with open(src / "EPIC_100_noun_classes.csv", "a") as f:
        f.write(f"{len(NOUNS) + 3},extra,[],x\n")  # an id gap
    assert run_import(src, tmp_path / "ds", splits) == 2
    err = _single_line_error(capsys)
    assert "EPIC_100_noun_classes.csv" in err and "'id'" in err
    assert cli.main(["import-annotations", "format=not-a-format", f"src={src}", f"out={tmp_path / 'x'}"]) == 2
    assert "epic-kitchens-100" in _single_line_error(capsys)


def test_refuses_to_replace_without_overwrite(ek_src, tmp_path, capsys):
    src, splits = ek_src
    out = tmp_path / "ds"
    assert run_import(src, out, splits) == 0
    first = (out / "annotations" / SPLIT_FILES["train"]).read_bytes()
    capsys.readouterr()
    assert run_import(src, out, splits) == 2
    assert "overwrite=true" in _single_line_error(capsys)
    assert (out / "annotations" / SPLIT_FILES["train"]).read_bytes() == first
    summary_out = run_import(src, out, splits, "overwrite=true")
    assert summary_out == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["segments"] == len(read_rows(splits["train"]))
