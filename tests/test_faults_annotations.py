"""Malformed Ego4D LTA annotation files (hypothesis): a clear error naming file, record and field, no partial output.

A valid document is generated, then one defect is injected: a missing or mistyped field, an
out-of-range label or time, a duplicate (clip_uid, action_idx), a key given twice in one JSON object,
an unsafe clip_uid, or a broken top level. Loading must raise `AnnotationError` whose message names
the file, the record index and the field; `lta extract` must stop before writing any store.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.annotations import (
    AnnotationError, MAX_ACTION_IDX, Taxonomy, check_clip_uid, clip_path, load_split, parse_split,
)
from pipelines import cmd_extract
from test_faults_video import record_fault

TAX = Taxonomy(verbs=("take", "put", "cut"), nouns=("knife", "bowl"), path="taxonomy.json")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SAFE_UID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,12}", fullmatch=True)
REQUIRED = ("clip_uid", "action_idx", "action_clip_start_sec", "action_clip_end_sec", "verb_label", "noun_label")
WRONG_TYPES = {  # field -> values of a JSON type the schema does not accept
    "clip_uid": [7, None, True, ["c"], {"uid": "c"}],
    "action_idx": ["3", 1.5, None, True, [1]],
    "action_clip_start_sec": ["0.5", None, True, [0.5]],
    "action_clip_end_sec": ["1.0", None, False, {}],
    "verb_label": ["1", 1.0, None, True],
    "noun_label": ["0", 0.0, None, False],
    "video_uid": [3, ["v"]],
    "clip_id": ["1", 1.5],
}
UNSAFE_UIDS = ["../escape", "..", "a/../../b", "/etc/passwd", "a/b", "a\\b", ".hidden", "", " x", "x" * 201,
               "a\x00b", "clip uid", "ü-clip", "-dash", "~home", "$HOME", "a..b"]


@st.composite
def valid_records(draw) -> list[dict]:
    uids = draw(st.lists(SAFE_UID, min_size=1, max_size=3, unique=True))
    records = []
    for uid in uids:
        n = draw(st.integers(1, 4))
        for k in draw(st.lists(st.integers(0, 50), min_size=n, max_size=n, unique=True)):
            start = draw(st.floats(0, 500, allow_nan=False))
            records.append({"clip_uid": uid, "action_idx": k, "action_clip_start_sec": start,
                            "action_clip_end_sec": start + draw(st.floats(0, 10, allow_nan=False)),
                            "verb_label": draw(st.integers(0, TAX.num_verbs - 1)),
                            "noun_label": draw(st.integers(0, TAX.num_nouns - 1)), "video_uid": "v0", "clip_id": 1})
    return draw(st.permutations(records))


@st.composite
def defects(draw) -> tuple[str, int | None, str | None]:
    """(document text, record index or None, field name or None): one defect injected into a valid document."""
    records = [dict(r) for r in draw(valid_records())]
    i = draw(st.integers(0, len(records) - 1))
    rec = records[i]
    kind = draw(st.sampled_from(["missing", "type", "label", "time", "index", "duplicate", "json_key", "unsafe", "top"]))
    field = None
    if kind == "missing":
        field = draw(st.sampled_from(REQUIRED))
        del rec[field]
    elif kind == "type":
        field = draw(st.sampled_from(sorted(WRONG_TYPES)))
        rec[field] = draw(st.sampled_from(WRONG_TYPES[field]))
    elif kind == "label":
        field = draw(st.sampled_from(["verb_label", "noun_label"]))
        size = TAX.num_verbs if field == "verb_label" else TAX.num_nouns
        rec[field] = draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=size), st.just(2**80)))
    elif kind == "time":
        field = draw(st.sampled_from(["action_clip_start_sec", "action_clip_end_sec"]))
        rec[field] = draw(st.sampled_from([-0.5, math.inf, -math.inf, math.nan, 2**1100]))
        if field == "action_clip_end_sec" and draw(st.booleans()):  # or: end before start
            rec["action_clip_start_sec"], rec[field] = 5.0, 4.0
    elif kind == "index":
        field = "action_idx"
        rec[field] = draw(st.sampled_from([-1, MAX_ACTION_IDX + 1, 10**30]))
    elif kind == "duplicate":
        field = "action_idx"
        j = draw(st.integers(0, len(records)))
        records.insert(j, dict(rec))
        i = max(i + (j <= i), j)  # the later of the two copies is reported
    elif kind == "unsafe":
        field = "clip_uid"
        rec[field] = draw(st.one_of(st.sampled_from(UNSAFE_UIDS),
                                    st.text(min_size=1, max_size=20).filter(lambda u: not _is_safe(u))))
    doc = {"version": "v2", "split": "train", "clips": records}
    text = json.dumps(doc)
    if kind == "json_key":  # the same key twice in record i's object (json.load would keep the last silently)
        field = draw(st.sampled_from(["clip_uid", "verb_label"]))
        parts = [json.dumps(r) for r in records]
        parts[i] = parts[i][:-1] + f', "{field}": {json.dumps(rec[field])}}}'
        text = json.dumps({"version": "v2", "split": "train"})[:-1] + ', "clips": [' + ", ".join(parts) + "]}"
        i = None  # reported by key, before records are numbered
    elif kind == "top":
        field = None
        text, i = draw(st.sampled_from([(json.dumps(records), None), (json.dumps({"clips": {"0": records[0]}}), None),
                                        (json.dumps({"clip": records}), None), (json.dumps({"clips": [records[0], 3]}), 1),
                                        (text[: len(text) // 2], None), ("", None), ("[" * 50000 + "]" * 50000, None)]))
    return text, i, field


def _is_safe(uid: str) -> bool:
    try:
        check_clip_uid(uid)
        return True
    except ValueError:
        return False


@SETTINGS
@given(defect=defects())
def test_malformed_split_raises_a_precise_error(tmp_path, defect):
    text, index, field = defect
    path = tmp_path / "fho_lta_train.json"
    path.write_text(text)
    with pytest.raises(AnnotationError) as err:
        parse_split(path, "train", TAX)
    msg = str(err.value)
    assert msg.startswith(str(path)) and len(msg) < 600, msg
    if index is not None:
        assert f"record {index}" in msg, msg
    if field is not None:
        assert f"'{field}'" in msg or f'"{field}"' in msg, msg


@settings(max_examples=60, deadline=None)
@given(records=valid_records())
def test_valid_split_loads_every_record_in_order(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("valid") / "fho_lta_train.json"
    path.write_text(json.dumps({"clips": records}))
    ann = parse_split(path, "train", TAX)
    want = sorted((r["clip_uid"], r["action_idx"]) for r in records)
    assert list(zip(ann.clip_uid.tolist(), ann.action_idx.tolist())) == want
    assert ann.has_labels and ann.num_segments == len(records)


@settings(max_examples=300, deadline=None)
@given(uid=st.one_of(st.text(max_size=40), st.sampled_from(UNSAFE_UIDS), SAFE_UID))
def test_clip_paths_never_leave_the_data_root(tmp_path_factory, uid):
    root = tmp_path_factory.getbasetemp() / "root"
    try:
        path = clip_path(root, uid)
    except ValueError as err:
        assert "unsafe clip_uid" in str(err) and len(str(err)) < 400
        return
    assert path.parent == root / "clips" and path.name == f"{uid}.mp4"
    assert root.resolve() in path.resolve().parents


def test_symlinked_clip_leading_outside_the_root_is_refused(tmp_path):
    (tmp_path / "data" / "clips").mkdir(parents=True)
    (tmp_path / "secret.mp4").write_bytes(b"x")
    (tmp_path / "data" / "clips" / "c1.mp4").symlink_to(tmp_path / "secret.mp4")
    with pytest.raises(ValueError, match="escapes its root"):
        clip_path(tmp_path / "data", "c1")


def test_huge_files(tmp_path):
    """50k valid records load in seconds; a 5 MB field or 10**30 index is a short, precise error."""
    rng = np.random.default_rng(0)
    n = 50_000
    records = [{"clip_uid": f"clip{r // 50:05d}", "action_idx": r % 50, "action_clip_start_sec": float(r % 50),
                "action_clip_end_sec": float(r % 50) + 1.5, "verb_label": int(rng.integers(3)), "noun_label": int(rng.integers(2))}
               for r in range(n)]
    path = tmp_path / "fho_lta_train.json"
    path.write_text(json.dumps({"clips": records}))
    t0 = time.perf_counter()
    ann = parse_split(path, "train", TAX)
    load_sec = time.perf_counter() - t0
    assert ann.num_segments == n and len(ann.clip_slices) == n // 50 and load_sec < 20
    records[123]["clip_uid"] = "c" * 5_000_000
    path.write_text(json.dumps({"clips": records}))
    with pytest.raises(AnnotationError, match=r"record 123 .*field 'clip_uid'.*5000002 chars") as err:
        parse_split(path, "train", TAX)
    assert len(str(err.value)) < 600
    records[123]["clip_uid"], records[7]["action_idx"] = "ok", 10**30
    path.write_text(json.dumps({"clips": records}))
    with pytest.raises(AnnotationError, match=r"record 7 .*field 'action_idx': must be in \[0, 2147483647\]"):
        parse_split(path, "train", TAX)


def _write_data(root: Path, text: str) -> None:
    ann = root / "annotations"
    ann.mkdir(parents=True)
    (ann / "fho_lta_taxonomy.json").write_text(json.dumps({"verbs": list(TAX.verbs), "nouns": list(TAX.nouns)}))
    (ann / "fho_lta_train.json").write_text(text)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(defect=defects())
def test_extract_stops_before_writing_anything(tmp_path_factory, defect):
    """`lta extract` on a malformed split raises the AnnotationError before any store or failure record exists."""
    root = tmp_path_factory.mktemp("e2e")
    _write_data(root / "data", defect[0])
    store = root / "store"
    argv = [f"data={root / 'data'}", f"store={store}", "extractors=[clip_vit_b32.openai]", "weights=random",
            "device=cpu", "splits=[train]", "progress=false"]
    with pytest.raises(AnnotationError, match="fho_lta_train.json"):
        cmd_extract.main(argv)
    leftovers = sorted(p.name for p in store.iterdir()) if store.exists() else []
    assert leftovers in ([], ["extract_config.yaml"]), leftovers  # the resolved config only; no store, no failures


def test_campaign_record(tmp_path):
    """One pass over fixed defects for the bench table (hypothesis explores the rest above)."""
    cases = {
        "annotations: missing field": {"clips": [{"clip_uid": "c", "action_idx": 0, "action_clip_start_sec": 0.0}]},
        "annotations: mistyped field": {"clips": [{"clip_uid": "c", "action_idx": "0", "action_clip_start_sec": 0.0,
                                                   "action_clip_end_sec": 1.0, "verb_label": 0, "noun_label": 0}]},
        "annotations: out-of-range label": {"clips": [{"clip_uid": "c", "action_idx": 0, "action_clip_start_sec": 0.0,
                                                       "action_clip_end_sec": 1.0, "verb_label": 3, "noun_label": 0}]},
        "annotations: unsafe clip_uid": {"clips": [{"clip_uid": "../../etc/x", "action_idx": 0, "action_clip_start_sec": 0.0,
                                                    "action_clip_end_sec": 1.0, "verb_label": 0, "noun_label": 0}]},
    }
    rec = '{"clip_uid": "c", "action_idx": 0, "action_clip_start_sec": 0, "action_clip_end_sec": 1, "verb_label": 0, "noun_label": 0}'
    texts = {k: json.dumps(v) for k, v in cases.items()}
    texts["annotations: duplicate keys"] = '{"clips": [' + rec + ", " + rec + "]}"
    texts["annotations: duplicate JSON key"] = '{"clips": [' + rec[:-1] + ', "clip_uid": "d"}]}'
    texts["annotations: huge / deeply nested file"] = "[" * 100_000 + "]" * 100_000
    for fault, text in texts.items():
        root = tmp_path / fault.split(": ")[1].replace(" ", "_").replace("/", "")
        _write_data(root / "data", text)
        try:
            load_split(root / "data", "train")
            survived = False
        except AnnotationError as err:
            survived = str(err).startswith(str(root / "data"))
        record_fault(fault, 1, int(survived), 0)
        assert survived, fault
