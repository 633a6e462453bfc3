"""Config schemas of the forecasting head and its training (plain dataclasses, no torch import).

They live apart from `model.py` / `train.py` so that `lta train-heads --help` and config validation
never import torch. `model.py` and `train.py` re-export them, so `from train_heads.train import
TrainConfig` keeps working. Every field carries a one-line help string (`metadata["help"]`) that
`--help` prints next to its dotted key (`head.modalities.0.proj_dim`, `train.epochs`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from features.options import opt




@dataclass
class ModalityConfig:
    name: str = opt("slowfast", "extractor family; picks the store key whose name starts with it")
    proj_dim: int = opt(0, "output of the trainable input projection; 0 = no projection (keep D)")
    dropout: float = opt(0.5, "dropout before the projection (reference backbone head: 0.5)")
    frame_pool: str = opt("mean", "per-frame features (F, D): mean or attention")
    normalize: str = opt("none", "input scaling: none (reference), standardize (train-split z-score), l2")
    proj_init: str = opt("pytorch", "init of the input projection: pytorch (nn.Linear's default), normal_0.01 "
                                     "(the reference SlowFast head), trunc_normal_0.02 (the reference MViT head)")
    query_init_std: float = opt(0.02, "std of the attention pool's query token at init (Das & Ryoo: 1.0, randn)")
    in_dim: int = opt(0, "feature dim D, filled from the store at train time")
    frames: int = opt(0, "frames F for per-frame features (0 = one vector per segment), filled from the store")


@dataclass
class ModelConfig:
    modalities: list[ModalityConfig] = field(default_factory=lambda: [ModalityConfig()],
                                             metadata={"help": "one entry per input modality (head.modalities.0.*)"})
    num_input: int = opt(2, "observed segments N_in")
    num_future: int = opt(20, "forecast length Z")
    aggregator: str = opt("concat", "registered aggregator: concat, mean, transformer")
    aggregator_kwargs: dict[str, Any] = opt({}, "aggregator constructor options, e.g. {depth: 6, heads: 8}")
    decoder: str = opt("multihead", "registered decoder: multihead, query, autoregressive")
    decoder_kwargs: dict[str, Any] = opt({}, "decoder constructor options")
    recognition: bool = opt(True, "auxiliary (verb, noun) head on each observed segment")
    pair_prior: bool = opt(False, "keep a training verb-noun pair prior for the pair_sample generator (train_heads/pair_prior.py)")
    num_verbs: int = opt(0, "filled from the taxonomy at train time")
    num_nouns: int = opt(0, "filled from the taxonomy at train time")


OPTIMIZERS = ("adam", "adamw")
VIEW_DRAWS = ("segment", "window")
SELECT_METRICS = ("action_ed", "verb_ed")


@dataclass
class TrainConfig:
    epochs: int = opt(50, "training epochs (reference: 50)")
    batch_size: int = opt(64, "windows per step (reference: 64)")
    optimizer: str = opt("adam", "adam (reference) or adamw")
    lr: float = opt(1e-4, "peak learning rate")
    weight_decay: float = opt(1e-4, "weight decay (0 for the parameters train.no_decay picks)")
    warmup_steps: int = opt(1000, "linear warm-up iterations, then cosine to 0 at the last iteration; at least twice "
                                   "the run's steps is cut to a tenth of them, longer than the run warns")
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing")
    recognition_weight: float = opt(1.0, "weight of the observed-segment recognition loss (reference: 0, no such loss)")
    amp: bool = opt(True, "bf16 autocast on CUDA, ignored on the CPU (reference: false, fp32)")
    device: str = opt("auto", "auto (cuda if available), cpu, cuda, cuda:1, ...")
    seed: int = opt(0, "seeds init, batch order, views, dropout and val sampling")
    select_metric: str = opt("action_ed", "val metric for the best checkpoint: action_ed or verb_ed (reference)")
    patience: int = opt(10, "stop after this many epochs without val improvement (0 = never; the reference never stops early)")
    log_every: int = opt(50, "steps between log lines")
    val_generator: str = opt("sample", "generator for the per-epoch val ED")
    num_sequences: int = opt(5, "K, candidate sequences per window")
    eval_batch_size: int = opt(512, "windows per forward at evaluation")
    max_train_windows: int = opt(0, "use a random subset of the training windows (0 = all)")
    no_decay: str = opt("norm", "parameters without weight decay: norm (LayerNorm/BatchNorm layers) or bn_name "
                                 "(names containing 'bn', the reference's rule)")
    drop_last: bool = opt(False, "drop the last partial training batch (the reference's train loader does)")
    view_draw: str = opt("segment", "training views: segment (each observed segment draws any cached view, flips "
                                     "included) or window (the reference's: one flip per window, shared by its N_in "
                                     "segments, with probability train.flip_prob; temporal view per segment)")
    flip_prob: float = opt(0.5, "with view_draw=window: probability that a window is flipped (reference: 1.0, "
                                 "RANDOM_FLIP=True used as the probability)")
