"""`lta sweep`: several head configs over the same feature cache; a results table sorted by val ED.

Each config trains into `<out>/<config stem>` exactly as `lta train-heads config=...` would.
Launchers: `local` (joblib processes, `n_jobs` at a time) or `slurm` (submitit, one job per config).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pipelines.common import run_command
from pipelines.config import opt

log = logging.getLogger(__name__)


@dataclass
class SweepConfig:
    data: str = opt("data/long_term_anticipation", "dataset root")
    store: str = opt("cache/features", "feature store root")
    configs: list[str] = opt(["pipelines/configs/slowfast_concat.yaml", "pipelines/configs/slowfast_transformer.yaml"],
                             "train-heads config files to run")
    overrides: list[str] = opt([], "key=value overrides applied to every config (e.g. train.epochs=5)")
    out: str = opt("runs/sweep", "parent dir of the run dirs")
    launcher: str = opt("local", "local (joblib) or slurm (submitit)")
    n_jobs: int = opt(1, "local: configs trained at the same time")
    slurm_partition: str = opt("", "slurm: partition")
    slurm_gpus: int = opt(1, "slurm: GPUs per job")
    slurm_timeout_min: int = opt(240, "slurm: time limit per job, minutes")


def _argv(cfg: SweepConfig, config_file: str) -> list[str]:
    return [f"config={config_file}", f"data={cfg.data}", f"store={cfg.store}",
            f"out={Path(cfg.out) / Path(config_file).stem}", *cfg.overrides]


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
    lines = ["| config | val action ED | val verb ED | val noun ED | best epoch | run dir |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | failed: {r['error']} | | | | {r['run']} |")
        else:
            lines.append(f"| {r['config']} | {r['action_ed']:.4f} | {r['verb_ed']:.4f} | {r['noun_ed']:.4f} | "
                         f"{r['best_epoch']} | {r['run']} |")
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
    for c in cfg.configs:
        if not Path(c).is_file():
            print(f"lta sweep: config file not found: {c}")
            return 2
    jobs = [_argv(cfg, c) for c in cfg.configs]
    results: list[dict | None] = []
    errors: list[str] = []
    if cfg.launcher == "local":
        from joblib import Parallel, delayed

        outs = Parallel(n_jobs=cfg.n_jobs, backend="loky")(delayed(_safe)(a) for a in jobs)
        results, errors = [o[0] for o in outs], [o[1] for o in outs]
    elif cfg.launcher == "slurm":
        import submitit

        ex = submitit.AutoExecutor(folder=str(Path(cfg.out) / "slurm"))
        ex.update_parameters(timeout_min=cfg.slurm_timeout_min, gpus_per_node=cfg.slurm_gpus,
                             **({"slurm_partition": cfg.slurm_partition} if cfg.slurm_partition else {}))
        handles = [ex.submit(train_one, a) for a in jobs]
        for h in handles:
            try:
                results.append(h.result())
                errors.append("")
            except Exception as err:  # a failed job is reported in the table, the others still count
                results.append(None)
                errors.append(str(err).splitlines()[0][:200])
    else:
        print(f"lta sweep: unknown launcher {cfg.launcher!r}; available: ['local', 'slurm']")
        return 2
    rows = [_row(c, Path(cfg.out) / Path(c).stem, m, e) for c, m, e in zip(cfg.configs, results, errors)]
    table = results_table(rows)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "results.md").write_text(table + "\n")
    (Path(cfg.out) / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table)
    return 1 if any("error" in r for r in rows) else 0


def _safe(argv: list[str]) -> tuple[dict | None, str]:
    try:
        return train_one(argv), ""
    except Exception as err:  # reported per config in the results table
        logging.getLogger(__name__).exception("sweep job failed: %s", argv)
        return None, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"


def main(argv: Sequence[str]) -> int:
    return run_command("sweep", SweepConfig, argv, _run, "train several head configs over one cache, sorted by val ED")
