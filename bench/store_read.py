"""Feature store throughput vs a plain .npy of the same bytes (prints a markdown table).

    .venv/bin/python bench/store_read.py            # 20k rows x 2304 float16 (92 MB)
    .venv/bin/python bench/store_read.py --full     # 100k rows x 2304 float16 (461 MB), as in issue 3

Write = FeatureStore.create + write in 1024-row batches (mask after data, fsync on by default);
read = `load_features([path])` (all rows into one contiguous array, done-mask checked). The files
are in the page cache (warm reads: the figures compare the code paths, not the disk). Median of
--repeats runs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.store import FeatureStore, RowTable, cache_key, load_features, store_path  # noqa: E402


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--full", action="store_true", help="100k rows (issue 3 size)")
    parser.add_argument("--dim", type=int, default=2304)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1024, help="rows per write call")
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args(argv)
    num_rows = 100_000 if args.full else args.rows
    feats = np.random.default_rng(0).standard_normal((num_rows, 1, args.dim)).astype(np.float16)
    wins = np.zeros((num_rows, 1, 2))
    rows = RowTable(clip_uid=np.array([f"clip{r // 20:06d}" for r in range(num_rows)]), action_idx=np.arange(num_rows) % 20,
                    split=np.array(["train"] * num_rows), start_sec=np.zeros(num_rows), end_sec=np.ones(num_rows))
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="store_bench_"))
    scratch.mkdir(parents=True, exist_ok=True)
    mb = feats.nbytes / 2**20
    results = []
    try:
        npy = scratch / "features.npy"
        def save_npy() -> None:  # durable like the stores: fsync before returning
            with open(npy, "wb") as f:
                np.save(f, feats)
                f.flush()
                os.fsync(f.fileno())

        t_write_npy = _median_time(save_npy, args.repeats)
        t_read_npy = _median_time(lambda: np.load(npy), args.repeats)
        results.append(("plain .npy (np.save + fsync / np.load)", t_write_npy, t_read_npy))
        variants = [("zarr, chunk_rows=64, fsync", "zarr", 64, True), ("zarr, chunk_rows=1024, fsync", "zarr", 1024, True),
                    ("zarr, chunk_rows=64, no fsync", "zarr", 64, False), ("h5 (contiguous), fsync", "h5", 64, True)]
        for label, backend, chunk_rows, fsync in variants:
            spec = {"bench": label}
            path = store_path(scratch, cache_key("bench", spec), backend)

            def write() -> None:
                if path.exists():
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                store = FeatureStore.create(path, name="bench", spec=spec, rows=rows, view_shape=(args.dim,), num_views=1,
                                            chunk_rows=chunk_rows, fsync=fsync)
                for lo in range(0, num_rows, args.batch):
                    store.write(lo, feats[lo:lo + args.batch], wins[lo:lo + args.batch])
                store.close()

            t_write = _median_time(write, args.repeats)
            loaded = load_features([path])
            assert np.array_equal(loaded.arrays[loaded.keys[0]], feats), f"{label}: read-back differs"
            t_read = _median_time(lambda: load_features([path]), args.repeats)
            results.append((label, t_write, t_read))
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"{num_rows:,} rows x {args.dim} float16 = {mb:.0f} MB, write batch {args.batch} rows, "
          f"median of {args.repeats}, warm page cache\n")
    print("| format | write s | write MB/s | write time / npy | read s | read MB/s | read time / npy |")
    print("|---|---|---|---|---|---|---|")
    for label, tw, tr in results:
        print(f"| {label} | {tw:.2f} | {mb / tw:.0f} | {tw / t_write_npy:.1f}x | {tr:.2f} | {mb / tr:.0f} | {tr / t_read_npy:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
