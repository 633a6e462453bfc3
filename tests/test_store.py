"""Feature store: round trip, cache keys, idempotent create, reader index, bad-input errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from features.store import (
    SCHEMA_VERSION,
    FeatureStore,
    MissingRowsError,
    RowTable,
    StoreCorruptError,
    StoreError,
    cache_key,
    load_features,
    merge_stores,
    open_root,
    shard_path,
    store_path,
)

BACKENDS = ["zarr", "h5"]


def make_rows(num_clips: int = 12, per_clip: int = 7, splits=("train", "val")) -> RowTable:
    rng = np.random.default_rng(1)
    uid, act, split = [], [], []
    for c in range(num_clips):
        n = per_clip + c % 3
        uid += [f"clip{c:03d}"] * n
        act += list(range(n))
        split += [splits[c * len(splits) // num_clips]] * n
    start = rng.uniform(0, 100, len(uid))
    return RowTable(clip_uid=np.array(uid), action_idx=np.array(act), split=np.array(split),
                    start_sec=start, end_sec=start + rng.uniform(0.5, 8, len(uid)))


def make_store(tmp_path, backend="zarr", *, rows=None, spec=None, dtype="float16", chunk_rows=8, views=3, dim=5):
    rows = rows if rows is not None else make_rows()
    spec = spec if spec is not None else {"arch": "toy", "frames": 8}
    path = store_path(tmp_path, cache_key("toy", spec), backend)
    return FeatureStore.create(path, name="toy", spec=spec, rows=rows, view_shape=(dim,), num_views=views,
                               dtype=dtype, chunk_rows=chunk_rows)


def data(store, seed=0):
    rng = np.random.default_rng(seed)
    feats = (rng.standard_normal((store.num_rows, *store.feature_shape)) * 100).astype(store.dtype)
    wins = rng.uniform(0, 50, (store.num_rows, store.num_views, 2))
    return feats, wins


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_bit_exact(tmp_path, backend, dtype):
    store = make_store(tmp_path, backend, dtype=dtype)
    feats, wins = data(store)
    # uneven batches: partial chunks, written out of order
    for lo, hi in [(40, 61), (0, 13), (13, 40), (61, store.num_rows)]:
        store.write(lo, feats[lo:hi], wins[lo:hi])
    store.close()
    reopened = FeatureStore.open(store.path)
    assert reopened.filled().all()
    got = reopened.read(slice(None))
    assert got.dtype == np.dtype(dtype)
    assert np.array_equal(got.view(np.uint8), feats.view(np.uint8))  # bit-exact
    assert np.array_equal(reopened.read_windows(slice(None)), wins)
    idx = np.array([50, 3, 3, 77])
    assert np.array_equal(reopened.read(idx), feats[idx])
    assert reopened.rows.same_as(make_rows())
    attrs = reopened.attrs
    assert attrs["schema_version"] == SCHEMA_VERSION and attrs["key"] == reopened.key
    assert json.loads(attrs["spec_json"]) == {"arch": "toy", "frames": 8}
    assert attrs["code_version"] and attrs["created"] and "numpy" in attrs["libraries"]


BASE_SPEC = {"weights_sha256": "ab12", "num_frames": 32, "fps": 30.0, "crop": 224, "mean": [0.45, 0.45, 0.45],
             "resize": {"short_side": 320}, "num_views": 4, "flip": False}
CHANGES = {"weights_sha256": "ab13", "num_frames": 16, "fps": 29.97, "crop": 256, "mean": [0.45, 0.45, 0.46],
           "resize": {"short_side": 256}, "num_views": 5, "flip": True}


@pytest.mark.parametrize("field_name", sorted(BASE_SPEC))
def test_cache_key_changes_with_every_spec_field(field_name):
    base = cache_key("slowfast", BASE_SPEC)
    changed = dict(BASE_SPEC, **{field_name: CHANGES[field_name]})
    assert cache_key("slowfast", changed) != base
    dropped = {k: v for k, v in BASE_SPEC.items() if k != field_name}
    assert cache_key("slowfast", dropped) != base


def test_cache_key_is_stable_and_order_independent():
    reordered = dict(reversed(list(BASE_SPEC.items())))
    assert cache_key("slowfast", reordered) == cache_key("slowfast", BASE_SPEC)
    assert cache_key("slowfast", BASE_SPEC).startswith("slowfast-") and len(cache_key("slowfast", BASE_SPEC)) == 19
    assert cache_key("mvit", BASE_SPEC).split("-")[1] == cache_key("slowfast", BASE_SPEC).split("-")[1]
    with pytest.raises(StoreError, match="JSON"):
        cache_key("x", {"f": object()})
    with pytest.raises(StoreError, match="name"):
        cache_key("a/b", {})


@pytest.mark.parametrize("backend", BACKENDS)
def test_create_is_idempotent_and_refuses_mismatch(tmp_path, backend):
    store = make_store(tmp_path, backend)
    feats, wins = data(store)
    store.write(0, feats[:16], wins[:16])
    store.close()
    again = make_store(tmp_path, backend)  # same key and rows: opened, progress kept
    assert again.filled().sum() == 16
    again.close()
    other_rows = make_rows(num_clips=11)
    with pytest.raises(StoreError, match="different row table"):
        make_store(tmp_path, backend, rows=other_rows)
    with pytest.raises(StoreError, match="view_shape"):
        make_store(tmp_path, backend, dim=6)
    path = store_path(tmp_path, cache_key("toy", {"arch": "toy", "frames": 8}), backend)
    with pytest.raises(StoreError, match="does not match the store's cache key"):
        FeatureStore.create(path, name="toy", spec={"arch": "other"}, rows=make_rows(), view_shape=(5,), num_views=3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_write_validation(tmp_path, backend):
    store = make_store(tmp_path, backend)
    feats, wins = data(store)
    with pytest.raises(ValueError, match="features shape"):
        store.write(0, feats[:4, :, :4], wins[:4])
    with pytest.raises(ValueError, match="outside"):
        store.write(store.num_rows - 2, feats[:4], wins[:4])
    bad = feats[:4].astype(np.float32)
    bad[2, 1, 0] = 1e6  # overflows float16 -> inf
    with pytest.raises(ValueError, match="non-finite.*first row 2 \\(clip000, action_idx 2\\)"):
        store.write(0, bad, wins[:4])
    assert not store.filled().any()
    with pytest.raises(StoreError, match="read-only"):
        FeatureStore.open(store.path).write(0, feats[:4], wins[:4])


def test_read_of_unfilled_rows_is_an_error_not_zeros(tmp_path):
    store = make_store(tmp_path)
    feats, wins = data(store)
    store.write(0, feats[:8], wins[:8])
    with pytest.raises(MissingRowsError, match=r"2 of 4 requested rows are not filled, e.g. \['clip001_1', 'clip001_2'\]"):
        store.read(np.arange(6, 10))
    part = store.read(np.arange(6, 10), allow_missing=True)
    assert np.array_equal(part[:2], feats[6:8]) and np.isnan(part[2:].astype(np.float32)).all()


def test_rowtable_lookup_is_vectorised_and_exact():
    rows = make_rows()
    n = len(rows)
    perm = np.random.default_rng(3).permutation(n)
    assert np.array_equal(rows.lookup(rows.clip_uid[perm], rows.action_idx[perm]), perm)
    got = rows.lookup(np.array(["clip000", "clip000", "nope", "clip011", "clip011"]), np.array([0, 99, 0, -1, 8]))
    assert got.tolist() == [0, -1, -1, -1, n - 1]
    dup = RowTable(np.array(["a", "a"]), np.array([1, 1]), np.array(["t", "t"]), np.zeros(2), np.ones(2))
    with pytest.raises(StoreError, match="duplicate"):
        dup.lookup(np.array(["a"]), np.array([1]))


def test_rowtable_from_annotations_order():
    class Ann:  # the fields RowTable reads from SplitAnnotations
        def __init__(self, split, uids, acts):
            self.split, self.clip_uid, self.action_idx = split, np.array(uids, dtype=object), np.array(acts)
            self.start_sec = np.arange(len(acts), dtype=float)
            self.end_sec = self.start_sec + 1

    rows = RowTable.from_annotations([Ann("val", ["b", "b"], [0, 1]), Ann("train", ["a"], [5])])
    assert rows.clip_uid.tolist() == ["b", "b", "a"] and rows.split.tolist() == ["val", "val", "train"]
    assert rows.action_idx.tolist() == [0, 1, 5] and rows.end_sec.tolist() == [1.0, 2.0, 1.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_features_splits_keys_and_missing(tmp_path, backend, caplog):
    a = make_store(tmp_path, backend, spec={"m": "a"})
    fa, wa = data(a, seed=1)
    a.write(0, fa, wa)
    b = make_store(tmp_path, backend, spec={"m": "b"}, dim=4, views=2)
    fb, wb = data(b, seed=2)
    b.write(0, fb[:40], wb[:40])  # rows 40.. never written
    a.close(), b.close()
    val = np.flatnonzero(a.rows.split == "val")
    loaded = load_features([a.path, b.path], splits=["val"])
    assert loaded.keys == [a.key, b.key]
    assert loaded.rows.same_as(a.rows.take(val))
    assert np.array_equal(loaded.arrays[a.key], fa[val]) and loaded.valid[a.key].all()
    assert np.array_equal(loaded.windows_sec[a.key], wa[val])
    vb = loaded.valid[b.key]
    assert np.array_equal(vb, val < 40)
    assert np.array_equal(loaded.arrays[b.key][vb], fb[val[val < 40]])
    assert np.isnan(loaded.arrays[b.key][~vb].astype(np.float32)).all()  # never zero-filled
    count, examples = loaded.missing[b.key]
    assert count == int((val >= 40).sum()) and examples[0] == a.rows.keys(val[val >= 40][:1])[0]
    assert "rows missing" in caplog.text
    # index: (clip_uid, action_idx) -> row of the loaded arrays
    r = loaded.lookup(loaded.rows.clip_uid[::-1], loaded.rows.action_idx[::-1])
    assert np.array_equal(r, np.arange(len(val))[::-1])
    assert load_features([a.path]).arrays[a.key].shape == (a.num_rows, 3, 5)
    with pytest.raises(StoreError, match="no rows of split"):
        load_features([a.path], splits=["test"])


def test_load_features_aligns_stores_with_other_row_orders(tmp_path):
    a = make_store(tmp_path, spec={"m": "a"})
    rows_b = a.rows.take(np.arange(a.num_rows)[::-2])  # half the rows, reversed
    b = make_store(tmp_path, rows=rows_b, spec={"m": "b"})
    fb, wb = data(b)
    b.write(0, fb, wb)
    loaded = load_features([a.path, b.path])
    expect = a.rows.lookup(rows_b.clip_uid, rows_b.action_idx)
    assert np.array_equal(np.flatnonzero(loaded.valid[b.key]), np.sort(expect))
    assert np.array_equal(loaded.arrays[b.key][expect], fb)
    assert loaded.missing[a.key][0] == a.num_rows  # nothing written in a


def test_schema_version_key_and_name_mismatch_errors(tmp_path):
    import zarr

    store = make_store(tmp_path)
    path = store.path
    renamed = path.with_name("toy-0000000000.zarr")
    shutil.copytree(path, renamed)
    with pytest.raises(StoreError, match="file name does not match the store's cache key"):
        FeatureStore.open(renamed)
    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs["lta_feature_store"])
    group.attrs["lta_feature_store"] = dict(attrs, spec_json='{"arch":"tampered"}')
    with pytest.raises(StoreError, match="does not match its spec"):
        FeatureStore.open(path)
    group.attrs["lta_feature_store"] = dict(attrs, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        FeatureStore.open(path)
    with pytest.raises(FileNotFoundError):
        FeatureStore.open(tmp_path / "nothing.zarr")
    with pytest.raises(ValueError, match="unknown feature store suffix"):
        FeatureStore.open(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_chunk_is_a_clear_error(tmp_path, damage):
    store = make_store(tmp_path, chunk_rows=8)
    feats, wins = data(store)
    store.write(0, feats, wins)
    chunk = store.path / "features" / "c" / "2" / "0" / "0"  # rows 16..23
    raw = bytearray(chunk.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[7] ^= 0x10
    chunk.write_bytes(bytes(raw))
    reopened = FeatureStore.open(store.path)
    assert np.array_equal(reopened.read(slice(0, 16)), feats[:16])  # other chunks still read
    expect = r"cannot read features rows \[16, 24\) from chunk file \S*features/c/2/0/0: .*checksum"
    with pytest.raises(StoreCorruptError, match=expect):
        reopened.read(slice(16, 24))
    with pytest.raises(StoreCorruptError, match=expect):  # a wide read names the same bad chunk
        reopened.read(slice(0, 40))
    with pytest.raises(StoreCorruptError, match=expect):
        load_features([store.path])
    report = reopened.verify()
    assert report["bad_rows"] == list(range(16, 24)) and len(report["errors"]) == 1


def test_truncated_h5_is_a_clear_error(tmp_path):
    store = make_store(tmp_path, "h5")
    store.close()
    raw = store.path.read_bytes()
    store.path.write_bytes(raw[:200])
    with pytest.raises(StoreCorruptError, match="cannot open HDF5 feature store"):
        FeatureStore.open(store.path)


def test_shard_ranges_are_chunk_aligned_and_cover(tmp_path):
    store = make_store(tmp_path, chunk_rows=8)
    for num_shards in (1, 2, 3, 7, 20):
        ranges = [store.shard_range(i, num_shards) for i in range(num_shards)]
        assert ranges[0][0] == 0 and ranges[-1][1] == store.num_rows
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(lo % 8 == 0 for lo, _ in ranges)


def test_h5_shards_merge_and_export(tmp_path):
    ref = make_store(tmp_path, "zarr")
    feats, wins = data(ref)
    ref.write(0, feats, wins)
    h5_path = store_path(tmp_path, ref.key, "h5")
    for shard in range(3):  # one HDF5 file per shard, each writes only its range
        s = FeatureStore.create(shard_path(h5_path, shard, 3), name="toy", spec=ref.spec, rows=ref.rows,
                                view_shape=ref.view_shape, num_views=ref.num_views, chunk_rows=ref.chunk_rows)
        lo, hi = s.shard_range(shard, 3)
        s.write(lo, feats[lo:hi], wins[lo:hi])
        s.close()
    merged = merge_stores([shard_path(h5_path, i, 3) for i in range(3)], h5_path)
    assert merged.filled().all() and np.array_equal(merged.read(slice(None)), feats)
    assert np.array_equal(merged.read_windows(slice(None)), wins)
    merged.close()
    exported = merge_stores([ref.path], tmp_path / "out" / f"{ref.key}.h5")
    assert np.array_equal(exported.read(slice(None)), feats)
    assert [s.key for s in open_root(tmp_path)] == [ref.key, ref.key]
