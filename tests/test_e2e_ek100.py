"""EPIC-KITCHENS-100 end to end through the CLI: import-annotations -> train-heads -> evaluate -> predict.

Real EK100 action sequences (tests/fixtures/ek100_slice, or `LTA_EK100_FIXTURES`): the slice's val videos are
split in two, half stay val, the other half become a test split written in the columns of
`EPIC_100_test_timestamps.csv` (no labels; the test keeps them to score `outputs.json` itself). The feature store
is one of an oracle recogniser (one-hot true verb ++ noun + noise, as `bench/forecast_quality.py` writes), made
through `features.store.FeatureStore` the way `lta extract` writes stores. Nothing here depends on the slice's
contents beyond its format.
"""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from features.annotations import load_split
from features.store import FeatureStore, RowTable, cache_key, store_path
from pipelines import cli
from ed_helpers import levenshtein
from ek100_helpers import TEST_COLS, read_rows, write_csv

REPO = Path(__file__).resolve().parents[1]
SLICE = Path(os.environ.get("LTA_EK100_FIXTURES", REPO / "tests" / "fixtures" / "ek100_slice"))
Z, K = 20, 5



@pytest.fixture(scope="module")
def ek100(tmp_path_factory):
    """(dataset root, store root, store key, test truth {video_id: [(verb, noun)] in action order})."""
    root = tmp_path_factory.mktemp("ek100")
    src = root / "src"
    src.mkdir()
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"):
        (src / name).write_bytes((SLICE / name).read_bytes())
    (src / "train.csv").write_bytes((SLICE / "train.csv").read_bytes())
    val_rows = read_rows([SLICE / "val.csv"])
    videos = sorted({r["video_id"] for r in val_rows})
    assert len(videos) >= 2, "the slice's val.csv needs two videos or more"
    test_videos = set(videos[len(videos) // 2:])
    with open(SLICE / "val.csv", newline="") as f:
        columns = next(csv.reader(f))
    write_csv(src / "val.csv", columns, [r for r in val_rows if r["video_id"] not in test_videos])
    test_rows = [r for r in val_rows if r["video_id"] in test_videos]
    write_csv(src / "test.csv", TEST_COLS, test_rows)
    data = root / "data"
    assert cli.main(["import-annotations", "format=epic-kitchens-100", f"src={src}", f"out={data}",
                     "train=[train.csv]", "val=[val.csv]", "test=[test.csv]"]) == 0
    truth = {r["narration_id"]: (int(r["verb_class"]), int(r["noun_class"])) for r in test_rows}

    anns = [load_split(data, s) for s in ("train", "val", "test")]
    assert not anns[2].has_labels
    rows = RowTable.from_annotations(anns)
    labels = [(a.verb, a.noun) for a in anns[:2]]
    test_labels = np.array([truth[r["narration_id"]] for r in anns[2].records])
    verb = np.concatenate([labels[0][0], labels[1][0], test_labels[:, 0]])
    noun = np.concatenate([labels[0][1], labels[1][1], test_labels[:, 1]])
    tax = anns[0].taxonomy
    rng = np.random.default_rng(0)
    dim = tax.num_verbs + tax.num_nouns
    feats = rng.normal(0.0, 0.1, size=(len(rows), 1, dim)).astype(np.float32)
    feats[np.arange(len(rows)), 0, verb] += 1.0
    feats[np.arange(len(rows)), 0, tax.num_verbs + noun] += 1.0
    store_root, name = root / "store", "recogniser_oracle"
    key = cache_key(name, {"simulated": True, "p": 1.0})
    store = FeatureStore.create(store_path(store_root, key), name=name, spec={"simulated": True, "p": 1.0}, rows=rows,
                                view_shape=(dim,), num_views=1, chunk_rows=4096)
    store.write(0, feats, np.stack([rows.start_sec, rows.end_sec], axis=1)[:, None, :])
    store.close()
    per_video = {}  # clip_uid -> the withheld (verb, noun) labels, in the imported action order
    for rec in sorted(anns[2].records, key=lambda r: (r["clip_uid"], r["action_idx"])):
        per_video.setdefault(rec["clip_uid"], []).append(truth[rec["narration_id"]])
    return data, store_root, key, per_video, anns[0]


@pytest.mark.slow
def test_import_train_evaluate_predict(ek100, tmp_path, capsys, one_torch_thread):
    data, store_root, key, per_video, train_ann = ek100
    run = tmp_path / "run"
    assert cli.main(["train-heads", f"config={REPO / 'pipelines/configs/ek100_best.yaml'}", f"data={data}",
                     f"store={store_root}", f"out={run}", "head.modalities.0.name=recogniser", f"features=[{key}]",
                     "train.epochs=2", "train.device=cpu", "train.warmup_steps=20"]) == 0
    assert (run / "checkpoints" / "best.pt").is_file()

    assert cli.main(["evaluate", f"run={run}", "split=val", "generators=[pair_sample,sample]", "device=cpu"]) == 0
    metrics = json.loads((run / "metrics_val.json").read_text())
    flat = json.dumps(metrics)
    for name in ("pair_sample", "frequency_prior", "markov", "knn_retrieval"):
        assert name in flat, name

    out = tmp_path / "outputs.json"
    assert cli.main(["predict", f"run={run}", "split=test", f"out={out}", "device=cpu"]) == 0
    predictions = json.loads(out.read_text())
    # the key set: every test segment that has 8 observed segments before it and Z future ones after it
    want = {f"{vid}_{i}" for vid, seq in per_video.items() for i in range(7, len(seq) - Z)}
    assert want and want <= set(predictions), sorted(want - set(predictions))[:5]
    for k, seqs in predictions.items():
        assert len(seqs["verb"]) == K and all(len(s) == Z for s in seqs["verb"] + seqs["noun"]), k
    # score outputs.json against the withheld labels here, and against a constant forecast of the training
    # split's most frequent verb: with oracle features the head must forecast verbs better than that
    mode_v = Counter(train_ann.verb.tolist()).most_common(1)[0][0]
    ed = {"head": [], "mode": []}
    for k in sorted(want):
        vid, i = k.rsplit("_", 1)
        future = per_video[vid][int(i) + 1:int(i) + 1 + Z]
        fv = [v for v, _ in future]
        seqs = predictions[k]
        ed["head"].append(min(levenshtein(v, fv) for v in seqs["verb"]) / Z)
        ed["mode"].append(levenshtein([mode_v] * Z, fv) / Z)
        assert all(0 <= v < train_ann.taxonomy.num_verbs for s in seqs["verb"] for v in s)
        assert all(0 <= n < train_ann.taxonomy.num_nouns for s in seqs["noun"] for n in s)
    means = {m: round(float(np.mean(v)), 4) for m, v in ed.items()}
    print(f"test verb ED@{Z} over {len(want)} keys: {means}")
    assert means["head"] < means["mode"] - 0.02, means
