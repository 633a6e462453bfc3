"""Extraction cost of the reference-exact slot-dependent SlowFast features against the slot-independent mode.

    python bench/slot_cost.py

Writes a 2-clip synthetic sample (features.synthetic, extract.render), then runs `lta extract` on it twice
with a random-weight SlowFast R50 at crop 64 on one CPU thread: `slow_pathway=slot_independent` (one vector
per segment) and the default `num_input_clips=[2,4]` with `slow_pathway=per_slot` (6 vectors per segment),
and prints wall and model seconds of each. README "Fidelity" quotes the result.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # not bench/ (bench/extract.py would shadow the package)

import torch  # noqa: E402

from extract.render import write_sample  # noqa: E402
from features.synthetic import plan_sample  # noqa: E402
from pipelines import cmd_extract  # noqa: E402


def main() -> int:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_sample(plan_sample(clips=2, seed=123, segments_per_clip=(28, 30), segment_sec=(1.0, 1.6),
                                 width=160, height=120), d)
        res = {}
        for label, mode in [("slot_independent", "slow_pathway=slot_independent"), ("per_slot [2,4]", "num_input_clips=[2,4]")]:
            store = d / label.split()[0]
            t0 = time.perf_counter()
            rc = cmd_extract.main([f"data={d}", f"store={store}", "extractors=[slowfast_r50_8x8.kinetics]", "weights=random",
                                   "device=cpu", "crop_size=64", "raw_clips=true", "progress=false", mode])
            s = json.loads((store / "extract_summary.json").read_text())[0]
            res[label] = (time.perf_counter() - t0, s["model_sec"], s["rows_done"], rc)
        for label, (wall, model, rows, rc) in res.items():
            print(f"{label}: rc {rc}, {rows} segments, wall {wall:.1f} s, model {model:.1f} s")
        a, b = res["slot_independent"][1], res["per_slot [2,4]"][1]
        print(f"per_slot / slot_independent model time: {b / a:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
