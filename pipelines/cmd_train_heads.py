"""`lta train-heads`: train a forecasting head on cached features into a run dir."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

from pipelines.common import run_command
from pipelines.config import opt
from train_heads.schemas import ModelConfig, TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainHeadsConfig:
    data: str = opt("data/long_term_anticipation", "dataset root (holds annotations/)")
    store: str = opt("cache/features", "feature store root (<root>/<key>.zarr)")
    features: list[str] = opt([], "cache keys, one per head.modalities entry; empty = match by modality name")
    out: str = opt("runs/head", "run dir to write")
    num_seen: int = opt(8, "observed segments defining the val/test key set (challenge: 8); >= head.num_input")
    convention: str = opt("plus_one", "val/test window range: plus_one (superset) or challenge")
    max_val_windows: int = opt(0, "score per-epoch val on a random subset (0 = all)")
    resume: bool = opt(False, "continue from <out>/checkpoints/last.pt")
    overwrite: bool = opt(False, "replace a run already in <out> (without it or resume=true that is an error)")
    head: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "model: modalities, aggregator, decoder"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "optimisation and evaluation"})


def train_from_config(cfg: TrainHeadsConfig) -> dict:
    """Load features and windows as `cfg` says, train, and return the run's metrics."""
    from train_heads.inputs import fill_model_dims, load_bank, resolve_feature_keys, split_windows, subset_windows
    from train_heads.train import prepare_run_dir, train

    prepare_run_dir(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)  # before any data is loaded
    keys = resolve_feature_keys(cfg.store, [m.name for m in cfg.head.modalities], cfg.features)
    log.info("features: %s", keys)
    bank = load_bank(cfg.store, keys, splits=["train", "val"])
    h = cfg.head
    train_ann, train_win = split_windows(cfg.data, "train", bank, num_input=h.num_input, num_future=h.num_future,
                                         num_seen=None, convention="plus_one")
    _, val_win = split_windows(cfg.data, "val", bank, num_input=h.num_input, num_future=h.num_future,
                               num_seen=max(cfg.num_seen, h.num_input), convention=cfg.convention)
    val_win = subset_windows(val_win, cfg.max_val_windows, cfg.train.seed)
    tax = train_ann.taxonomy
    fill_model_dims(cfg.head, bank, num_verbs=tax.num_verbs, num_nouns=tax.num_nouns)
    cfg.features = list(keys.values())
    return train(cfg.head, cfg.train, train_windows=train_win, val_windows=val_win, bank=bank, run_dir=cfg.out,
                 full_cfg=cfg, resume=cfg.resume, overwrite=cfg.overwrite)


def _run(cfg: TrainHeadsConfig) -> int:
    metrics = train_from_config(cfg)
    print(f"{cfg.out}: best {metrics['select_metric']} {metrics['best']:.4f} at epoch {metrics['best_epoch']}")
    return 0


def main(argv: Sequence[str]) -> int:
    return run_command("train-heads", TrainHeadsConfig, argv, _run, "train a forecasting head on cached features")
