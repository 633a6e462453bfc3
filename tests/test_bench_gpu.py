"""bench/gpu.py --dry-run: every code path of the prepared GPU benchmark runs on the CPU, and the budget is obeyed."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_bench(out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    res = subprocess.run([sys.executable, "bench/gpu.py", "--dry-run", "--out", str(out), *args], cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res, json.loads((out / "gpu.json").read_text())


@pytest.mark.slow
def test_dry_run_measures_every_part(tmp_path):
    res, report = run_bench(tmp_path)
    # only generators a head cannot use (e.g. a logits-only generator on the autoregressive head) may be skipped
    assert all(s["reason"].startswith("not for this head") for s in report["skipped"]), report["skipped"]
    got = {(r["part"], r["measurement"]) for r in report["rows"]}
    names = lambda part: [m for p, m in got if p == part]  # noqa: E731
    extraction = " ".join(names("extraction"))
    for what in ("decode-only", "model-only fp32", "memory", "bf16 vs fp32", "full pipeline", "pipeline / max"):
        assert what in extraction, what
    for head in ("slowfast_transformer", "ar_transformer"):
        for variant in ("fp32", "bf16", "fp32, torch.compile", "bf16, torch.compile"):
            assert ("stage two", f"{head} train steps/s, {variant}") in got
        assert any(m.startswith(f"{head}: projected 50-epoch run") for m in names("stage two"))
        gens = {m.split(", ")[-1] for m in names("evaluation") if m.startswith(head)}
        assert {"sample", "greedy+sample", "mbr", "mbr_set"} <= gens
    assert "beam_search" in " ".join(m for m in names("evaluation") if m.startswith("ar_transformer"))
    assert all(math.isfinite(r["value"]) and r["value"] > 0 for r in report["rows"])
    table = (tmp_path / "gpu.md").read_text()
    assert table.count("\n| ") == len(report["rows"]) + len(report["skipped"]) + 1 and "DRY RUN" in table  # header + rows
    assert "| extraction | full pipeline |" in res.stdout


def test_a_budget_too_small_skips_and_says_so(tmp_path):
    _, report = run_bench(tmp_path, "--budget", "0.5", "--parts", "stage_two,evaluation")
    assert report["skipped"] and all(s["reason"] for s in report["skipped"])
    measured = {r["measurement"] for r in report["rows"]}
    assert not any("steps/s" in m or "windows/s" in m for m in measured), measured
    assert report["wall_sec"] < 60
    assert "skipped" in (tmp_path / "gpu.md").read_text()
