"""Video preprocessing (/255, Normalize, short-side scale, centre crop) of the extractors: in place against the
out-of-place formula, same float32 operations in the same (reference) order.

    python bench/preprocess.py [--threads 1] [--frames 32] [--crop 64]

Times `VideoExtractor.preprocess` (extract/extractors/base.py, normalising in place) and the same steps written
out of place (`(x / 255 - mean) / std` on the full-resolution frames, what the code did before 2026-12-03) on
random uint8 frames at 320x427 (the resized Ego4D clips' size), and checks that both give the same bits.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # not bench/ (bench/extract.py would shadow the package)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from extract.extractors.base import VideoExtractor, center_crop  # noqa: E402
from extract.extractors.table import ENTRIES  # noqa: E402
from extract.extractors.video import entry_spec  # noqa: E402


def out_of_place(frames: torch.Tensor, spec) -> torch.Tensor:
    n, t, h, w, _ = frames.shape
    x = frames.permute(0, 1, 4, 2, 3).reshape(n * t, 3, h, w).float()
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (x / 255.0 - mean) / std
    new_h, new_w = (spec.short_side, int(math.floor(w / h * spec.short_side)))
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    x = center_crop(x, spec.crop_size)
    return x.reshape(n, t, 3, spec.crop_size, spec.crop_size).transpose(1, 2).contiguous()


def best_of(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--crop", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = entry_spec(ENTRIES["slowfast_r50_8x8.kinetics"], crop=args.crop, tapped_layer="", weights="random",
                      weights_sha256="", arch_kwargs={})
    extractor = VideoExtractor(spec, torch.nn.Identity(), "cpu")
    frames = torch.randint(0, 256, (1, args.frames, 320, 427, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    same = torch.equal(extractor.preprocess(frames), out_of_place(frames, spec))
    t_new, t_old = best_of(lambda: extractor.preprocess(frames)), best_of(lambda: out_of_place(frames, spec))
    print(f"{args.frames} frames 320x427 -> crop {args.crop}, {args.threads} thread(s), best of 5")
    print(f"  out of place (before)   {t_old:.3f} s")
    print(f"  in place (extractor)    {t_new:.3f} s   {t_old / t_new:.1f}x faster, bit-identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
