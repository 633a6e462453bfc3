"""CLIP image towers (open_clip) as extractors: open_clip's own preprocessing, or Das & Ryoo's inputs.

CLIP (`clip_<arch>.<tag>`): open_clip's eval `preprocess` as tensors: Resize(shortest side, bicubic,
antialias) rounded to uint8 as PIL does, CenterCrop, /255, CLIP mean/std; matches the PIL path to ~1 uint8
level. The table's CLIP rows list open_clip's values and the builder checks them against the model it builds;
any other `clip_<arch>.<tag>` takes them from open_clip.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from extract.extractors.base import Extractor, VideoExtractor, center_crop, seeded_build
from extract.extractors.table import ExtractorEntry
from extract.extractors.video import SlowFastExtractor, entry_spec
from features.files import file_sha256

if TYPE_CHECKING:
    import torch

CLIP_NUM_FRAMES = 8  # frames a window, spread over the 32-frame (rate 2) window of the video models


class ClipExtractor(Extractor):
    """open_clip image tower, one embedding per frame: (N, F, D) (not L2-normalised)."""

    @classmethod
    def build(cls, entry: ExtractorEntry | str, *, weights: str, device: str, crop_size: int | None) -> "ClipExtractor":
        """A table row, or any `clip_<arch>.<tag>` name (its preprocessing then comes from open_clip alone)."""
        name = entry if isinstance(entry, str) else entry.name
        arch, tag = resolve_clip_name(name)
        model, source, sha, quick_gelu = _load_open_clip(name, arch, tag, weights=weights, crop_size=crop_size)
        cfg = model.visual.preprocess_cfg
        size = int(cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else cfg["size"])
        if cfg.get("resize_mode", "shortest") != "shortest":
            raise ValueError(f"{name}: open_clip resize_mode {cfg['resize_mode']!r} is not reproduced (only 'shortest')")
        found = ExtractorEntry(
            name=name, kind="clip", arch=arch, num_frames=CLIP_NUM_FRAMES, window_frames=32, sampling_rate=2,
            short_side=size, crop_size=size, interpolation=str(cfg.get("interpolation", "bicubic")),
            mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), view_shape=(CLIP_NUM_FRAMES, int(model.visual.output_dim)),
            default_weights=f"open_clip:{arch}/{tag}", about="")
        if not isinstance(entry, str):
            _check_row(entry, found, crop_size)
        spec = entry_spec(found, crop=size, tapped_layer="encode_image (after projection)", weights=source,
                          weights_sha256=sha, arch_kwargs={"force_quick_gelu": quick_gelu, "tag": tag})
        return cls(spec, model.visual, device)

    def preprocess(self, frames: "torch.Tensor") -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        s = self.spec
        n, t, h, w, _ = frames.shape
        x = frames.permute(0, 1, 4, 2, 3).reshape(n * t, 3, h, w).float()
        # torchvision Resize(size): short side -> size, long side int(size * long / short)
        new_h, new_w = (s.short_side, int(s.short_side * w / h)) if h <= w else (int(s.short_side * h / w), s.short_side)
        if (new_h, new_w) != (h, w):
            x = F.interpolate(x, size=(new_h, new_w), mode=s.interpolation, align_corners=False, antialias=True)
            x = x.round().clamp_(0, 255)  # PIL resizes in uint8
        x = center_crop(x, s.crop_size) / 255.0
        mean = torch.tensor(s.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(s.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std  # (N*F, 3, S, S)

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.model(x)


class DasRyooClipExtractor(VideoExtractor):
    """Das & Ryoo's CLIP input path (clip_baseline_LTA_Ego4d, ForecastingEncoderDecoder_clip.encode_clips,
    lta_models.py:494-523): CLIP's image tower sees, per input clip, the 8 slow-pathway frames of the SlowFast
    pipeline, i.e. the reference val/test transform (/255, Normalize(0.45, 0.225), bilinear short side 256,
    centre crop 224; no CLIP resize or mean/std), in time order. Output (N, 8, D), one raw embedding per
    frame: their `_clip` head averages them, their `_clip_text` head L2-normalises each (head options
    frame_pool=mean / normalize=l2). Frames and slow positions are exactly the SlowFast extractor's
    (32-frame window, the LTA loader's per-slot slow frames), so it stores one variant per (N_in, slot) too.
    """

    ALPHA = SlowFastExtractor.ALPHA
    _slot_fields = SlowFastExtractor._slot_fields

    @classmethod
    def build(cls, entry: ExtractorEntry, *, clip_name: str, weights: str, device: str, crop_size: int | None) -> "DasRyooClipExtractor":
        arch, tag = resolve_clip_name(clip_name)
        crop = crop_size or entry.crop_size
        model, source, sha, quick_gelu = _load_open_clip(entry.name, arch, tag, weights=weights,
                                                         crop_size=crop if crop != entry.crop_size else None)
        if int(model.visual.output_dim) != entry.view_shape[-1]:
            raise ValueError(f"{entry.name}: the table says {entry.view_shape[-1]}-d, open_clip's {arch} gives "
                             f"{model.visual.output_dim}-d (extract/extractors/table.py is out of date)")
        spec = entry_spec(entry, crop=crop, tapped_layer="encode_image (after projection) of the slow-pathway frames",
                          weights=source, weights_sha256=sha, arch_kwargs={"force_quick_gelu": quick_gelu, "tag": tag})
        return cls(spec, model.visual, device)

    def clip_inputs(self, x: "torch.Tensor", slot: int = 0) -> "torch.Tensor":
        """(N*8, 3, S, S): the slow frames of `x` (N, 3, T, S, S), batch-major then time, as they pass
        `rearrange(pathway[:, i], 'b c t h w -> (b t) c h w')` to encode_image."""
        import torch

        if self.spec.slow_positions:
            idx = torch.tensor(self.spec.slow_positions[slot], device=x.device)
        else:  # not configured: the recognition rule, as SlowFastExtractor.forward
            idx = torch.linspace(0, x.shape[2] - 1, x.shape[2] // self.ALPHA, device=x.device).long()
        slow = x.index_select(2, idx)  # (N, 3, 8, S, S)
        return slow.transpose(1, 2).reshape(-1, *slow.shape[1:2], *slow.shape[3:])

    def forward_slot(self, x: "torch.Tensor", slot: int) -> "torch.Tensor":
        return self.forward(x, slot=slot)

    def forward(self, x: "torch.Tensor", slot: int = 0) -> "torch.Tensor":
        return self.model(self.clip_inputs(x, slot)).reshape(len(x), *self.spec.view_shape)

    def call_slots(self, frames: Any) -> "torch.Tensor":
        """(N, num_slots, 8, D) like `Extractor.call_slots`, but CLIP embeds each frame on its own, so every
        frame that some slot's slow pathway uses is embedded once (25 distinct of 48 for N_in 2 and 4)."""
        import torch

        if not self.spec.slow_positions:
            return super().call_slots(frames)
        frames = self._checked(frames)
        union = sorted({p for pos in self.spec.slow_positions for p in pos})
        column = {p: i for i, p in enumerate(union)}
        with torch.inference_mode(), self._autocast():
            x = self.preprocess(frames.to(self.device, non_blocking=True))  # (N, 3, T, S, S)
            sel = x.index_select(2, torch.tensor(union, device=x.device)).transpose(1, 2)  # (N, U, 3, S, S)
            emb = self.model(sel.reshape(-1, *sel.shape[2:])).float().reshape(len(x), len(union), -1)
            out = torch.stack([emb[:, [column[p] for p in pos]] for pos in self.spec.slow_positions], 1)
        return out.cpu().reshape(len(frames), self.spec.num_slots, *self.spec.view_shape)


def _load_open_clip(name: str, arch: str, tag: str, *, weights: str, crop_size: int | None) -> tuple[Any, str, str, bool]:
    """open_clip model `arch` with `weights` (random | default = the tag's download | PATH); returns
    (model, source, sha256, quick_gelu)."""
    import open_clip

    pretrained_cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    quick_gelu = bool(pretrained_cfg.get("quick_gelu", False))
    extra = {"force_image_size": crop_size} if crop_size else {}
    if weights == "random":
        model = seeded_build(lambda: open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu, **extra))
        source, sha = "random", ""
    elif weights == "default":
        try:
            path = open_clip.pretrained.download_pretrained(pretrained_cfg)
        except Exception as err:
            raise RuntimeError(f"{name}: cannot fetch open_clip weights {arch}/{tag} ({type(err).__name__}: {err}); "
                               "offline? pass weights=PATH to a local copy, or weights=random for tests") from None
        if not path:
            raise RuntimeError(f"{name}: open_clip has no download for {arch}/{tag}")
        model = open_clip.create_model(arch, pretrained=tag, force_quick_gelu=quick_gelu, **extra)
        source, sha = f"open_clip:{arch}/{tag}", file_sha256(path)
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: weights file {path} not found")
        model = open_clip.create_model(arch, pretrained=str(path), force_quick_gelu=quick_gelu, **extra)
        source, sha = str(path.resolve()), file_sha256(path)
    return model, source, sha, quick_gelu


def resolve_clip_name(name: str) -> tuple[str, str]:
    """`clip_vit_b32.openai` -> ("ViT-B-32", "openai"): the open_clip architecture matching after dropping
    case, '-' and '_'. Raises ValueError listing close matches, or the tags open_clip knows for the arch."""
    import open_clip

    m = re.fullmatch(r"clip_([A-Za-z0-9_\-]+)\.([A-Za-z0-9_\-]+)", name)
    if not m:
        raise ValueError(f"bad CLIP extractor name {name!r}; expected clip_<open_clip arch>.<pretrained tag>")
    squash = lambda s: re.sub(r"[-_]", "", s).lower()  # noqa: E731
    archs = {squash(a): a for a in open_clip.list_models()}
    arch = archs.get(squash(m.group(1)))
    if arch is None:
        near = [a for k, a in archs.items() if k.startswith(squash(m.group(1))[:4])][:10]
        raise ValueError(f"unknown open_clip architecture {m.group(1)!r} in {name!r}; e.g. {near or open_clip.list_models()[:10]}")
    tag = m.group(2)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        raise ValueError(f"open_clip has no pretrained tag {tag!r} for {arch}; available: {tags}")
    return arch, tag



def _check_row(row: ExtractorEntry, found: ExtractorEntry, crop_size: int | None) -> None:
    """The table's CLIP row must say what open_clip builds (the crop only at the default crop)."""
    fields = ["arch", "interpolation", "mean", "std", "view_shape"] + ([] if crop_size else ["crop_size", "short_side"])
    wrong = [f"{f} {getattr(row, f)} vs {getattr(found, f)}" for f in fields
             if (tuple(map(float, getattr(row, f))) if f in ("mean", "std") else getattr(row, f))
             != (tuple(map(float, getattr(found, f))) if f in ("mean", "std") else getattr(found, f))]
    if wrong:
        raise ValueError(f"{row.name}: extract/extractors/table.py disagrees with open_clip: {'; '.join(wrong)}")
