"""`TrainOptions`: the arguments of `extract.finetune.train.finetune`, one definition for the trainer and the CLI.

`lta finetune-backbone` (pipelines/cmd_finetune.py) inherits this dataclass, so every key here is a command
key with this default and help string; the command adds only what the launch needs (launcher, nodes, overwrite,
the slurm_* keys). Plain dataclass, no torch: `--help` and config validation import nothing heavy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from features.options import opt
from features.run_dir import RunLayout

CHECKPOINT = "checkpoints/last.pt"  # in the run dir `out`
FAILURES = "failures.jsonl"
# the run-dir policy of finetune-backbone (features.run_dir.prepare_run_dir): a `checkpoints/last.pt` marks a run;
# overwrite=true removes what training writes (failures.jsonl, appended to, and config.yaml stay)
RUN_LAYOUT = RunLayout(marks=(CHECKPOINT,),
                       outputs=("checkpoints", "tensorboard", "metrics.jsonl", "backbone.pt", "backbone.json", "heads.pt"),
                       describe=lambda run_dir: f"run ({run_dir / CHECKPOINT})")


@dataclass
class TrainOptions:
    """Arguments of `finetune` (None = the backbone's recipe, extract.finetune.model.RECIPES)."""

    data: str = opt("data/long_term_anticipation", "dataset root (annotations/, clips/)")
    out: str = opt("runs/finetune", "run directory (checkpoints, backbone.pt, tensorboard/)")
    backbone: str = opt("slowfast_r101_8x8", "slowfast_r101_8x8 | slowfast_r50_8x8 | mvit_b_16x4")
    init: str = opt("kinetics", "kinetics[:PATH] | ego4d:PATH | random")
    train_split: str = opt("train", "split trained on")
    val_split: Optional[str] = opt("val", "split validated each epoch (empty = none)")
    resized: bool = opt(True, "read clips/ (short side 320); false reads clips_hq/")
    lr: Optional[float] = opt(None, "base LR (default: the recipe's, 1e-4 SlowFast / 1e-2 MViT)")
    epochs: Optional[int] = opt(None, "epochs (default: 30 SlowFast / 40 MViT)")
    batch_size: Optional[int] = opt(None, "effective batch over all GPUs and accumulation (default 64)")
    accum_steps: int = opt(1, "gradient accumulation micro-steps per optimiser step")
    momentum: float = opt(0.9, "SGD momentum (nesterov)")
    nesterov: bool = opt(True, "nesterov momentum")
    weight_decay: float = opt(1e-4, "weight decay of non-BatchNorm parameters")
    bn_weight_decay: float = opt(0.0, "weight decay of BatchNorm parameters")
    warmup_steps: int = opt(1000, "linear warm-up optimiser steps before the cosine")
    dropout: float = opt(0.5, "dropout before the verb/noun heads")
    flip_prob: float = opt(0.5, "horizontal flip probability (the reference flips always: a bug)")
    bn_mode: str = opt("train", "train (batch stats) | frozen (BN in eval mode, for tiny per-GPU batches)")
    width_per_group: Optional[int] = opt(None, "SlowFast width override (64 = reference; small for CPU tests)")
    crop_size: Optional[int] = opt(None, "crop override (224 = reference); short sides scale with it")
    num_frames: Optional[int] = opt(None, "frame-count override (window length kept)")
    num_workers: int = opt(8, "DataLoader decoding workers per process")
    seed: int = opt(0, "seed of init, data order and augmentation")
    max_steps: int = opt(0, "stop after this many optimiser steps (0 = all epochs; schedule unchanged)")
    log_every: int = opt(20, "log a line every N steps")
    ckpt_every: int = opt(500, "write checkpoints/last.pt every N steps (and at every epoch end)")
    val_every: int = opt(1, "validate every N epochs")
    device: str = opt("auto", "auto | cpu | cuda")
    precision: str = opt("auto", "auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32")
    resume: bool = opt(False, "continue from out/checkpoints/last.pt (a SLURM requeue always resumes); false "
                              "starts over, and the command refuses a run dir that holds one without overwrite=true")
    max_failed_frac: float = opt(0.01, "exit 1 before training when bad clips (out/failures.jsonl) drop more than "
                                       "this fraction of segments")
