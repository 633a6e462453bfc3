"""`lta finetune-backbone`: fine-tune SlowFast / MViT on Ego4D verb+noun recognition (one sample per segment).

    lta finetune-backbone data=DIR backbone=slowfast_r101_8x8 init=kinetics out=runs/ft_sf101
    torchrun --nproc_per_node 8 -m pipelines.cli finetune-backbone data=DIR out=RUN   # one node, 8 GPUs
    lta finetune-backbone data=DIR out=RUN launcher=slurm nodes=2 slurm_gpus=8 slurm_partition=learnfair

The run dir then feeds `lta extract` (`weights=RUN` for a slowfast_r101_8x8.* extractor), see extract/finetune/.
A run dir that holds a checkpoint is continued with resume=true (from RUN/checkpoints/last.pt) or replaced with
overwrite=true, as for `lta train-heads`; a SLURM requeue (timeout, preemption) resumes by itself.
Bad clips are listed in RUN/failures.jsonl and their segments dropped; past `max_failed_frac` the command
exits 1 before training.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

from extract.finetune.options import TrainOptions
from pipelines.common import run_command
from pipelines.config import opt, to_yaml
from pipelines.slurm_options import slurm_options

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig(slurm_options(gpus=8, mem_gb=0, time_min=4320), TrainOptions):
    """The trainer's options (extract.finetune.options.TrainOptions: data, out, backbone, lr, resume, ...), the
    slurm_* keys (pipelines.slurm_options) and the keys of the launch itself; none of them is declared twice."""

    overwrite: bool = opt(False, "replace a run already in out (without it or resume=true that is an error)")
    launcher: str = opt("none", "none (this process / torchrun) | local (a submitit local subprocess) | slurm (submitit)")
    nodes: int = opt(1, "SLURM nodes (slurm_gpus tasks each, one per GPU, slurm_cpus CPUs per task)")
    tasks_per_node: int = opt(0, "SLURM tasks (DDP ranks) per node; 0 = slurm_gpus (one per GPU); set it for CPU (gloo) runs")
    submitit_cluster: str = opt("slurm", "launcher=slurm: submitit cluster slurm, or local / debug (for testing)")
    # one name per knob across commands; the old names still work, with a one-line deprecation
    RENAMED_KEYS: ClassVar[dict] = {"timeout_min": "slurm_time_min", "partition": "slurm_partition",
                                    "account": "slurm_account", "constraint": "slurm_constraint",
                                    "mem_gb": "slurm_mem_gb", "cpus_per_task": "slurm_cpus",
                                    "gpus_per_node": "slurm_gpus", "slurm_cluster": "submitit_cluster"}


def train_options(cfg: FinetuneConfig) -> TrainOptions:
    """The trainer's part of the command's config (a plain TrainOptions, what the SLURM job pickles)."""
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
        from extract.launch import run_job_body

        def body() -> dict:
            result = finetune(self.opts)
            return {k: v for k, v in result.items() if k not in ("spec", "model")}

        # SIGTERM / SIGINT / submitit's USR2: stop after the current step with a checkpoint; after USR2
        # submitit calls checkpoint() below and requeues the job, which resumes from that checkpoint
        return run_job_body("finetune-backbone", body, portable_errors=False)

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmTrainJob(dataclasses.replace(self.opts, resume=True)))


def submit_slurm(cfg: FinetuneConfig, opts, cluster: str | None = None):
    """Submit `opts` as a SLURM job of nodes x tasks_per_node (default slurm_gpus) tasks (or one local / debug task); returns the submitit Job."""
    import submitit

    cluster = cluster or cfg.submitit_cluster
    folder = Path(cfg.out) / "slurm"
    executor = submitit.AutoExecutor(folder=str(folder), cluster=None if cluster == "slurm" else cluster)
    params = dict(name=f"lta-ft-{Path(cfg.out).name}", nodes=cfg.nodes, tasks_per_node=cfg.tasks_per_node or cfg.slurm_gpus,
                  gpus_per_node=cfg.slurm_gpus, cpus_per_task=cfg.slurm_cpus, timeout_min=cfg.slurm_time_min)
    if cfg.slurm_mem_gb:
        params["mem_gb"] = cfg.slurm_mem_gb
    slurm = {"slurm_partition": cfg.slurm_partition, "slurm_account": cfg.slurm_account,
             "slurm_constraint": cfg.slurm_constraint}
    params.update({k: v for k, v in slurm.items() if v})
    if cluster == "slurm":
        params["slurm_signal_delay_s"] = 120
    else:  # local / debug executors take the generic keys only
        params = {k: v for k, v in params.items() if not k.startswith("slurm_") and k not in ("nodes", "gpus_per_node")}
        params["tasks_per_node"] = 1
    executor.update_parameters(**params)
    job = executor.submit(SlurmTrainJob(opts))
    log.info("submitted job %s (%d nodes x %d GPUs); logs in %s", job.job_id, cfg.nodes, cfg.slurm_gpus, folder)
    return job


def _check(cfg: FinetuneConfig) -> None:
    """Launcher, cluster and the run dir (resume / overwrite, features.run_dir) checked before anything is written;
    under DDP every rank checks and rank 0 removes a run that overwrite=true replaces."""
    from extract.finetune.options import RUN_LAYOUT
    from features.run_dir import prepare_run_dir
    from pipelines.checks import LAUNCHERS, check_choice

    check_choice("launcher", cfg.launcher, list(LAUNCHERS), "launcher")
    check_choice("submitit_cluster", cfg.submitit_cluster, ["slurm", "local", "debug"], "submitit cluster")
    prepare_run_dir(cfg.out, RUN_LAYOUT, resume=cfg.resume, overwrite=cfg.overwrite,
                    remove=int(os.environ.get("RANK", "0")) == 0)


def _run(cfg: FinetuneConfig) -> int:
    from features.interrupt import grace_sec, stop_on_signals

    # SIGTERM / SIGINT: the current optimiser step finishes, a checkpoint is written and `Interrupted` reaches the
    # error boundary (pipelines.common.error_boundary: one line, exit 75; resume=true continues)
    grace = grace_sec() + (15.0 if cfg.launcher == "local" else 0.0)
    with stop_on_signals("finetune-backbone", grace=grace, message="finishing the current step, then checkpointing"):
        return _train(cfg)


def _train(cfg: FinetuneConfig) -> int:
    from extract import launch
    from features.interrupt import Interrupted, current

    _check(cfg)
    opts = train_options(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "config.yaml").write_text(to_yaml(cfg))
    if cfg.launcher == "local":  # one submitit local subprocess, waited for (as the other commands' launcher=local)
        job = submit_slurm(cfg, opts, cluster="local")
        launch._wait_local([job], current())  # a stop signal here is forwarded to the job
        out = job.result()
        if isinstance(out, launch.JobInterrupted):
            raise Interrupted(f"{out.message} (job {job.job_id}, log {job.paths.stderr})")
        return 0
    if cfg.launcher == "slurm":
        job = submit_slurm(cfg, opts)
        if cfg.submitit_cluster == "debug":
            job.result()  # the debug executor runs the job in this process on result()
        return 0
    from extract.finetune.train import finetune

    result = finetune(opts)  # TooManyFailures (a RunFailure: exit 1) before training when the probe drops too much
    if int(os.environ.get("RANK", "0")) == 0:
        log.info("done: step %d | val %s | %.2f samples/s | data wait %.0f%% | %d segments dropped, %d decode failures",
                 result["step"], result["val"], result["samples_per_sec"], 100 * result["data_wait_share"],
                 result["dropped"], result["decode_failures"])
    return 0


def main(argv: Sequence[str]) -> int:
    return run_command("finetune-backbone", FinetuneConfig, argv, _run, "fine-tune a video backbone on Ego4D verb/noun recognition")
