"""`lta train-heads`: train a forecasting head on cached features into a run dir."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pipelines.common import UsageError, run_command
from pipelines.config import opt
from train_heads.schemas import ModelConfig, TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainHeadsConfig:
    data: str = opt("data/long_term_anticipation", "dataset root (holds annotations/)")
    store: str = opt("cache/features", "feature store root (<root>/<key>.zarr)")
    features: list[str] = opt([], "cache keys, one per head.modalities entry; empty = match by modality name")
    out: str = opt("runs/head", "run dir to write")
    reference: str = opt("", "what this config reproduces (set by the reference configs); set = evaluate / predict / "
                             "report follow the reference's procedure by default (train_heads/protocol.py)")
    num_seen: int = opt(8, "observed segments defining the val/test key set (challenge: 8); >= head.num_input")
    convention: str = opt("plus_one", "val/test window range: plus_one (superset) or challenge")
    max_val_windows: int = opt(0, "score per-epoch val on a random subset (0 = all)")
    resume: bool = opt(False, "continue from <out>/checkpoints/last.pt")
    overwrite: bool = opt(False, "replace a run already in <out> (without it or resume=true that is an error)")
    head: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "model: modalities, aggregator, decoder"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "optimisation and evaluation"})


def check_config(cfg: TrainHeadsConfig, *, paths: bool = True) -> None:
    """Registry names, `*_kwargs` keys, choices, device and (with `paths`) the data / store roots of `cfg`,
    checked before any data is loaded.

    Raises:
        UsageError: one line naming the key, the value and the valid choices.
    """
    from pipelines.checks import check_at_least

    h, t = cfg.head, cfg.train  # the numbers first: no torch import needed to refuse train.epochs=0
    check_at_least([("train.epochs", t.epochs, 1), ("train.batch_size", t.batch_size, 1),
                    ("train.eval_batch_size", t.eval_batch_size, 1), ("train.num_sequences", t.num_sequences, 1),
                    ("train.warmup_steps", t.warmup_steps, 0), ("train.log_every", t.log_every, 1),
                    ("train.patience", t.patience, 0), ("train.max_train_windows", t.max_train_windows, 0),
                    ("head.num_input", h.num_input, 1), ("head.num_future", h.num_future, 1),
                    ("num_seen", cfg.num_seen, 1), ("max_val_windows", cfg.max_val_windows, 0)])
    if not t.lr > 0:
        raise UsageError(f"train.lr={t.lr}: must be > 0")
    from features.windows import CONVENTIONS
    from pipelines.checks import (check_choice, check_data_root, check_device, check_generators_fit,
                                  check_kwargs, check_registry, check_store_root)
    from train_heads.aggregators import AGGREGATORS
    from train_heads.decoders import DECODERS
    from train_heads.generators import GENERATORS
    from train_heads.model import NORMALIZERS, PROJECTION_INITS
    from train_heads.schemas import OPTIMIZERS, SELECT_METRICS, VIEW_DRAWS

    if paths:
        check_data_root("data", cfg.data, ["train", "val"])
        check_store_root("store", cfg.store)
    check_registry("head.aggregator", h.aggregator, AGGREGATORS)
    check_kwargs("head.aggregator_kwargs", dict(h.aggregator_kwargs), AGGREGATORS.get(h.aggregator),
                 filled=("dim", "num_input"))
    check_registry("head.decoder", h.decoder, DECODERS)
    check_kwargs("head.decoder_kwargs", dict(h.decoder_kwargs), DECODERS.get(h.decoder),
                 filled=("dim_in", "token_dim", "num_future", "num_verbs", "num_nouns"))
    for i, m in enumerate(h.modalities):
        check_choice(f"head.modalities.{i}.normalize", m.normalize, list(NORMALIZERS), "normalize mode")
        check_choice(f"head.modalities.{i}.frame_pool", m.frame_pool, ["mean", "attention"], "frame pooling")
        check_choice(f"head.modalities.{i}.proj_init", m.proj_init, list(PROJECTION_INITS), "projection init")
    check_choice("train.optimizer", t.optimizer, list(OPTIMIZERS), "optimizer")
    check_choice("train.select_metric", t.select_metric, list(SELECT_METRICS), "select metric")
    check_choice("train.view_draw", t.view_draw, list(VIEW_DRAWS), "view draw")
    if not 0.0 <= t.flip_prob <= 1.0:
        raise UsageError(f"train.flip_prob={t.flip_prob}: a probability, in [0, 1]")
    check_registry("train.val_generator", t.val_generator, GENERATORS)
    check_generators_fit("train.val_generator", [t.val_generator], h.decoder)
    check_choice("convention", cfg.convention, list(CONVENTIONS), "convention")
    check_device("train.device", t.device)


def train_from_config(cfg: TrainHeadsConfig) -> dict:
    """Load features and windows as `cfg` says, train, and return the run's metrics (of the run as it is, when
    `resume=true` finds it finished and `cfg` asks for no more epochs: then a line says so)."""
    from train_heads.inputs import fill_model_dims, load_bank, resolve_feature_keys, split_windows, subset_windows
    from train_heads.resume import check_resume_config, finished_run_note, prepare_run_dir
    from train_heads.run import checkpoint_path, read_metrics
    from train_heads.train import train

    # before any data is loaded: the cache keys, the run dir, and on resume that the config is the run's
    keys = resolve_feature_keys(cfg.store, [m.name for m in cfg.head.modalities], cfg.features)  # UsageError
    cfg.features = list(keys.values())
    prepare_run_dir(cfg.out, resume=cfg.resume, overwrite=cfg.overwrite)
    if cfg.resume and checkpoint_path(cfg.out, "last").is_file():
        check_resume_config(Path(cfg.out), cfg, before_loading=True)
        note = finished_run_note(Path(cfg.out), cfg.train.epochs)
        if note:
            print(note)
            return read_metrics(cfg.out)
    # absolute paths in the run's config.yaml: evaluate / predict / report work from any directory
    # and the run dir they were recorded from, so a run dir copied with its data and store reads the copies
    cfg.data, cfg.store, cfg.out = (str(Path(p).resolve()) for p in (cfg.data, cfg.store, cfg.out))
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
    return train(cfg.head, cfg.train, train_windows=train_win, val_windows=val_win, bank=bank, run_dir=cfg.out,
                 full_cfg=cfg, resume=cfg.resume, overwrite=cfg.overwrite)


def _run(cfg: TrainHeadsConfig) -> int:
    check_config(cfg)
    out = cfg.out  # as given (train_from_config records it absolute)
    metrics = train_from_config(cfg)
    print(f"{out}: best {metrics['select_metric']} {metrics['best']:.4f} at epoch {metrics['best_epoch']}")
    return 0


def main(argv: Sequence[str]) -> int:
    return run_command("train-heads", TrainHeadsConfig, argv, _run, "train a forecasting head on cached features")
