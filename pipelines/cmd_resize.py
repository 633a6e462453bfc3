"""`lta resize data=DIR jobs=N`: clips_hq/*.mp4 -> clips/*.mp4 at short side 320 (the reference ffmpeg command)."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import ClassVar, Sequence

from features.errors import check_failed_fraction
from pipelines.checks import LAUNCHERS, check_dir, did_you_mean
from pipelines.common import UsageError, run_command
from pipelines.config import opt
from pipelines.slurm_options import slurm_options

log = logging.getLogger(__name__)


@dataclass
class ResizeConfig(slurm_options(gpus=0, cpus=4, mem_gb=8, time_min=120)):
    data: str = opt("data/long_term_anticipation", "dataset root (reads clips_hq/, writes clips/)")
    jobs: int = opt(2, "parallel ffmpeg processes (joblib) or number of shard jobs (local/slurm)")
    short_side: int = opt(320, "output short side in pixels (reference: 320)")
    crf: int = opt(28, "libx264 CRF (reference: 28)")
    keyframe_interval: int = opt(0, "ffmpeg -g K: frames between keyframes (cheaper seeks, but other pixels than "
                                    "the reference's); 0 = not set, the reference command")
    preset: str = opt("medium", "libx264 preset (reference: the default, medium)")
    threads: int = opt(0, "x264 threads; 0 = not set (auto, the reference command; bytes depend on the CPU count), "
                          "1 = the same bytes on every machine")
    launcher: str = opt("none", "none (this process, `jobs` joblib workers) | local (submitit subprocesses) | slurm (submitit array)")
    max_failed_frac: float = opt(0.0, "exit 1 when more than this fraction of clips failed")
    RENAMED_VALUES: ClassVar[dict] = {"launcher": {"joblib": "none"}}  # one launcher vocabulary for every command


def resize_shard(args: tuple[str, list[str], dict, int]) -> list[dict]:
    """One shard job (submitit): resize the given clips; returns the results as dicts."""
    from extract.resize import ResizeParams, resize_many

    data, uids, params, jobs = args
    return [asdict(r) for r in resize_many(data, uids, ResizeParams(**params), jobs=jobs)]


def _run(cfg: ResizeConfig) -> int:
    from features.interrupt import grace_sec, stop_on_signals

    # SIGTERM / SIGINT: running ffmpeg encodes are abandoned (temp files removed), clips done so far stay, and
    # `Interrupted` (raised here, or by the launcher when its jobs stopped) reaches the boundary: exit 75
    grace = grace_sec() + (15.0 if cfg.launcher in ("local", "slurm") else 0.0)
    with stop_on_signals("resize", grace=grace, message="abandoning the clips being encoded") as stop:
        return _resize(cfg, stop)


def _resize(cfg: ResizeConfig, stop) -> int:
    from extract import launch
    from extract.failures import append_failures
    from extract.resize import ResizeParams, list_raw_clips, write_manifest

    params = ResizeParams(short_side=cfg.short_side, crf=cfg.crf, keyframe_interval=cfg.keyframe_interval, preset=cfg.preset,
                          threads=cfg.threads)
    data = check_dir("data", cfg.data, "dataset root")  # before anything runs: one line, exit 2
    uids = list_raw_clips(data)
    t0 = time.perf_counter()
    if cfg.launcher == "none":
        results = resize_shard((str(data), uids, asdict(params), cfg.jobs))
    elif cfg.launcher in launch.LAUNCHERS:
        shards = [(str(data), uids[i::cfg.jobs], asdict(params), 1) for i in range(cfg.jobs) if uids[i::cfg.jobs]]
        slurm = cfg.slurm_params()
        parts = launch.run_array(resize_shard, shards, launcher=cfg.launcher, folder=data / "clips" / ".submitit",
                                 params=slurm, job_name="lta-resize")
        results = [r for part in parts for r in part]
    else:
        raise UsageError(f"launcher={cfg.launcher}: unknown launcher{did_you_mean(cfg.launcher, LAUNCHERS)}; "
                         f"valid: {list(LAUNCHERS)}")
    wall = time.perf_counter() - t0
    write_manifest(data, params)
    failed = [r for r in results if r["status"] == "failed"]
    failures_path = data / "clips" / "failures.jsonl"
    append_failures(failures_path, [{"stage": "resize", "clip_uid": r["clip_uid"], "reason": r["reason"],
                                     "path": str(data / "clips_hq" / f"{r['clip_uid']}.mp4")} for r in failed])
    count = {s: sum(r["status"] == s for r in results) for s in ("done", "skipped", "failed", "interrupted")}
    video_h = sum(r["video_sec"] for r in results) / 3600
    log.info("resize: %d done, %d skipped, %d failed, %d not done (interrupted) of %d clips | %.2f h of video | "
             "%.1f s wall | %.2f clips/s%s", count["done"], count["skipped"], count["failed"], count["interrupted"],
             len(results), video_h, wall, len(results) / max(wall, 1e-9), f" | failures in {failures_path}" if failed else "")
    for r in failed[:10]:
        log.error("resize failed: %s: %s", r["clip_uid"], r["reason"])
    if count["interrupted"]:
        raise stop.interrupted(f"{count['done'] + count['skipped']} of {len(results)} clips done")
    check_failed_fraction(len(failed), len(results), cfg.max_failed_frac, what="clips failed to resize",
                          where=failures_path, outcome="the clips resized are kept")
    return 0


def main(argv: Sequence[str]) -> int:
    return run_command("resize", ResizeConfig, argv, _run, "resize clips_hq -> clips (short side 320) with ffmpeg")
