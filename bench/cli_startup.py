"""One short `lta` command as a fresh `python -m pipelines.cli` process vs forked from the tests' fork server
(tests/cli_proc.py), side by side: what each CLI run in the test suite saves.

    python bench/cli_startup.py [--repeats 3]

Writes a tiny synthetic store (tests/synthetic_store.py), then times, alternating, `lta --version` and a 1-epoch
`lta train-heads` both ways (OMP_NUM_THREADS=1, as the tests run them) and prints the best of each.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO / "tests")  # cli_proc, synthetic_store (not bench/: bench/extract.py would shadow the package)
sys.path.insert(1, str(REPO))

import cli_proc  # noqa: E402
from synthetic_store import write_synthetic_dataset, write_synthetic_stores  # noqa: E402

TRAIN = ["head.modalities.0.proj_dim=32", "head.num_input=2", "head.aggregator=concat", "train.epochs=1",
         "train.lr=2e-3", "train.warmup_steps=3", "train.batch_size=16", "num_seen=4", "train.device=cpu"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plan = write_synthetic_dataset(root / "data", clips=14, seed=5)
        write_synthetic_stores(root / "data", root / "store", plan,
                               modalities={"slowfast": ("slowfast_r101_8x8.synthetic", (32,))}, noise=2.0)
        commands = {"lta --version": ["--version"],
                    "lta train-heads (1 epoch)": ["train-heads", f"data={root / 'data'}", f"store={root / 'store'}",
                                                  f"out={root / 'run'}", *TRAIN]}
        cli_proc.run(["--version"], env=env, capture_output=True, cwd=REPO)  # start the server (not timed)
        best = {}
        for name, argv in commands.items():
            for _ in range(args.repeats):
                for way in ("fresh", "forked"):
                    shutil.rmtree(root / "run", ignore_errors=True)
                    t0 = time.perf_counter()
                    if way == "fresh":
                        res = subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], env=env, cwd=REPO,
                                             capture_output=True, text=True)
                    else:
                        res = cli_proc.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
                    sec = time.perf_counter() - t0
                    if res.returncode != 0:
                        print(f"{name} ({way}) failed:\n{res.stderr[-2000:]}")
                        return 1
                    best[name, way] = min(best.get((name, way), sec), sec)
    print(f"best of {args.repeats}, one thread")
    for name in commands:
        fresh, forked = best[name, "fresh"], best[name, "forked"]
        print(f"  {name:28s} fresh {fresh:5.2f} s   forked {forked:5.2f} s   saves {fresh - forked:4.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
