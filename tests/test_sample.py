"""`lta sample`: schema, determinism, learnable structure, and decodable H.264 clips."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from features.annotations import SPLIT_FILES, load_split
from extract.render import write_sample
from features.synthetic import plan_sample, walk_task
from features.windows import build_windows
from pipelines import cli

SCHEMA_FIELDS = {
    "video_uid", "clip_uid", "clip_id", "action_idx", "clip_parent_start_sec", "clip_parent_end_sec",
    "clip_parent_start_frame", "clip_parent_end_frame", "interval_start_sec", "interval_end_sec",
    "interval_start_frame", "interval_end_frame", "action_clip_start_sec", "action_clip_end_sec",
    "action_clip_start_frame", "action_clip_end_frame", "verb", "noun", "verb_label", "noun_label",
}
LABEL_FIELDS = {"verb", "noun", "verb_label", "noun_label"}


def _annotation_bytes(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "annotations").iterdir())}


def test_cli_annotations_are_byte_identical_and_follow_the_schema(tmp_path):
    for run in ("a", "b"):
        assert cli.main(["sample", f"out={tmp_path / run}", "seed=3", "videos=false"]) == 0
    a, b = _annotation_bytes(tmp_path / "a"), _annotation_bytes(tmp_path / "b")
    assert a == b and set(a) == set(SPLIT_FILES.values()) | {"fho_lta_taxonomy.json"}
    assert (tmp_path / "a" / "synthetic_sample.json").read_bytes() == (tmp_path / "b" / "synthetic_sample.json").read_bytes()
    assert not (tmp_path / "a" / "clips").exists() and not (tmp_path / "a" / "clips_hq").exists()
    cli.main(["sample", f"out={tmp_path / 'c'}", "seed=4", "videos=false"])
    assert _annotation_bytes(tmp_path / "c") != a

    root = tmp_path / "a"
    tax = json.loads(a["fho_lta_taxonomy.json"])
    assert (len(tax["verbs"]), len(tax["nouns"])) == (10, 14) and tax["verbs"][0] == "take_(pick,_grab,_get)"
    counts = {}
    for split, filename in SPLIT_FILES.items():
        doc = json.loads(a[filename])
        assert set(doc) == {"version", "date", "description", "split", "clips"} and doc["split"] == split
        fields = SCHEMA_FIELDS if split != "test" else SCHEMA_FIELDS - LABEL_FIELDS
        for rec in doc["clips"]:
            assert set(rec) == fields
            assert rec["action_clip_end_sec"] > rec["action_clip_start_sec"] >= 0
            assert rec["action_clip_end_sec"] <= rec["clip_parent_end_sec"] - rec["clip_parent_start_sec"] + 1e-6
            assert rec["interval_start_sec"] == pytest.approx(rec["clip_parent_start_sec"] + rec["action_clip_start_sec"], abs=1e-5)
            assert rec["action_clip_start_frame"] == round(rec["action_clip_start_sec"] * 30)
            assert rec["interval_end_frame"] == rec["clip_parent_start_frame"] + rec["action_clip_end_frame"]
            if split != "test":
                assert rec["verb"] == tax["verbs"][rec["verb_label"]] and rec["noun"] == tax["nouns"][rec["noun_label"]]
        counts[split] = len({r["clip_uid"] for r in doc["clips"]})
        ann = load_split(root, split)  # the loader accepts every file
        for uid, sl in ann.clip_slices.items():
            assert len(uid) == 36 and uid[14] == "4"  # uuid4-like
            length = sl.stop - sl.start
            assert 36 <= length <= 44 and ann.action_idx[sl].tolist() == list(range(length))
            dur = ann.end_sec[sl] - ann.start_sec[sl]
            assert dur.min() >= 2.2 - 1e-6 and dur.max() <= 3.2 + 1e-6
    assert counts == {"train": 8, "val": 2, "test": 2}
    # some neighbouring segments overlap slightly, as real ones can
    train = load_split(root, "train")
    same_clip = train.clip_uid[1:] == train.clip_uid[:-1]
    gaps = (train.start_sec[1:] - train.end_sec[:-1])[same_clip]
    assert (gaps < 0).any() and (gaps > 0).any() and gaps.min() > -0.3
    assert len(build_windows(load_split(root, "val"), num_input=8, num_seen=8)) >= 2 * 8


def test_sequences_follow_the_task_grammar(sample_annotations):
    """A grammar oracle (next step of the clip's recipe) beats the training-set frequency prior by far."""
    info = json.loads((sample_annotations / "synthetic_sample.json").read_text())
    tasks = [[tuple(a) for a in t] for t in info["tasks"]]
    assert all(5 <= len(t) <= 9 and len(set(t)) == len(t) for t in tasks)
    train = load_split(sample_annotations, "train")
    actions = list(zip(train.verb.tolist(), train.noun.tolist()))
    top = max(set(actions), key=actions.count)
    oracle_hits = prior_hits = total = 0
    for c in info["clips"]:
        recipe = tasks[c["task"]]
        seq = list(zip(c["verb_label"], c["noun_label"]))
        for prev, nxt in zip(seq[:-1], seq[1:]):
            if prev in recipe:
                oracle_hits += nxt == recipe[(recipe.index(prev) + 1) % len(recipe)]
            prior_hits += nxt == top
            total += 1
    assert oracle_hits / total > 0.7 and prior_hits / total < 0.25


def test_walk_noise_rates():
    rng = np.random.default_rng(0)
    recipe = [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
    verbs, _ = walk_task(rng, recipe, 20000, num_verbs=50, num_nouns=50)
    step = (verbs[1:] - verbs[:-1]) % 6
    in_recipe = (verbs[1:] < 6) & (verbs[:-1] < 6)
    assert 0.72 < np.mean(step[in_recipe] == 1) < 0.86
    assert 0.06 < np.mean(step[in_recipe] == 2) < 0.14
    assert 0.03 < np.mean(verbs >= 6) < 0.07  # random actions (from outside the recipe)


def test_plan_arguments_are_checked():
    with pytest.raises(ValueError, match="clips"):
        plan_sample(clips=0)
    with pytest.raises(ValueError, match="even"):
        plan_sample(clips=1, width=161)
    plan = plan_sample(clips=2, seed=1, verbs=3, nouns=2, segments_per_clip=30)
    assert all(c.num_segments == 30 for c in plan.clips)
    assert len({lk.rgb for lk in plan_sample(clips=1, nouns=16).looks}) == 16  # colour alone tells nouns apart


def _decode(path: Path) -> tuple[list[np.ndarray], float, tuple[int, int]]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, float(stream.average_rate), (stream.codec_context.width, stream.codec_context.height)


def test_clips_decode_with_the_planned_frames_and_content(tiny_sample):
    info = json.loads((tiny_sample / "synthetic_sample.json").read_text())
    mp4s = sorted((tiny_sample / "clips_hq").glob("*.mp4"))
    assert {p.stem for p in mp4s} == {c["clip_uid"] for c in info["clips"]}
    assert not list((tiny_sample / "clips_hq").glob(".*"))  # no temporary files left behind
    clip = info["clips"][0]
    frames, fps, size = _decode(tiny_sample / "clips_hq" / f"{clip['clip_uid']}.mp4")
    assert len(frames) == clip["num_frames"] and fps == 30.0 and size == (160, 120)
    assert frames[0].shape == (120, 160, 3)
    # the object of the active segment shows its noun's colour
    split = clip["split"]
    ann = load_split(tiny_sample, split)
    sl = ann.clip_slices[clip["clip_uid"]]
    s = sl.start + 3
    mid = int(round((ann.start_sec[s] + ann.end_sec[s]) / 2 * 30))
    rgb = np.array(info["noun_appearance"][clip["noun_label"][3]]["rgb"])
    dist = np.abs(frames[mid].astype(int) - rgb).sum(axis=-1)
    assert (dist < 40).sum() > 100


@pytest.mark.slow
def test_rendering_is_deterministic(tmp_path):
    kwargs = dict(clips=2, seed=11, segments_per_clip=(28, 29), segment_sec=(1.0, 1.2), width=160, height=120)
    summaries = [write_sample(plan_sample(**kwargs), tmp_path / run) for run in ("a", "b")]
    assert summaries[0]["clip_uids"] == summaries[1]["clip_uids"]
    for uid in summaries[0]["clip_uids"]["train"] + summaries[0]["clip_uids"]["test"]:
        fa, fps_a, size_a = _decode(tmp_path / "a" / "clips_hq" / f"{uid}.mp4")
        fb, fps_b, size_b = _decode(tmp_path / "b" / "clips_hq" / f"{uid}.mp4")
        assert len(fa) == len(fb) > 28 * 30 and (fps_a, size_a) == (fps_b, size_b)
        assert all(np.array_equal(x, y) for x, y in zip(fa, fb))
        assert (tmp_path / "a" / "clips_hq" / f"{uid}.mp4").read_bytes() == (tmp_path / "b" / "clips_hq" / f"{uid}.mp4").read_bytes()
