"""`lta report`: a self-contained HTML page of a run on one split (ED table, ED@z curves, example windows)."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from pipelines.cmd_evaluate import EvaluateConfig
from pipelines.common import run_command
from pipelines.config import opt

log = logging.getLogger(__name__)
REPORT_CACHE = "report_cache"  # <run>/report_cache/metrics_<split>.json: the report's own evaluations


@dataclass
class ReportConfig:
    run: str = opt("runs/head", "run dir (from train-heads or import-checkpoint)")
    split: str = opt("val", "split to show; on test (no labels) predictions are not coloured")
    out: str = opt("", "HTML file to write; empty = <run>/report.html for split=val, <run>/report_<split>.html otherwise")
    overwrite: bool = opt(False, "replace an existing out file (without it that is an error)")
    windows: int = opt(6, "windows to show, drawn with `seed`")
    keys: list[str] = opt([], "window keys (<clip_uid>_<action_idx>) to show instead of drawn ones")
    seed: int = opt(0, "seed of the window draw and of the sampled sequences (same as lta predict)")
    checkpoint: str = opt("best", "checkpoint name in <run>/checkpoints")
    generator: str = opt("", "generation strategy of the shown sequences; empty = as lta predict (a reference run's reference procedure, else the one selected on val)")
    generators: list[str] = opt(list(EvaluateConfig().generators),
                                "generators of the ED table (as lta evaluate's; the shown one is added)")
    baselines: list[str] = opt(list(EvaluateConfig().baselines), "baselines of the ED table (as lta evaluate's)")
    temperature: Optional[float] = opt(None, "sampling temperature of every generator; unset = each one's own (1.0 for sample, greedy+sample, mbr, mbr_set, beam_search: the reference's; 0.4 for pair_sample)")
    mbr_samples: int = opt(64, "draws per window for the mbr generators")
    thumb_width: int = opt(160, "thumbnail width in pixels")
    data: str = opt("", "dataset root (default: the run's)")
    store: str = opt("", "feature store root (default: the run's)")
    device: str = opt("auto", "device for the model: auto (cuda if available), cpu, cuda, cuda:N")
    amp: Optional[bool] = opt(None, "bf16 autocast on CUDA; unset = the run's train.amp (false, fp32, for reference runs)")


def _table_settings(cfg: ReportConfig) -> tuple[list[str], list[str]]:
    """(generators, baselines) of the report's ED table: `generators` plus the shown generator, `baselines`."""
    generators = list(cfg.generators) + ([cfg.generator] if cfg.generator not in cfg.generators else [])
    return generators, list(cfg.baselines)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as err:  # a damaged file is recomputed, never shown
        log.warning("%s: unreadable (%s); evaluating again", path, err)
        return {}


def _split_metrics(cfg: ReportConfig, run: Any, data: str) -> dict:
    """The ED table's metrics: `<run>/metrics_<split>.json` (from `lta evaluate`) or the report's own
    `<run>/report_cache/metrics_<split>.json`, whichever has the fingerprint of this checkpoint with the table's
    settings; else a fresh `lta evaluate out=<the report's file>`. So the table is never stale nor a partial
    leftover, and the user's own evaluate results (which `lta predict` reads) are never rewritten."""
    from train_heads.fingerprint import evaluation_fingerprint, fingerprint_differences
    from train_heads.run import checkpoint_path

    generators, baselines = _table_settings(cfg)
    want = evaluation_fingerprint(checkpoint_file=checkpoint_path(run.run_dir, cfg.checkpoint), data=data,
                                  split=cfg.split, cache_keys=run.cache_keys, num_sequences=run.num_sequences,
                                  generators=generators, baselines=baselines, seed=cfg.seed, temperature=cfg.temperature,
                                  mbr_samples=cfg.mbr_samples)
    own = run.run_dir / REPORT_CACHE / f"metrics_{cfg.split}.json"
    for path in (run.run_dir / f"metrics_{cfg.split}.json", own):
        metrics = _read_json(path)
        differ = fingerprint_differences(metrics.get("fingerprint"), want)
        if not differ:
            return metrics
        if path.is_file():
            log.info("%s: not for checkpoint %r with the report's settings (%s differ)", path, cfg.checkpoint,
                     ", ".join(differ))
    from pipelines import cmd_evaluate

    argv = [f"run={cfg.run}", f"split={cfg.split}", f"checkpoint={cfg.checkpoint}", f"device={cfg.device}",
            f"seed={cfg.seed}", *([f"temperature={cfg.temperature}"] if cfg.temperature is not None else []),
            f"mbr_samples={cfg.mbr_samples}", *([f"amp={str(cfg.amp).lower()}"] if cfg.amp is not None else []),
            f"generators=[{','.join(generators)}]", f"baselines=[{','.join(baselines)}]", f"out={own}",
            *([f"data={cfg.data}"] if cfg.data else []), *([f"store={cfg.store}"] if cfg.store else [])]
    log.info("report: evaluating checkpoint %r for the ED table (lta evaluate %s)", cfg.checkpoint, " ".join(argv))
    if cmd_evaluate.main(argv) != 0:
        raise RuntimeError(f"lta evaluate {' '.join(argv)} failed; cannot build the report's ED table")
    metrics = _read_json(own)
    differ = fingerprint_differences(metrics.get("fingerprint"), want)
    if differ:
        raise RuntimeError(f"{own}: the evaluation does not match checkpoint {cfg.checkpoint!r} ({', '.join(differ)} "
                           "differ): did the run change while the report ran? Run lta report again")
    return metrics


def _provenance(store_root: str, cache_keys: dict[str, str]) -> tuple[dict[str, str], list[str], list[str]]:
    """(cache key -> description, random-weight keys, synthetic keys) from the stores' specs."""
    from features.store import FeatureStore, store_paths
    from train_heads.report import feature_provenance

    paths = {p.stem: p for p in store_paths(store_root)}
    described, random_keys, synthetic_keys = {}, [], []
    for key in cache_keys.values():
        if key not in paths:
            described[key] = f"store not found under {store_root}"
            continue
        store = FeatureStore.open(paths[key])
        kind, text = feature_provenance(store.spec)
        store.close()
        described[key] = text
        (random_keys if kind == "random" else synthetic_keys if kind == "synthetic" else []).append(key)
    return described, random_keys, synthetic_keys


def _thumbnails(data_dir: str, ann: Any, rows: Sequence[int], width: int) -> tuple[dict[int, tuple], dict[str, str]]:
    """ann row -> (jpeg bytes or None, reason) for the middle frame of each segment; clip_uid -> video path or ""."""
    from extract.thumbnails import DecodeError, clip_thumbnails, find_clip

    by_clip: dict[str, list[int]] = {}
    for r in sorted(set(rows)):
        by_clip.setdefault(str(ann.clip_uid[r]), []).append(r)
    thumbs, videos = {}, {}
    for clip_uid, clip_rows in by_clip.items():
        path = find_clip(data_dir, clip_uid)
        if path is None:
            reason = f"no clips/{clip_uid}.mp4 or clips_hq/{clip_uid}.mp4 under {data_dir}"
            log.warning("report: %s", reason)
            thumbs.update({r: (None, reason) for r in clip_rows})
            videos[clip_uid] = ""
            continue
        mid_sec = [(ann.start_sec[r] + ann.end_sec[r]) / 2 for r in clip_rows]
        try:
            jpegs = clip_thumbnails(path, mid_sec, width=width)
        except DecodeError as err:
            log.warning("report: %s", err)
            thumbs.update({r: (None, str(err)) for r in clip_rows})
            videos[clip_uid] = ""
            continue
        thumbs.update({r: (j, "") for r, j in zip(clip_rows, jpegs)})
        videos[clip_uid] = str(path)
    return thumbs, videos


def _config_summary(run: Any) -> dict[str, str]:
    head, train = run.cfg.get("head", {}), run.cfg.get("train", {})
    mods = ", ".join(m.get("name", "?") for m in head.get("modalities", []))
    out = {"head": f"modalities [{mods}], aggregator {head.get('aggregator')}, decoder {head.get('decoder')}, "
                   f"num_input {head.get('num_input')}, num_future {head.get('num_future')}"}
    if train:
        out["training"] = ", ".join(f"{k} {train[k]}" for k in ("epochs", "batch_size", "lr", "optimizer") if k in train)
    if "imported_from" in run.cfg:
        out["imported from"] = str(run.cfg["imported_from"].get("ckpt", "?"))
    best = run.metrics
    if "best" in best:
        out["best during training"] = f"{best.get('select_metric', '?')} {best['best']:.4f} at epoch {best.get('best_epoch', '?')}"
    return out


def _pick(keys: list[str], cfg: ReportConfig) -> list[int]:
    import numpy as np

    if cfg.keys:
        index = {k: i for i, k in enumerate(keys)}
        unknown = [k for k in cfg.keys if k not in index]
        if unknown:
            raise ValueError(f"keys {unknown} are not windows of split {cfg.split!r} with features; e.g. {keys[:3]}")
        return [index[k] for k in cfg.keys]
    n = min(cfg.windows, len(keys))
    return sorted(np.random.default_rng(cfg.seed).choice(len(keys), size=n, replace=False).tolist())


def _run(cfg: ReportConfig) -> int:
    from features.annotations import load_split
    from train_heads.data import DeviceWindows
    from train_heads.evaluate import forecast_split, sequence_edit_distances
    from train_heads.generators import create_generators
    from train_heads.inputs import load_bank, split_windows
    from train_heads.report import ReportHeader, Segment, WindowReport, render_report
    from features.version import code_version
    from train_heads.fingerprint import file_sha256
    from train_heads.protocol import run_amp
    from train_heads.run import checkpoint_path, load_run

    from pipelines.checks import check_at_least, check_registry
    from train_heads.generators import GENERATORS

    check_at_least([("windows", cfg.windows, 0), ("thumb_width", cfg.thumb_width, 16)])
    from pipelines.cmd_evaluate import check_inputs, check_run_generators

    cfg.device, data, store = check_inputs(cfg.run, cfg.checkpoint, cfg.split, cfg.device, cfg.data, cfg.store)  # before loading
    from pipelines.checks import check_new_file

    default = Path(cfg.run) / ("report.html" if cfg.split == "val" else f"report_{cfg.split}.html")
    cfg.out = str(check_new_file("out", cfg.out or default, cfg.overwrite))
    if not cfg.generator:  # the sequences `lta predict` writes by default
        from pipelines.cmd_predict import selected_generator

        cfg.generator, why = selected_generator(cfg.run, cfg.checkpoint)
        log.info("generator %s (%s)", cfg.generator, why)
    check_registry("generator", cfg.generator, GENERATORS)
    check_run_generators(cfg.run, "generator", [cfg.generator])
    check_run_generators(cfg.run, "generators", cfg.generators)
    run = load_run(cfg.run, checkpoint=cfg.checkpoint, device=cfg.device)
    amp, amp_why = run_amp(run.cfg, cfg.amp)
    log.info("precision: amp=%s (%s)", str(amp).lower(), amp_why)
    head = run.cfg["head"]
    num_seen, convention = run.num_seen, run.convention
    k, z, n_in = run.num_sequences, head["num_future"], head["num_input"]
    ann = load_split(data, cfg.split)
    metrics = _split_metrics(cfg, run, data) if ann.has_labels else None
    bank = load_bank(store, run.cache_keys, splits=[cfg.split])
    _, win = split_windows(data, cfg.split, bank, num_input=n_in, num_future=z, num_seen=num_seen, convention=convention)
    # the whole split, so the shown sequences are the ones `lta predict` writes with the same generator and seed
    fc = forecast_split(run.model, DeviceWindows(win, cfg.device), bank.to(cfg.device),
                        generators=create_generators([cfg.generator], temperature=cfg.temperature, mbr_samples=cfg.mbr_samples), k=k, seed=cfg.seed,
                        amp=amp)
    verb, noun = fc.sequences[cfg.generator]  # (W, K, Z)
    chosen = _pick(win.keys, cfg)
    seq_ed = sequence_edit_distances(verb[chosen], noun[chosen], win.future_verb[chosen], win.future_noun[chosen],
                                     num_nouns=ann.taxonomy.num_nouns) if metrics is not None else None
    row_of = {(str(c), int(a)): r for r, (c, a) in enumerate(zip(ann.clip_uid, ann.action_idx))}
    last_rows = [row_of[(win.keys[i].rsplit("_", 1)[0], int(win.keys[i].rsplit("_", 1)[1]))] for i in chosen]
    obs_rows = [list(range(last - n_in + 1, last + 1)) for last in last_rows]
    thumbs, videos = _thumbnails(data, ann, [r for rows in obs_rows for r in rows], cfg.thumb_width)
    reports = []
    for j, (i, rows) in enumerate(zip(chosen, obs_rows)):
        segs = []
        for s, r in enumerate(rows):
            jpeg, reason = thumbs[r]
            rec = None if fc.observed_verb is None else (int(fc.observed_verb[i, s]), int(fc.observed_noun[i, s]))
            segs.append(Segment(int(ann.action_idx[r]), float(ann.start_sec[r]), float(ann.end_sec[r]), int(ann.verb[r]),
                                int(ann.noun[r]), jpeg=jpeg, missing_reason=reason, recognised=rec))
        clip_uid = str(ann.clip_uid[rows[-1]])
        reports.append(WindowReport(
            key=win.keys[i], clip_uid=clip_uid, observed=segs, pred_verb=verb[i], pred_noun=noun[i],
            future_verb=win.future_verb[i] if metrics is not None else None,
            future_noun=win.future_noun[i] if metrics is not None else None,
            sequence_ed=seq_ed[j] if seq_ed is not None else None, video=videos[clip_uid]))
    provenance, random_keys, synthetic_keys = _provenance(store, run.cache_keys)
    notes = [f"{len(win.dropped_keys)} windows of the split lack features and are not shown"] if win.dropped_keys else []
    header = ReportHeader(run_name=run.run_dir.resolve().name, split=cfg.split, checkpoint=cfg.checkpoint,
                          generator=cfg.generator, seed=cfg.seed, num_split_windows=len(win), config=_config_summary(run),
                          cache_keys=dict(run.cache_keys), provenance=provenance, random_weight_keys=random_keys,
                          synthetic_keys=synthetic_keys, notes=notes, code_version=code_version(),
                          checkpoint_sha256=file_sha256(checkpoint_path(run.run_dir, cfg.checkpoint)))
    page = render_report(header, metrics, reports, ann.taxonomy)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    missing = sum(jpeg is None for jpeg, _ in thumbs.values())
    print(f"wrote {out} ({len(page) / 1e3:.0f} kB): {len(reports)} windows, {len(thumbs) - missing} distinct segment thumbnails, "
          f"{missing} placeholders for missing video; open file://{out.resolve()}")
    return 0


def main(argv: Sequence[str]) -> int:
    return run_command("report", ReportConfig, argv, _run, "HTML report of a run's predictions on one split")
