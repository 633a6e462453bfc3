"""`lta finetune-backbone`: fine-tune SlowFast / MViT on Ego4D verb+noun recognition (one sample per segment).

    lta finetune-backbone data=DIR backbone=slowfast_r101_8x8 init=kinetics out=runs/ft_sf101
    torchrun --nproc_per_node 8 -m pipelines.cli finetune-backbone data=DIR out=RUN   # one node, 8 GPUs
    lta finetune-backbone data=DIR out=RUN launcher=slurm nodes=2 gpus_per_node=8 partition=learnfair

The run dir then feeds `lta extract` (`weights=RUN` for a slowfast_r101_8x8.* extractor), see extract/finetune/.
Resuming is automatic: re-running the same command continues from RUN/checkpoints/last.pt.
Bad clips are listed in RUN/failures.jsonl and their segments dropped; past `max_failed_frac` the command
exits 1 before training.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from pipelines.common import run_command
from pipelines.config import opt, to_yaml

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    data: str = opt("data/long_term_anticipation", "dataset root (annotations/, clips/)")
    out: str = opt("runs/finetune", "run directory (checkpoints, backbone.pt, tb/)")
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
    resume: bool = opt(True, "continue from out/checkpoints/last.pt when it exists")
    max_failed_frac: float = opt(0.01, "exit 1 before training when bad clips (out/failures.jsonl) drop more than this fraction of segments")
    launcher: str = opt("local", "local (this process / torchrun) | slurm (submitit)")
    nodes: int = opt(1, "SLURM nodes")
    gpus_per_node: int = opt(8, "SLURM GPUs (= tasks) per node")
    cpus_per_task: int = opt(10, "SLURM CPUs per task (decoding workers)")
    mem_gb: int = opt(0, "SLURM memory per node in GB (0 = cluster default)")
    timeout_min: int = opt(4320, "SLURM time limit; on timeout the job requeues and resumes")
    partition: str = opt("", "SLURM partition")
    account: str = opt("", "SLURM account")
    constraint: str = opt("", "SLURM constraint, e.g. volta32gb")
    slurm_cluster: str = opt("slurm", "submitit cluster: slurm | local | debug (the last two for testing)")


def train_options(cfg: FinetuneConfig):
    """The one mapping from the CLI schema to `extract.finetune.train.TrainOptions`."""
    from extract.finetune.train import TrainOptions

    names = {f.name for f in dataclasses.fields(TrainOptions)}
    return TrainOptions(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in names})


class SlurmTrainJob:
    """submitit callable: one task per GPU; sets the torch.distributed env and trains. Requeues on timeout."""

    def __init__(self, opts):
        self.opts = opts

    def __call__(self) -> dict:
        import submitit

        from pipelines.cli import setup_logging

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            os.environ.update(
                RANK=str(env.global_rank), LOCAL_RANK=str(env.local_rank), WORLD_SIZE=str(env.num_tasks),
                MASTER_ADDR=env.hostnames[0], MASTER_PORT=str(20000 + int(str(env.job_id).split("_")[0]) % 20000),
            )
        setup_logging()
        from extract.finetune.train import finetune

        result = finetune(self.opts)
        return {k: v for k, v in result.items() if k not in ("spec", "model")}

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmTrainJob(dataclasses.replace(self.opts, resume=True)))


def submit_slurm(cfg: FinetuneConfig, opts):
    """Submit `opts` as a SLURM job of nodes x gpus_per_node tasks; returns the submitit Job."""
    import submitit

    folder = Path(cfg.out) / "slurm"
    executor = submitit.AutoExecutor(folder=str(folder), cluster=None if cfg.slurm_cluster == "slurm" else cfg.slurm_cluster)
    params = dict(name=f"lta-ft-{Path(cfg.out).name}", nodes=cfg.nodes, tasks_per_node=cfg.gpus_per_node,
                  gpus_per_node=cfg.gpus_per_node, cpus_per_task=cfg.cpus_per_task, timeout_min=cfg.timeout_min)
    if cfg.mem_gb:
        params["mem_gb"] = cfg.mem_gb
    slurm = {"slurm_partition": cfg.partition, "slurm_account": cfg.account, "slurm_constraint": cfg.constraint}
    params.update({k: v for k, v in slurm.items() if v})
    if cfg.slurm_cluster == "slurm":
        params["slurm_signal_delay_s"] = 120
    else:  # local / debug executors take the generic keys only
        params = {k: v for k, v in params.items() if not k.startswith("slurm_") and k not in ("nodes", "gpus_per_node")}
        params["tasks_per_node"] = 1
    executor.update_parameters(**params)
    job = executor.submit(SlurmTrainJob(opts))
    log.info("submitted job %s (%d nodes x %d GPUs); logs in %s", job.job_id, cfg.nodes, cfg.gpus_per_node, folder)
    return job


def _run(cfg: FinetuneConfig) -> int:
    opts = train_options(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "config.yaml").write_text(to_yaml(cfg))
    if cfg.launcher == "slurm":
        job = submit_slurm(cfg, opts)
        if cfg.slurm_cluster == "debug":
            job.result()  # the debug executor runs the job in this process on result()
        return 0
    if cfg.launcher != "local":
        raise ValueError(f"unknown launcher {cfg.launcher!r}; expected local or slurm")
    from extract.finetune.train import TooManyFailures, finetune

    try:
        result = finetune(opts)
    except TooManyFailures as err:
        log.error("%s", err)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        log.info("done: step %d | val %s | %.2f samples/s | data wait %.0f%% | %d segments dropped, %d decode failures",
                 result["step"], result["val"], result["samples_per_sec"], 100 * result["data_wait_share"],
                 result["dropped"], result["decode_failures"])
    return 0


def main(argv: Sequence[str]) -> int:
    return run_command("finetune-backbone", FinetuneConfig, argv, _run, "fine-tune a video backbone on Ego4D verb/noun recognition")
