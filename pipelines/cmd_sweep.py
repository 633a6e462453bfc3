"""`lta sweep`: head configs x a grid over keys, over the same feature cache; a results table sorted by val ED.

    lta sweep configs=[pipelines/configs/slowfast_concat.yaml] grid="{train.lr: [1e-3, 3e-4], train.batch_size: [32, 64]}"

Jobs are every config times every combination of the grid's values (`grid.train.lr=[1e-3,3e-4]` works too).
Each trains into its own `<out>/<name>` exactly as `lta train-heads config=... <grid values>` would; names
are the config's stem plus the grid values, and unique. Every job's config (keys, values, registry
names, data and store roots) is checked before anything is launched, so a typo costs nothing on SLURM.
Launchers (as every command): `none` (this process, `n_jobs` joblib workers), `local` (submitit local
subprocesses) or `slurm` (a submitit job array). `<out>/results.md` and `results.json` hold the table.
"""
from __future__ import annotations

import itertools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from pipelines.common import RunFailure, UsageError, run_command
from pipelines.config import opt
from pipelines.slurm_options import SlurmOptions

log = logging.getLogger(__name__)


@dataclass
class SweepConfig(SlurmOptions):
    data: str = opt("data/long_term_anticipation", "dataset root")
    store: str = opt("cache/features", "feature store root")
    configs: list[str] = opt(["pipelines/configs/slowfast_concat.yaml", "pipelines/configs/slowfast_transformer.yaml"],
                             "train-heads config files to run")
    grid: dict[str, Any] = opt({}, "train-heads key -> list of values; every combination is a job, "
                                   "e.g. {train.lr: [1e-3, 3e-4]}")
    overrides: list[str] = opt([], "key=value overrides applied to every job (e.g. train.epochs=5)")
    out: str = opt("runs/sweep", "parent dir of the run dirs")
    launcher: str = opt("none", "none (this process, n_jobs joblib workers) | local (submitit subprocesses) | "
                                "slurm (submitit job array)")
    n_jobs: int = opt(1, "launcher=none: jobs trained at the same time")
    RENAMED_KEYS: ClassVar[dict] = {"slurm_timeout_min": "slurm_time_min"}  # one SLURM time key for every command


@dataclass
class Job:
    name: str  # unique run dir name under `out`
    config: str  # config file
    grid: dict[str, Any]  # this job's grid values
    argv: list[str]  # train-heads argv


def _flatten(grid: dict, prefix: str = "") -> dict[str, list]:
    """{a: {b: [1, 2]}} or {a.b: [1, 2]} -> {"a.b": [1, 2]}; a single value is a one-value axis."""
    out: dict[str, list] = {}
    for key, value in grid.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, (list, tuple)) else [value]
    return out


def _value_text(value: Any) -> str:
    """A grid value as a `key=value` override (lists / dicts in OmegaConf flow syntax)."""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "null" if value is None else str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_") or "job"


def plan_jobs(cfg: SweepConfig) -> list[Job]:
    """Every config x grid combination as a train-heads job with a unique run dir name."""
    grid = _flatten(dict(cfg.grid))
    for key, values in grid.items():
        if not values:
            raise UsageError(f"grid.{key}: no values; give a list such as grid.{key}=[a,b]")
    stems = [Path(c).stem for c in cfg.configs]
    names = [f"{Path(c).parent.name}_{Path(c).stem}" if stems.count(Path(c).stem) > 1 else Path(c).stem
             for c in cfg.configs]
    jobs: list[Job] = []
    seen: set[str] = set()
    for config_file, base in zip(cfg.configs, names):
        for combo in itertools.product(*grid.values()):
            values = dict(zip(grid, combo))
            name = _slug(base + "".join(f"__{k.split('.')[-1]}={_value_text(v)}" for k, v in values.items()))
            unique, i = name, 2
            while unique in seen:
                unique, i = f"{name}-{i}", i + 1
            seen.add(unique)
            argv = [f"config={config_file}", f"data={cfg.data}", f"store={cfg.store}", f"out={Path(cfg.out) / unique}",
                    *cfg.overrides, *(f"{k}={_value_text(v)}" for k, v in values.items())]
            jobs.append(Job(unique, config_file, values, argv))
    return jobs


def validate_jobs(jobs: list[Job]) -> None:
    """Parse and check every job's config (keys, types, registry names, paths) before any is launched.

    Raises:
        UsageError: the first bad job, named, with the config error.
    """
    from pipelines.cmd_train_heads import TrainHeadsConfig, check_config
    from pipelines.config import parse_config
    from train_heads.run import holds_run

    taken = []
    for job in jobs:
        try:
            cfg = parse_config(TrainHeadsConfig, job.argv, "train-heads")
            check_config(cfg)
        except UsageError as err:
            raise UsageError(f"job {job.name} ({job.config}{', ' + str(job.grid) if job.grid else ''}): {err}; "
                             f"nothing was launched") from None
        if not (cfg.resume or cfg.overwrite) and holds_run(cfg.out):  # train-heads would refuse this job
            taken.append(str(cfg.out))
    if taken:
        raise UsageError(f"{len(taken)} of {len(jobs)} run dirs already hold a trained run ({', '.join(taken[:3])}"
                         f"{', ...' if len(taken) > 3 else ''}); pass overrides=[resume=true] to continue them, "
                         f"overrides=[overwrite=true] to replace them, or another out=DIR; nothing was launched")


def train_one(argv: list[str]) -> dict:
    """Train one config (module-level so joblib/submitit can pickle it)."""
    from pipelines.cli import setup_logging
    from pipelines.cmd_train_heads import TrainHeadsConfig, train_from_config
    from pipelines.config import parse_config

    setup_logging()
    return train_from_config(parse_config(TrainHeadsConfig, argv))


def results_table(rows: list[dict]) -> str:
    """Markdown table sorted by val action ED (then verb ED)."""
    rows = sorted(rows, key=lambda r: (r.get("action_ed", float("inf")), r.get("verb_ed", float("inf"))))
    lines = ["| job | val action ED | val verb ED | val noun ED | best epoch | grid values | run dir |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        grid = ", ".join(f"{k}={_value_text(v)}" for k, v in r.get("grid", {}).items())
        if "error" in r:
            lines.append(f"| {r.get('name', r['config'])} | failed: {r['error']} | | | | {grid} | {r['run']} |")
        else:
            lines.append(f"| {r.get('name', r['config'])} | {r['action_ed']:.4f} | {r['verb_ed']:.4f} | "
                         f"{r['noun_ed']:.4f} | {r['best_epoch']} | {grid} | {r['run']} |")
    return "\n".join(lines)


def _row(config_file: str, run: Path, metrics: dict | None, error: str = "") -> dict:
    row = {"config": Path(config_file).stem, "run": str(run)}
    if error or metrics is None:
        row["error"] = error or "no metrics"
        return row
    gen = metrics["select_metric"].split(".")[1]
    best = metrics.get("best_val", {})
    row.update({w: best.get(f"model.{gen}.{w}", float("nan")) for w in ("action_ed", "verb_ed", "noun_ed")})
    row["best_epoch"] = metrics["best_epoch"]
    return row


def _run(cfg: SweepConfig) -> int:
    from pipelines.checks import LAUNCHERS, check_choice, check_file

    check_choice("launcher", cfg.launcher, list(LAUNCHERS), "launcher")
    if not cfg.configs:
        raise UsageError("configs=[]: give at least one train-heads config file")
    for c in cfg.configs:
        check_file("configs", c, "train-heads config file")
    jobs = plan_jobs(cfg)
    validate_jobs(jobs)
    log.info("sweep: %d job(s) %s", len(jobs), [j.name for j in jobs])
    if cfg.launcher == "none":
        from joblib import Parallel, delayed

        outs = Parallel(n_jobs=cfg.n_jobs, backend="loky")(delayed(_safe)(j.argv) for j in jobs)
    else:
        from extract import launch

        params = cfg.slurm_params()
        outs = launch.run_array(_safe, [j.argv for j in jobs], launcher=cfg.launcher,
                                folder=Path(cfg.out) / ".submitit", params=params, job_name="lta-sweep")
    outs = [o if o is not None else (None, "the job ended without a result (see its log)") for o in outs]
    rows = []
    for job, (metrics, error) in zip(jobs, outs):
        row = _row(job.config, Path(cfg.out) / job.name, metrics, error)
        row.update(name=job.name, grid=job.grid)
        rows.append(row)
    table = results_table(rows)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "results.md").write_text(table + "\n")
    (Path(cfg.out) / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table)
    failed = [r["name"] for r in rows if "error" in r]
    if failed:
        raise RunFailure(f"{len(failed)} of {len(rows)} sweep jobs failed ({', '.join(failed[:5])}"
                         f"{', ...' if len(failed) > 5 else ''}); their errors are in {Path(cfg.out) / 'results.md'}")
    return 0


def _safe(argv: list[str]) -> tuple[dict | None, str]:
    try:
        return train_one(argv), ""
    except Exception as err:  # reported per config in the results table
        logging.getLogger(__name__).exception("sweep job failed: %s", argv)
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"


def main(argv: Sequence[str]) -> int:
    return run_command("sweep", SweepConfig, argv, _run, "train several head configs over one cache, sorted by val ED")
