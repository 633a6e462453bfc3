"""Import a released Ego4D LTA checkpoint (lta_slowfast_concat/trf, lta_mvit_concat) into a ForecastModel.

The reference `ForecastingEncoderDecoder` maps onto the stage-two model one-to-one:

    model.backbone.head.projection.*          -> inputs.<modality>.proj.*      Linear(2304 -> D) / (768 -> 768)
    model.clip_aggregator.pos_encoder.pe      -> aggregator.pos_encoder.pe     (1000, 1, D)
    model.clip_aggregator.encoder.*           -> aggregator.encoder.*          TransformerEncoder (Trf only)
    model.decoder.head.projections.{z}.*      -> decoder.projections.{z}.*     Z x Linear(D' -> V+N)

The backbone trunk (`model.backbone.s1...`) is not part of stage two: it is what `lta extract` runs,
so cached pooled features (B, N_in, 2304) go through the imported projection exactly as the
reference's clips go through its backbone head. Everything is sized from the checkpoint's own
config and tensor shapes and loaded strictly. This module never imports `extract/`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from features.checkpoint_io import CheckpointError, LoadedCheckpoint, cfg_get, describe, load_lightning_checkpoint

log = logging.getLogger(__name__)

# reference FORECASTING.AGGREGATOR / DECODER -> our registry names
AGGREGATOR_NAMES = {"TransformerAggregator": "transformer", "ConcatAggregator": "concat", "MeanAggregator": "mean"}
DECODER_NAMES = {"MultiHeadDecoder": "multihead"}
# MODEL.ARCH -> the extractor family whose cached features feed the imported projection
MODALITY_NAMES = {"slowfast": "slowfast", "mvit": "mvit"}

_RENAMES = [
    (re.compile(r"model\.backbone\.head\.projection\.(weight|bias)"), "inputs.{modality}.proj.{0}"),
    (re.compile(r"model\.clip_aggregator\.(pos_encoder\.pe|encoder\..+)"), "aggregator.{0}"),
    (re.compile(r"model\.decoder\.head\.projections\.(\d+\.(?:weight|bias))"), "decoder.projections.{0}"),
]


@dataclass
class ImportInfo:
    """What was imported, for the run's records."""

    source: str
    model_cfg: dict  # train_heads.model.ModelConfig as a plain dict (num_verbs/nouns, aggregator, ...)
    modality: str  # the modality (extractor family) whose features the projection expects
    feature_dim: int  # the cached feature width the projection expects (2304 SlowFast, 768 MViT)
    loaded_keys: int
    skipped_backbone_keys: int  # backbone trunk tensors, run by `lta extract` instead
    config: dict = field(default_factory=dict)  # checkpoint_io.describe()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def convert_lta_state_dict(sd: dict, modality: str) -> tuple[dict, list[str]]:
    """Reference LTA names -> ForecastModel names; returns (converted, backbone-trunk keys left out).

    Raises:
        CheckpointError: a key outside the backbone that no rule maps (strict).
    """
    converted: dict = {}
    skipped: list[str] = []
    for key, value in sd.items():
        for pattern, target in _RENAMES:
            m = pattern.fullmatch(key)
            if m:
                converted[target.format(*m.groups(), modality=modality)] = value
                break
        else:
            if not key.startswith("model.backbone."):
                raise CheckpointError(f"LTA checkpoint key {key!r} matches no import rule")
            skipped.append(key)
    return converted, skipped


def lta_model_config(ckpt: LoadedCheckpoint, *, modality: str | None = None) -> tuple[dict, str, int]:
    """The stage-two ModelConfig (as a dict) that reproduces the checkpoint, from its cfg and tensor shapes.

    Returns (model_cfg, modality, feature_dim).
    """
    cfg, sd = ckpt.cfg, ckpt.state_dict
    source = ckpt.meta.get("path", "checkpoint")
    agg_ref = cfg_get(cfg, "FORECASTING.AGGREGATOR")
    dec_ref = cfg_get(cfg, "FORECASTING.DECODER")
    if agg_ref not in AGGREGATOR_NAMES:
        raise CheckpointError(f"{source}: FORECASTING.AGGREGATOR={agg_ref!r} unsupported; available: {sorted(AGGREGATOR_NAMES)}")
    if dec_ref not in DECODER_NAMES:
        raise CheckpointError(f"{source}: FORECASTING.DECODER={dec_ref!r} unsupported; available: {sorted(DECODER_NAMES)}")
    arch = str(cfg_get(cfg, "MODEL.ARCH", "")).lower()
    modality = modality or MODALITY_NAMES.get(arch)
    if not modality:
        raise CheckpointError(f"{source}: MODEL.ARCH={arch!r} unknown; pass modality= explicitly")
    proj = sd.get("model.backbone.head.projection.weight")
    if proj is None:
        raise CheckpointError(f"{source}: no model.backbone.head.projection.weight; not an LTA checkpoint?")
    proj_dim, feature_dim = (int(s) for s in proj.shape)
    if proj_dim != int(cfg_get(cfg, "MODEL.MULTI_INPUT_FEATURES", proj_dim)):
        raise CheckpointError(f"{source}: head projection {list(proj.shape)} disagrees with MODEL.MULTI_INPUT_FEATURES")
    num_verbs, num_nouns = (int(n) for n in cfg_get(cfg, "MODEL.NUM_CLASSES"))
    num_future = int(cfg_get(cfg, "FORECASTING.NUM_ACTIONS_TO_PREDICT"))
    num_input = int(cfg_get(cfg, "FORECASTING.NUM_INPUT_CLIPS"))
    dropout = float(cfg_get(cfg, "MODEL.DROPOUT_RATE", 0.5))
    aggregator = AGGREGATOR_NAMES[agg_ref]
    aggregator_kwargs: dict[str, Any] = {}
    if aggregator == "transformer":
        pe = sd["model.clip_aggregator.pos_encoder.pe"]
        layers = {int(m[1]) for k in sd if (m := re.match(r"model\.clip_aggregator\.encoder\.layers\.(\d+)\.", k))}
        aggregator_kwargs = dict(
            depth=int(cfg_get(cfg, "MODEL.TRANSFORMER_ENCODER_LAYERS", len(layers))),
            heads=int(cfg_get(cfg, "MODEL.TRANSFORMER_ENCODER_HEADS", 8)),
            ff_dim=int(sd["model.clip_aggregator.encoder.layers.0.linear1.weight"].shape[0]),
            max_len=int(pe.shape[0]),
        )
        if aggregator_kwargs["depth"] != len(layers):
            raise CheckpointError(f"{source}: {len(layers)} encoder layers stored, cfg says {aggregator_kwargs['depth']}")
    model_cfg = dict(
        modalities=[dict(name=modality, proj_dim=proj_dim, dropout=dropout, frame_pool="mean", in_dim=feature_dim, frames=0)],
        num_input=num_input,
        num_future=num_future,
        aggregator=aggregator,
        aggregator_kwargs=aggregator_kwargs,
        decoder=DECODER_NAMES[dec_ref],
        decoder_kwargs=dict(dropout=dropout),
        recognition=False,
        num_verbs=num_verbs,
        num_nouns=num_nouns,
    )
    return model_cfg, modality, feature_dim


def import_lta_checkpoint(path: str | Path | LoadedCheckpoint, *, modality: str | None = None,
                          num_input: int | None = None):
    """Build the ForecastModel equivalent to a released LTA checkpoint and load its weights strictly.

    Args:
        path: `lta_slowfast_trf.ckpt`-style file (or an already loaded checkpoint).
        modality: name of the feature modality feeding the projection; default from MODEL.ARCH.
        num_input: N_in of the head (default: FORECASTING.NUM_INPUT_CLIPS). The transformer aggregator
            takes any N_in up to its positional table; the concat aggregator's weights fix its own.

    Returns:
        (ForecastModel in eval mode, ImportInfo).

    Raises:
        CheckpointError naming the first missing / unexpected / mis-shaped keys.
    """
    from train_heads.model import build_model

    ckpt = path if isinstance(path, LoadedCheckpoint) else load_lightning_checkpoint(path)
    source = str(ckpt.meta.get("path", "checkpoint"))
    model_cfg, modality, feature_dim = lta_model_config(ckpt, modality=modality)
    if num_input and int(num_input) != model_cfg["num_input"]:
        if model_cfg["aggregator"] != "transformer":
            raise CheckpointError(f"{source}: a {model_cfg['aggregator']} head trained with N_in={model_cfg['num_input']} "
                                  f"cannot take num_input={num_input}")
        model_cfg["num_input"] = int(num_input)
    converted, skipped = convert_lta_state_dict(ckpt.state_dict, modality)
    model = build_model(model_cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    shapes = [f"{k}: checkpoint {list(converted[k].shape)} vs model {list(expected[k].shape)}"
              for k in expected if k in converted and converted[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source}: does not fit the stage-two model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {shapes[:5]}"
        )
    model.load_state_dict(converted, strict=True)
    model.eval()
    info = ImportInfo(source=source, model_cfg=model_cfg, modality=modality, feature_dim=feature_dim,
                      loaded_keys=len(converted), skipped_backbone_keys=len(skipped), config=describe(ckpt))
    log.info("imported %d tensors from %s (%s + %s, Z=%d); %d backbone tensors left to `lta extract`",
             len(converted), source, model_cfg["aggregator"], model_cfg["decoder"], model_cfg["num_future"], len(skipped))
    return model, info


def check_taxonomy(data_dir: str | Path, model_cfg: dict) -> None:
    """Check that the dataset's taxonomy has the class counts of the imported head.

    Raises:
        ValueError: the counts differ (naming the taxonomy file and both counts).
        AnnotationError (a ValueError): no readable taxonomy file under `data_dir`.
    """
    from features.annotations import ANNOTATION_DIR, TAXONOMY_FILE, load_taxonomy

    path = Path(data_dir) / ANNOTATION_DIR / TAXONOMY_FILE
    taxonomy = load_taxonomy(path)
    have = (taxonomy.num_verbs, taxonomy.num_nouns)
    want = (model_cfg["num_verbs"], model_cfg["num_nouns"])
    if have != want:
        raise ValueError(f"{path}: {have[0]} verbs and {have[1]} nouns, but the checkpoint's head predicts "
                         f"{want[0]} verbs and {want[1]} nouns; data= must be the dataset the checkpoint was trained on")
