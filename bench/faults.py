"""Fault campaign: run the fault and security tests, print one table row per fault.

    .venv/bin/python bench/faults.py            # all four test files (~4 min on 2 CPU cores)
    .venv/bin/python bench/faults.py -k video   # a subset (pytest -k expression)
    LTA_FAULT_SEED=123 .venv/bin/python bench/faults.py   # replay: every randomised fault test uses this seed

Each test records (fault, trials, survived, rows lost) through `test_faults_video.record_fault`
into the file named by $LTA_FAULTS_LOG; this script points that at a temporary file, runs pytest
on tests/test_faults_{video,annotations,process}.py, tests/test_preemption.py (SIGTERM / requeue /
shard layouts / readers during writes / job errors) and tests/test_security.py, and prints the
table. Randomised fault points come from `tests/fault_seed.py`: each test prints its seed (shown
for a failed test), and $LTA_FAULT_SEED replays one. `survived` counts trials that behaved as the documented policy says (a correct result, or
a failure record with a precise reason, and the run went on); `rows lost` counts rows of the
unaffected clips (or finished rows of a killed run) that are missing or differ from a clean run.
Exit code: pytest's, or 1 when any fault lost rows or did not survive every trial.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_FILES = ["tests/test_faults_video.py", "tests/test_faults_annotations.py", "tests/test_faults_process.py",
              "tests/test_preemption.py", "tests/test_security.py"]


def run_campaign(pytest_args: list[str]) -> tuple[int, list[dict], float]:
    """(pytest exit code, recorded rows, wall seconds)."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "faults.jsonl"
        env = dict(os.environ, LTA_FAULTS_LOG=str(log))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TEST_FILES, *pytest_args],
                              cwd=REPO, env=env)
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return proc.returncode, rows, wall


def table(rows: list[dict]) -> str:
    merged: dict[str, dict] = {}
    for r in rows:  # a fault recorded twice (e.g. a re-run test) adds up
        m = merged.setdefault(r["fault"], {"trials": 0, "survived": 0, "rows_lost": 0})
        for k in m:
            m[k] += r[k]
    width = max([len("fault")] + [len(f) for f in merged])
    lines = [f"| {'fault':<{width}} | trials | survived | rows lost |", f"|{'-' * (width + 2)}|-------:|---------:|----------:|"]
    lines += [f"| {f:<{width}} | {m['trials']:>6} | {m['survived']:>8} | {m['rows_lost']:>9} |" for f, m in merged.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="pytest -k expression selecting a subset")
    args = parser.parse_args(argv)
    rc, rows, wall = run_campaign(["-k", args.k] if args.k else [])
    print()
    print(table(rows))
    bad = [r for r in rows if r["rows_lost"] or r["survived"] != r["trials"]]
    print(f"\n{len(rows)} faults, {sum(r['trials'] for r in rows)} trials, "
          f"{sum(r['rows_lost'] for r in rows)} rows lost, pytest exit {rc}, {wall:.0f} s wall")
    return rc or (1 if bad else 0)


if __name__ == "__main__":
    sys.exit(main())
