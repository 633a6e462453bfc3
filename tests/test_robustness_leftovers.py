"""Leftovers of the fault campaign: shard locks, per-shard summaries, validate-before-write, a full disk as one
line, and runs imported without a dataset root."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from extract import shard_lock
from extract.shard_lock import ShardLock, ShardLockedError, lock_path
from features.annotations import AnnotationError
from features.store import open_root
from pipelines import cli, cmd_extract
from ed_helpers import levenshtein

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("LTA_REFERENCE_FIXTURES") or REPO / "tests/fixtures/ego4d_reference")
EXTRACT_ARGS = ["raw_clips=true", "extractors=[clip_vit_b32.openai]", "weights=random", "crop_size=32", "batch_size=4",
                "views=1", "chunk_rows=4", "device=cpu", "progress=false", "decode_workers=1", "splits=[train,val]"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """3 short clips (4 segments each, 64x48) with videos."""
    from extract.render import write_sample
    from features.synthetic import plan_sample

    root = tmp_path_factory.mktemp("leftover_sample")
    write_sample(plan_sample(clips=3, seed=2, segments_per_clip=4, segment_sec=(0.8, 1.0), width=64, height=48), root)
    return root


# -- 1. shard locks ---------------------------------------------------------------------------------
def test_shard_lock_refuses_the_same_shard_and_allows_others(tmp_path):
    with ShardLock(tmp_path, 0, 2) as held:
        assert held.path == tmp_path / ".locks" / "shard-0-of-2.lock"
        assert json.loads(held.path.read_text())["pid"] == os.getpid()
        with pytest.raises(ShardLockedError) as err:
            ShardLock(tmp_path, 0, 2).acquire()
        msg = str(err.value)
        assert str(held.path) in msg and f"pid {os.getpid()} on host {socket.gethostname()}" in msg
        with ShardLock(tmp_path, 1, 2), ShardLock(tmp_path, 0, 1):  # other shards (and split counts) run alongside
            pass
    with ShardLock(tmp_path, 0, 2):  # released: free again
        pass


def test_shard_lock_falls_back_to_an_exclusive_file_without_flock(tmp_path, monkeypatch, caplog):
    """flock refused with ENOLCK (NFS without a lock manager): filelock's O_EXCL marker, holder named, dead holders taken over."""
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    excl = lock_path(tmp_path, 3, 4).with_name("shard-3-of-4.lock.excl")
    with ShardLock(tmp_path, 3, 4) as held:
        assert held.excl_path == excl and shard_lock._read_holder(excl)["pid"] == os.getpid()
        with pytest.raises(ShardLockedError, match=rf"{excl}.*pid {os.getpid()} on host {socket.gethostname()}.*check on its host"):
            ShardLock(tmp_path, 3, 4).acquire()
    assert not excl.exists() and "falling back to an O_EXCL lock file" in caplog.text
    # a holder killed without releasing leaves its marker; on this host its pid is gone, so the marker is taken over
    code = f"import filelock, os; held = filelock.SoftFileLock({str(excl)!r}); held.acquire(); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True)
    dead_pid = shard_lock._read_holder(excl)["pid"]
    assert dead_pid != os.getpid()
    with ShardLock(tmp_path, 3, 4):
        assert shard_lock._read_holder(excl)["pid"] == os.getpid()
    # a marker from another host cannot be probed: refused, saying how to clear it
    excl.write_text(f"{os.getpid()}\nsome-other-host\n{'1' * 40}\n")
    with pytest.raises(ShardLockedError, match=rf"{excl}.*on host some-other-host.*delete the file"):
        ShardLock(tmp_path, 3, 4).acquire()
    excl.unlink()  # what the message asks for
    ShardLock(tmp_path, 3, 4).acquire().release()


def test_second_run_of_a_shard_exits_with_one_line_and_writes_nothing(sample, tmp_path):
    """A process holds shard 0/1 (a job still running); `lta extract` of the same shard waits lock_wait_sec, then is refused."""
    store = tmp_path / "store"
    with ShardLock(store, 0, 1) as held:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "extract", f"data={sample}", f"store={store}",
                               *EXTRACT_ARGS, "lock_wait_sec=1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "waiting up to 1 s for it to be released" in proc.stderr  # the log says it waits
    (line,) = [x for x in proc.stderr.splitlines() if "ShardLockedError" in x]
    assert line.startswith("lta extract: ShardLockedError: shard 0/1 of")
    assert str(held.path) in line and f"pid {os.getpid()}" in line and "(waited 1 s)" in line
    assert sorted(p.name for p in store.iterdir()) == [".locks"]  # no store, config, summary or failures


@pytest.mark.slow
def test_shards_write_their_own_summaries(sample, tmp_path):
    """Shards 0/2 and 1/2 each write extract_summary.shard-<i>-of-2.json; 0/1 also writes extract_summary.json."""
    for i in range(2):
        assert cmd_extract.main([f"data={sample}", f"store={tmp_path / 'two'}", *EXTRACT_ARGS, f"shard={i}/2"]) == 0
    two = [json.loads((tmp_path / "two" / f"extract_summary.shard-{i}-of-2.json").read_text()) for i in range(2)]
    assert not (tmp_path / "two" / "extract_summary.json").exists()
    (store,) = open_root(tmp_path / "two")
    assert store.filled().all() and [s["shard"] for s in two] == ["0/2", "1/2"]
    assert sum(s["rows_total"] for s in two) == sum(s["rows_done"] for s in two) == len(store.filled())
    assert cmd_extract.main([f"data={sample}", f"store={tmp_path / 'two'}", *EXTRACT_ARGS]) == 0  # 0/1: all cached
    whole = json.loads((tmp_path / "two" / "extract_summary.json").read_text())
    assert whole == [json.loads((tmp_path / "two" / "extract_summary.shard-0-of-1.json").read_text())]
    assert whole[0]["rows_skipped"] == len(store.filled()) and whole[0]["rows_done"] == 0
    assert not list((tmp_path / "two").glob(".*tmp-*"))


# -- 2. validate before writing ---------------------------------------------------------------------
def test_malformed_annotations_leave_no_extract_config(sample, tmp_path):
    data = tmp_path / "data"
    (data / "annotations").mkdir(parents=True)
    for f in (sample / "annotations").iterdir():
        (data / "annotations" / f.name).write_bytes(f.read_bytes())
    val = data / "annotations" / "fho_lta_val.json"
    records = json.loads(val.read_text())
    records["clips"][0]["verb_label"] = "three"
    val.write_text(json.dumps(records))
    store = tmp_path / "store"
    with pytest.raises(AnnotationError, match=r"fho_lta_val\.json: record 0 .*verb_label"):
        cmd_extract.main([f"data={data}", f"store={store}", *EXTRACT_ARGS])
    assert not store.exists()  # not even extract_config.yaml or the lock folder


# -- 4. a full disk is one line ---------------------------------------------------------------------
def test_full_disk_during_extract_is_one_line_and_exit_1(sample, tmp_path, monkeypatch, capsys):
    from features.store_backends import ZarrBackend

    real = ZarrBackend.write_data
    calls = {"n": 0}

    def write_data(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:  # the first clip lands, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ZarrBackend, "write_data", write_data)
    rc = cli.main(["extract", f"data={sample}", f"store={tmp_path}", *EXTRACT_ARGS])  # the boundary prints the line
    err = capsys.readouterr().err
    assert rc == 1
    (line,) = [x for x in err.splitlines() if "StoreWriteError" in x]
    assert line.startswith("lta extract: StoreWriteError: ") and "cannot write rows [" in line
    assert "No space left on device" in line and ".zarr" in line and "Traceback" not in err
    monkeypatch.undo()
    (store,) = open_root(tmp_path)
    report = store.verify()
    assert report["bad_rows"] == [] and report["errors"] == [] and 0 < store.filled().sum() < len(store.filled())
    assert not (tmp_path / "extract_summary.json").exists()


# -- 5. imported runs and their dataset root ---------------------------------------------------------
@pytest.fixture(scope="module")
def lta_store(tmp_path_factory):
    """A synthetic dataset with the tiny LTA fixture's taxonomy (7 verbs, 11 nouns) and 288-d slowfast features."""
    from synthetic_store import write_synthetic_dataset, write_synthetic_stores

    root = tmp_path_factory.mktemp("lta_import")
    plan = write_synthetic_dataset(root / "data", clips=8, seed=1, verbs=7, nouns=11)
    keys = write_synthetic_stores(root / "data", root / "store", plan, num_views=1,
                                  modalities={"slowfast": ("slowfast_r101_8x8.synthetic", (288,))})
    return root, keys["slowfast"]


def test_imported_run_without_data_needs_data_and_says_so(lta_store, tmp_path, capsys):
    from pipelines import cli, cmd_evaluate, cmd_import_checkpoint

    root, key = lta_store
    run = tmp_path / "run"
    # synthetic features, not the checkpoint's backbone: accepted only with allow_foreign_features=true
    assert cmd_import_checkpoint.main([f"ckpt={FIXTURES / 'lta_tiny_trf.ckpt'}", f"out={run}", f"store={root / 'store'}",
                                       "allow_foreign_features=true"]) == 0
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert recorded["data"] == "" and recorded["store"] == str(root / "store")
    assert json.loads((run / "cache_keys.json").read_text())["modalities"] == {"slowfast": key}
    capsys.readouterr()  # through the CLI's error boundary (pipelines.cli.main), as a user types it
    assert cli.main(["evaluate", f"run={run}", "baselines=[]", "generators=[greedy+sample]"]) == 2
    want = f"run {run} records no dataset root ({run / 'config.yaml'}); pass data=DIR"
    assert capsys.readouterr().err.strip() == f"lta evaluate: {want}"
    assert cli.main(["predict", f"run={run}", f"out={tmp_path / 'out.json'}"]) == 2
    assert capsys.readouterr().err.strip() == f"lta predict: {want}"
    assert cli.main(["report", f"run={run}", f"out={tmp_path / 'r.html'}"]) == 2
    assert capsys.readouterr().err.strip() == f"lta report: {want}"
    assert not (run / "metrics_val.json").exists() and not (tmp_path / "out.json").exists()
    assert not (tmp_path / "r.html").exists()
    # data= on the command works as before
    assert cmd_evaluate.main([f"run={run}", f"data={root / 'data'}", "baselines=[frequency_prior]",
                              "generators=[greedy+sample]", "mbr_samples=4"]) == 0
    assert json.loads((run / "metrics_val.json").read_text())["num_windows"] > 0


def test_imported_run_with_data_evaluates_and_predicts(lta_store, tmp_path, capsys):
    from pipelines import cli, cmd_evaluate, cmd_import_checkpoint, cmd_predict

    root, key = lta_store
    run = tmp_path / "run"
    argv = [f"ckpt={FIXTURES / 'lta_tiny_trf.ckpt'}", f"out={run}", f"store={root / 'store'}", f"data={root / 'data'}"]
    capsys.readouterr()
    assert cli.main(["import-checkpoint", *argv]) == 2  # synthetic features are not the checkpoint's backbone's
    assert "allow_foreign_features=true" in capsys.readouterr().err
    assert cmd_import_checkpoint.main(argv + ["allow_foreign_features=true"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["data"] == str(root / "data")
    assert cmd_evaluate.main([f"run={run}", "baselines=[frequency_prior]", "generators=[greedy+sample]"]) == 0
    metrics = json.loads((run / "metrics_val.json").read_text())
    assert metrics["cache_keys"] == {"slowfast": key}
    from train_heads.run import load_run

    imported = load_run(run)  # its num_seen, window convention and Z decide which windows exist
    window = dict(num_seen=imported.num_seen, convention=imported.convention, num_future=int(imported.cfg["head"]["num_future"]))
    val = _windows_from_annotations(root / "data", "val", **window)
    assert metrics["num_windows"] == len(val) > 0
    # `lta predict` writes exactly the windows of the split, and evaluate's ED is the edit distance recomputed
    # here from that file (the same seeded draws) against the true future actions
    val_out = tmp_path / "val_outputs.json"
    assert cmd_predict.main([f"run={run}", f"out={val_out}", "split=val", "generator=greedy+sample"]) == 0
    val_pred = json.loads(val_out.read_text())
    assert set(val_pred) == set(val)
    ed = np.mean([min(levenshtein(list(zip(v, n)), val[key]) for v, n in zip(p["verb"], p["noun"])) / len(val[key])
                  for key, p in val_pred.items()])
    assert metrics["model.greedy+sample.action_ed"] == pytest.approx(ed, abs=1e-9)
    out = tmp_path / "outputs.json"
    assert cmd_predict.main([f"run={run}", f"out={out}", "split=test"]) == 0
    predictions = json.loads(out.read_text())
    assert set(predictions) == set(_windows_from_annotations(root / "data", "test", **window))
    assert all(np.shape(v["verb"]) == np.shape(v["noun"]) == (5, window["num_future"]) for v in predictions.values())
    # a dataset whose taxonomy does not fit the checkpoint's head is refused at import time
    other = tmp_path / "other"
    (other / "annotations").mkdir(parents=True)
    (other / "annotations" / "fho_lta_taxonomy.json").write_text(json.dumps({"verbs": ["a", "b"], "nouns": ["x"]}))
    capsys.readouterr()
    assert cli.main(["import-checkpoint", *argv[:1], f"out={tmp_path / 'bad'}", argv[2], f"data={other}"]) == 2
    assert "2 verbs and 1 nouns, but the checkpoint's head predicts 7 verbs and 11 nouns" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def _windows_from_annotations(data, split, *, num_seen, convention, num_future):
    """key -> true future (verb, noun) pairs of every forecasting window of `split`, straight from its JSON file.

    A window ends at the segment at position p of its clip (in action_idx order) with num_seen segments up to
    p and num_future after it; the "challenge" convention also drops each clip's last window.
    """
    name = {"test": "fho_lta_test_unannotated.json"}.get(split, f"fho_lta_{split}.json")
    clips = {}
    for rec in json.loads((data / "annotations" / name).read_text())["clips"]:
        clips.setdefault(rec["clip_uid"], []).append(rec)
    out = {}
    for uid, recs in clips.items():
        recs.sort(key=lambda r: r["action_idx"])
        last = len(recs) - num_future - (1 if convention == "challenge" else 0)
        for p in range(num_seen - 1, last):
            future = recs[p + 1:p + 1 + num_future]
            out[f"{uid}_{recs[p]['action_idx']}"] = [(r.get("verb_label"), r.get("noun_label")) for r in future]
    return out

