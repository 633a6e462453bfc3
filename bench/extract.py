"""Extraction benchmarks on the CPU with small configs (prints the README table).

(a) frames decoded per frame used, SlowFast R50 + MViT-B + CLIP ViT-B/32 in one run (decode-once);
(b) the pipeline's decode+model loop vs max(decode-only, model-only), target <= 1.2x;
(c) `lta resize` throughput with 1 vs 2 jobs.
Usage: .venv/bin/python bench/extract.py [--clips 3] [--crop 64]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

EXTRACTORS = ["slowfast_r50_8x8.kinetics", "mvit_b_16x4.kinetics", "clip_vit_b32.openai"]


def make_data(root: Path, clips: int, seconds: float, width: int, height: int, raw: bool) -> None:
    import json

    from test_decode import write_video

    folder = "clips_hq" if raw else "clips"
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "fho_lta_taxonomy.json").write_text(json.dumps({"verbs": ["a"], "nouns": ["x"]}))
    recs = []
    for c in range(clips):
        uid = f"clip{c}"
        write_video(root / folder / f"{uid}.mp4", int(seconds * 30), width=width, height=height, gop=30, lossless=False, seed=c)
        for k in range(int((seconds - 3) // 2)):  # ~2.5 s segments every 2 s (overlapping windows, as Ego4D)
            recs.append({"clip_uid": uid, "action_idx": k, "action_clip_start_sec": 0.5 + 2.0 * k,
                         "action_clip_end_sec": 3.0 + 2.0 * k, "verb_label": 0, "noun_label": 0})
    for split, name in [("train", "fho_lta_train.json"), ("val", "fho_lta_val.json"), ("test", "fho_lta_test_unannotated.json")]:
        (ann / name).write_text(json.dumps({"split": split, "clips": recs if split == "train" else []}))


def bench_pipeline(root: Path, crop: int, batch: int) -> None:
    import torch

    from extract import decode, pipeline
    from extract.extractors import create_extractor
    from features.annotations import load_split
    from features.store import RowTable

    torch.set_num_threads(1)  # one core for the model, one for decoding
    s = pipeline.run_extraction(pipeline.ExtractOptions(
        data_dir=root, store_root=root / "store", extractors=EXTRACTORS, splits=["train"], num_views=1, device="cpu",
        batch_size=batch, weights={n: "random" for n in EXTRACTORS}, crop_size=crop, decode_workers=1, progress=False))
    # decode-only: the same requests through the same decoder, no model
    rows = RowTable.from_annotations([load_split(root, "train")])
    exts = [create_extractor(n, weights="random", crop_size=crop) for n in EXTRACTORS]
    specs = {e.spec.name: e.spec for e in exts}
    views = decode.make_views(1)
    t0 = time.perf_counter()
    stats = decode.DecodeStats()
    for uid in sorted(set(rows.clip_uid.tolist())):
        rs = np.flatnonzero(rows.clip_uid == uid)
        job = pipeline._ClipJob(uid, root / "clips" / f"{uid}.mp4", rs, {n: set(rs.tolist()) for n in specs})
        info = decode.probe_clip(job.path)
        reqs, _ = pipeline._requests(job, rows, specs, views, info)
        for _ in decode.decode_rows(job.path, reqs, info=info, stats_out=stats):
            pass
    decode_only = time.perf_counter() - t0
    # model-only: the same number of batches of the same shape, frames already in memory
    h, w = 240, 320
    t0 = time.perf_counter()
    n = len(rows)
    for e in exts:
        for start in range(0, n, batch):
            m = min(batch, n - start)
            e(np.random.default_rng(0).integers(0, 256, (m, e.spec.num_frames, h, w, 3), dtype=np.uint8))
    model_only = time.perf_counter() - t0
    print(f"\n(a) decode-once, {len(EXTRACTORS)} extractors ({', '.join(EXTRACTORS)}), crop {crop}, {n} segments:")
    print(f"    frames decoded / frames used = {s.decode.decoded_per_used:.2f} ({s.decode.frames_decoded} / {s.decode.frames_used}); "
          f"frames the extractors consume per window: 32 + 16 + 8 = 56")
    print("\n(b) pipeline vs its parts (seconds)")
    print("| decode-only | model-only | pipeline loop | ratio loop / max(parts) | windows/s | main thread waited |")
    print("|---|---|---|---|---|---|")
    print(f"| {decode_only:.2f} | {model_only:.2f} | {s.loop_sec:.2f} | {s.loop_sec / max(decode_only, model_only):.2f}x "
          f"| {s.windows / s.loop_sec:.1f} | {s.wait_sec:.2f} |")


def bench_resize(root: Path, clips: int) -> None:
    from extract.resize import ResizeParams, list_raw_clips, resize_many

    uids = list_raw_clips(root)
    print(f"\n(c) resize {len(uids)} clips of 8 s 640x480 -> short side 320 (libx264 crf 28, preset medium, -g 30)")
    print("| jobs | wall s | clips/s | video s per s |")
    print("|---|---|---|---|")
    for jobs in (1, 2):
        shutil.rmtree(root / "clips", ignore_errors=True)
        t0 = time.perf_counter()
        res = resize_many(root, uids, ResizeParams(), jobs=jobs)
        wall = time.perf_counter() - t0
        assert all(r.status == "done" for r in res), [r.reason for r in res]
        print(f"| {jobs} | {wall:.2f} | {len(uids) / wall:.2f} | {sum(r.video_sec for r in res) / wall:.1f} |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pipe"
        make_data(root, args.clips, 12.0, 320, 240, raw=False)
        bench_pipeline(root, args.crop, args.batch)
        raw = Path(tmp) / "raw"
        make_data(raw, 4, 8.0, 640, 480, raw=True)
        bench_resize(raw, 4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
