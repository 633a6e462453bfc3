"""Video backbones as extractors: SlowFast and MViT (table rows, released checkpoints, fine-tuned runs).

The registered rows' sampling, crop, mean/std, output size and default weights come from the table
(extract/extractors/table.py); `*_ckpt.ego4d` take all of it from the checkpoint's own config, and a
`lta finetune-backbone` run from its backbone.json.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from extract.extractors.base import VideoExtractor, scaled_short_side, seeded_build
from extract.extractors.table import VIDEO_MEAN, VIDEO_STD, ExtractorEntry, ExtractorSpec
from extract.weights import load_kinetics_state_dict, load_state_dict_strictly
from features.files import file_sha256

if TYPE_CHECKING:
    import torch


def entry_spec(entry: ExtractorEntry, *, crop: int, tapped_layer: str, weights: str, weights_sha256: str,
               arch_kwargs: dict) -> ExtractorSpec:
    """The spec of a table row built at `crop` (its short side scaled with the crop) with the given weights."""
    return ExtractorSpec(
        name=entry.name, arch=entry.arch, num_frames=entry.num_frames, window_frames=entry.window_frames,
        sampling_rate=entry.sampling_rate, short_side=scaled_short_side(crop, entry.short_side, entry.crop_size),
        crop_size=crop, interpolation=entry.interpolation, mean=entry.mean, std=entry.std, view_shape=entry.view_shape,
        tapped_layer=tapped_layer, weights=weights, weights_sha256=weights_sha256,
        arch_kwargs=tuple(sorted(arch_kwargs.items())))


class SlowFastExtractor(VideoExtractor):
    """Pooled slow+fast features before the head (2304-d for R50/R101), slow pathway = T/alpha frames."""

    ALPHA = 4
    TAPPED_LAYER = "blocks.5 PoolConcatPathway (slow, fast)"

    @classmethod
    def build(cls, entry: ExtractorEntry, *, depth: int, weights: str, device: str, crop_size: int | None) -> "SlowFastExtractor":
        from extract import backbones

        crop = crop_size or entry.crop_size
        kwargs = dict(depth=depth, fusion_kernel_size=7 if depth == 50 else 5, num_frames=entry.num_frames, crop_size=crop)
        model = seeded_build(lambda: backbones.build_slowfast(**kwargs))
        source, sha = _load_video_weights(model, entry, weights, arch="slowfast")
        spec = entry_spec(entry, crop=crop, tapped_layer=cls.TAPPED_LAYER, weights=source, weights_sha256=sha,
                          arch_kwargs=kwargs)
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


def _checkpoint_spec(name: str, arch: str, path: Path, ckpt: Any, info: Any, *, crop: int, tapped_layer: str,
                     frames: int, rate: int) -> ExtractorSpec:
    """The spec of a backbone built from a released checkpoint's own config (`*_ckpt.ego4d`): frames, sampling
    rate, mean/std and fps from its DATA section (`frames` / `rate`: the defaults when it names none)."""
    from features.checkpoint_io import cfg_get

    frames, rate = int(cfg_get(ckpt.cfg, "DATA.NUM_FRAMES", frames)), int(cfg_get(ckpt.cfg, "DATA.SAMPLING_RATE", rate))
    return ExtractorSpec(
        name=name, arch=arch, num_frames=frames, window_frames=frames, sampling_rate=rate,
        short_side=scaled_short_side(crop), crop_size=crop, interpolation="bilinear",
        mean=tuple(float(v) for v in cfg_get(ckpt.cfg, "DATA.MEAN", VIDEO_MEAN)),
        std=tuple(float(v) for v in cfg_get(ckpt.cfg, "DATA.STD", VIDEO_STD)), view_shape=(info.feature_dim,),
        tapped_layer=tapped_layer, weights=str(path.resolve()), weights_sha256=file_sha256(path),
        target_fps=float(cfg_get(ckpt.cfg, "DATA.TARGET_FPS", 30)),
        arch_kwargs=tuple(sorted((k, json.dumps(v)) for k, v in info.builder_kwargs.items())),
    )


class CheckpointSlowFastExtractor(SlowFastExtractor):
    """The SlowFast trunk a released Ego4D Lightning checkpoint describes in its own config (any depth and width),
    with that checkpoint's weights: `slowfast_ckpt.ego4d` + `weights=PATH/lta_slowfast_trf.ckpt` (or a
    recognition checkpoint). An LTA checkpoint carries the backbone whose batch-norm statistics its head was
    trained with (the reference keeps the frozen backbone in train mode), so its released heads need these
    features; `slowfast_r101_8x8.ego4d` with the same weights= builds the fixed R101 and gives the same values
    for the released R101 checkpoints.
    """

    @classmethod
    def build(cls, entry: ExtractorEntry, *, weights: str, device: str, crop_size: int | None) -> "CheckpointSlowFastExtractor":
        name = entry.name
        path, ckpt, model, info = _build_from_own_checkpoint(name, weights, arch="slowfast", label="a SlowFast",
                                                             example="lta_slowfast_trf.ckpt")
        kw = info.builder_kwargs
        if crop_size is not None and crop_size != kw["crop_size"]:
            raise ValueError(f"{name}: crop_size={crop_size}, but {path.name} was built for crop {kw['crop_size']} "
                             "(its DATA.TRAIN_CROP_SIZE); leave the crop override unset")
        if kw["alpha"] != cls.ALPHA:
            raise ValueError(f"{name}: {path.name} has SLOWFAST.ALPHA={kw['alpha']}, the extractor packs alpha={cls.ALPHA}")
        spec = _checkpoint_spec(name, f"slowfast_r{kw['depth']}", path, ckpt, info, crop=int(kw["crop_size"]),
                                tapped_layer=cls.TAPPED_LAYER, frames=32, rate=2)
        return cls(spec, model, device)


class MViTExtractor(VideoExtractor):
    """MViT-B 16x4: the 768-d class token after the final norm."""

    TAPPED_LAYER = "cls token after final norm"

    @classmethod
    def build(cls, entry: ExtractorEntry, *, weights: str, device: str, crop_size: int | None) -> "MViTExtractor":
        from extract import backbones

        crop = crop_size or entry.crop_size
        kwargs = dict(spatial_size=crop, temporal_size=entry.num_frames)
        model = seeded_build(lambda: backbones.build_mvit(**kwargs))
        source, sha = _load_video_weights(model, entry, weights, arch="mvit")
        spec = entry_spec(entry, crop=crop, tapped_layer=cls.TAPPED_LAYER, weights=source, weights_sha256=sha,
                          arch_kwargs=kwargs)
        return cls(spec, model, device)

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.model(x)


class RandomMViTExtractor(MViTExtractor):
    """MViT-B 16x4 with random weights (seed RANDOM_SEED; pytorchvideo's ViT init, trunc_normal(0.02) Linear, as the
    reference MViT._init_weights), frozen: what the reference MViT-Concat trained on, because scripts/run_lta.py:105-158
    loads the recognition checkpoint into the LTA model under keys without `backbone.` with strict=False, so no weight
    is loaded (tests/test_reference_mvit_loading.py)."""

    @classmethod
    def build(cls, entry: ExtractorEntry, *, weights: str, device: str, crop_size: int | None) -> "MViTExtractor":
        if weights not in ("default", "random"):
            raise ValueError(f"{entry.name} is randomly initialised by definition; weights={weights!r} is not accepted "
                             "(use mvit_b_16x4.ego4d or mvit_ckpt.ego4d for checkpoint weights)")
        return super().build(entry, weights="random", device=device, crop_size=crop_size)


class CheckpointMViTExtractor(MViTExtractor):
    """The MViT a released Ego4D Lightning checkpoint describes in its own config (any width and depth), with its
    weights: `mvit_ckpt.ego4d` + `weights=PATH/ego4d_mvit16x4.ckpt` (the MViT twin of `slowfast_ckpt.ego4d`)."""

    @classmethod
    def build(cls, entry: ExtractorEntry, *, weights: str, device: str, crop_size: int | None) -> "CheckpointMViTExtractor":
        name = entry.name
        path, ckpt, model, info = _build_from_own_checkpoint(name, weights, arch="mvit", label="an MViT",
                                                             example="ego4d_mvit16x4.ckpt")
        kw = info.builder_kwargs
        crop = int(kw["spatial_size"])
        if crop_size is not None and crop_size != crop:
            raise ValueError(f"{name}: crop_size={crop_size}, but {path.name} was built for crop {crop} "
                             "(its DATA.TRAIN_CROP_SIZE); leave the crop override unset")
        spec = _checkpoint_spec(name, "mvit", path, ckpt, info, crop=crop, tapped_layer=cls.TAPPED_LAYER,
                                frames=16, rate=4)
        return cls(spec, model, device)


def _load_video_weights(model: Any, entry: ExtractorEntry, weights: str, *, arch: str) -> tuple[str, str]:
    """Load `weights` (random | default = the row's download | PATH) into a video backbone; returns (source, sha256)."""
    from extract import backbones
    from extract.weights import fetch_url

    if weights == "random":
        return "random", ""
    ego4d = entry.name.endswith(".ego4d")
    if weights == "default":
        if entry.needs_weights_path:
            raise ValueError(f"{entry.name}: no download for Ego4D weights; pass {entry.default_weights}, the released "
                             "Lightning checkpoint")
        path = fetch_url(entry.default_weights)
        source = entry.default_weights
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{entry.name}: weights file {path} not found")
        source = str(path.resolve())
    if ego4d:
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
