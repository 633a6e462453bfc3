"""The extractor table: what every registered extractor reads and writes, as data (no torch, no model built).

`lta extract --list` prints it; the builders (extract/extractors/video.py, clip.py) read their sampling,
preprocessing, output size and default weights from it, and tests/test_extractors.py checks every row
against the model it builds. The numbers come from the reference (../shared/reference/ego4d_lta.md §2.3):
SlowFast 8x8 takes 32 frames at rate 2 and MViT-B 16x4 16 frames at rate 4; the val/test transform is /255,
Normalize(0.45, 0.225), a bilinear short side of 256 and a 224 centre crop. CLIP rows carry open_clip's own
eval preprocessing (bicubic resize to 224, the OpenAI mean/std), which the builder checks against open_clip.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from extract.weights import KINETICS_URLS

VIDEO_MEAN, VIDEO_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)  # the reference's DATA.MEAN / DATA.STD
VIDEO_SHORT_SIDE, VIDEO_CROP = 256, 224  # the reference's val/test scale and crop
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's OPENAI_DATASET_MEAN / _STD
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RANDOM_SEED = 0  # weights=random builds under this seed: the same net in every process
PRECISIONS = ("fp32", "bf16")
SLOW_PATHWAYS = ("per_slot", "slot_independent")
FROM_CHECKPOINT = None  # a field a checkpoint's own config decides (`*_ckpt.ego4d`)


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything that determines an extractor's output values (it all goes into the cache key)."""

    name: str
    arch: str  # builder arch, e.g. "slowfast_r101", "mvit_b_16x4", open_clip "ViT-B-32"
    num_frames: int  # frames the model consumes per window
    window_frames: int  # frames of the sampled window (num_frames are uniformly subsampled from them)
    sampling_rate: int  # window duration = window_frames * sampling_rate / target_fps
    short_side: int
    crop_size: int
    interpolation: str  # "bilinear" (pytorchvideo ShortSideScale) | "bicubic" (open_clip)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    view_shape: tuple[int, ...]  # per-window output shape: (D,) or (F, D)
    tapped_layer: str
    weights: str  # "random", a URL, an open_clip "arch/tag", or a file path
    weights_sha256: str = ""
    target_fps: float = 30.0
    arch_kwargs: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    # test-time sampling of the reference LTA loader (extract/decode.py), set by `configure_sampling`
    num_input_clips: tuple[int, ...] = (1,)  # the N_in values reproduced (all >= 2, or just 1)
    linspace: str = "torch19"  # "torch19" (the reference's torch 1.9) | "torch" (the installed torch)
    slow_pathway: str = ""  # SlowFast: "per_slot" (exact) | "slot_independent"; "" for other models
    slots: tuple[tuple[int, int], ...] = ()  # (N_in, j) of each stored slot variant; () = slot-independent
    slow_positions: tuple[tuple[int, ...], ...] = ()  # slow-pathway positions in the T frames, per slot (or the one shared)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def num_slots(self) -> int:
        """Stored variants per view: one per (N_in, slot) for slot-dependent features, else 1."""
        return max(len(self.slots), 1)


@dataclass(frozen=True)
class ExtractorEntry:
    """One row of the table. `None` (FROM_CHECKPOINT) where the weights file's own config decides."""

    name: str  # `arch.pretrain`
    kind: str  # the builder: a key of extract.extractors.registry.BUILDERS
    arch: str  # builder arch (`slowfast_r101`, `mvit_b_16x4`, open_clip `ViT-B-32`; "checkpoint" = its config's)
    num_frames: int | None  # frames the model sees per window
    window_frames: int | None  # frames of the sampled window
    sampling_rate: int | None  # window = window_frames * sampling_rate frames at 30 fps
    short_side: int | None  # at the default crop; a crop override scales it
    crop_size: int | None
    interpolation: str
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    view_shape: tuple[int, ...] | None  # per window: (D,), or (frames, D) for CLIP
    default_weights: str  # what weights=default loads (a URL, open_clip:arch/tag) or what weights= must name
    about: str
    builder_kwargs: tuple[tuple[str, Any], ...] = ()  # extra arguments of the builder (depth, CLIP arch name)

    @property
    def needs_weights_path(self) -> bool:
        """True when weights=default cannot be downloaded (the released Ego4D checkpoints)."""
        return self.default_weights.startswith("weights=PATH")

    def kwargs(self) -> dict[str, Any]:
        return dict(self.builder_kwargs)


def _slowfast(depth: int, pretrain: str) -> ExtractorEntry:
    ego4d = pretrain == "ego4d"
    return ExtractorEntry(
        name=f"slowfast_r{depth}_8x8.{pretrain}", kind="slowfast", arch=f"slowfast_r{depth}", num_frames=32,
        window_frames=32, sampling_rate=2, short_side=VIDEO_SHORT_SIDE, crop_size=VIDEO_CROP, interpolation="bilinear",
        mean=VIDEO_MEAN, std=VIDEO_STD, view_shape=(2304,),
        default_weights="weights=PATH (ego4d_slowfast8x8.ckpt or an lta_slowfast_*.ckpt)" if ego4d
        else KINETICS_URLS[f"slowfast_r{depth}_8x8"],
        about=("the Ego4D recognition SlowFast (the reference LTA backbone)" if ego4d
               else "pytorchvideo's Kinetics-400 SlowFast"),
        builder_kwargs=(("depth", depth),))


def _mvit(pretrain: str) -> ExtractorEntry:
    ego4d = pretrain == "ego4d"
    return ExtractorEntry(
        name=f"mvit_b_16x4.{pretrain}", kind="mvit", arch="mvit_b_16x4", num_frames=16, window_frames=16,
        sampling_rate=4, short_side=VIDEO_SHORT_SIDE, crop_size=VIDEO_CROP, interpolation="bilinear", mean=VIDEO_MEAN,
        std=VIDEO_STD, view_shape=(768,),
        default_weights="weights=PATH (ego4d_mvit16x4.ckpt or lta_mvit_concat.ckpt)" if ego4d
        else KINETICS_URLS["mvit_b_16x4"],
        about="the Ego4D recognition MViT-B 16x4" if ego4d else "pytorchvideo's Kinetics-400 MViT-B 16x4")


def _from_checkpoint(name: str, kind: str, what: str, example: str) -> ExtractorEntry:
    return ExtractorEntry(
        name=name, kind=kind, arch="checkpoint", num_frames=FROM_CHECKPOINT, window_frames=FROM_CHECKPOINT,
        sampling_rate=FROM_CHECKPOINT, short_side=FROM_CHECKPOINT, crop_size=FROM_CHECKPOINT, interpolation="bilinear",
        mean=FROM_CHECKPOINT, std=FROM_CHECKPOINT, view_shape=FROM_CHECKPOINT, default_weights=f"weights=PATH ({example})",
        about=f"the {what} a released Ego4D checkpoint's own config describes, with its weights")


def _clip(name: str, arch: str, dim: int) -> ExtractorEntry:
    return ExtractorEntry(
        name=name, kind="clip", arch=arch, num_frames=8, window_frames=32, sampling_rate=2, short_side=224,
        crop_size=224, interpolation="bicubic", mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, view_shape=(8, dim),
        default_weights=f"open_clip:{arch}/openai", about="open_clip image tower with open_clip's preprocessing, 8 frames a window")


TABLE: tuple[ExtractorEntry, ...] = (
    _slowfast(50, "kinetics"),
    _slowfast(101, "kinetics"),
    _slowfast(101, "ego4d"),
    _from_checkpoint("slowfast_ckpt.ego4d", "slowfast_ckpt", "SlowFast", "lta_slowfast_trf.ckpt"),
    _mvit("kinetics"),
    _mvit("ego4d"),
    _from_checkpoint("mvit_ckpt.ego4d", "mvit_ckpt", "MViT", "ego4d_mvit16x4.ckpt"),
    ExtractorEntry(  # what the reference MViT-Concat trained on (pipelines/configs/mvit_concat.yaml)
        name="mvit_b_16x4_random.seed0", kind="mvit_random", arch="mvit_b_16x4", num_frames=16, window_frames=16,
        sampling_rate=4, short_side=VIDEO_SHORT_SIDE, crop_size=VIDEO_CROP, interpolation="bilinear", mean=VIDEO_MEAN,
        std=VIDEO_STD, view_shape=(768,), default_weights="random (seed 0; no weights file accepted)",
        about="MViT-B 16x4 with seeded random weights: the reference's run_lta.py loads no MViT weight into MViT-Concat"),
    _clip("clip_vit_b32.openai", "ViT-B-32", 512),
    _clip("clip_vit_b16.openai", "ViT-B-16", 512),
    _clip("clip_vit_l14.openai", "ViT-L-14", 768),
    ExtractorEntry(
        name="clip_vit_b32_dasryoo.openai", kind="clip_dasryoo", arch="ViT-B-32", num_frames=32, window_frames=32,
        sampling_rate=2, short_side=VIDEO_SHORT_SIDE, crop_size=VIDEO_CROP, interpolation="bilinear", mean=VIDEO_MEAN,
        std=VIDEO_STD, view_shape=(8, 512), default_weights="open_clip:ViT-B-32/openai",
        about="Das & Ryoo's CLIP inputs: the 8 slow-pathway frames of the SlowFast transform, per (N_in, slot)",
        builder_kwargs=(("clip_name", "clip_vit_b32.openai"),)),
)
ENTRIES: dict[str, ExtractorEntry] = {e.name: e for e in TABLE}


def _cell(value: Any) -> str:
    if value is None:
        return "ckpt"
    if isinstance(value, tuple):
        return "x".join(map(str, value)) if all(isinstance(v, int) for v in value) else "/".join(f"{v:.3g}" for v in value)
    return str(value)


def table_rows() -> list[dict[str, str]]:
    """The table as printable rows (what `lta extract --list` shows); `ckpt` = from the checkpoint's config."""
    return [{"name": e.name, "arch": e.arch, "frames": f"{_cell(e.num_frames)} of {_cell(e.window_frames)} @ rate {_cell(e.sampling_rate)}",
             "crop": f"{_cell(e.short_side)}->{_cell(e.crop_size)} {e.interpolation}", "dim": _cell(e.view_shape),
             "mean/std": f"{_cell(e.mean)} / {_cell(e.std)}", "weights": e.default_weights} for e in TABLE]


def format_table() -> str:
    rows = table_rows()
    cols = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols)]
    lines += ["  ".join(r[c].ljust(width[c]) for c in cols) for r in rows]
    lines += ["", "also: clip_<open_clip arch>.<tag> (any open_clip model, its own preprocessing), and "
              "<slowfast_r50_8x8|slowfast_r101_8x8|mvit_b_16x4>.<run name> with weights=RUN_DIR of `lta finetune-backbone`",
              "crop: short side -> centre crop at the default crop_size (crop_size=N scales both); ckpt: from the checkpoint's config"]
    return "\n".join(line.rstrip() for line in lines)
