"""Offline down-scaling of raw clips, `clips_hq/<uid>.mp4 -> clips/<uid>.mp4` (short side 320).

The reference command (../shared/reference/ego4d_lta.md §2.1, tools/long_term_anticipation/resize_clips.sh):
    ffmpeg -y -i IN.mp4 -c:v libx264 -crf 28
           -vf "scale=320:320:force_original_aspect_ratio=increase,pad='iw+mod(iw,2)':'ih+mod(ih,2)'" -an OUT.mp4
By default nothing is added to it (x264's own GOP, as the reference). `keyframe_interval=K` adds `-g K`, which
bounds the GOP so a window can be reached by a cheap seek (decode.plan_decode), but changes the decoded pixels
of most frames (bench/resize_gop.py on the e2e fixture footage), so features no longer match the reference's.

Each clip is written to a temporary file in the output folder and renamed into place only after
ffmpeg returned 0 and PyAV reads the result back with the expected size and frame count; an
existing output is skipped only when it passes the same check. Failures are collected with their
reason (the caller writes them to failures.jsonl), never swallowed.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from features.annotations import RAW_CLIP_DIR, RESIZED_CLIP_DIR, check_clip_uid
from features.files import atomic_write

log = logging.getLogger(__name__)

RESIZE_MANIFEST = "resize_config.json"  # the parameters the clips folder was made with (feeds the cache key)


@dataclass(frozen=True)
class ResizeParams:
    """ffmpeg settings of `lta resize`; all of them change the pixels, so they enter the feature cache key."""

    short_side: int = 320
    crf: int = 28
    keyframe_interval: int = 0  # -g: frames between keyframes; 0 = not set (x264's default, the reference command)
    preset: str = "medium"  # x264 default, as the reference
    threads: int = 0  # x264 threads; 0 = not set (auto, as the reference: the bytes then depend on the CPU count)


@dataclass
class ResizeResult:
    clip_uid: str
    status: str  # "done" | "skipped" | "failed" | "interrupted" (a stop signal: not attempted or abandoned)
    reason: str = ""
    seconds: float = 0.0
    video_sec: float = 0.0


def ffmpeg_exe() -> str:
    """The system ffmpeg if on PATH, else the binary bundled with imageio-ffmpeg."""
    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def expected_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Output (width, height) of the reference filter: scale so both sides >= short_side keeping the
    aspect ratio (ffmpeg rounds the other side to the nearest integer), then pad each side to even."""
    def rescale(a: int, b: int, c: int) -> int:  # av_rescale: a * b / c rounded half away from zero
        return (a * b + c // 2) // c

    w = max(rescale(short_side, width, height), short_side)
    h = max(rescale(short_side, height, width), short_side)
    return w + w % 2, h + h % 2


def resize_command(src: Path | str, dst: Path | str, params: ResizeParams, *, exe: str | None = None,
                   constant_rate_fps: float | None = None) -> list[str]:
    """The ffmpeg argument list (built with ffmpeg-python) that resizes `src` into `dst` (mp4).

    `constant_rate_fps` (for variable-rate sources) adds `-fps_mode cfr -r FPS`: frames are
    duplicated or dropped onto a constant grid, so every frame index has one timestamp.
    """
    import ffmpeg

    s = params.short_side
    retime = {"fps_mode": "cfr", "r": f"{constant_rate_fps:.6f}"} if constant_rate_fps else {}
    gop = {"g": params.keyframe_interval} if params.keyframe_interval > 0 else {}  # 0: the reference's (none)
    gop.update({"threads": params.threads} if params.threads > 0 else {})
    stream = (
        ffmpeg.input(str(src))
        .filter("scale", s, s, force_original_aspect_ratio="increase")
        .filter("pad", "iw+mod(iw,2)", "ih+mod(ih,2)")
        .output(str(dst), vcodec="libx264", crf=params.crf, preset=params.preset,
                pix_fmt="yuv420p", an=None, format="mp4", **gop, **retime)
    )
    # global options first: `-loglevel error` keeps stderr to real errors, which we capture and report
    return [exe or ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", *ffmpeg.get_args(stream)]


def check_output(path: Path, *, want_size: tuple[int, int] | None, want_frames: int | None,
                 want_duration_sec: float | None = None) -> str:
    """'' when `path` decodes at a constant frame rate with the expected size and frame count (within 1
    frame) or duration (within 3 frames + 1%, for a re-timed source), else the reason."""
    import av

    from extract.decode import DecodeError, probe_clip

    try:
        info = probe_clip(path)
        with av.open(str(path)) as container:  # the first frame must really decode
            next(container.decode(video=0))
    except (DecodeError, StopIteration, av.error.FFmpegError) as err:
        return f"output does not decode: {err or 'no frames'}"
    if want_size is not None and (info.width, info.height) != want_size:
        return f"output size {info.width}x{info.height}, expected {want_size[0]}x{want_size[1]}"
    if want_frames is not None and abs(info.num_frames - want_frames) > 1:
        return f"output has {info.num_frames} frames, source has {want_frames}"
    # re-timing a variable-rate source may add or drop a few frames (its last frame's duration is a guess)
    if want_duration_sec is not None and abs(info.duration_sec - want_duration_sec) > 3 / info.fps + 0.01 * want_duration_sec:
        return f"output lasts {info.duration_sec:.3f} s, source {want_duration_sec:.3f} s"
    return ""


def _run_stoppable(cmd: list[str]) -> subprocess.CompletedProcess | None:
    """`subprocess.run(cmd)` capturing text output; None (ffmpeg terminated) when a stop signal arrives meanwhile."""
    from features.interrupt import stop_requested

    # its own session: a Ctrl-C in the terminal reaches only us, and we end ffmpeg
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        while True:
            try:
                out, err = proc.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if stop_requested():
                    proc.terminate()
                    try:
                        proc.communicate(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.communicate()
                    return None
    if proc.returncode != 0 and stop_requested():  # signalled along with us (SLURM signals the whole job step)
        return None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def resize_clip(src: Path, dst: Path, params: ResizeParams, *, exe: str | None = None) -> ResizeResult:
    """Resize one clip atomically; skip it when `dst` already exists and checks out. Never raises for bad input.

    Sources with rotation metadata come out upright (ffmpeg applies the display matrix, so the
    expected size is the displayed one); sources whose timestamps are not evenly spaced are re-timed
    to a constant rate at their average fps (`-fps_mode cfr -r`), checked by duration instead of frame count.
    """
    from extract.decode import DecodeError, probe_clip

    from features.interrupt import stop_requested

    t0 = time.perf_counter()
    uid = src.stem
    if stop_requested():  # a stop signal: clips not started yet are left for the re-run
        return ResizeResult(uid, "interrupted")
    try:
        info = probe_clip(src, allow_vfr=True)
    except DecodeError as err:
        return ResizeResult(uid, "failed", f"source unreadable: {err}", time.perf_counter() - t0)
    want = expected_size(info.width, info.height, params.short_side)
    retime = not info.constant_spacing  # variable rate or jittery timestamps: write a constant rate
    checks = dict(want_size=want, want_frames=None if retime else info.num_frames,
                  want_duration_sec=info.duration_sec if retime else None)
    if dst.exists():
        reason = check_output(dst, **checks)
        if not reason:
            return ResizeResult(uid, "skipped", "", time.perf_counter() - t0, info.duration_sec)
        log.warning("%s: redoing existing output (%s)", dst, reason)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.tmp-{uuid.uuid4().hex[:8]}.mp4")
    try:
        cmd = resize_command(src, tmp, params, exe=exe, constant_rate_fps=info.fps if retime else None)
        proc = _run_stoppable(cmd)
        if proc is None:  # a stop signal: this clip is abandoned (its temp file goes), neither done nor failed
            return ResizeResult(uid, "interrupted", "", time.perf_counter() - t0)
        if proc.returncode != 0:
            err = proc.stderr.strip().splitlines()
            err = err if len(err) <= 6 else [*err[:3], "...", *err[-3:]]
            return ResizeResult(uid, "failed", f"ffmpeg exit {proc.returncode}: {' | '.join(err) or 'no stderr'}",
                                time.perf_counter() - t0)
        reason = check_output(tmp, **checks)
        if reason:
            return ResizeResult(uid, "failed", reason, time.perf_counter() - t0)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return ResizeResult(uid, "done", "", time.perf_counter() - t0, info.duration_sec)


def list_raw_clips(data_dir: Path | str) -> list[str]:
    """clip_uids of `<data>/clips_hq/*.mp4`, sorted (unsafe names raise ValueError)."""
    folder = Path(data_dir) / RAW_CLIP_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no raw clips folder")
    return sorted(check_clip_uid(p.stem) for p in folder.glob("*.mp4") if not p.name.startswith("."))


def resize_many(data_dir: Path | str, clip_uids: Sequence[str], params: ResizeParams, *, jobs: int = 1) -> list[ResizeResult]:
    """Resize `clip_uids` in `jobs` parallel ffmpeg processes (joblib threads: the work is in ffmpeg)."""
    from joblib import Parallel, delayed

    data_dir = Path(data_dir)
    exe = ffmpeg_exe()
    src = [data_dir / RAW_CLIP_DIR / f"{uid}.mp4" for uid in clip_uids]
    dst = [data_dir / RESIZED_CLIP_DIR / f"{uid}.mp4" for uid in clip_uids]
    return Parallel(n_jobs=jobs, prefer="threads")(delayed(resize_clip)(s, d, params, exe=exe) for s, d in zip(src, dst))


def write_manifest(data_dir: Path | str, params: ResizeParams) -> Path:
    """Record the resize parameters next to the clips (read by `lta extract` for the cache key)."""
    path = Path(data_dir) / RESIZED_CLIP_DIR / RESIZE_MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(asdict(params), sort_keys=True) + "\n")
    return path


def read_manifest(data_dir: Path | str) -> dict | None:
    """The resize parameters of `<data>/clips`, or None when the folder was not made by `lta resize`."""
    path = Path(data_dir) / RESIZED_CLIP_DIR / RESIZE_MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None
