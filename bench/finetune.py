"""Backbone fine-tuning throughput: samples/s and the share of train-loop time spent waiting for data.

    .venv/bin/python bench/finetune.py                        # CPU: tiny SlowFast R50, 426x320 synthetic clips
    .venv/bin/python bench/finetune.py --workers 0 2 --steps 12
    .venv/bin/python bench/finetune.py --reference --device cuda --workers 8 16   # R101 / 224 / 32 frames on a GPU

Data: a synthetic sample rendered at 426x320 (the short-side-320 `clips/` size the recipe reads),
written once into a temporary folder. Each row is one `finetune()` run of --steps optimiser steps
(validation off, random init); "data wait" = time blocked in `next(loader)` / train-loop time, so
a value near 0 means the GPU/CPU model step is the bottleneck, near 1 means decoding is.
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers to compare")
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps per run (the first is warm-up)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reference", action="store_true", help="full R101 8x8 at 224 (GPU sizes)")
    args = parser.parse_args(argv)

    import torch

    from extract.finetune.train import TrainOptions, finetune
    from extract.render import write_sample
    from features.synthetic import plan_sample

    logging.basicConfig(level=logging.WARNING)
    if args.device == "cpu":
        torch.set_num_threads(1)  # leave the other core(s) to the decoding workers
    model = (dict(backbone="slowfast_r101_8x8") if args.reference else
             dict(backbone="slowfast_r50_8x8", width_per_group=8, crop_size=64))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = write_sample(plan_sample(clips=args.clips, seed=0, width=426, height=320, segments_per_clip=(12, 14),
                                           train_fraction=1.0, val_fraction=0.0), Path(tmp) / "data")
        print(f"sample: {summary['segments']['train']} train segments, {summary['video_sec']:.0f} s of 426x320 video "
              f"(rendered in {time.perf_counter() - t0:.1f} s); model {model}, batch {args.batch}, {args.steps} steps, "
              f"device {args.device}, torch threads {torch.get_num_threads()}\n")
        print("| workers | samples/s | data wait | ms/step |")
        print("|---:|---:|---:|---:|")
        for workers in args.workers:
            result = finetune(TrainOptions(
                data=str(Path(tmp) / "data"), out=str(Path(tmp) / f"run{workers}"), init="random", resized=False,
                val_split="", batch_size=args.batch, epochs=1000, max_steps=args.steps, num_workers=workers,
                warmup_steps=1, lr=0.01, log_every=10**9, ckpt_every=0, device=args.device, **model))
            ms = 1000 * args.batch / result["samples_per_sec"]
            print(f"| {workers} | {result['samples_per_sec']:.1f} | {100 * result['data_wait_share']:.0f}% | {ms:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
