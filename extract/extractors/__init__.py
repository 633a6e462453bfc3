"""Extractors: uint8 video windows in, embeddings out (SlowFast, MViT, CLIP).

    create_extractor("slowfast_r101_8x8.ego4d", weights="ego4d_slowfast8x8.ckpt", device="cuda")
    ext(frames)   # frames uint8 (N, T, H, W, 3) -> float32 (N, *ext.spec.view_shape)

Names follow `arch.pretrain`. The table of registered ones (sampling, crop, preprocessing, output size,
default weights) is data, in extract/extractors/table.py: `lta extract --list` prints it without building a
model. `list_extractors()` lists the names; any `clip_<arch>.<tag>`
also resolves dynamically (`clip_vit_b32.openai` -> open_clip `ViT-B-32` / `openai`), and so does
`<video arch>.<run name>` with `weights=RUN_DIR` of `lta finetune-backbone` (a fine-tuned backbone):

    create_extractor("slowfast_r101_8x8.ft_sf101", weights="runs/ft_sf101")   # or runs/ft_sf101/backbone.pt

Weights (`weights=`): "default" = the name's pretrain source (pytorchvideo Kinetics URL, open_clip
tag; `.ego4d` has none and needs a path), a local file path, a fine-tuning run dir, or "random"
(explicit only, seeded so every process builds the same net). The spec records the source and the
file's sha256, so features of different weights never share a cache key. Checkpoint files are read
without executing pickled code (features.checkpoint_io's restricted unpickler, torch weights_only).

A fine-tuned run carries its own spec (RUN_DIR/backbone.json: builder kwargs, frames, rate, crop,
short side, mean/std, feature dim); the extractor takes all of it from there, checks the arch against
the name, and loads backbone.pt strictly.

Preprocessing is batched tensor ops on the model's device:
  video models: /255, Normalize(0.45, 0.225), ShortSideScale(short_side, bilinear), CenterCrop(crop), in
      that order (reference val/test transform, ego4d_lta.md §2.3; within 1e-6 of the reference loader,
      tests/test_e2e_extract.py). Frames follow the reference test-time LTA loader (extract/decode.py);
      SlowFast's slow pathway is the loader's folded one, one stored variant per (N_in, slot)
      (`configure_sampling`, `slow_pathway=per_slot`) or the recognition rule (`slot_independent`).
  precision: fp32 (default, the reference) or bf16 autocast (`create_extractor(precision=...)`).
  CLIP: open_clip's eval `preprocess` as tensors: Resize(shortest side, bicubic, antialias) rounded to
      uint8 as PIL does, CenterCrop, /255, CLIP mean/std. Matches the PIL path to ~1 uint8 level.
"""

from extract.extractors.base import Extractor, VideoExtractor, center_crop  # noqa: F401
from extract.extractors.clip import ClipExtractor, DasRyooClipExtractor, resolve_clip_name  # noqa: F401
from extract.extractors.registry import BUILDERS, create_extractor, list_extractors, register_extractor  # noqa: F401
from extract.extractors.table import (ENTRIES, PRECISIONS, RANDOM_SEED, SLOW_PATHWAYS, TABLE, VIDEO_MEAN,  # noqa: F401
                                      VIDEO_STD, ExtractorEntry, ExtractorSpec, format_table)
from extract.extractors.video import (FINETUNE_ARCHS, CheckpointMViTExtractor, CheckpointSlowFastExtractor,  # noqa: F401
                                      MViTExtractor, SlowFastExtractor, build_finetuned)
