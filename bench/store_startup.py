"""`lta train-heads` start-up at Ego4D v2 scale: open the store and load the feature bank, vs np.load of the same bytes.

    .venv/bin/python bench/store_startup.py                          # 120k train + 30k val rows x 2304 float16
    .venv/bin/python bench/store_startup.py --dtype float32 --repeats 3

What is timed is what `lta train-heads` runs before its first step that touches the store:
`train_heads.inputs.load_bank(store_root, {"slowfast": key}, splits=["train", "val"])` (store open,
row table, done mask, every feature row into one contiguous array, all through zarr's API), on one
store written once (chunk_rows 64, the `lta extract` default), side by side with `np.load` of a
.npy holding the same feature array (the floor any reader pays). Alternating, median of --repeats
each, warm page cache; both must return identical arrays.

History (issue 19): until commit 11ed7e2 the Zarr backend read chunk files itself and checked their
crc32c by hand. This benchmark at that commit (private reader vs zarr API) measured 1.40x / 1.51x
(float16) and 0.77x / 1.42x (float32) on this machine, below the 2x that would justify a private
copy of library internals, so the private reader was deleted.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path[:1] = [str(Path(__file__).resolve().parents[1])]  # this folder would shadow the train_heads package

import numpy as np  # noqa: E402

from features.store import FeatureStore, RowTable, cache_key, store_path  # noqa: E402
from train_heads.inputs import load_bank  # noqa: E402


def make_rows(num_train: int, num_val: int, per_clip: int) -> RowTable:
    n = num_train + num_val
    clip = np.arange(n) // per_clip
    uids = np.array([f"{c:08x}-0000-4000-8000-{c:012x}" for c in range(int(clip[-1]) + 1)])
    return RowTable(clip_uid=uids[clip], action_idx=np.arange(n) - clip * per_clip,
                    split=np.array(["train"] * num_train + ["val"] * num_val),
                    start_sec=np.arange(n) * 2.0, end_sec=np.arange(n) * 2.0 + 2.133)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=120_000)
    parser.add_argument("--val", type=int, default=30_000)
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--chunk-rows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    rows = make_rows(args.train, args.val, per_clip=40)
    n = len(rows)
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="store_startup_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        spec = {"bench": "startup", "dim": args.dim, "dtype": args.dtype}
        key = cache_key("slowfast_r101_8x8.bench", spec)
        path = store_path(scratch, key)
        t0 = time.perf_counter()
        store = FeatureStore.create(path, name="slowfast_r101_8x8.bench", spec=spec, rows=rows, view_shape=(args.dim,),
                                    num_views=1, dtype=args.dtype, chunk_rows=args.chunk_rows, fsync=False)
        rng = np.random.default_rng(0)
        step = args.chunk_rows * 64
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            store.write(lo, rng.standard_normal((hi - lo, 1, args.dim), dtype=np.float32).astype(args.dtype),
                        np.zeros((hi - lo, 1, 2)))
        store.close()
        mb = n * args.dim * np.dtype(args.dtype).itemsize / 2**20
        print(f"store: {n:,} rows ({args.train:,} train + {args.val:,} val) x {args.dim} {args.dtype} = {mb:.0f} MB, "
              f"chunk_rows {args.chunk_rows}, written in {time.perf_counter() - t0:.1f} s")

        npy = scratch / "features.npy"
        np.save(npy, load_bank(scratch, {"slowfast": key}, splits=["train", "val"]).arrays["slowfast"])
        readers = {
            "`load_bank` (zarr API: open, row table, mask, features)":
                lambda: load_bank(scratch, {"slowfast": key}, splits=["train", "val"]).arrays["slowfast"],
            "`np.load` of the same array (.npy)": lambda: np.load(npy),
        }
        times: dict[str, list[float]] = {name: [] for name in readers}
        out = {}
        for _ in range(args.repeats):
            for name, read in readers.items():
                t0 = time.perf_counter()
                out[name] = read()
                times[name].append(time.perf_counter() - t0)
        first, second = out.values()
        assert first.shape == (n, 1, args.dim) and np.array_equal(first, second, equal_nan=True), "the reads disagree"
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    med = {name: float(np.median(t)) for name, t in times.items()}
    store_t, npy_t = med.values()
    print(f"\nmedian of {args.repeats}, warm page cache\n")
    print("| reader | s | MB/s |")
    print("|---|---|---|")
    for name, t in med.items():
        print(f"| {name} | {t:.2f} | {mb / t:.0f} |")
    print(f"\nload_bank / np.load: {store_t / npy_t:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
