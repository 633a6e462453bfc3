"""The extractor base classes: a frozen model plus its preprocessing, uint8 windows in, float32 features out.

Preprocessing is batched tensor ops on the model's device. Video models: /255, Normalize(mean, std),
ShortSideScale(short_side, bilinear), CenterCrop(crop), in that order (the reference val/test transform,
ego4d_lta.md §2.3; within 1e-6 of the reference loader, tests/test_e2e_extract.py). precision: fp32 (default,
the reference) or bf16 autocast on the device.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Callable

from extract.extractors.table import RANDOM_SEED, SLOW_PATHWAYS, VIDEO_CROP, VIDEO_SHORT_SIDE, ExtractorSpec

if TYPE_CHECKING:
    import torch


def seeded_build(fn: Callable[[], Any]) -> Any:
    """Build with a fixed seed without touching the caller's RNG state (same random net in every process)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return fn()


def scaled_short_side(crop_size: int, short_side: int = VIDEO_SHORT_SIDE, default_crop: int = VIDEO_CROP) -> int:
    """The short side to scale to for `crop_size`: `short_side` at the default crop, else scaled with the crop."""
    return short_side if crop_size == default_crop else int(round(crop_size * short_side / default_crop))


def center_crop(x: "torch.Tensor", size: int) -> "torch.Tensor":
    """Center crop of the last two dims, offsets `int(round((h - size) / 2))` as torchvision."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot center-crop {size} from {h}x{w}")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top:top + size, left:left + size]


class Extractor:
    """A frozen model plus its preprocessing: `__call__(uint8 (N, T, H, W, 3)) -> float32 (N, *view_shape)` on CPU."""

    def __init__(self, spec: ExtractorSpec, model: "torch.nn.Module", device: str) -> None:
        import torch

        self.spec = spec
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.precision = "fp32"  # "bf16": autocast on the device (create_extractor sets it)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.name!r}, weights={self.spec.weights!r}, device={self.device})"

    def configure_sampling(self, num_input_clips: Any = 1, *, slow_pathway: str = "per_slot",
                           linspace: str = "torch19") -> None:
        """Record the reference LTA loader settings the features reproduce (they enter the cache key).

        `num_input_clips`: an int or a list of N_in values, all >= 2 or just 1 (N_in >= 2 adds the
        64-frame step, extract/decode.py). Only slot-dependent models (SlowFast) store one variant per
        (N_in, slot); the others store one.
        """
        from extract.decode import LINSPACE_MODES

        ns = sorted({int(n) for n in (num_input_clips if isinstance(num_input_clips, (list, tuple)) else [num_input_clips])})
        if not ns or ns[0] < 1 or (ns[0] == 1 and len(ns) > 1):
            raise ValueError(f"num_input_clips={num_input_clips}: give N_in values >= 2, or just 1 (N_in=1 has no "
                             "64-frame step, so its frames differ; extract it into a store of its own)")
        if linspace not in LINSPACE_MODES:
            raise ValueError(f"linspace must be one of {list(LINSPACE_MODES)}, got {linspace!r}")
        if slow_pathway not in SLOW_PATHWAYS:
            raise ValueError(f"slow_pathway must be one of {list(SLOW_PATHWAYS)}, got {slow_pathway!r}")
        self.spec = dataclasses.replace(self.spec, num_input_clips=tuple(ns), linspace=linspace,
                                        **self._slot_fields(tuple(ns), slow_pathway, linspace))

    def _slot_fields(self, ns: tuple[int, ...], slow_pathway: str, linspace: str) -> dict:
        """Spec fields `slow_pathway`, `slots`, `slow_positions` (models without a slot dependence: none)."""
        return {}

    def preprocess(self, frames: "torch.Tensor") -> Any:
        raise NotImplementedError

    def forward(self, inputs: Any) -> "torch.Tensor":
        raise NotImplementedError

    def forward_slot(self, inputs: Any, slot: int) -> "torch.Tensor":
        """The model on `inputs` for stored slot variant `slot` (spec.slots); slot-independent models ignore it."""
        return self.forward(inputs)

    def _checked(self, frames: Any) -> "torch.Tensor":
        import torch

        frames = torch.as_tensor(frames)
        if frames.dtype != torch.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"{self.spec.name}: expected uint8 frames (N, T, H, W, 3), got {tuple(frames.shape)} {frames.dtype}")
        if frames.shape[1] != self.spec.num_frames:
            raise ValueError(f"{self.spec.name}: expected {self.spec.num_frames} frames per window, got {frames.shape[1]}")
        return frames

    def _autocast(self) -> Any:
        import torch

        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def __call__(self, frames: Any, *, slot: int = 0) -> "torch.Tensor":
        """float32 (N, *view_shape) on the CPU for slot variant `slot` (0: the only one of slot-independent models)."""
        import torch

        frames = self._checked(frames)
        with torch.inference_mode(), self._autocast():
            out = self.forward_slot(self.preprocess(frames.to(self.device, non_blocking=True)), slot)
        return out.float().cpu().reshape(len(frames), *self.spec.view_shape)

    def call_slots(self, frames: Any) -> "torch.Tensor":
        """float32 (N, num_slots, *view_shape): every stored slot variant, preprocessing the frames once."""
        import torch

        frames = self._checked(frames)
        with torch.inference_mode(), self._autocast():
            x = self.preprocess(frames.to(self.device, non_blocking=True))
            outs = [self.forward_slot(x, j).float().cpu() for j in range(self.spec.num_slots)]
        return torch.stack(outs, 1).reshape(len(frames), self.spec.num_slots, *self.spec.view_shape)


class VideoExtractor(Extractor):
    """Reference val/test transform for the video backbones, as batched tensor ops."""

    def preprocess(self, frames: "torch.Tensor") -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        s = self.spec
        n, t, h, w, _ = frames.shape
        x = frames.permute(0, 1, 4, 2, 3).reshape(n * t, 3, h, w).float()  # (N*T, 3, H, W)
        # the reference order: /255, Normalize (torchvision: sub mean, div std), then scale and crop. In place: the
        # same float32 operations, bit for bit, without three full-resolution temporaries (2.5x faster on the CPU:
        # 0.16 -> 0.064 s for 32 frames at 320x427, bench/preprocess.py)
        mean = torch.tensor(s.mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(s.std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
        x.div_(255.0).sub_(mean).div_(std)
        # pytorchvideo short_side_scale: floor of the long side, bilinear, align_corners=False
        new_h, new_w = (int(math.floor(h / w * s.short_side)), s.short_side) if w < h else (s.short_side, int(math.floor(w / h * s.short_side)))
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
        x = center_crop(x, s.crop_size)
        return x.reshape(n, t, 3, s.crop_size, s.crop_size).transpose(1, 2).contiguous()  # (N, 3, T, S, S)
