"""`lta train-heads` start-up at Ego4D v2 scale: open the store and load the feature bank, two Zarr readers side by side.

    .venv/bin/python bench/store_startup.py                          # 120k train + 30k val rows x 2304 float16
    .venv/bin/python bench/store_startup.py --dtype float32 --repeats 3

What is timed is what `lta train-heads` runs before its first step that touches the store:
`train_heads.inputs.load_bank(store_root, {"slowfast": key}, splits=["train", "val"])` (store open,
row table, done mask, every feature row into one contiguous array). It runs once with the store's
own chunk reader (`features/store_backends.py`, `_read_direct`: chunk files read in place, crc32c
checked by hand) and once through zarr's API (the same backend with `_direct_readable` answering
False, so every read is `zarr.Array.__getitem__`), alternating, median of --repeats each, on one
store written once (chunk_rows 64, the `lta extract` default; warm page cache). The readers must
return identical arrays.
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

from features import store_backends  # noqa: E402
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

        private_check = store_backends._direct_readable
        readers = {"private chunk reader (crc32c by hand)": private_check, "zarr API (zarr.Array[...])": lambda arr: False}
        times: dict[str, list[float]] = {name: [] for name in readers}
        banks = {}
        for _ in range(args.repeats):
            for name, check in readers.items():
                store_backends._direct_readable = check
                try:
                    t0 = time.perf_counter()
                    bank = load_bank(scratch, {"slowfast": key}, splits=["train", "val"])
                    times[name].append(time.perf_counter() - t0)
                finally:
                    store_backends._direct_readable = private_check
                banks[name] = bank
                del bank
        first, second = (banks[name].arrays["slowfast"] for name in readers)
        assert first.shape == (n, 1, args.dim) and np.array_equal(first, second, equal_nan=True), "the readers disagree"
        assert banks[next(iter(readers))].valid.all()
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    med = {name: float(np.median(t)) for name, t in times.items()}
    private, zarr_api = med.values()
    print(f"\n`load_bank(..., splits=[train, val])` (store open + feature bank), median of {args.repeats}, warm page cache\n")
    print("| reader | s | MB/s |")
    print("|---|---|---|")
    for name, t in med.items():
        print(f"| {name} | {t:.2f} | {mb / t:.0f} |")
    print(f"\nzarr API / private reader: {zarr_api / private:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
