"""`lta score` and features/submission.py: perfect/random predictions, key-set rule, malformed files."""
from __future__ import annotations

import json

import editdistance
import numpy as np
import pytest

from features.annotations import load_split
from features.submission import PredictionError, read_predictions, validate_predictions, write_predictions
from features.windows import build_windows
from pipelines import cli


@pytest.fixture(scope="module")
def val(sample_annotations):
    ann = load_split(sample_annotations, "val")
    windows = build_windows(ann, num_input=8, num_seen=8)
    assert len(windows) >= 10
    return sample_annotations, ann, windows


def _truth(ann, windows, k=5):
    verb = np.repeat(ann.verb[windows.future][:, None], k, axis=1)
    noun = np.repeat(ann.noun[windows.future][:, None], k, axis=1)
    return verb, noun


def _score(tmp_path, root, obj_or_path, *extra):
    path = obj_or_path
    if not isinstance(obj_or_path, (str, type(tmp_path))):
        path = tmp_path / "outputs.json"
        path.write_text(json.dumps(obj_or_path))
    out = tmp_path / "score.json"
    rc = cli.main(["score", f"data={root}", "split=val", f"predictions={path}", f"out={out}", *extra])
    return rc, (json.loads(out.read_text()) if rc == 0 else None)


def test_perfect_predictions_score_zero(tmp_path, val):
    root, ann, windows = val
    verb, noun = _truth(ann, windows)
    path = write_predictions(tmp_path / "perfect.json", windows.keys, verb, noun)
    rc, result = _score(tmp_path, root, path)
    assert rc == 0
    assert result["verb_ed"] == result["noun_ed"] == result["action_ed"] == 0.0
    assert result["action_aued"] == 0.0
    assert result["num_keys_scored"] == len(windows) and result["num_keys_missing"] == 0


def test_random_predictions_match_independent_editdistance(tmp_path, val, capsys):
    root, ann, windows = val
    rng = np.random.default_rng(0)
    shape = (len(windows), 5, 20)
    verb = rng.integers(0, ann.taxonomy.num_verbs, size=shape)
    noun = rng.integers(0, ann.taxonomy.num_nouns, size=shape)
    verb[:, 0, :10] = ann.verb[windows.future][:, :10]  # partly right, so values are not all ~1
    path = write_predictions(tmp_path / "rand.json", windows.keys, verb, noun)
    rc, result = _score(tmp_path, root, path)
    assert rc == 0
    # independent computation: straight from the JSON files with editdistance
    pred = json.loads(path.read_text())
    records = {}
    for r in json.loads((root / "annotations" / "fho_lta_val.json").read_text())["clips"]:
        records.setdefault(r["clip_uid"], {})[r["action_idx"]] = (r["verb_label"], r["noun_label"])
    expect = {"verb": [], "noun": [], "action": []}
    for key in windows.keys:
        uid, idx = key.rsplit("_", 1)
        future = [records[uid][int(idx) + 1 + z] for z in range(20)]
        gt = {"verb": [v for v, _ in future], "noun": [n for _, n in future], "action": [f"{v},{n}" for v, n in future]}
        cands = {"verb": pred[key]["verb"], "noun": pred[key]["noun"],
                 "action": [[f"{v},{n}" for v, n in zip(vs, ns)] for vs, ns in zip(pred[key]["verb"], pred[key]["noun"])]}
        for head in expect:
            expect[head].append(min(editdistance.eval(c, gt[head]) for c in cands[head]) / 20)
    for head in expect:
        assert result[f"{head}_ed"] == pytest.approx(np.mean(expect[head]), abs=1e-9)
    assert 0 < result["verb_ed"] < result["action_ed"] <= 1
    assert "ED@20 verb" in capsys.readouterr().out


def test_key_set_rule_missing_extra_and_unknown(tmp_path, val):
    root, ann, windows = val
    verb, noun = _truth(ann, windows)
    obj = json.loads(write_predictions(tmp_path / "p.json", windows.keys, verb, noun).read_text())
    # missing keys: an error listing a few, unless allow_missing
    partial = dict(list(obj.items())[3:])
    rc, _ = _score(tmp_path, root, partial)
    assert rc == 1
    with pytest.raises(PredictionError, match=rf"3 of {len(windows)} expected key\(s\) missing: '{windows.keys[0]}'"):
        validate_predictions(partial, ann.taxonomy, windows.keys)
    rc, result = _score(tmp_path, root, partial, "allow_missing=true")
    assert rc == 0 and result["num_keys_scored"] == len(windows) - 3 and result["num_keys_missing"] == 3
    # extra keys with Z future segments (a model with fewer observed segments) are accepted, not scored
    uid = windows.keys[0].rsplit("_", 1)[0]
    extra = dict(obj, **{f"{uid}_3": obj[windows.keys[0]]})
    rc, result = _score(tmp_path, root, extra)
    assert rc == 0 and result["num_keys_extra"] == 1 and result["verb_ed"] == 0.0
    # a key without Z future segments, or of another clip, is unknown
    sl = ann.clip_slices[uid]
    too_late = f"{uid}_{sl.stop - sl.start - 20}"
    for bad in (too_late, "nonexistent-clip_9"):
        with pytest.raises(PredictionError, match=rf"unknown key\(s\).*'{bad}'"):
            validate_predictions(dict(obj, **{bad: obj[windows.keys[0]]}), ann.taxonomy, windows.keys,
                                 allowed_keys=build_windows(ann, num_input=1, num_seen=1).keys)
    # the challenge convention expects fewer keys; the plus_one extras are still accepted
    rc, result = _score(tmp_path, root, obj, "convention=challenge")
    assert rc == 0 and result["num_keys_scored"] == len(build_windows(ann, num_input=8, convention="challenge"))


def _entry(k=5, z=20):
    return {"verb": [[0] * z for _ in range(k)], "noun": [[1] * z for _ in range(k)]}


@pytest.mark.parametrize("name,mutate,message", [
    ("wrong_k", lambda e: e["verb"].pop(), r"field 'verb': expected K=5 sequences, got 4"),
    ("wrong_z", lambda e: e["noun"][2].append(0), r"field 'noun'\[2\]: expected a list of Z=20 class ids, got length 21"),
    ("float_id", lambda e: e["verb"][1].__setitem__(4, 1.5), r"field 'verb'\[1\]\[4\]: expected an int class id, got float"),
    ("bool_id", lambda e: e["verb"][1].__setitem__(4, True), r"expected an int class id, got bool"),
    ("string_id", lambda e: e["noun"][0].__setitem__(0, "3"), r"expected an int class id, got str"),
    ("verb_range", lambda e: e["verb"][0].__setitem__(7, 10), r"'verb'\[0\]\[7\]: class id 10 out of taxonomy range \[0, 10\)"),
    ("noun_negative", lambda e: e["noun"][4].__setitem__(19, -1), r"class id -1 out of taxonomy range \[0, 14\)"),
    ("extra_field", lambda e: e.__setitem__("action", []), r"expected an object with exactly 'verb' and 'noun'"),
    ("missing_head", lambda e: e.pop("noun"), r"expected an object with exactly 'verb' and 'noun'"),
])
def test_malformed_entries(tmp_path, val, name, mutate, message):
    root, ann, windows = val
    obj = {key: _entry() for key in windows.keys}
    mutate(obj[windows.keys[2]])
    with pytest.raises(PredictionError, match=rf"outputs\.json: key '{windows.keys[2]}'[,:] .*{message}"):
        validate_predictions(obj, ann.taxonomy, windows.keys, source="outputs.json")
    rc, _ = _score(tmp_path, root, obj)
    assert rc == 1


def test_malformed_files(tmp_path, val, capsys):
    root, ann, windows = val
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": [1, 2')
    with pytest.raises(PredictionError, match=r"bad\.json: not valid JSON"):
        read_predictions(bad)
    assert _score(tmp_path, root, bad)[0] == 1
    assert "not valid JSON" in capsys.readouterr().err
    bad.write_text("[]")
    with pytest.raises(PredictionError, match="expected a JSON object"):
        read_predictions(bad)
    with pytest.raises(PredictionError, match="file not found"):
        read_predictions(tmp_path / "missing.json")
    # scoring against the unlabelled test split is refused
    rc = cli.main(["score", f"data={root}", "split=test", f"predictions={bad}"])
    assert rc == 2 and "has no labels" in capsys.readouterr().err  # a usage error: it names withheld_labels=true or eval.ai


def test_write_predictions_round_trip_and_checks(tmp_path, val):
    _, ann, windows = val
    verb, noun = _truth(ann, windows)
    path = write_predictions(tmp_path / "sub" / "o.json", windows.keys, verb.astype(np.int32), noun)
    keys, v, n = validate_predictions(read_predictions(path), ann.taxonomy, windows.keys)
    assert keys == windows.keys and np.array_equal(v, verb) and np.array_equal(n, noun) and v.dtype == np.int64
    with pytest.raises(ValueError, match="integers"):
        write_predictions(tmp_path / "x.json", windows.keys, verb.astype(float), noun)
    with pytest.raises(ValueError, match="W="):
        write_predictions(tmp_path / "x.json", windows.keys[:-1], verb, noun)


def test_withheld_labels_score_the_synthetic_test_split(tmp_path, sample_annotations):
    import json as _json

    from features.synthetic import SAMPLE_INFO_FILE, fill_withheld_labels

    test = load_split(sample_annotations, "test")
    assert not test.has_labels
    filled = fill_withheld_labels(test, sample_annotations)
    info = {c["clip_uid"]: c for c in _json.loads((sample_annotations / SAMPLE_INFO_FILE).read_text())["clips"]}
    for uid, rows in filled.clip_slices.items():
        assert filled.verb[rows].tolist() == info[uid]["verb_label"][: rows.stop - rows.start]
        assert filled.noun[rows].tolist() == info[uid]["noun_label"][: rows.stop - rows.start]
    windows = build_windows(filled, num_input=8, num_seen=8)
    perfect = {k: {"verb": [filled.verb[f].tolist()] * 5, "noun": [filled.noun[f].tolist()] * 5}
               for k, f in zip(windows.keys, windows.future)}
    path = tmp_path / "outputs.json"
    path.write_text(_json.dumps(perfect))
    out = tmp_path / "score.json"
    assert cli.main(["score", f"data={sample_annotations}", "split=test", f"predictions={path}", "withheld_labels=true",
                     f"out={out}"]) == 0
    score = _json.loads(out.read_text())
    assert score["action_ed"] == 0.0 and score["num_keys_scored"] == len(windows) > 0
    assert cli.main(["score", f"data={sample_annotations}", "split=test", f"predictions={path}"]) == 2  # no labels: a usage error naming withheld_labels=true
    with pytest.raises(ValueError, match="withheld labels exist only for a synthetic sample"):
        fill_withheld_labels(test, tmp_path)
