"""Annotation loading: v1/v2-sized taxonomies, sorting, test split, and every malformed-input defect."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from features.annotations import (
    AnnotationError, TAXONOMY_FILE, clip_path, load_split, load_taxonomy, parse_split, safe_join,
)
from features.synthetic import annotation_documents, plan_sample, taxonomy_names


def _write_dataset(root: Path, docs: dict) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        (root / "annotations" / name).write_text(json.dumps(doc))
    return root


@pytest.mark.parametrize("num_verbs,num_nouns", [(115, 478), (117, 521)], ids=["v1", "v2"])
def test_taxonomy_sizes_come_from_the_file(tmp_path, num_verbs, num_nouns):
    plan = plan_sample(clips=3, seed=1, verbs=num_verbs, nouns=num_nouns, segments_per_clip=30)
    root = _write_dataset(tmp_path, annotation_documents(plan))
    tax = load_taxonomy(root / "annotations" / TAXONOMY_FILE)
    assert (tax.num_verbs, tax.num_nouns) == (num_verbs, num_nouns)
    assert len(set(tax.verbs)) == num_verbs and len(set(tax.nouns)) == num_nouns
    assert tax.verbs[0] == "take_(pick,_grab,_get)"
    train = load_split(root, "train")
    assert train.taxonomy.num_nouns == num_nouns
    assert train.verb.max() < num_verbs and train.noun.max() < num_nouns
    # action token is collision-free for the largest ids
    ids = tax.action_ids(np.array([num_verbs - 1, 0]), np.array([num_nouns - 1, 0]))
    assert ids.tolist() == [num_verbs * num_nouns - 1, 0]


def test_rows_sorted_by_clip_and_action_idx_even_when_shuffled(tmp_path):
    plan = plan_sample(clips=4, seed=2, segments_per_clip=30)
    docs = annotation_documents(plan)
    records = docs["fho_lta_train.json"]["clips"]
    np.random.default_rng(0).shuffle(records)
    root = _write_dataset(tmp_path, docs)
    ann = load_split(root, "train")
    keys = list(zip(ann.clip_uid, ann.action_idx))
    assert keys == sorted(keys)
    for uid, sl in ann.clip_slices.items():
        assert (ann.clip_uid[sl] == uid).all()
        assert ann.action_idx[sl].tolist() == list(range(sl.stop - sl.start))  # contiguous from 0
    rec = ann.records[5]
    assert (ann.start_sec[5], ann.verb[5]) == (rec["action_clip_start_sec"], rec["verb_label"])


def test_test_split_has_no_labels(sample_annotations):
    test = load_split(sample_annotations, "test")
    assert test.num_segments > 0 and not test.has_labels
    assert (test.verb == -1).all() and (test.noun == -1).all()
    assert "verb_label" not in test.records[0]


def _defect_cases():
    def drop(field):
        return lambda r: r.pop(field)

    def put(field, value):
        return lambda r: r.__setitem__(field, value)

    return [
        ("missing_field", 3, drop("action_clip_end_sec"), "action_clip_end_sec", "missing"),
        ("missing_label", 4, drop("noun_label"), "noun_label", "missing"),
        ("wrong_type_str", 2, put("action_idx", "2"), "action_idx", "expected int"),
        ("wrong_type_bool", 2, put("verb_label", True), "verb_label", "expected int"),
        ("wrong_type_optional", 6, put("video_uid", 17), "video_uid", "expected str"),
        ("verb_out_of_range", 5, put("verb_label", 10), "verb_label", "out of taxonomy range"),
        ("noun_negative", 5, put("noun_label", -1), "noun_label", "out of taxonomy range"),
        ("end_before_start", 7, put("action_clip_end_sec", 0.5), "action_clip_end_sec", "before start"),
        ("uid_slash", 1, put("clip_uid", "a/b"), "clip_uid", "unsafe clip_uid"),
        ("uid_dotdot", 1, put("clip_uid", "..abc"), "clip_uid", "unsafe clip_uid"),
        ("uid_dotdot_inside", 1, put("clip_uid", "abc..def"), "clip_uid", "unsafe clip_uid"),
    ]


@pytest.mark.parametrize("name,index,mutate,field,what", _defect_cases(), ids=[c[0] for c in _defect_cases()])
def test_malformed_record_names_file_record_and_field(tmp_path, name, index, mutate, field, what):
    docs = annotation_documents(plan_sample(clips=3, seed=3, segments_per_clip=30))
    records = docs["fho_lta_train.json"]["clips"]
    records[index]["action_clip_start_sec"] = max(records[index]["action_clip_start_sec"], 1.0)
    mutate(records[index])
    root = _write_dataset(tmp_path, docs)
    pattern = rf"fho_lta_train\.json: record {index}\b.*field '{field}'.*{what}"
    with pytest.raises(AnnotationError, match=pattern):
        load_split(root, "train")


def test_duplicate_clip_uid_action_idx(tmp_path):
    docs = annotation_documents(plan_sample(clips=3, seed=3, segments_per_clip=30))
    records = docs["fho_lta_val.json"]["clips"]
    dup = copy.deepcopy(records[2])
    records.append(dup)
    root = _write_dataset(tmp_path, docs)
    n = len(records) - 1
    with pytest.raises(AnnotationError, match=rf"fho_lta_val\.json: record {n} .*field 'action_idx': duplicate.*record 2"):
        load_split(root, "val")


def test_file_level_errors(tmp_path):
    docs = annotation_documents(plan_sample(clips=3, seed=3, segments_per_clip=30))
    root = _write_dataset(tmp_path, docs)
    (root / "annotations" / "fho_lta_val.json").write_text("{not json")
    with pytest.raises(AnnotationError, match=r"fho_lta_val\.json: not valid JSON"):
        load_split(root, "val")
    (root / "annotations" / "fho_lta_val.json").write_text(json.dumps([1, 2]))
    with pytest.raises(AnnotationError, match=r"fho_lta_val\.json: expected a JSON object with a 'clips' array"):
        load_split(root, "val")
    (root / "annotations" / TAXONOMY_FILE).write_text(json.dumps({"verbs": ["a"], "nouns": []}))
    with pytest.raises(AnnotationError, match=r"fho_lta_taxonomy\.json: field 'nouns'"):
        load_split(root, "train")
    with pytest.raises(ValueError, match="unknown split"):
        load_split(root, "dev")


def test_clip_paths_refuse_escapes(tmp_path):
    assert clip_path(tmp_path, "abc-123") == tmp_path / "clips" / "abc-123.mp4"
    assert clip_path(tmp_path, "abc-123", resized=False) == tmp_path / "clips_hq" / "abc-123.mp4"
    for bad in ("../x", "a/b", "..", "", "/abs"):
        with pytest.raises(ValueError, match="unsafe clip_uid"):
            clip_path(tmp_path, bad)
    with pytest.raises(ValueError, match="escapes its root"):
        safe_join(tmp_path / "clips", "..", "other")


def test_parse_split_labelled_override(tmp_path):
    docs = annotation_documents(plan_sample(clips=3, seed=4, segments_per_clip=30))
    root = _write_dataset(tmp_path, docs)
    tax = load_taxonomy(root / "annotations" / TAXONOMY_FILE)
    val = parse_split(root / "annotations" / "fho_lta_val.json", "val", tax, labelled=False)
    assert (val.verb == -1).all()
    names = taxonomy_names(3, 2)
    assert names == (("take_(pick,_grab,_get)", "put_(place,_leave,_drop)", "cut_(trim,_slice,_chop)"), ("knife", "bowl"))
