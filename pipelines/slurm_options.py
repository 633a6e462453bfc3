"""The `slurm_*` keys: one definition for every command that launches jobs (`launcher=slurm`).

A command's config inherits them with its own defaults, e.g. `class ResizeConfig(slurm_options(gpus=0, cpus=4,
mem_gb=8, time_min=120))`; `cfg.slurm_params()` turns them into the `extract.launch.SlurmParams` of one job.
A command never declares a `slurm_*` field itself (tests/test_slurm_options.py checks that).

The defaults fit a typical GPU node: one job per GPU with 8 CPUs and 32 GB each, so 8 jobs fill an 8-GPU node
with 64 CPUs and 256 GB (a DGX-1 / p3.16xlarge / learnfair V100 node has 64-80 CPUs and 488-512 GB).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipelines.config import opt


@dataclass
class SlurmOptions:
    """sbatch options of each job submitted with launcher=slurm."""

    slurm_partition: str = opt("", "SLURM partition (--partition; '' = the cluster's default)")
    slurm_account: str = opt("", "SLURM account (--account; '' = your default)")
    slurm_constraint: str = opt("", "node features (--constraint), e.g. volta32gb")
    slurm_gpus: int = opt(1, "GPUs per job (--gpus-per-node)")
    slurm_cpus: int = opt(8, "CPUs per job (--cpus-per-task: decoding workers)")
    slurm_mem_gb: int = opt(32, "memory per job in GB (--mem; 0 = the cluster's default)")
    slurm_time_min: int = opt(240, "time limit per job in minutes (--time); near it the job gets USR2, "
                                   "checkpoints and requeues itself")

    def slurm_params(self, **fixed: Any):
        """The `extract.launch.SlurmParams` of one job; `fixed` overrides fields (e.g. gpus_per_node=0)."""
        from extract.launch import SlurmParams

        params = dict(partition=self.slurm_partition, account=self.slurm_account, constraint=self.slurm_constraint,
                      gpus_per_node=self.slurm_gpus, cpus_per_task=self.slurm_cpus, mem_gb=self.slurm_mem_gb,
                      timeout_min=self.slurm_time_min)
        return SlurmParams(**{**params, **fixed})


SLURM_KEYS = tuple(f.name for f in dataclasses.fields(SlurmOptions))
_SHORT = {"gpus": "slurm_gpus", "cpus": "slurm_cpus", "mem_gb": "slurm_mem_gb", "time_min": "slurm_time_min"}


def slurm_options(**defaults: Any) -> type:
    """`SlurmOptions` with other defaults (gpus / cpus / mem_gb / time_min), for a command's config to inherit."""
    unknown = set(defaults) - set(_SHORT)
    if unknown:
        raise TypeError(f"slurm_options: unknown defaults {sorted(unknown)}; valid: {sorted(_SHORT)}")
    fields = []
    for f in dataclasses.fields(SlurmOptions):
        new = {_SHORT[k]: v for k, v in defaults.items()}
        if f.name in new:
            fields.append((f.name, f.type, dataclasses.field(default=new[f.name], metadata=f.metadata)))
    name = "SlurmOptions_" + "_".join(f"{k}{v}" for k, v in sorted(defaults.items()))
    return dataclasses.make_dataclass(name, fields, bases=(SlurmOptions,), namespace={"__module__": __name__})
