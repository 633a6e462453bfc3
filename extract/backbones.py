"""SlowFast and MViT backbones with the Ego4D reference structure, and converters for its checkpoints.

Both models are stock pytorchvideo builders (`create_slowfast`, `create_multiscale_vision_transformers`)
with the Ego4D arguments; the released PySlowFast-named weights load into them through a key renaming
(plus a q/k/v split for MViT). The conversion is strict: every backbone tensor is mapped and
shape-checked, and the keys left over (recognition heads, LTA aggregator/decoder) are reported by name.
See shared/reference/checkpoint_conversion_notes.md for the evidence (bit-exact on the fixtures).

torch and pytorchvideo are imported inside the functions, so importing this module is instant.
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from extract.weights import load_state_dict_strictly
from features.checkpoint_io import CheckpointError, LoadedCheckpoint, cfg_get, describe, load_lightning_checkpoint

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

# Blocks per res stage (res2..res5), as in PySlowFast and pytorchvideo.
SLOWFAST_STAGE_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# Ego4D MViT-B 16x4 (configs/Ego4dRecognition/MULTIMVIT_16x4.yaml); explicit kv strides, none for blocks 14-15.
MVIT_B_DIM_MUL = ((1, 2.0), (3, 2.0), (14, 2.0))
MVIT_B_POOL_Q_STRIDE = ((1, 1, 2, 2), (3, 1, 2, 2), (14, 1, 2, 2))
MVIT_B_POOL_KV_STRIDE = ((0, 1, 8, 8), (1, 1, 4, 4), (2, 1, 4, 4)) + tuple((i, 1, 2, 2) for i in range(3, 14))
MVIT_REFERENCE_FRAMES = 16  # the reference MViT hard-codes 16 input frames


@functools.cache
def _modules() -> SimpleNamespace:
    """The nn.Module classes of this file, defined on first use so that importing it needs no torch."""
    import torch
    from torch import nn

    class SlowFast(nn.Module):
        """pytorchvideo SlowFast (`blocks.*` keys as in `create_slowfast`) that never mutates its input.

        forward([slow (B,3,T/alpha,H,W), fast (B,3,T,H,W)]) -> (B, C_slow + C_fast) pooled features
        (slow first), or (B, head_dim) when built with a projection head.
        """

        def __init__(self, blocks: nn.ModuleList, feature_dim: int) -> None:
            super().__init__()
            self.blocks = blocks
            self.feature_dim = feature_dim

        def forward_pooled(self, pathways: Sequence[torch.Tensor]) -> torch.Tensor:
            """(B, C, T', H', W'): the head's stride-1 average pool of s5, one column per pooled position."""
            x = list(pathways)  # pytorchvideo's fusion and pooling write into the list they are given
            for block in self.blocks[:6]:
                x = block(x)
            return x

        def forward(self, pathways: Sequence[torch.Tensor]) -> torch.Tensor:
            pooled = self.forward_pooled(pathways)  # (B, C, T', H', W')
            if len(self.blocks) > 6:  # projection per position, then the mean over positions
                return self.blocks[6](pooled)
            return pooled.flatten(2).mean(2)  # (B, C); exact at one pooled position (the 224 crop)

    class ClsTokenHead(nn.Module):
        """MViT head: (B, 1+N, C) final-norm tokens -> cls token (B, C), optionally Linear-projected."""

        def __init__(self, in_features: int, out_features: int | None) -> None:
            super().__init__()
            self.proj = nn.Linear(in_features, out_features) if out_features else None

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            cls = tokens[:, 0]  # (B, C)
            return self.proj(cls) if self.proj is not None else cls

    class RecognitionHead(nn.Module):
        """Reference MultiTaskHead: `projections.{i}` Linear(C, n_i); see build_recognition_head."""

        def __init__(self, in_features: int, num_classes: Sequence[int], activation: str | None) -> None:
            super().__init__()
            self.activation = activation
            self.projections = nn.ModuleList(nn.Linear(in_features, n) for n in num_classes)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            if x.dim() == 5:
                x = x.permute(0, 2, 3, 4, 1).flatten(1, 3)  # (B, P, C), one row per pooled position
            else:
                x = x.unsqueeze(1)  # (B, 1, C)
            outs = []
            for proj in self.projections:
                y = proj(x)  # (B, P, n)
                if self.activation == "softmax":
                    y = y.softmax(dim=-1)
                outs.append(y.mean(1))  # the reference averages positions after the activation
            return outs

    return SimpleNamespace(SlowFast=SlowFast, ClsTokenHead=ClsTokenHead, RecognitionHead=RecognitionHead)


def __getattr__(name: str) -> Any:
    if name in ("SlowFast", "ClsTokenHead", "RecognitionHead"):
        return getattr(_modules(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_slowfast(
    *,
    depth: int = 101,
    width_per_group: int = 64,
    alpha: int = 4,
    beta_inv: int = 8,
    fusion_conv_channel_ratio: int = 2,
    fusion_kernel_size: int = 5,
    num_frames: int = 32,
    crop_size: int = 224,
    head_dim: int | None = None,
    num_block_temp_kernel: Sequence[Sequence[int]] | None = None,
    spatial_strides: Sequence[int] = (1, 2, 2, 2),
    input_channels: Sequence[int] = (3, 3),
    dropout_rate: float = 0.5,
) -> "nn.Module":
    """SlowFast 8x8 with the Ego4D reference arguments (pytorchvideo `create_slowfast`).

    Args:
        depth: ResNet depth (50, 101, 152).
        width_per_group: slow stem width (64 in R101; the fast stem is width / beta_inv).
        alpha, beta_inv, fusion_conv_channel_ratio, fusion_kernel_size: SLOWFAST.* of the reference.
        num_frames: fast-pathway frames T (slow gets T / alpha).
        crop_size: DATA.CROP_SIZE; sizes the stride-1 head pool (T/alpha, crop/32, crop/32) / (T, ...).
        head_dim: None -> forward returns pooled features (B, 2304 for R101); D -> plus the LTA
            backbone head, a Linear(2304 -> D) (`blocks.6.proj`).
        num_block_temp_kernel: per stage, per pathway, how many leading blocks use the temporal conv_a
            kernel (RESNET.NUM_BLOCK_TEMP_KERNEL); None = all blocks.
        spatial_strides: res2..res5 spatial strides.
        input_channels, dropout_rate: as in the reference (dropout only acts in train mode).

    Returns:
        A module taking a list [slow, fast] (never modified) and returning (B, feature_dim).
    """

    from pytorchvideo.models.head import create_res_basic_head
    from pytorchvideo.models.slowfast import create_slowfast
    from torch import nn

    if depth not in SLOWFAST_STAGE_DEPTHS:
        raise ValueError(f"unsupported SlowFast depth {depth}; available: {sorted(SLOWFAST_STAGE_DEPTHS)}")
    if crop_size % 32 or num_frames % alpha:
        raise ValueError(f"crop_size {crop_size} must be a multiple of 32 and num_frames {num_frames} of alpha {alpha}")
    stem_slow = width_per_group
    stem_fast = width_per_group // beta_inv
    conv_a = _slowfast_conv_a_kernels(depth, num_block_temp_kernel)
    pool_hw = crop_size // 32
    s5_slow = stem_slow * 32
    feature_dim = s5_slow + s5_slow // beta_inv
    net = create_slowfast(
        model_depth=depth,
        input_channels=tuple(input_channels),
        stem_dim_outs=(stem_slow, stem_fast),
        slowfast_channel_reduction_ratio=(beta_inv,),
        slowfast_conv_channel_fusion_ratio=fusion_conv_channel_ratio,
        slowfast_fusion_conv_kernel_size=(fusion_kernel_size, 1, 1),
        slowfast_fusion_conv_stride=(alpha, 1, 1),
        stage_conv_a_kernel_sizes=tuple(conv_a),
        stage_spatial_strides=(tuple(spatial_strides), tuple(spatial_strides)),
        head=create_res_basic_head if head_dim else None,
        model_num_class=head_dim or 1,
        dropout_rate=dropout_rate,
        head_pool=nn.AvgPool3d,
        head_pool_kernel_sizes=((num_frames // alpha, pool_hw, pool_hw), (num_frames, pool_hw, pool_hw)),
        head_activation=None,
        head_output_with_global_average=True,
    )
    return _modules().SlowFast(net.blocks, head_dim or feature_dim)


def _slowfast_conv_a_kernels(depth: int, num_block_temp_kernel: Sequence[Sequence[int]] | None) -> list[tuple]:
    """conv_a kernel of every block, per pathway and stage (`stage_conv_a_kernel_sizes` of `create_slowfast`)."""
    # Temporal kernel basis of PySlowFast "slowfast": conv_a is 1 (slow) / 3 (fast) in res2-3, 3/3 in res4-5.
    basis = (((1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1)), ((3, 1, 1),) * 4)
    conv_a = []
    for pathway in range(2):
        stages = []
        for stage, blocks in enumerate(SLOWFAST_STAGE_DEPTHS[depth]):
            used = blocks if num_block_temp_kernel is None else num_block_temp_kernel[stage][pathway]
            stages.append([basis[pathway][stage] if j < used else (1, 1, 1) for j in range(blocks)])
        conv_a.append(tuple(stages))
    return conv_a


def build_mvit(
    *,
    embed_dim: int = 96,
    spatial_size: int = 224,
    temporal_size: int = MVIT_REFERENCE_FRAMES,
    num_heads: int = 1,
    depth: int = 16,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
    patch_kernel: Sequence[int] = (3, 7, 7),
    patch_stride: Sequence[int] = (2, 4, 4),
    patch_padding: Sequence[int] = (1, 3, 3),
    dim_mul: Sequence[Sequence[float]] = MVIT_B_DIM_MUL,
    head_mul: Sequence[Sequence[float]] = MVIT_B_DIM_MUL,
    pool_q_stride: Sequence[Sequence[int]] = MVIT_B_POOL_Q_STRIDE,
    pool_kv_stride: Sequence[Sequence[int]] | None = MVIT_B_POOL_KV_STRIDE,
    pool_kv_stride_adaptive: Sequence[int] | None = None,
    pool_kvq_kernel: Sequence[int] = (3, 3, 3),
    droppath_rate: float = 0.2,
    head_dim: int | None = None,
) -> "nn.Module":
    """MViT-B 16x4 with the Ego4D structure (pytorchvideo `create_multiscale_vision_transformers`).

    The input size is fixed at build time (positional embeddings): (B, 3, temporal_size, spatial, spatial).
    Returns a module mapping it to the cls token after the final norm, (B, C) (C = 768 for MViT-B),
    or (B, head_dim) through a Linear (the LTA backbone head, `head.proj`).
    """
    from pytorchvideo.models.vision_transformers import create_multiscale_vision_transformers

    cls_head = _modules().ClsTokenHead
    return create_multiscale_vision_transformers(
        spatial_size=spatial_size,
        temporal_size=temporal_size,
        cls_embed_on=True,
        sep_pos_embed=True,
        depth=depth,
        norm="layernorm",
        input_channels=3,
        patch_embed_dim=embed_dim,
        conv_patch_embed_kernel=tuple(patch_kernel),
        conv_patch_embed_stride=tuple(patch_stride),
        conv_patch_embed_padding=tuple(patch_padding),
        enable_patch_embed_norm=False,
        use_2d_patch=False,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=qkv_bias,
        dropout_rate_block=0.0,
        droppath_rate_block=droppath_rate,
        pooling_mode="conv",
        pool_first=False,
        embed_dim_mul=[list(x) for x in dim_mul],
        atten_head_mul=[list(x) for x in head_mul],
        pool_q_stride_size=[list(x) for x in pool_q_stride],
        pool_kv_stride_size=[list(x) for x in pool_kv_stride] if pool_kv_stride else None,
        pool_kv_stride_adaptive=list(pool_kv_stride_adaptive) if pool_kv_stride_adaptive else None,
        pool_kvq_kernel=tuple(pool_kvq_kernel),
        head=lambda in_features, **_: cls_head(in_features, head_dim),
    )


def build_recognition_head(in_features: int, num_classes: Sequence[int], activation: str | None = None) -> "nn.Module":
    """The reference MultiTaskHead: one Linear per task (`projections.{i}`), e.g. [verb, noun].

    forward((B, C) or a pooled map (B, C, T', H', W')) -> list of (B, num_classes[i]): projection per
    position, `activation` ("softmax" or None) per position, then the mean over positions.
    """
    if activation not in (None, "softmax"):
        raise ValueError(f"unknown head activation {activation!r}; available: [None, 'softmax']")
    return _modules().RecognitionHead(in_features, num_classes, activation)


# ---------------------------------------------------------------------------------------------------------
# Converters: PySlowFast / Ego4D names -> pytorchvideo names.

_SLOWFAST_RULES: list[tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(r"s1\.pathway(\d)_stem\.conv\.(\w+)"), lambda m: f"blocks.0.multipathway_blocks.{m[1]}.conv.{m[2]}"),
    (re.compile(r"s1\.pathway(\d)_stem\.bn\.(\w+)"), lambda m: f"blocks.0.multipathway_blocks.{m[1]}.norm.{m[2]}"),
    (re.compile(r"s(\d)_fuse\.conv_f2s\.(\w+)"), lambda m: f"blocks.{int(m[1]) - 1}.multipathway_fusion.conv_fast_to_slow.{m[2]}"),
    (re.compile(r"s(\d)_fuse\.bn\.(\w+)"), lambda m: f"blocks.{int(m[1]) - 1}.multipathway_fusion.norm.{m[2]}"),
    (re.compile(r"s(\d)\.pathway(\d)_res(\d+)\.branch1\.(\w+)"), lambda m: f"{_res(m)}.branch1_conv.{m[4]}"),
    (re.compile(r"s(\d)\.pathway(\d)_res(\d+)\.branch1_bn\.(\w+)"), lambda m: f"{_res(m)}.branch1_norm.{m[4]}"),
    (re.compile(r"s(\d)\.pathway(\d)_res(\d+)\.branch2\.([abc])\.(\w+)"), lambda m: f"{_res(m)}.branch2.conv_{m[4]}.{m[5]}"),
    (re.compile(r"s(\d)\.pathway(\d)_res(\d+)\.branch2\.([abc])_bn\.(\w+)"), lambda m: f"{_res(m)}.branch2.norm_{m[4]}.{m[5]}"),
]


def _res(m: re.Match) -> str:
    return f"blocks.{int(m[1]) - 1}.multipathway_blocks.{m[2]}.res_blocks.{m[3]}"


def _split_prefix(sd: Mapping[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    """Strip `model.backbone.` (LTA) or `model.` (recognition); keys outside the prefix are left over."""
    prefix = next((p for p in ("model.backbone.", "model.") if any(k.startswith(p) for k in sd)), "")
    inside = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    outside = [k for k in sd if not k.startswith(prefix)]
    return prefix, inside, outside


def convert_slowfast_state_dict(
    sd: Mapping[str, Any], depth: int | None = None, *, keep_head_projection: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """PySlowFast SlowFast names -> pytorchvideo `create_slowfast` names (any depth).

    Args:
        sd: the checkpoint state dict (`model.s1...` or `model.backbone.s1...`).
        depth: when given, every res block index is checked against the stage depths of that ResNet.
        keep_head_projection: map the LTA backbone head `head.projection` to `blocks.6.proj`
            (a model built with head_dim); otherwise it is left over like the recognition heads.

    Returns:
        (converted state dict, left-over keys with their original names: heads, aggregator, decoder).

    Raises:
        CheckpointError: a backbone key no rule maps, or a block index outside `depth`.
    """
    prefix, inside, leftover = _split_prefix(sd)
    stage_depths = SLOWFAST_STAGE_DEPTHS.get(depth) if depth is not None else None
    if depth is not None and stage_depths is None:
        raise ValueError(f"unsupported SlowFast depth {depth}; available: {sorted(SLOWFAST_STAGE_DEPTHS)}")
    converted: dict[str, Any] = {}
    for key, value in inside.items():
        if key.startswith("head."):
            if keep_head_projection and key.startswith("head.projection."):
                converted["blocks.6.proj." + key[len("head.projection."):]] = value
            else:
                leftover.append(prefix + key)
            continue
        for pattern, target in _SLOWFAST_RULES:
            m = pattern.fullmatch(key)
            if m:
                break
        else:
            if prefix == "model." and not key.startswith(("s1", "s2", "s3", "s4", "s5")):
                leftover.append(prefix + key)  # not a backbone tensor (e.g. an LTA aggregator key)
                continue
            raise CheckpointError(f"SlowFast key {prefix + key!r} matches no conversion rule (non-local blocks are unsupported)")
        if stage_depths is not None and "_res" in key:
            stage, block = int(m[1]), int(m[3])
            if not 2 <= stage <= 5 or block >= stage_depths[stage - 2]:
                raise CheckpointError(f"SlowFast key {prefix + key!r} is outside a depth-{depth} ResNet {stage_depths}")
        converted[target(m)] = value
    return converted, leftover


_MVIT_SAME = re.compile(
    r"blocks\.\d+\.(norm1|norm2|attn\.proj|attn\.pool_[qkv]|attn\.norm_[qkv]|mlp\.fc1|mlp\.fc2|proj)\.(weight|bias)"
)


def convert_mvit_state_dict(
    sd: Mapping[str, Any], *, keep_head_projection: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """PySlowFast MViT names -> pytorchvideo MViT names; each fused `attn.qkv` [3C, ...] splits into q, k, v.

    Returns (converted, left-over keys) like `convert_slowfast_state_dict`; `head.projection`
    (LTA backbone head) maps to `head.proj` when `keep_head_projection`.
    """
    prefix, inside, leftover = _split_prefix(sd)
    converted: dict[str, Any] = {}
    for key, value in inside.items():
        if key in ("cls_token", "pos_embed", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class"):
            converted[f"cls_positional_encoding.{key}"] = value
        elif key.startswith("patch_embed.proj."):
            converted["patch_embed.patch_model." + key[len("patch_embed.proj."):]] = value
        elif re.fullmatch(r"blocks\.\d+\.attn\.qkv\.(weight|bias)", key):
            if value.shape[0] % 3:
                raise CheckpointError(f"MViT key {prefix + key!r}: first dim {value.shape[0]} is not 3*C")
            base, kind = key.rsplit(".qkv.", 1)
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                converted[f"{base}.{name}.{kind}"] = part  # q, k, v order, as the reference reshape(3, heads, d)
        elif _MVIT_SAME.fullmatch(key):
            converted[key] = value
        elif key.startswith("norm."):
            converted["norm_embed." + key[len("norm."):]] = value
        elif keep_head_projection and key.startswith("head.projection."):
            converted["head.proj." + key[len("head.projection."):]] = value
        elif key.startswith("head."):
            leftover.append(prefix + key)
        else:
            raise CheckpointError(f"MViT key {prefix + key!r} matches no conversion rule")
    return converted, leftover


_CONVERTERS = {"slowfast": convert_slowfast_state_dict, "mvit": convert_mvit_state_dict}


def load_backbone_checkpoint(model: "nn.Module", path: str | Path, arch: str, *, keep_head_projection: bool = False) -> list[str]:
    """Load the backbone weights of a released checkpoint into `model` (strict); returns the left-over keys."""
    if arch not in _CONVERTERS:
        raise ValueError(f"unknown backbone arch {arch!r}; available: {sorted(_CONVERTERS)}")
    ckpt = load_lightning_checkpoint(path)
    converted, leftover = _CONVERTERS[arch](ckpt.state_dict, keep_head_projection=keep_head_projection)
    load_state_dict_strictly(model, converted, source=str(path))
    log.info("loaded %d backbone tensors from %s; left over: %d (%s)", len(converted), path, len(leftover), _summarise(leftover))
    return leftover


def _summarise(keys: Sequence[str]) -> str:
    groups = sorted({".".join(k.split(".")[:3]) for k in keys})
    return ", ".join(groups[:6]) + (" ..." if len(groups) > 6 else "")


# ---------------------------------------------------------------------------------------------------------
# Building from a checkpoint's own config.


@dataclass
class BackboneInfo:
    """What `build_from_checkpoint` built and loaded."""

    arch: str  # "slowfast" | "mvit"
    model_name: str  # MODEL.MODEL_NAME of the reference (MultiTaskSlowFast, ForecastingEncoderDecoder, ...)
    feature_dim: int  # width of model(x)
    builder_kwargs: dict  # the exact build_slowfast / build_mvit arguments
    num_classes: list[int]  # MODEL.NUM_CLASSES (verb, noun)
    head: Any = None  # RecognitionHead with the checkpoint's head.projections, or None
    leftover_keys: list[str] = field(default_factory=list)  # checkpoint keys not loaded into model or head
    config: dict = field(default_factory=dict)  # checkpoint_io.describe()


def _require(cfg: dict, key: str, allowed: Sequence[Any], default: Any) -> None:
    value = cfg_get(cfg, key, default)
    if value not in allowed:
        raise CheckpointError(f"config {key}={value!r} is not supported by this converter (supported: {list(allowed)})")


def _leaves(value: Any) -> list:
    return [x for v in value for x in _leaves(v)] if isinstance(value, (list, tuple)) else [value]


def slowfast_kwargs_from_cfg(cfg: dict) -> dict:
    """`build_slowfast` arguments from a reference config; unsupported settings raise CheckpointError."""
    _require(cfg, "RESNET.NUM_GROUPS", [1], 1)
    _require(cfg, "RESNET.TRANS_FUNC", ["bottleneck_transform"], "bottleneck_transform")
    _require(cfg, "RESNET.STRIDE_1X1", [False], False)
    _require(cfg, "BN.EPSILON", [1e-5], 1e-5)
    if any(d != [1] and d != [1, 1] for d in cfg_get(cfg, "RESNET.SPATIAL_DILATIONS", [[1]] * 4)):
        raise CheckpointError("config RESNET.SPATIAL_DILATIONS other than 1 is not supported")
    if _leaves(cfg_get(cfg, "NONLOCAL.LOCATION", [])):
        raise CheckpointError("config NONLOCAL.LOCATION is set: non-local blocks are not supported")
    depth = int(cfg_get(cfg, "RESNET.DEPTH", 50))
    temp = cfg_get(cfg, "RESNET.NUM_BLOCK_TEMP_KERNEL")
    strides = cfg_get(cfg, "RESNET.SPATIAL_STRIDES", [[1], [2], [2], [2]])
    return dict(
        depth=depth,
        width_per_group=int(cfg_get(cfg, "RESNET.WIDTH_PER_GROUP", 64)) * int(cfg_get(cfg, "RESNET.NUM_GROUPS", 1)),
        alpha=int(cfg_get(cfg, "SLOWFAST.ALPHA", 8)),
        beta_inv=int(cfg_get(cfg, "SLOWFAST.BETA_INV", 8)),
        fusion_conv_channel_ratio=int(cfg_get(cfg, "SLOWFAST.FUSION_CONV_CHANNEL_RATIO", 2)),
        fusion_kernel_size=int(cfg_get(cfg, "SLOWFAST.FUSION_KERNEL_SZ", 5)),
        num_frames=int(cfg_get(cfg, "DATA.NUM_FRAMES", 8)),
        crop_size=int(cfg_get(cfg, "DATA.CROP_SIZE", 224)),
        num_block_temp_kernel=[[int(t[0]), int(t[-1])] for t in temp] if temp else None,
        spatial_strides=tuple(int(s[0]) for s in strides),
        input_channels=tuple(int(c) for c in cfg_get(cfg, "DATA.INPUT_CHANNEL_NUM", [3, 3])),
        dropout_rate=float(cfg_get(cfg, "MODEL.DROPOUT_RATE", 0.5)),
    )


def mvit_kwargs_from_cfg(cfg: dict) -> dict:
    """`build_mvit` arguments from a reference config; unsupported settings raise CheckpointError."""
    for key, allowed, default in [
        ("MVIT.MODE", ["conv"], "conv"),
        ("MVIT.CLS_EMBED_ON", [True], True),
        ("MVIT.SEP_POS_EMBED", [True], False),
        ("MVIT.USE_ABS_POS", [True], True),
        ("MVIT.REL_POS_SPATIAL", [False], False),
        ("MVIT.REL_POS_TEMPORAL", [False], False),
        ("MVIT.POOL_FIRST", [False], False),
        ("MVIT.PATCH_2D", [False], False),
        ("MVIT.NORM_STEM", [False], False),
        ("MVIT.NORM", ["layernorm"], "layernorm"),
    ]:
        _require(cfg, key, allowed, default)
    g = lambda key, default=None: cfg_get(cfg, f"MVIT.{key}", default)  # noqa: E731
    return dict(
        embed_dim=int(g("EMBED_DIM", 96)),
        spatial_size=int(cfg_get(cfg, "DATA.TRAIN_CROP_SIZE", 224)),  # the reference sizes pos-embeds from it
        temporal_size=MVIT_REFERENCE_FRAMES,
        num_heads=int(g("NUM_HEADS", 1)),
        depth=int(g("DEPTH", 16)),
        mlp_ratio=float(g("MLP_RATIO", 4.0)),
        qkv_bias=bool(g("QKV_BIAS", True)),
        patch_kernel=tuple(g("PATCH_KERNEL", [3, 7, 7])),
        patch_stride=tuple(g("PATCH_STRIDE", [2, 4, 4])),
        patch_padding=tuple(g("PATCH_PADDING", [2, 4, 4])),
        dim_mul=[tuple(x) for x in g("DIM_MUL", [])],
        head_mul=[tuple(x) for x in g("HEAD_MUL", [])],
        pool_q_stride=[tuple(x) for x in g("POOL_Q_STRIDE", [])],
        pool_kv_stride=[tuple(x) for x in g("POOL_KV_STRIDE", [])] or None,
        pool_kv_stride_adaptive=g("POOL_KV_STRIDE_ADAPTIVE"),
        pool_kvq_kernel=tuple(g("POOL_KVQ_KERNEL", [3, 3, 3])),
        droppath_rate=float(g("DROPPATH_RATE", 0.1)),
    )


def build_from_checkpoint(
    path: str | Path | LoadedCheckpoint, *, head_projection: bool = False
) -> tuple["nn.Module", BackboneInfo]:
    """Build the backbone a checkpoint was trained with, from its own config, and load it strictly.

    Args:
        path: a recognition (`ego4d_slowfast8x8.ckpt`, `ego4d_mvit16x4.ckpt`) or LTA checkpoint, or an
            already loaded one.
        head_projection: for LTA checkpoints, include the backbone head Linear(C -> MULTI_INPUT_FEATURES).

    Returns:
        (model in eval mode, BackboneInfo). For recognition checkpoints `info.head` is a RecognitionHead
        loaded from `head.projections.*` (softmax for MViT, as the reference; per TEST.NO_ACT for SlowFast).

    Raises:
        CheckpointError / UnsafeCheckpointError / BackboneMismatchError with the offending keys.
    """
    ckpt = path if isinstance(path, LoadedCheckpoint) else load_lightning_checkpoint(path)
    source = ckpt.meta.get("path", "checkpoint")
    if not ckpt.cfg:
        raise CheckpointError(f"{source}: carries no config; build the model yourself and use load_backbone_checkpoint")
    arch = str(cfg_get(ckpt.cfg, "MODEL.ARCH", "")).lower()
    if arch not in _CONVERTERS:
        raise CheckpointError(f"{source}: MODEL.ARCH={arch!r} is not supported; available: {sorted(_CONVERTERS)}")
    num_classes = [int(n) for n in cfg_get(ckpt.cfg, "MODEL.NUM_CLASSES", [])]
    head_dim = int(cfg_get(ckpt.cfg, "MODEL.MULTI_INPUT_FEATURES", 2048)) if head_projection else None
    if arch == "slowfast":
        kwargs = slowfast_kwargs_from_cfg(ckpt.cfg)
        converted, leftover = convert_slowfast_state_dict(ckpt.state_dict, kwargs["depth"], keep_head_projection=head_projection)
        model = build_slowfast(**kwargs, head_dim=head_dim)
        head_act = None if cfg_get(ckpt.cfg, "TEST.NO_ACT", True) else cfg_get(ckpt.cfg, "MODEL.HEAD_ACT", "softmax")
        feature_dim = model.feature_dim
    else:
        kwargs = mvit_kwargs_from_cfg(ckpt.cfg)
        converted, leftover = convert_mvit_state_dict(ckpt.state_dict, keep_head_projection=head_projection)
        model = build_mvit(**kwargs, head_dim=head_dim)
        head_act = "softmax"  # MultiTaskMViTHead applies softmax in train and eval
        feature_dim = head_dim or model.norm_embed.normalized_shape[0]
    if head_projection and not any(k.startswith(("blocks.6.proj.", "head.proj.")) for k in converted):
        raise CheckpointError(f"{source}: head_projection=True but the checkpoint has no backbone.head.projection")
    load_state_dict_strictly(model, converted, source=source)
    model.eval()

    head = None
    head_keys = sorted(k for k in leftover if re.fullmatch(r"model\.head\.projections\.\d+\.(weight|bias)", k))
    if head_keys:
        in_features = ckpt.state_dict["model.head.projections.0.weight"].shape[1]
        head = build_recognition_head(in_features, num_classes, activation=head_act)
        load_state_dict_strictly(head, {k[len("model.head."):]: ckpt.state_dict[k] for k in head_keys}, source=f"{source} (head)")
        head.eval()
        leftover = [k for k in leftover if k not in head_keys]
    info = BackboneInfo(
        arch=arch,
        model_name=str(cfg_get(ckpt.cfg, "MODEL.MODEL_NAME", "")),
        feature_dim=int(feature_dim),
        builder_kwargs={**kwargs, "head_dim": head_dim},
        num_classes=num_classes,
        head=head,
        leftover_keys=leftover,
        config=describe(ckpt),
    )
    log.info("built %s from %s: %d tensors loaded, %d left over (%s)", arch, source, len(converted), len(leftover), _summarise(leftover))
    return model, info
