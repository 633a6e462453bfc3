"""How far the cheaper or faster extraction settings are from the reference-exact one, on the e2e fixture footage.

    python bench/fidelity.py [FIXTURE_DIR]      # default $LTA_REFERENCE_E2E or tests/fixtures/ego4d_reference_e2e

Runs `lta extract` (tests/e2e_helpers.extract_fixture: the real command, CPU, float32 store) on the fixture's
real clips with the tiny reference SlowFast checkpoints and prints, over every (window, input clip) of the
fixture's SlowFast pipelines:

- slow_pathway=slot_independent vs per_slot (the reference): relative L2 feature difference, and
  how many slow frames differ;
- precision=bf16 (CPU autocast here; CUDA bf16 rounds the same way but runs other kernels) vs fp32;
- linspace=torch (installed torch) vs torch19: windows whose frames differ and the feature difference there;
- the cost of per_slot: stored vectors per segment and model time, against slot_independent;
- the project's former spatial order (scale uint8 frames, then normalise) vs the reference order, as the
  max |diff| of the crop-64 inputs against inputs_crop64.pt.

Each figure is printed with what it is; README "Fidelity" quotes them.
"""
from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # not bench/ (bench/extract.py would shadow the extract package)
sys.path.insert(1, str(ROOT / "tests"))

from e2e_helpers import extract_fixture, load_fixture  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    fx = load_fixture(argv[0] if argv else None)
    ns = fx.num_input_clips("slowfast")
    ckpts = {"lta_tiny_trf.ckpt": "LTA checkpoint backbone", "slowfast_tiny_recognition.ckpt": "recognition checkpoint"}
    with tempfile.TemporaryDirectory() as tmp:
        for ckpt, what in ckpts.items():
            runs = {}
            for label, extra in [("exact", []), ("slot_independent", ["slow_pathway=slot_independent"]),
                                 ("bf16", ["precision=bf16"]), ("torch_linspace", ["linspace=torch"])]:
                runs[label] = extract_fixture(fx, Path(tmp) / f"{ckpt}-{label}", "slowfast_ckpt.ego4d", fx.checkpoint(ckpt),
                                              num_input_clips=ns, extra=extra)
            si, bf, tl, changed = [], [], [], []
            slow_diff = slow_total = 0
            for pipeline in fx.pipelines("slowfast"):
                n_in = int(fx.pipeline(pipeline)["num_input_clips"])
                shared = runs["slot_independent"].store.spec["extractor"]["slow_positions"][0]
                for w in fx.windows(pipeline):
                    for j, c in enumerate(w["clips"]):
                        exact = runs["exact"].feature(w["clip_uid"], c["action_idx"], n_in=n_in, slot=j)
                        si.append(rel(runs["slot_independent"].feature(w["clip_uid"], c["action_idx"], n_in=1, slot=0), exact))
                        bf.append(rel(runs["bf16"].feature(w["clip_uid"], c["action_idx"], n_in=n_in, slot=j), exact))
                        fast = c["fast_frames"]
                        slow_diff += sum(fast[p] != s for p, s in zip(shared, c["slow_frames"]))
                        slow_total += len(c["slow_frames"])
                        if "torch214_differs" in c:
                            changed.append((pipeline, w["key"], j))
                            tl.append(rel(runs["torch_linspace"].feature(w["clip_uid"], c["action_idx"], n_in=n_in, slot=j), exact))
            print(f"[{ckpt}: {what}] over {len(si)} (window, clip) pairs of {fx.pipelines('slowfast')}")
            print(f"  slot_independent vs per_slot: {slow_diff}/{slow_total} slow frames differ; relative feature "
                  f"difference mean {np.mean(si):.3g}, max {np.max(si):.3g}")
            print(f"  bf16 (CPU autocast) vs fp32: relative feature difference mean {np.mean(bf):.3g}, max {np.max(bf):.3g}")
            if tl:
                print(f"  linspace=torch vs torch19: {len(tl)} (window, clip) pairs pick other frames; relative feature "
                      f"difference there mean {np.mean(tl):.3g}, max {np.max(tl):.3g}")
            cost = {k: json.loads((runs[k].store_path.parent / "extract_summary.json").read_text())[0]
                    for k in ("exact", "slot_independent")}
            views = {k: runs[k].store.num_views for k in cost}
            print(f"  cost per segment, per_slot (num_input_clips={ns}) vs slot_independent: {views['exact']} vs "
                  f"{views['slot_independent']} stored vectors; model time {cost['exact']['model_sec']:.1f} s vs "
                  f"{cost['slot_independent']['model_sec']:.1f} s for {cost['exact']['rows_done']} segments")

    # the former spatial order (scale the uint8 frames, then normalise) vs the reference order
    from extract import decode
    from extract.extractors import center_crop

    worst = 0.0
    for pipeline in fx.pipelines("slowfast"):
        n_in = int(fx.pipeline(pipeline)["num_input_clips"])
        for w in fx.windows(pipeline):
            for j, c in enumerate(w["clips"]):
                rgb = decode.decode_window(fx.clip_path(w["clip_uid"]), c["segment_start_sec"], c["segment_end_sec"],
                                           num_frames=32, sampling_rate=2, num_input_clips=n_in)
                x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
                h, wd = x.shape[-2:]
                size = (73, int(math.floor(wd / h * 73))) if h <= wd else (int(math.floor(h / wd * 73)), 73)
                x = center_crop(torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False), 64)
                x = (x - 0.45 * 255.0) / (0.225 * 255.0)
                ref = fx.inputs_crop64[pipeline][w["key"]]["fast"][j]
                worst = max(worst, float((x.transpose(0, 1) - ref).abs().max()))
    print(f"former order (scale uint8, then normalise) vs the reference inputs at crop 64: max |diff| {worst:.3g} "
          f"(the extractors now normalise first, as the reference)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
