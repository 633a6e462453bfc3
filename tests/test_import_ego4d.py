"""`lta store import-ego4d`: official per-video features -> store rows, checked window by window.

Synthetic feature files hold value `window_index + 0.25 * j` (+100 for the second video) in
dimension j, so every view of every row says which window it came from. Window i spans parent
frames [16 i, 16 i + 32) at 30 fps; segment bounds below are given in parent frames.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from features.errors import RunFailure
from features.annotations import load_split
from features.ego4d_features import ImportParams, import_ego4d_features, segment_windows
from features.store import FeatureStore, load_features
from pipelines import cli, cmd_store

FPS, DIM = 30.0, 4
NUM_WINDOWS = 40  # vidA covers frames [0, 39 * 16 + 32) = [0, 656)

# (split, clip_uid, video_uid, clip_parent_start_sec, action_idx, parent frames [start, end), expected windows per view)
SEGMENTS = [
    ("train", "clipA1", "vidA", 4.0, 0, (120, 150), [7, 8, 8]),  # at the clip's first frame; shorter than a window: centred 119 -> 7
    ("train", "clipA1", "vidA", 4.0, 1, (320, 480), [24, 20, 28]),  # long: centred, start-aligned, end-aligned
    ("train", "clipA1", "vidA", 4.0, 2, (400, 430), [25, 25, 25]),  # overlaps the previous segment
    ("train", "clipA1", "vidA", 4.0, 3, (500, 500), [30, 31, 31]),  # zero-length: centred window starts at 484 -> 30 (holds 500)
    ("train", "clipA1", "vidA", 4.0, 4, (600, 700), [39, 38, 39]),  # runs past the last window: clamped
    ("train", "clipA1", "vidA", 4.0, 5, (700, 760), None),  # after the last window: failure, not zeros
    ("train", "clipA0", "vidA", 0.0, 0, (0, 40), [0, 0, 1]),  # at the very start of the video
    ("train", "clipM", "vidMissing", 0.0, 0, (0, 60), None),  # no feature file
    ("val", "clipB", "vidB", 2.0, 0, (96, 224), [9, 6, 12]),  # second video, second split
]


def window_values(offset: float, num_windows: int = NUM_WINDOWS) -> torch.Tensor:
    return torch.arange(num_windows, dtype=torch.float32)[:, None] + offset + 0.25 * torch.arange(DIM)[None, :]


def write_dataset(root):
    ann = root / "data" / "annotations"
    ann.mkdir(parents=True)
    (ann / "fho_lta_taxonomy.json").write_text(json.dumps({"verbs": ["take", "put"], "nouns": ["cup", "knife"]}))
    for split in ("train", "val"):
        clips = [{"clip_uid": c, "video_uid": v, "clip_parent_start_sec": p, "action_idx": a,
                  "action_clip_start_sec": f0 / FPS - p, "action_clip_end_sec": f1 / FPS - p,
                  "verb_label": a % 2, "noun_label": 1}
                 for s, c, v, p, a, (f0, f1), _ in SEGMENTS if s == split]
        (ann / f"fho_lta_{split}.json").write_text(json.dumps({"split": split, "clips": clips}))
    feats = root / "features"
    feats.mkdir()
    torch.save(window_values(0.0), feats / "vidA.pt")
    torch.save(window_values(100.0, 20), feats / "vidB.pt")
    return root / "data", feats


def test_segment_windows_matches_hand_computed_cases():
    params = ImportParams(num_views=3)
    for _, _, vid, _, _, (f0, f1), expect in SEGMENTS:
        if vid == "vidMissing":
            continue
        n = NUM_WINDOWS if vid == "vidA" else 20
        got = segment_windows(np.array([f0 / FPS]), np.array([f1 / FPS]), n, params)[0].tolist()
        assert got == (expect or [-1, -1, -1]), (f0, f1)


def test_import_writes_exact_windows_and_reports_missing(tmp_path):
    data, feats_dir = write_dataset(tmp_path)
    store_root = tmp_path / "store"
    summary = import_ego4d_features(data, feats_dir, store_root, params=ImportParams(num_views=3), splits=["train", "val"])
    assert (summary.rows, summary.written, summary.failed) == (9, 7, 2)
    assert summary.reasons == {"no feature window overlaps the segment": 1, "video feature file missing": 1}
    store = FeatureStore.open(summary.store)
    assert store.name == "slowfast8x8_r101_k400" and store.feature_shape == (3, DIM)
    filled = store.filled()
    for split, clip, vid, parent, act, _, expect in SEGMENTS:
        r = int(store.rows.lookup(np.array([clip]), np.array([act]))[0])
        assert store.rows.split[r] == split
        assert filled[r] == (expect is not None)
        if expect is None:
            continue
        got = store.read(np.array([r]))[0].astype(np.float32)  # (V, D)
        offset = 100.0 if vid == "vidB" else 0.0
        assert np.array_equal(got, np.array(expect, np.float32)[:, None] + offset + 0.25 * np.arange(DIM)[None, :])
        win = store.read_windows(np.array([r]))[0]  # clip-relative seconds
        assert np.allclose(win[:, 0], np.array(expect) * 16 / FPS - parent)
        assert np.allclose(win[:, 1] - win[:, 0], 32 / FPS)
    failures = [json.loads(line) for line in (store_root / "failures.jsonl").read_text().splitlines()]
    assert {(f["clip_uid"], f["action_idx"], f["reason"]) for f in failures} == {
        ("clipM", 0, "video feature file missing"), ("clipA1", 5, "no feature window overlaps the segment")}
    loaded = load_features([store.path], splits=["train"])
    assert loaded.missing[store.key][0] == 2 and np.isnan(loaded.arrays[store.key][~loaded.valid[store.key]]).all()

    # re-run: same key, done rows kept (vidA is re-read only for its unfinished row); changed file -> new key
    again = import_ego4d_features(data, feats_dir, store_root, params=ImportParams(num_views=3), splits=["train", "val"])
    assert again.key == summary.key and (again.written, again.already_done, again.failed) == (0, 7, 2)
    torch.save(window_values(0.5), feats_dir / "vidA.pt")
    changed = import_ego4d_features(data, feats_dir, store_root, params=ImportParams(num_views=3), splits=["train", "val"])
    assert changed.key != summary.key
    other = import_ego4d_features(data, feats_dir, store_root, params=ImportParams(num_views=3, stride_frames=8),
                                  splits=["train", "val"])
    assert other.key not in (summary.key, changed.key)


def test_unsafe_or_bad_feature_files_fail_their_segments(tmp_path):
    data, feats_dir = write_dataset(tmp_path)
    torch.save({"not": "a tensor"}, feats_dir / "vidB.pt")
    summary = import_ego4d_features(data, feats_dir, tmp_path / "store", params=ImportParams(num_views=3),
                                    splits=["train", "val"])
    assert summary.reasons["video feature file unreadable"] == 1 and summary.written == 6
    (feats_dir / "vidA.pt").unlink()
    with pytest.raises(FileNotFoundError, match="none of the 2 video feature files"):
        import_ego4d_features(data, feats_dir, tmp_path / "store", splits=["train"])


def test_cli_import_then_ls_verify_export(tmp_path, capsys):
    data, feats_dir = write_dataset(tmp_path)
    root = tmp_path / "store"
    argv = ["import-ego4d", f"data={data}", f"features_dir={feats_dir}", f"store={root}", "views=2", "splits=[train,val]",
            "max_failed_frac=0.5"]
    assert cmd_store.main(argv) == 0
    assert "written 7" in capsys.readouterr().out
    with pytest.raises(RunFailure, match="more than max_failed_frac=0.1"):  # 2 of 9 failed > 10%
        cmd_store.main(argv[:-1] + ["max_failed_frac=0.1"])
    assert cmd_store.main(["ls", f"root={root}"]) == 0
    out = capsys.readouterr().out
    assert "slowfast8x8_r101_k400" in out and "7/9" in out and "2x4" in out
    assert cmd_store.main(["verify", f"root={root}"]) == 0
    (path,) = [p for p in root.iterdir() if p.suffix == ".zarr"]
    assert cmd_store.main(["export", f"src={path}", f"dst={tmp_path / 'h5'}"]) == 0
    h5 = FeatureStore.open(tmp_path / "h5" / f"{path.stem}.h5")
    zs = FeatureStore.open(path)
    assert np.array_equal(h5.filled(), zs.filled())
    assert np.array_equal(h5.read(np.flatnonzero(zs.filled())), zs.read(np.flatnonzero(zs.filled())))
    capsys.readouterr()
    assert cli.main(["store", "frobnicate"]) == 2  # usage errors, printed by the boundary
    assert "lta store: unknown subcommand 'frobnicate'" in capsys.readouterr().err
    assert cli.main(["store", "ls", "nope=1"]) == 2
    assert "unknown key 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_train_heads_runs_on_an_imported_store(tmp_path):
    from pipelines import cmd_train_heads
    from synthetic_store import write_synthetic_dataset

    torch.set_num_threads(1)
    data = tmp_path / "data"
    write_synthetic_dataset(data, clips=9, seed=1)
    end_sec: dict[str, float] = {}
    for split in ("train", "val", "test"):
        for rec in load_split(data, split).records:
            end = rec["clip_parent_start_sec"] + rec["action_clip_end_sec"]
            end_sec[rec["video_uid"]] = max(end_sec.get(rec["video_uid"], 0.0), end)
    feats_dir = tmp_path / "features"
    feats_dir.mkdir()
    gen = torch.Generator().manual_seed(0)
    for vid, end in end_sec.items():
        torch.save(torch.randn(int(end * FPS / 16) + 2, 16, generator=gen), feats_dir / f"{vid}.pt")
    root = tmp_path / "store"
    assert cmd_store.main(["import-ego4d", f"data={data}", f"features_dir={feats_dir}", f"store={root}", "views=2",
                           "max_failed_frac=0"]) == 0
    run = tmp_path / "run"
    argv = [f"data={data}", f"store={root}", f"out={run}", "head.modalities=[{name: slowfast, proj_dim: 16}]",
            "head.num_input=2", "head.aggregator=concat", "train.epochs=2", "train.batch_size=16", "num_seen=4"]
    assert cmd_train_heads.main(argv) == 0
    assert (run / "checkpoints" / "last.pt").is_file()
