"""Extractor registry: uint8 video windows in, embeddings out (SlowFast, MViT, CLIP).

    create_extractor("slowfast_r101_8x8.ego4d", weights="ego4d_slowfast8x8.ckpt", device="cuda")
    ext(frames)   # frames uint8 (N, T, H, W, 3) -> float32 (N, *ext.spec.view_shape)

Names follow `arch.pretrain`. `list_extractors()` lists the registered ones; any `clip_<arch>.<tag>`
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
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from extract.weights import KINETICS_URLS, fetch_url, load_kinetics_state_dict, load_state_dict_strictly
from features.devices import check_device
from features.files import file_sha256

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

VIDEO_MEAN, VIDEO_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
RANDOM_SEED = 0
PRECISIONS = ("fp32", "bf16")
SLOW_PATHWAYS = ("per_slot", "slot_independent")


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


_REGISTRY: dict[str, Callable[..., "Extractor"]] = {}


def register_extractor(name: str) -> Callable[[Callable[..., "Extractor"]], Callable[..., "Extractor"]]:
    """Decorator: register a builder `fn(*, weights, device, crop_size) -> Extractor` under `name`."""

    def wrap(fn: Callable[..., "Extractor"]) -> Callable[..., "Extractor"]:
        if name in _REGISTRY:
            raise ValueError(f"extractor {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_extractors() -> list[str]:
    """Registered names (any `clip_<open_clip arch>.<tag>` works too)."""
    return sorted(_REGISTRY)


def create_extractor(name: str, *, weights: str = "default", device: str = "cpu", crop_size: int | None = None,
                     num_input_clips: Any = 1, slow_pathway: str = "per_slot", linspace: str = "torch19",
                     precision: str = "fp32") -> "Extractor":
    """Build extractor `name` on `device` (heavy imports happen here).

    Args:
        weights: "default" (the name's pretrain source), "random", a checkpoint path, or a
            `lta finetune-backbone` run dir (or its backbone.pt) for `<video arch>.<run name>`.
        crop_size: override of the spec's crop (CPU-sized runs); short side scales with it. A
            fine-tuned run fixes its own crop, so only None or that crop is accepted there.
        num_input_clips, slow_pathway, linspace: test-time sampling (`Extractor.configure_sampling`).
        precision: "fp32" (the reference) | "bf16" (autocast on the device; about 1e-3 relative error).

    Raises:
        ValueError: unknown name (lists the available ones) or weights the name cannot use
            (e.g. a fine-tuned MViT run for a SlowFast name).
        FileNotFoundError: a weights path that does not exist.
        RuntimeError: device "cuda" without a GPU; default weights that cannot be downloaded.
        features.checkpoint_io.UnsafeCheckpointError: a checkpoint whose pickle would run code.
    """
    from extract.finetune.model import is_finetuned_run

    if weights not in ("default", "random") and is_finetuned_run(weights):
        builder = lambda **kw: build_finetuned(name, **kw)  # noqa: E731
    elif name in _REGISTRY:
        builder = _REGISTRY[name]
    elif name.startswith("clip_") and "." in name:
        builder = lambda **kw: ClipExtractor.build(name, **kw)  # noqa: E731
    else:
        raise ValueError(f"unknown extractor {name!r}; available: {list_extractors()}, clip_<open_clip arch>.<tag>, "
                         f"or <{'|'.join(FINETUNE_ARCHS)}>.<run name> with weights=RUN_DIR of `lta finetune-backbone`")
    check_device("device", device, allow_auto=False)  # never a silent fall-back to the CPU
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    ext = builder(weights=weights, device=device, crop_size=crop_size)
    ext.precision = precision
    ext.configure_sampling(num_input_clips, slow_pathway=slow_pathway, linspace=linspace)
    return ext


def _seeded_build(fn: Callable[[], Any]) -> Any:
    """Build with a fixed seed without touching the caller's RNG state (same random net in every process)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return fn()


def _scaled_short_side(short_side: int, crop_size: int, default_crop: int) -> int:
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
        # the reference order: /255, Normalize (torchvision: sub mean, div std), then scale and crop
        mean = torch.tensor(s.mean, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(s.std, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
        x = (x / 255.0 - mean) / std
        # pytorchvideo short_side_scale: floor of the long side, bilinear, align_corners=False
        new_h, new_w = (int(math.floor(h / w * s.short_side)), s.short_side) if w < h else (s.short_side, int(math.floor(w / h * s.short_side)))
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
        x = center_crop(x, s.crop_size)
        return x.reshape(n, t, 3, s.crop_size, s.crop_size).transpose(1, 2).contiguous()  # (N, 3, T, S, S)


class SlowFastExtractor(VideoExtractor):
    """Pooled slow+fast features before the head (2304-d for R50/R101), slow pathway = T/alpha frames."""

    ALPHA = 4
    TAPPED_LAYER = "blocks.5 PoolConcatPathway (slow, fast)"

    @classmethod
    def build(cls, name: str, *, depth: int, weights: str, device: str, crop_size: int | None) -> "SlowFastExtractor":
        from extract import backbones

        pretrain = name.split(".", 1)[1]
        crop = crop_size or 224
        kwargs = dict(depth=depth, fusion_kernel_size=7 if depth == 50 else 5, num_frames=32, crop_size=crop)
        model = _seeded_build(lambda: backbones.build_slowfast(**kwargs))
        source, sha = _load_video_weights(model, name, pretrain, weights,
                                          url=KINETICS_URLS[f"slowfast_r{depth}_8x8"], arch="slowfast")
        spec = ExtractorSpec(
            name=name, arch=f"slowfast_r{depth}", num_frames=32, window_frames=32, sampling_rate=2,
            short_side=_scaled_short_side(256, crop, 224), crop_size=crop, interpolation="bilinear",
            mean=VIDEO_MEAN, std=VIDEO_STD, view_shape=(2304,), tapped_layer=cls.TAPPED_LAYER,
            weights=source, weights_sha256=sha, arch_kwargs=tuple(sorted(kwargs.items())),
        )
        return cls(spec, model, device)

    def _slot_fields(self, ns: tuple[int, ...], slow_pathway: str, linspace: str) -> dict:
        """per_slot: one variant per (N_in, j), slow frames as the LTA loader folds them; slot_independent:
        one variant with the recognition loader's slow frames linspace(0, T-1, T/alpha)."""
        from extract.decode import slow_positions

        t = self.spec.num_frames
        if slow_pathway == "slot_independent":
            return {"slow_pathway": slow_pathway, "slots": (),
                    "slow_positions": (tuple(slow_positions(t, 1, alpha=self.ALPHA, linspace=linspace)[0].tolist()),)}
        slots = tuple((n, j) for n in ns for j in range(n))
        pos = tuple(tuple(p.tolist()) for n in ns for p in slow_positions(t, n, alpha=self.ALPHA, linspace=linspace))
        return {"slow_pathway": slow_pathway, "slots": slots, "slow_positions": pos}

    def forward_slot(self, x: "torch.Tensor", slot: int) -> "torch.Tensor":
        return self.forward(x, slot=slot)

    def forward(self, x: "torch.Tensor", slot: int = 0) -> "torch.Tensor":
        """x (N, 3, T, S, S) fast pathway; the slow pathway takes spec.slow_positions[slot] of its frames."""
        import torch

        if self.spec.slow_positions:
            slow_idx = torch.tensor(self.spec.slow_positions[slot], device=x.device)
        else:  # not configured: the recognition rule
            t = x.shape[2]
            slow_idx = torch.linspace(0, t - 1, t // self.ALPHA, device=x.device).long()
        return self.model([x.index_select(2, slow_idx), x])  # fresh list every call


def _build_from_own_checkpoint(name: str, weights: str, *, arch: str, label: str, example: str) -> tuple:
    """(path, checkpoint, model, info) of the backbone a released Ego4D Lightning checkpoint describes in its own
    config (`slowfast_ckpt.ego4d`, `mvit_ckpt.ego4d`): weights=PATH is required and must be a MODEL.ARCH=`arch` one."""
    from extract import backbones
    from features.checkpoint_io import cfg_get, load_lightning_checkpoint

    what = label.split(" ", 1)[1]
    if weights in ("default", "random"):
        raise ValueError(f"{name}: builds the {what} of a released Ego4D checkpoint from its own config; pass "
                         f"weights=PATH to it (e.g. {example}), not weights={weights}")
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: weights file {path} not found")
    ckpt = load_lightning_checkpoint(path)
    found = str(cfg_get(ckpt.cfg, "MODEL.ARCH", "")).lower()
    if found != arch:
        raise ValueError(f"{name}: {path} is a MODEL.ARCH={found!r} checkpoint, not {label} one")
    model, info = backbones.build_from_checkpoint(ckpt)
    return path, ckpt, model, info


class CheckpointSlowFastExtractor(SlowFastExtractor):
    """The SlowFast trunk a released Ego4D Lightning checkpoint describes in its own config (any depth and width),
    with that checkpoint's weights: `slowfast_ckpt.ego4d` + `weights=PATH/lta_slowfast_trf.ckpt` (or a
    recognition checkpoint). An LTA checkpoint carries the backbone whose batch-norm statistics its head was
    trained with (the reference keeps the frozen backbone in train mode), so its released heads need these
    features; `slowfast_r101_8x8.ego4d` with the same weights= builds the fixed R101 and gives the same values
    for the released R101 checkpoints.
    """

    @classmethod
    def build(cls, name: str, *, weights: str, device: str, crop_size: int | None) -> "CheckpointSlowFastExtractor":
        from features.checkpoint_io import cfg_get

        path, ckpt, model, info = _build_from_own_checkpoint(name, weights, arch="slowfast", label="a SlowFast",
                                                             example="lta_slowfast_trf.ckpt")
        kw = info.builder_kwargs
        if crop_size is not None and crop_size != kw["crop_size"]:
            raise ValueError(f"{name}: crop_size={crop_size}, but {path.name} was built for crop {kw['crop_size']} "
                             "(its DATA.TRAIN_CROP_SIZE); leave the crop override unset")
        if kw["alpha"] != cls.ALPHA:
            raise ValueError(f"{name}: {path.name} has SLOWFAST.ALPHA={kw['alpha']}, the extractor packs alpha={cls.ALPHA}")
        frames, rate = int(cfg_get(ckpt.cfg, "DATA.NUM_FRAMES", 32)), int(cfg_get(ckpt.cfg, "DATA.SAMPLING_RATE", 2))
        crop = int(kw["crop_size"])
        spec = ExtractorSpec(
            name=name, arch=f"slowfast_r{kw['depth']}", num_frames=frames, window_frames=frames, sampling_rate=rate,
            short_side=_scaled_short_side(256, crop, 224), crop_size=crop, interpolation="bilinear",
            mean=tuple(float(v) for v in cfg_get(ckpt.cfg, "DATA.MEAN", VIDEO_MEAN)),
            std=tuple(float(v) for v in cfg_get(ckpt.cfg, "DATA.STD", VIDEO_STD)), view_shape=(info.feature_dim,),
            tapped_layer=cls.TAPPED_LAYER, weights=str(path.resolve()), weights_sha256=file_sha256(path),
            target_fps=float(cfg_get(ckpt.cfg, "DATA.TARGET_FPS", 30)),
            arch_kwargs=tuple(sorted((k, json.dumps(v)) for k, v in kw.items())),
        )
        return cls(spec, model, device)


class MViTExtractor(VideoExtractor):
    """MViT-B 16x4: the 768-d class token after the final norm."""

    TAPPED_LAYER = "cls token after final norm"

    @classmethod
    def build(cls, name: str, *, weights: str, device: str, crop_size: int | None) -> "MViTExtractor":
        from extract import backbones

        pretrain = name.split(".", 1)[1]
        crop = crop_size or 224
        kwargs = dict(spatial_size=crop, temporal_size=16)
        model = _seeded_build(lambda: backbones.build_mvit(**kwargs))
        source, sha = _load_video_weights(model, name, pretrain, weights, url=KINETICS_URLS["mvit_b_16x4"], arch="mvit")
        spec = ExtractorSpec(
            name=name, arch="mvit_b_16x4", num_frames=16, window_frames=16, sampling_rate=4,
            short_side=_scaled_short_side(256, crop, 224), crop_size=crop, interpolation="bilinear",
            mean=VIDEO_MEAN, std=VIDEO_STD, view_shape=(768,), tapped_layer=cls.TAPPED_LAYER,
            weights=source, weights_sha256=sha, arch_kwargs=tuple(sorted(kwargs.items())),
        )
        return cls(spec, model, device)

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.model(x)


class CheckpointMViTExtractor(MViTExtractor):
    """The MViT a released Ego4D Lightning checkpoint describes in its own config (any width and depth), with its
    weights: `mvit_ckpt.ego4d` + `weights=PATH/ego4d_mvit16x4.ckpt` (the MViT twin of `slowfast_ckpt.ego4d`)."""

    @classmethod
    def build(cls, name: str, *, weights: str, device: str, crop_size: int | None) -> "CheckpointMViTExtractor":
        from features.checkpoint_io import cfg_get

        path, ckpt, model, info = _build_from_own_checkpoint(name, weights, arch="mvit", label="an MViT",
                                                             example="ego4d_mvit16x4.ckpt")
        kw = info.builder_kwargs
        crop = int(kw["spatial_size"])
        if crop_size is not None and crop_size != crop:
            raise ValueError(f"{name}: crop_size={crop_size}, but {path.name} was built for crop {crop} "
                             "(its DATA.TRAIN_CROP_SIZE); leave the crop override unset")
        frames, rate = int(cfg_get(ckpt.cfg, "DATA.NUM_FRAMES", 16)), int(cfg_get(ckpt.cfg, "DATA.SAMPLING_RATE", 4))
        spec = ExtractorSpec(
            name=name, arch="mvit", num_frames=frames, window_frames=frames, sampling_rate=rate,
            short_side=_scaled_short_side(256, crop, 224), crop_size=crop, interpolation="bilinear",
            mean=tuple(float(v) for v in cfg_get(ckpt.cfg, "DATA.MEAN", VIDEO_MEAN)),
            std=tuple(float(v) for v in cfg_get(ckpt.cfg, "DATA.STD", VIDEO_STD)), view_shape=(info.feature_dim,),
            tapped_layer=cls.TAPPED_LAYER, weights=str(path.resolve()), weights_sha256=file_sha256(path),
            target_fps=float(cfg_get(ckpt.cfg, "DATA.TARGET_FPS", 30)),
            arch_kwargs=tuple(sorted((k, json.dumps(v)) for k, v in kw.items())),
        )
        return cls(spec, model, device)


def _load_video_weights(model: Any, name: str, pretrain: str, weights: str, *, url: str, arch: str) -> tuple[str, str]:
    """Load `weights` into a video backbone; returns (source, sha256)."""
    from extract import backbones

    if weights == "random":
        return "random", ""
    if weights == "default":
        if pretrain == "ego4d":
            raise ValueError(f"{name}: no download for Ego4D weights; pass weights=PATH to the released Lightning "
                             f"checkpoint (e.g. ego4d_{'slowfast8x8' if arch == 'slowfast' else 'mvit16x4'}.ckpt)")
        path = fetch_url(url)
        source = url
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: weights file {path} not found")
        source = str(path.resolve())
    if pretrain == "ego4d":
        backbones.load_backbone_checkpoint(model, path, arch)
    else:  # pytorchvideo checkpoint: {"model_state": ...} in pytorchvideo naming; drop the classifier
        state = load_kinetics_state_dict(path)
        head = ("blocks.6.",) if arch == "slowfast" else ("head.",)
        own_head = [k for k in model.state_dict() if k.startswith(head)]
        state = {k: v for k, v in state.items() if not k.startswith(head) or k in own_head}
        load_state_dict_strictly(model, state, source=str(path))
    return source, file_sha256(path)


# -- fine-tuned backbones (`lta finetune-backbone` run dirs) ----------------------------------------------
# registry-style arch name (BackboneSpec.name) -> (extractor class, ExtractorSpec.arch)
FINETUNE_ARCHS: dict[str, tuple[type[VideoExtractor], str]] = {
    "slowfast_r50_8x8": (SlowFastExtractor, "slowfast_r50"),
    "slowfast_r101_8x8": (SlowFastExtractor, "slowfast_r101"),
    "mvit_b_16x4": (MViTExtractor, "mvit_b_16x4"),
}
RESERVED_PRETRAIN_TAGS = ("kinetics", "ego4d")  # they name released weights, never a fine-tuned run


def build_finetuned(name: str, *, weights: str, device: str, crop_size: int | None) -> VideoExtractor:
    """Extractor `<arch>.<run name>` around the fine-tuned backbone of run dir (or backbone.pt) `weights`.

    Sampling, crop, short side, mean/std, feature dim and builder kwargs come from the run's
    backbone.json; the weights load strictly; the spec records backbone.pt's path and sha256.

    Raises:
        ValueError: a name whose arch differs from the run's (`slowfast_r101_8x8.x` for an MViT run),
            a reserved or malformed tag, or a crop override that differs from the run's crop.
    """
    from extract.finetune.model import load_finetuned_backbone, resolve_run

    path, bspec = resolve_run(weights)
    arch, _, tag = name.partition(".")
    if arch not in FINETUNE_ARCHS:
        raise ValueError(f"extractor {name!r} cannot load weights={weights}: that is a fine-tuned {bspec.name} run "
                         f"({path.with_name('backbone.json')}); name its features {bspec.name}.<run name>")
    if arch != bspec.name:
        raise ValueError(f"extractor {name!r} is a {arch} but weights={weights} is a fine-tuned {bspec.name} run "
                         f"({path.with_name('backbone.json')}); use extractors=[{bspec.name}.{tag or '<run name>'}]")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", tag) or tag in RESERVED_PRETRAIN_TAGS:
        why = f"'.{tag}' names released weights" if tag in RESERVED_PRETRAIN_TAGS else "the tag must be [A-Za-z0-9_-]+"
        raise ValueError(f"extractor {name!r} for the fine-tuned run {weights}: {why}; name it "
                         f"{arch}.<run name>, e.g. {arch}.{re.sub(r'[^A-Za-z0-9_-]', '_', path.resolve().parent.name)}")
    if crop_size is not None and crop_size != bspec.crop_size:
        raise ValueError(f"{name}: crop_size={crop_size}, but the fine-tuned run {weights} was trained at crop "
                         f"{bspec.crop_size} (backbone.json); leave the crop override unset for it")
    cls, spec_arch = FINETUNE_ARCHS[arch]
    if bspec.arch == "slowfast" and bspec.alpha != SlowFastExtractor.ALPHA:
        raise ValueError(f"{path.with_name('backbone.json')}: alpha={bspec.alpha}, the extractor packs alpha={SlowFastExtractor.ALPHA}")
    model, _ = load_finetuned_backbone(path)
    spec = ExtractorSpec(
        name=name, arch=spec_arch, num_frames=bspec.num_frames, window_frames=bspec.num_frames,
        sampling_rate=bspec.sampling_rate, short_side=bspec.short_side, crop_size=bspec.crop_size,
        interpolation="bilinear", mean=tuple(bspec.mean), std=tuple(bspec.std), view_shape=(bspec.feature_dim,),
        tapped_layer=cls.TAPPED_LAYER, weights=str(path.resolve()), weights_sha256=file_sha256(path),
        target_fps=bspec.target_fps, arch_kwargs=tuple(sorted(bspec.builder_kwargs.items())),
    )
    return cls(spec, model, device)


class ClipExtractor(Extractor):
    """open_clip image tower, one embedding per frame: (N, F, D) (not L2-normalised)."""

    @classmethod
    def build(cls, name: str, *, weights: str, device: str, crop_size: int | None, num_frames: int = 8) -> "ClipExtractor":
        arch, tag = resolve_clip_name(name)
        model, source, sha, quick_gelu = _load_open_clip(name, arch, tag, weights=weights, crop_size=crop_size)
        cfg = model.visual.preprocess_cfg
        size = int(cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else cfg["size"])
        if cfg.get("resize_mode", "shortest") != "shortest":
            raise ValueError(f"{name}: open_clip resize_mode {cfg['resize_mode']!r} is not reproduced (only 'shortest')")
        dim = int(model.visual.output_dim)
        spec = ExtractorSpec(
            name=name, arch=arch, num_frames=num_frames, window_frames=32, sampling_rate=2, short_side=size,
            crop_size=size, interpolation=str(cfg.get("interpolation", "bicubic")), mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]), view_shape=(num_frames, dim), tapped_layer="encode_image (after projection)",
            weights=source, weights_sha256=sha, arch_kwargs=(("force_quick_gelu", quick_gelu), ("tag", tag)),
        )
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
    def build(cls, name: str, *, arch_name: str, weights: str, device: str, crop_size: int | None) -> "DasRyooClipExtractor":
        arch, tag = resolve_clip_name(arch_name)
        crop = crop_size or 224
        model, source, sha, quick_gelu = _load_open_clip(name, arch, tag, weights=weights,
                                                         crop_size=crop if crop != 224 else None)
        num_slow = 32 // cls.ALPHA
        spec = ExtractorSpec(
            name=name, arch=arch, num_frames=32, window_frames=32, sampling_rate=2,
            short_side=_scaled_short_side(256, crop, 224), crop_size=crop, interpolation="bilinear",
            mean=VIDEO_MEAN, std=VIDEO_STD, view_shape=(num_slow, int(model.visual.output_dim)),
            tapped_layer="encode_image (after projection) of the slow-pathway frames",
            weights=source, weights_sha256=sha, arch_kwargs=(("force_quick_gelu", quick_gelu), ("tag", tag)),
        )
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
        model = _seeded_build(lambda: open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu, **extra))
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


# -- the registry --------------------------------------------------------------------------------------
@register_extractor("slowfast_r50_8x8.kinetics")
def slowfast_r50_8x8_kinetics(**kw: Any) -> Extractor:
    return SlowFastExtractor.build("slowfast_r50_8x8.kinetics", depth=50, **kw)


@register_extractor("slowfast_r101_8x8.kinetics")
def slowfast_r101_8x8_kinetics(**kw: Any) -> Extractor:
    return SlowFastExtractor.build("slowfast_r101_8x8.kinetics", depth=101, **kw)


@register_extractor("slowfast_r101_8x8.ego4d")
def slowfast_r101_8x8_ego4d(**kw: Any) -> Extractor:
    return SlowFastExtractor.build("slowfast_r101_8x8.ego4d", depth=101, **kw)


@register_extractor("slowfast_ckpt.ego4d")
def slowfast_ckpt_ego4d(**kw: Any) -> Extractor:
    return CheckpointSlowFastExtractor.build("slowfast_ckpt.ego4d", **kw)


@register_extractor("mvit_ckpt.ego4d")
def mvit_ckpt_ego4d(**kw: Any) -> Extractor:
    return CheckpointMViTExtractor.build("mvit_ckpt.ego4d", **kw)


@register_extractor("mvit_b_16x4.kinetics")
def mvit_b_16x4_kinetics(**kw: Any) -> Extractor:
    return MViTExtractor.build("mvit_b_16x4.kinetics", **kw)


@register_extractor("mvit_b_16x4.ego4d")
def mvit_b_16x4_ego4d(**kw: Any) -> Extractor:
    return MViTExtractor.build("mvit_b_16x4.ego4d", **kw)


@register_extractor("clip_vit_b32.openai")
def clip_vit_b32_openai(**kw: Any) -> Extractor:
    return ClipExtractor.build("clip_vit_b32.openai", **kw)


@register_extractor("clip_vit_b16.openai")
def clip_vit_b16_openai(**kw: Any) -> Extractor:
    return ClipExtractor.build("clip_vit_b16.openai", **kw)


@register_extractor("clip_vit_b32_dasryoo.openai")
def clip_vit_b32_dasryoo_openai(**kw: Any) -> Extractor:
    """OpenAI ViT-B/32 (the model Das & Ryoo load) on their inputs; `clip_vit_b32.openai` is open_clip's preprocessing."""
    return DasRyooClipExtractor.build("clip_vit_b32_dasryoo.openai", arch_name="clip_vit_b32.openai", **kw)


@register_extractor("clip_vit_l14.openai")
def clip_vit_l14_openai(**kw: Any) -> Extractor:
    return ClipExtractor.build("clip_vit_l14.openai", **kw)
