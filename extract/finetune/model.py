"""Recognition model for backbone fine-tuning: backbone spec, verb/noun heads, optimiser and schedule.

The fine-tuned artefact is the *backbone* (the pooled-feature network that `lta extract` runs), so a
run directory holds it in a loader-friendly form:

    RUN_DIR/backbone.pt     plain torch state_dict of `extract.backbones.build_<arch>(**spec.builder_kwargs)`
    RUN_DIR/backbone.json   the `BackboneSpec` (builder kwargs, sampling, crop, mean/std, feature dim)
    RUN_DIR/heads.pt        the verb / noun Linear layers (for recognition inference; not used by extract)

`load_finetuned_backbone(RUN_DIR or backbone.pt)` rebuilds the exact module and loads it strictly;
`lta extract extractors=[<backbone>.<run name>] weights=RUN_DIR` extracts with it (extract/extractors.py);
weight fetching and strict loading come from extract/weights.py, shared with the extractors.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.files import atomic_path, atomic_write
from features.optim import cosine_warmup_factor, weight_decay_groups  # noqa: F401 - the schedule, re-exported
from extract.weights import KINETICS_URLS, fetch_url, load_kinetics_state_dict, load_state_dict_strictly

if TYPE_CHECKING:
    import torch
    from torch import nn

BACKBONE_FILE = "backbone.pt"
SPEC_FILE = "backbone.json"
HEADS_FILE = "heads.pt"
SPEC_FORMAT = "lta-finetuned-backbone/1"


@dataclass(frozen=True)
class BackboneSpec:
    """Everything that defines a backbone's features: builder + kwargs, frame sampling, crop, normalisation.

    `alpha` is the SlowFast slow/fast frame ratio (0 for single-pathway models). Windows are
    `num_frames * sampling_rate / target_fps` seconds long (2.133 s for both reference backbones).
    """

    name: str  # registry-style arch name, e.g. "slowfast_r101_8x8"
    arch: str  # "slowfast" | "mvit"
    builder_kwargs: dict = field(default_factory=dict)
    feature_dim: int = 2304
    num_frames: int = 32
    sampling_rate: int = 2
    target_fps: float = 30.0
    alpha: int = 4
    crop_size: int = 224
    short_side: int = 256  # val/extract: ShortSideScale(short_side) -> CenterCrop(crop_size)
    train_jitter: tuple[int, int] = (256, 320)  # train: RandomShortSideScale(*train_jitter) -> RandomCrop
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)
    format: str = SPEC_FORMAT

    @property
    def window_sec(self) -> float:
        return self.num_frames * self.sampling_rate / self.target_fps

    def to_json(self) -> dict:
        d = asdict(self)
        d["train_jitter"] = list(self.train_jitter)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "BackboneSpec":
        if d.get("format") != SPEC_FORMAT:
            raise ValueError(f"backbone spec format {d.get('format')!r} is not {SPEC_FORMAT!r}")
        d = dict(d)
        d["train_jitter"] = tuple(d["train_jitter"])
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


# Reference recipe per backbone (../shared/reference/ego4d_lta.md §2.2, §3.1-3.2, §3.6 "Recognition" rows).
RECIPES: dict[str, dict[str, Any]] = {
    "slowfast_r101_8x8": dict(
        spec=BackboneSpec("slowfast_r101_8x8", "slowfast", {"depth": 101}, num_frames=32, sampling_rate=2, alpha=4),
        lr=1e-4, epochs=30, batch_size=64,
    ),
    "slowfast_r50_8x8": dict(
        # fusion kernel 7 as PySlowFast SLOWFAST_8x8_R50 / pytorchvideo hub slowfast_r50 (R101 uses 5)
        spec=BackboneSpec("slowfast_r50_8x8", "slowfast", {"depth": 50, "fusion_kernel_size": 7}, num_frames=32, sampling_rate=2, alpha=4),
        lr=1e-4, epochs=30, batch_size=64,
    ),
    "mvit_b_16x4": dict(
        spec=BackboneSpec("mvit_b_16x4", "mvit", {}, feature_dim=768, num_frames=16, sampling_rate=4, alpha=0),
        lr=1e-2, epochs=40, batch_size=64,
    ),
}


def make_spec(
    backbone: str, *, width_per_group: int | None = None, crop_size: int | None = None, num_frames: int | None = None
) -> BackboneSpec:
    """The reference spec of `backbone`, with the small-config overrides used on the CPU.

    `crop_size` rescales the short-side sizes in proportion (224 -> 256 val, 256..320 train);
    `num_frames` keeps the window length (the sampling rate grows as frames shrink).
    """
    if backbone not in RECIPES:
        raise ValueError(f"unknown backbone {backbone!r}; available: {sorted(RECIPES)}")
    spec: BackboneSpec = RECIPES[backbone]["spec"]
    kwargs = dict(spec.builder_kwargs)
    if crop_size is not None:
        spec = replace(
            spec,
            crop_size=crop_size,
            short_side=round(crop_size * 256 / 224),
            train_jitter=(round(crop_size * 256 / 224), round(crop_size * 320 / 224)),
        )
    if num_frames is not None:
        if spec.alpha and num_frames % spec.alpha:
            raise ValueError(f"num_frames={num_frames} must be a multiple of alpha={spec.alpha}")
        window_frames = spec.num_frames * spec.sampling_rate
        spec = replace(spec, num_frames=num_frames, sampling_rate=max(1, window_frames // num_frames))
    if spec.arch == "slowfast":
        kwargs.update(num_frames=spec.num_frames, crop_size=spec.crop_size)
        if width_per_group is not None:
            if width_per_group < 8 or width_per_group % 8:
                raise ValueError(f"width_per_group={width_per_group} must be a positive multiple of 8 (fast width = width / 8)")
            kwargs["width_per_group"] = width_per_group
        wpg = kwargs.get("width_per_group", 64)
        # pooled (slow res5 + fast res5) channels: 32*wpg + 32*wpg/beta_inv(8) = 2304 at wpg 64
        spec = replace(spec, feature_dim=32 * wpg + 4 * wpg)
    else:
        if width_per_group is not None:
            raise ValueError("width_per_group applies to SlowFast backbones only")
        kwargs.update(temporal_size=spec.num_frames, spatial_size=spec.crop_size)
    return replace(spec, builder_kwargs=kwargs)


def build_backbone(spec: BackboneSpec) -> "nn.Module":
    """The pooled-feature backbone of `spec` (random weights): forward -> (B, spec.feature_dim)."""
    from extract import backbones

    if spec.arch == "slowfast":
        return backbones.build_slowfast(**spec.builder_kwargs, head_dim=None)
    if spec.arch == "mvit":
        return backbones.build_mvit(**spec.builder_kwargs)
    raise ValueError(f"unknown arch {spec.arch!r}; available: ['mvit', 'slowfast']")


def _recognition_module():
    import torch
    from torch import nn

    class RecognitionModel(nn.Module):
        """Backbone + dropout + two Linear heads (Ego4D `MultiTaskHead`): inputs -> {"verb": (B, V), "noun": (B, N)} logits.

        Inputs: SlowFast `[slow (B,3,T/alpha,H,W), fast (B,3,T,H,W)]`, MViT `(B,3,T,H,W)`. The heads
        return logits; the loss applies log-softmax itself (the reference MViT head applied softmax
        before CE, a bug not reproduced here).
        """

        def __init__(self, backbone: nn.Module, *, feature_dim: int, num_verbs: int, num_nouns: int, dropout: float = 0.5):
            super().__init__()
            self.backbone = backbone
            self.dropout = nn.Dropout(dropout)
            self.verb_head = nn.Linear(feature_dim, num_verbs)
            self.noun_head = nn.Linear(feature_dim, num_nouns)
            for head in (self.verb_head, self.noun_head):  # weight_init_helper: N(0, 0.01), bias 0
                nn.init.normal_(head.weight, std=0.01)
                nn.init.zeros_(head.bias)

        def forward(self, inputs: Any) -> dict[str, torch.Tensor]:
            if isinstance(inputs, (list, tuple)):
                inputs = list(inputs)  # SlowFast mutates its input list in place
            feats = self.dropout(self.backbone(inputs))  # (B, D)
            return {"verb": self.verb_head(feats), "noun": self.noun_head(feats)}

    return RecognitionModel


def build_recognition_model(spec: BackboneSpec, *, num_verbs: int, num_nouns: int, dropout: float = 0.5) -> "nn.Module":
    """Random-init recognition model for `spec` with `num_verbs` / `num_nouns` logits."""
    return _recognition_module()(build_backbone(spec), feature_dim=spec.feature_dim, num_verbs=num_verbs,
                                 num_nouns=num_nouns, dropout=dropout)


def recognition_loss(logits: dict, verb: "torch.Tensor", noun: "torch.Tensor") -> "torch.Tensor":
    """CE(verb) + CE(noun), each the batch mean, on raw logits (reference §3.6)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits["verb"].float(), verb) + F.cross_entropy(logits["noun"].float(), noun)


def init_backbone(backbone: "nn.Module", spec: BackboneSpec, init: str) -> str:
    """Initialise `backbone` in place from `init`; returns a one-line description of what was loaded.

    - `random`: keep the random init (explicit only, never a fallback);
    - `kinetics`: the pytorchvideo model-zoo Kinetics-400 weights (downloaded into TORCH_HOME, so the
      file must be cached on offline machines), or `kinetics:PATH` for a local copy;
    - `ego4d:PATH`: a released Ego4D recognition checkpoint, converted by `extract.backbones.load_backbone_checkpoint`.
    Classification heads in the file are dropped; every backbone key must load (no silent `strict=False`).
    """
    if init == "random":
        return "random init"
    kind, _, path = init.partition(":")
    if kind == "ego4d":
        if not path:
            raise ValueError("init=ego4d needs a checkpoint path: init=ego4d:PATH")
        from extract import backbones

        backbones.load_backbone_checkpoint(backbone, path, spec.arch)
        return f"ego4d checkpoint {path}"
    if kind == "kinetics":
        if path:
            source = path
        else:
            if spec.name not in KINETICS_URLS:
                raise ValueError(f"no Kinetics weights known for {spec.name!r}")
            source = KINETICS_URLS[spec.name]
            path = str(fetch_url(source, offline_hint="pass init=kinetics:PATH to a local copy, or init=random explicitly"))
        _load_without_head(backbone, load_kinetics_state_dict(path), source)
        return f"kinetics weights {source}"
    raise ValueError(f"unknown init {init!r}; expected random, kinetics[:PATH] or ego4d:PATH")


def _load_without_head(backbone: "nn.Module", state: dict, source: str) -> None:
    own = backbone.state_dict()
    # the Kinetics classifier (`blocks.6.proj` SlowFast, `head.proj` MViT) is not part of the backbone
    state = {k: v for k, v in state.items() if k in own or not k.startswith(("blocks.6.", "head."))}
    load_state_dict_strictly(backbone, state, source=source)


def param_groups(model: "nn.Module", *, weight_decay: float, bn_weight_decay: float = 0.0) -> list[dict]:
    """Two groups as in the reference optimiser: BatchNorm parameters get `bn_weight_decay`, the rest `weight_decay`
    (features.optim.weight_decay_groups, shared with train-heads).

    The reference selects by the substring "bn" of PySlowFast names; pytorchvideo names its
    BatchNorms `norm*`, so the selection here is by module type.
    """
    from torch import nn

    bn_ids = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters(recurse=False)}
    return weight_decay_groups(model.named_parameters(), lambda _name, p: id(p) in bn_ids, weight_decay=weight_decay,
                               exempt_weight_decay=bn_weight_decay, names=("default", "bn"))


def export_backbone(model: "nn.Module", spec: BackboneSpec, out_dir: Path | str, *, extra: dict | None = None) -> Path:
    """Write `backbone.pt` (+ `heads.pt`, `backbone.json`) for `lta extract`; atomic per file. Returns the backbone path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DDP
    backbone_state = {k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()}
    heads_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    atomic_torch_save(backbone_state, out_dir / BACKBONE_FILE)
    atomic_torch_save(heads_state, out_dir / HEADS_FILE)
    meta = {**spec.to_json(), **({"extra": extra} if extra else {})}
    atomic_write(out_dir / SPEC_FILE, json.dumps(meta, indent=2, sort_keys=True))
    return out_dir / BACKBONE_FILE


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` whole or not at all (features.files.atomic_path)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def is_finetuned_run(path: Path | str) -> bool:
    """True for a directory (it must then be a run dir) or a weights file next to a `backbone.json`."""
    path = Path(path)
    return path.is_dir() or (path.is_file() and path.with_name(SPEC_FILE).is_file())


def resolve_run(path: Path | str) -> tuple[Path, BackboneSpec]:
    """(backbone weights file, its spec) of a run directory or its `backbone.pt`; nothing is loaded yet.

    Raises:
        FileNotFoundError: no backbone.pt / backbone.json at `path`.
        ValueError: a backbone.json that is not a `BackboneSpec` of this format.
    """
    path = Path(path)
    weights = path / BACKBONE_FILE if path.is_dir() else path
    spec_path = weights.with_name(SPEC_FILE)
    for p in (weights, spec_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found (expected a `lta finetune-backbone` run dir or its {BACKBONE_FILE})")
    meta = json.loads(spec_path.read_text())
    meta.pop("extra", None)
    try:
        return weights, BackboneSpec.from_json(meta)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{spec_path}: not a fine-tuned backbone spec ({err})") from None


def load_finetuned_backbone(path: Path | str) -> tuple["nn.Module", BackboneSpec]:
    """Rebuild a fine-tuned backbone from a run directory or its `backbone.pt`, in eval mode on the CPU.

    Returns (model, spec): `model(inputs) -> (B, spec.feature_dim)` pooled features; the spec gives
    the frame count, sampling rate, crop and mean/std the features were trained with.

    Raises:
        FileNotFoundError: no backbone.pt / backbone.json at `path`.
        BackboneMismatchError: the weights do not match the spec's architecture (strict load, keys named).
        UnsafeCheckpointError: backbone.pt holds more than tensors (`weights_only=True` refused it).
    """
    import pickle

    import torch

    from features.checkpoint_io import UnsafeCheckpointError

    weights, spec = resolve_run(path)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(f"{weights}: not a plain state dict ({str(err).splitlines()[0]}); "
                                    "refusing to load it") from None
    model = build_backbone(spec)
    load_state_dict_strictly(model, state, source=str(weights))
    return model.eval(), spec
