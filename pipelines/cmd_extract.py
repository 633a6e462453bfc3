"""`lta extract data=DIR store=ROOT extractors=[...]`: decode each window once, cache embeddings in the store."""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from features.errors import check_failed_fraction
from features.files import atomic_write_json
from pipelines.common import RunFailure, UsageError, run_command
from pipelines.config import opt, to_yaml
from pipelines.slurm_options import SlurmOptions

log = logging.getLogger(__name__)


@dataclass
class ExtractConfig(SlurmOptions):
    data: str = opt("data/long_term_anticipation", "dataset root (annotations/, clips/)")
    store: str = opt("cache/features", "feature store root; one <key>.zarr per extractor")
    extractors: list[str] = opt(["slowfast_r101_8x8.ego4d", "clip_vit_b32.openai"], "extractor names (`lta extract --list` prints the table)")
    splits: list[str] = opt(["train", "val", "test"], "annotation splits whose segments become rows")
    views: int = opt(1, "temporal views per segment; view 0 is the centred window")
    num_input_clips: list[int] = opt([2, 4], "N_in values of the reference LTA loader to reproduce (all >= 2, or [1]); "
                                             "SlowFast stores one variant per (N_in, slot), see docs/fidelity.md")
    slow_pathway: str = opt("per_slot", "per_slot (the reference LTA slow frames, per N_in and slot) | "
                                        "slot_independent (one variant, recognition slow frames; cheaper, approximate)")
    linspace: str = opt("torch19", "torch19 (frame picks of the reference's torch 1.9) | torch (the installed torch)")
    precision: str = opt("fp32", "fp32 (the reference) | bf16 (autocast; faster on GPU, ~1e-3 relative error)")
    flip_views: bool = opt(False, "add a horizontally flipped copy of every view (views must be even)")
    device: str = opt("cuda", "cuda | cpu (no silent fallback)")
    batch_size: int = opt(32, "windows per model forward")
    shard: str = opt("0/1", "i/n: process the chunk-aligned row range of shard i of n")
    weights: str = opt("default", "default | random | PATH | RUN_DIR of finetune-backbone (for <arch>.<run name>) "
                                  "for all, or NAME:VALUE,NAME:VALUE per extractor")
    crop_size: int = opt(0, "crop override for every extractor (0: spec default; CPU-sized runs)")
    decode_workers: int = opt(2, "background decode threads")
    dtype: str = opt("float16", "stored dtype: float16 | float32")
    chunk_rows: int = opt(64, "store chunk rows (the unit of a shard's row range)")
    raw_clips: bool = opt(False, "read clips_hq/ instead of the resized clips/")
    max_failed_frac: float = opt(0.01, "exit 1 when more than this fraction of rows failed")
    lock_wait_sec: float = opt(120.0, "wait this long for a shard lock another run holds (a requeue while the old "
                                      "job still stops), then refuse; 0: refuse at once")
    launcher: str = opt("none", "none (this process) | local (submitit subprocesses) | slurm (submitit job array)")
    num_shards: int = opt(1, "shard jobs for launcher=local|slurm")
    progress: bool = opt(True, "tqdm progress bar over clips (on a terminal only, never into a pipe or file)")


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def parse_weights(text: str, extractors: Sequence[str]) -> dict[str, str]:
    """'random' -> every extractor; 'a.b:PATH,c.d:default' -> per extractor (others: default)."""
    if ":" not in text or Path(text).exists():
        return {name: text for name in extractors}
    out = {}
    for item in text.split(","):
        name, _, value = item.partition(":")
        if name not in extractors:
            raise ValueError(f"weights names {name!r}, which is not among extractors={list(extractors)}")
        out[name] = value
    return out


def summary_path(store: Path | str, shard: int, num_shards: int) -> Path:
    """`<store>/extract_summary.shard-<i>-of-<n>.json`: one shard's summary (racing shards never share a file)."""
    return Path(store) / f"extract_summary.shard-{shard}-of-{num_shards}.json"


def _write_json(path: Path, value) -> None:
    atomic_write_json(path, value, indent=1, default=str)


def extract_options(cfg: ExtractConfig, *, lock: bool = True):
    """The `extract.pipeline.ExtractOptions` of `cfg`'s shard (`lock=False`: the caller holds the shard lock).

    The keys map one to one but for `views` (num_views), `raw_clips` (resized), `shard` ("i/n": shard and
    num_shards), `weights` (text: one value per extractor) and `crop_size` (0: None); `max_failed_frac`,
    `launcher`, `num_shards` and `slurm_*` belong to the command, not to one shard.
    """
    from extract.pipeline import ExtractOptions

    shard, num_shards = parse_shard(cfg.shard)
    return ExtractOptions(
        data_dir=cfg.data, store_root=cfg.store, extractors=cfg.extractors, splits=cfg.splits, resized=not cfg.raw_clips,
        weights=parse_weights(cfg.weights, cfg.extractors), num_views=cfg.views, flip_views=cfg.flip_views,
        crop_size=cfg.crop_size or None, num_input_clips=list(cfg.num_input_clips), slow_pathway=cfg.slow_pathway,
        linspace=cfg.linspace, precision=cfg.precision, dtype=cfg.dtype, chunk_rows=cfg.chunk_rows, device=cfg.device,
        batch_size=cfg.batch_size, decode_workers=cfg.decode_workers, progress=cfg.progress, shard=shard,
        num_shards=num_shards, lock=lock, lock_wait_sec=cfg.lock_wait_sec,
    )


def run_shard(cfg: ExtractConfig, *, lock: bool = True) -> dict:
    """One shard in this process; returns the summary as a dict (also the body of a submitit job).

    The summary is also written to `summary_path(store, i, n)`. `lock=False`: the caller holds the shard lock.
    """
    from extract.pipeline import run_extraction
    from features.interrupt import Interrupted
    from pipelines.cli import setup_logging

    setup_logging()
    shard, num_shards = parse_shard(cfg.shard)
    interrupted = None
    try:
        summary = run_extraction(extract_options(cfg, lock=lock))
    except Interrupted as err:
        if not hasattr(err, "summary"):  # stopped before the shard started (waiting for its lock)
            raise
        interrupted, summary = err, err.summary
    log.info(summary.line())
    out = asdict(summary)
    out["decoded_per_used"] = summary.decode.decoded_per_used
    out.pop("decode")
    out["shard"] = f"{shard}/{num_shards}"
    out["interrupted"] = interrupted is not None  # a shard summary never reads as complete when it is not
    _write_json(summary_path(cfg.store, shard, num_shards), out)
    if interrupted is not None:
        raise interrupted
    return out


def _check_failures(summaries: list[dict], cfg: ExtractConfig) -> None:
    """Raises RunFailure (exit 1) when more than `max_failed_frac` of the rows failed (every row was attempted,
    and what was written is kept); fewer failures are logged."""
    failed = sum(s["rows_failed"] for s in summaries)
    total = sum(s["rows_total"] for s in summaries)
    where = summaries[0]["failures_path"] if summaries else "failures.jsonl"
    check_failed_fraction(failed, total, cfg.max_failed_frac, what="rows failed", where=where,
                          outcome="the rows written are kept")
    if failed:
        log.error("%d of %d rows failed; reasons in %s", failed, total, where)


def _validate(cfg: ExtractConfig) -> None:
    """Check the arguments and every split's annotations before anything is written.

    Raises:
        ValueError: a bad shard or weights value.
        AnnotationError: a malformed annotation file (naming the file and the record).
    """
    from extract.extractors import list_extractors
    from features.annotations import load_split
    from pipelines.checks import check_choice, check_data_root, check_device, check_split, did_you_mean

    for split in cfg.splits:
        check_split("splits", split)
    check_data_root("data", cfg.data, cfg.splits)
    known = list_extractors()
    if not cfg.extractors:
        raise UsageError(f"extractors=[]: give at least one extractor; valid: {known}")
    for name in cfg.extractors:  # open_clip names and fine-tuned runs are checked when built
        if name not in known and not (name.startswith("clip_") and "." in name) and cfg.weights in ("default", "random"):
            raise UsageError(f"extractors: unknown extractor {name!r}{did_you_mean(name, known)}; valid: {known}, "
                             f"clip_<open_clip arch>.<tag>, or <arch>.<run name> with weights=RUN_DIR")
    check_device("device", cfg.device, allow_auto=False)
    check_choice("dtype", cfg.dtype, ["float16", "float32"], "dtype")
    from extract.decode import LINSPACE_MODES
    from extract.extractors.table import PRECISIONS, SLOW_PATHWAYS

    check_choice("precision", cfg.precision, PRECISIONS, "precision")
    check_choice("slow_pathway", cfg.slow_pathway, SLOW_PATHWAYS, "slow pathway mode")
    check_choice("linspace", cfg.linspace, LINSPACE_MODES, "linspace mode")
    ns = sorted(set(cfg.num_input_clips))
    if not ns or ns[0] < 1 or (ns[0] == 1 and len(ns) > 1):
        raise UsageError(f"num_input_clips={list(cfg.num_input_clips)}: give N_in values >= 2, or just [1] (N_in=1 "
                         "has no 64-frame step, so its frames differ; extract it into a store of its own)")
    parse_shard(cfg.shard)
    parse_weights(cfg.weights, cfg.extractors)
    for split in cfg.splits:
        load_split(cfg.data, split)


# keys that change how extraction runs, not what it writes: a finished store stays finished when only these differ
OPERATIONAL_KEYS = ("device", "batch_size", "decode_workers", "progress", "launcher", "num_shards", "shard",
                    "max_failed_frac", "lock_wait_sec")


def _already_extracted(cfg: ExtractConfig) -> dict | None:
    """The summary of a finished extraction of exactly this config, or None (then extraction runs).

    Finished means: `<store>/extract_config.yaml` and `extract_summary.json` of a whole-store run, the same
    config apart from `OPERATIONAL_KEYS` (and `slurm_*`) and from how `data` / `store` are spelled (a relative
    path, a copied folder: the store is the one read here, and its rows must be today's annotations of `data`),
    default or random weights only (a weights file may have changed under the same path), and every listed
    store complete with the rows of today's annotations. Then no model is built and nothing is rewritten but
    extract_summary.json: a rerun with nothing to do takes a second.
    """
    from omegaconf import OmegaConf

    from features.annotations import load_split
    from features.store import FeatureStore, RowTable, store_path

    store = Path(cfg.store)
    cfg_file, summary_file = store / "extract_config.yaml", store / "extract_summary.json"
    if cfg.shard != "0/1" or not cfg_file.is_file() or not summary_file.is_file():
        return None
    if any(w not in ("default", "random") for w in parse_weights(cfg.weights, cfg.extractors).values()):
        return None
    try:
        before = OmegaConf.to_container(OmegaConf.load(cfg_file))
        now = OmegaConf.to_container(OmegaConf.create(to_yaml(cfg)))
        content = lambda c: {k: v for k, v in c.items()  # noqa: E731
                             if k not in (*OPERATIONAL_KEYS, "data", "store") and not k.startswith("slurm_")}
        summaries = json.loads(summary_file.read_text())
        if content(before) != content(now) or not isinstance(summaries, list) or len(summaries) != 1:
            return None
        summary = dict(summaries[0])
        rows = RowTable.from_annotations([load_split(cfg.data, s) for s in cfg.splits])
        keys = list(summary.get("store_keys") or [])
        if len(keys) != len(cfg.extractors):
            return None
        for key in keys:
            paths = [p for p in (store_path(store, key, "zarr"), store_path(store, key, "h5")) if p.exists()]
            if not paths:
                return None
            with FeatureStore.open(paths[0]) as s:
                if not s.rows.same_as(rows) or not bool(s.filled().all()):
                    return None
    except Exception as err:  # noqa: BLE001 - anything unreadable: extract normally (it reports real problems)
        log.debug("extract: not skipping (%s)", err)
        return None
    summary.update(rows_done=0, rows_failed=0, rows_skipped=len(rows), rows_total=len(rows), clips=0,
                   clips_failed=0, windows=0, wall_sec=0.0, model_sec=0.0, wait_sec=0.0, loop_sec=0.0,
                   interrupted=False, models_built=False)
    return summary


def _config_yaml(cfg: ExtractConfig) -> str:
    """`<store>/extract_config.yaml`: the config with absolute data / store paths (not the caller's relative ones)."""
    return to_yaml(ExtractConfig(**{**asdict(cfg), "data": str(Path(cfg.data).resolve()),
                                    "store": str(Path(cfg.store).resolve())}))


def _run(cfg: ExtractConfig) -> int:
    from features.interrupt import grace_sec, stop_on_signals

    # SIGTERM / SIGINT: the current clip is finished or abandoned, written clips stay, and `Interrupted`
    # propagates to the boundary (exit 75, resumable); a launcher forwards the signal to its local jobs and
    # waits for them, so it gets a longer grace
    grace = grace_sec() + (15.0 if cfg.launcher in ("local", "slurm") else 0.0)
    with stop_on_signals("extract", grace=grace, message="finishing the current batch, abandoning unfinished clips"):
        return _run_stoppable(cfg)


def _run_stoppable(cfg: ExtractConfig) -> int:
    from extract import launch
    from extract.pipeline import verify_stores
    from extract.shard_lock import ShardLayoutError, ShardLock, ShardLockedError
    from features.annotations import AnnotationError
    from features.store import StoreWriteError
    from pipelines.checks import LAUNCHERS, did_you_mean

    try:
        _validate(cfg)
    except (AnnotationError, UsageError):
        raise  # the message names the file / key and the record; nothing was written
    except ValueError as err:  # a bad shard or weights value
        raise UsageError(str(err)) from err
    store = Path(cfg.store)
    done = _already_extracted(cfg)
    if done is not None:
        _write_json(store / "extract_summary.json", [done])
        print(f"lta extract: nothing to do: all {done['rows_total']} rows of {', '.join(done['store_keys'])} are "
              f"already in {store} (same config; no model built)")
        return 0
    try:
        if cfg.launcher == "none":
            shard, num_shards = parse_shard(cfg.shard)
            # a second run of this shard waits up to lock_wait_sec, then stops here, having written nothing
            with ShardLock(store, shard, num_shards, wait_sec=cfg.lock_wait_sec):
                (store / "extract_config.yaml").write_text(_config_yaml(cfg))
                summaries = [run_shard(cfg, lock=False)]
                if num_shards == 1:  # the whole store: extract_summary.json as for a launcher
                    _write_json(store / "extract_summary.json", summaries)
        elif cfg.launcher in launch.LAUNCHERS:
            store.mkdir(parents=True, exist_ok=True)
            (store / "extract_config.yaml").write_text(_config_yaml(cfg))
            shard_cfgs = [ExtractConfig(**{**asdict(cfg), "shard": f"{i}/{cfg.num_shards}", "launcher": "none", "progress": False})
                          for i in range(cfg.num_shards)]
            params = cfg.slurm_params()
            summaries = launch.run_array(run_shard, shard_cfgs, launcher=cfg.launcher, folder=store / ".submitit",
                                         params=params, job_name="lta-extract")
            missing = verify_stores(cfg.store, summaries[0]["store_keys"])
            failed = sum(s["rows_failed"] for s in summaries)
            log.info("verify: %s rows unfilled per store (%d rows recorded as failed)", missing, failed)
            for key, n in missing.items():
                if n > failed:
                    raise RunFailure(f"store {key} is incomplete: {n} rows unfilled, only {failed} recorded failures")
            _write_json(store / "extract_summary.json", summaries)
        else:
            raise UsageError(f"launcher={cfg.launcher}: unknown launcher{did_you_mean(cfg.launcher, LAUNCHERS)}; "
                             f"valid: {list(LAUNCHERS)}")
    except (ShardLockedError, StoreWriteError, ShardLayoutError) as err:  # one line naming the lock / store and rows
        # (from a launcher's job too: run_array re-raises the job's exception with its job id and log path)
        if isinstance(err, StoreWriteError):
            # zarr writes a run's chunks concurrently: when one fails (full disk) its sibling writes are left
            # pending and asyncio logs them, with a traceback, when the process exits. The store is intact
            # (the rows stay unfinished) and the boundary's one line says all, so that noise is dropped (a rare
            # flake of test_faults_process's full-disk trial, seen with LTA_FAULT_SEED=2892052567)
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        raise RunFailure(f"{type(err).__name__}: {err}") from err
    _check_failures(summaries, cfg)
    return 0


def main(argv: Sequence[str]) -> int:
    if "--list" in argv:  # the extractor table, without building a model (no torch import)
        from extract.extractors.table import format_table

        print(format_table())
        return 0
    return run_command("extract", ExtractConfig, argv, _run,
                       "decode each window once and cache SlowFast / MViT / CLIP embeddings")
