"""Window sampling and decode-once frame reading with PyAV.

Sampling (shared with backbone fine-tuning, ../shared/reference/ego4d_lta.md §2.2) is the reference's
test-time LTA loader (EGO4D/forecasting 38d1931, pytorchvideo 0.1.5), reproduced exactly:

1. Window: it lasts D = `num_frames * sampling_rate / target_fps` s (2.1333 s for 32x2 and 16x4).
   View position 0.5 is `CenterClipVideoSampler` inside `ForecastingClipSampler`: with d = end - start,
   t0 = (d/2 - D/2) + start and t1 = ((d/2 - D/2) + D) + start, float64 in that order, no clamp: a
   segment shorter than D gets a window that starts before it (maybe before 0) and ends after it.
   Other positions p (extra views, fine-tuning's random draws) are where the reference *training*
   sampler (pytorchvideo `RandomClipSampler`) can put the window: t0 = start + p * max(d - D, 0).
2. Frames: pytorchvideo's PyAV `get_clip(t0, t1)` returns the frames with pts in
   [ceil(t0 / tb), ceil(t1 / tb)) (tb = the stream time base as a float64, plus the stream start
   pts): a negative t0 selects from frame 0, a t1 past the clip stops at the last frame; no frame
   in range (the window starts after the last frame) raises `WindowOutOfRange`.
3. With `num_input_clips` N_in >= 2 the n decoded frames are first brought to 64 by
   `uniform_temporal_subsample` (positions = trunc(clamp(linspace(0, n-1, 64)))), then to
   `num_frames`; with N_in = 1 directly to `num_frames`.
4. SlowFast's slow pathway (`slow_positions`): the LTA loader folds the N_in clips into one time
   axis of N_in * T frames and takes N_in * T / alpha slow frames over it, so the slow frames of clip
   (slot) j depend on N_in and j.

`linspace`: the reference's pinned torch 1.9 computes float32 `linspace` in blocks (see
`linspace_f32`), which near clip ends picks another frame than torch 2.x for a few n. "torch19"
(default) emulates torch 1.9.0's AVX2 kernel exactly; "torch" calls the installed torch.

Views: view 0 is the centred window; further views place the window at other deterministic
positions (`view_positions`), optionally followed by their horizontal flips.

Decode-once: `decode_rows` takes every frame index needed by all extractors and views of all rows of
a clip, reads the keyframe positions by demuxing (no decoding), and walks the needed frames in order,
seeking forward to a keyframe only when that decodes fewer frames than continuing (+ a seek cost).
Each frame is decoded at most once; frames are converted to RGB only when needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from features.windows import view_positions

SEEK_COST_FRAMES = 8  # a seek (flush + demux restart) costs about as much as decoding this many frames


class WindowOutOfRange(ValueError):
    """A segment's window starts after the clip's last frame (segment outside the video)."""


class DecodeError(RuntimeError):
    """A clip that cannot be opened or decoded; the message names the file."""


@dataclass(frozen=True)
class View:
    """One temporal view of a segment: window position in [0, 1] inside the segment, optional flip."""

    position: float
    flip: bool = False


def make_views(num_views: int, *, flip: bool = False) -> list[View]:
    """`num_views` positions (`view_positions`); with `flip`, each position unflipped then flipped
    (so `num_views` must be even, and view 0 is still the centred unflipped window)."""
    if flip:
        if num_views % 2:
            raise ValueError(f"flip views come in pairs: num_views must be even, got {num_views}")
        return [View(p, f) for p in view_positions(num_views // 2) for f in (False, True)]
    return [View(p) for p in view_positions(num_views)]


LINSPACE_MODES = ("torch19", "torch")


def _round_f32(exact: Fraction) -> np.float32:
    """`exact` rounded once to float32 (round half to even)."""
    near = np.float32(float(exact))
    cands = [np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))]
    return min(cands, key=lambda v: (abs(Fraction(float(v)) - exact), int(v.view(np.uint32)) & 1))


def _fma_f32(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """float32 fused multiply-add: a * b + c with a single rounding."""
    return _round_f32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


@lru_cache(maxsize=4096)
def _linspace_torch19(start: float, end: float, steps: int) -> tuple[float, ...]:
    """torch 1.9.0's float32 CPU linspace (AVX2 kernel, `cpu_serial_kernel_vec`), emulated.

    step = (end - start) / (steps - 1) in float32; halfway = steps // 2. Blocks of 16 values are two
    `Vectorized<float>::arange(base, step)` of 8: base = fma(step, i, start) for a block starting at
    i < halfway, else fma(-step, steps - 1 - i, end); lane k = base + (k * step), each op rounded to
    float32. The tail (steps % 16 values) is computed per element with the same base formula.
    Checked against the reference environment's frame indices (tests/fixtures/ego4d_reference_e2e).
    """
    f32 = np.float32
    a, b = f32(start), f32(end)
    if steps == 1:
        return (float(a),)
    step = f32(f32(b - a) / f32(steps - 1))
    half = steps // 2
    out = np.empty(steps, dtype=f32)

    def base(i: int) -> np.float32:
        return _fma_f32(step, f32(i), a) if i < half else _fma_f32(-step, f32(steps - 1 - i), b)

    i = 0
    while i + 16 <= steps:
        for blk in (i, i + 8):
            v0 = base(blk)
            for k in range(8):
                out[blk + k] = f32(v0 + f32(f32(k) * step))
        i += 16
    for j in range(i, steps):
        out[j] = base(j)
    return tuple(float(v) for v in out)


def linspace_f32(start: float, end: float, steps: int, *, linspace: str = "torch19") -> np.ndarray:
    """float32 `torch.linspace(start, end, steps)` as torch 1.9.0 computes it ("torch19") or as the
    installed torch does ("torch")."""
    if linspace == "torch19":
        return np.asarray(_linspace_torch19(float(start), float(end), int(steps)), dtype=np.float32)
    if linspace == "torch":
        import torch

        return torch.linspace(float(start), float(end), int(steps)).numpy()
    raise ValueError(f"unknown linspace mode {linspace!r}; available: {list(LINSPACE_MODES)}")


def subsample_positions(n: int, num_samples: int, *, linspace: str = "torch19") -> np.ndarray:
    """pytorchvideo `uniform_temporal_subsample` picks of `num_samples` out of `n`:
    trunc(clamp(linspace(0, n-1, num_samples), 0, n-1)) as int64."""
    if n < 1 or num_samples < 1:
        raise ValueError(f"cannot subsample {num_samples} of {n} frames")
    return np.clip(linspace_f32(0, n - 1, num_samples, linspace=linspace), 0, n - 1).astype(np.int64)


def uniform_subsample(indices: np.ndarray, num_samples: int, *, linspace: str = "torch19") -> np.ndarray:
    """`num_samples` entries of `indices` picked by `subsample_positions` (pytorchvideo UniformTemporalSubsample)."""
    indices = np.asarray(indices)
    return indices[subsample_positions(len(indices), num_samples, linspace=linspace)]


def slow_positions(num_frames: int, num_input_clips: int, *, alpha: int = 4,
                   linspace: str = "torch19") -> list[np.ndarray]:
    """Slow-pathway positions in each clip's own `num_frames` frames, per slot j < `num_input_clips`.

    The reference LTA loader folds its N_in clips into one axis of N_in * T frames and
    `UniformTemporalSubsampleRepeated((alpha, 1))` takes N_in * T // alpha of them
    (`uniform_temporal_subsample`), then unfolds; slot j receives the j-th run of T // alpha.
    With N_in = 1 this is the recognition rule linspace(0, T-1, T // alpha).

    Raises:
        ValueError: a slot whose slow frames would fall outside its own clip (never for T=32, 16).
    """
    t, n = int(num_frames), int(num_input_clips)
    per = t // alpha
    folded = subsample_positions(n * t, n * t // alpha, linspace=linspace)
    out = []
    for j in range(n):
        pos = folded[j * per:(j + 1) * per] - j * t
        if len(pos) != per or pos.min() < 0 or pos.max() >= t:
            raise ValueError(f"slow pathway of slot {j} of {n} x {t} frames leaves its clip: {pos.tolist()}")
        out.append(pos)
    return out


def window_bounds_sec(start_sec: float, end_sec: float, *, num_frames: int, sampling_rate: int,
                      target_fps: float = 30.0, position: float = 0.5) -> tuple[float, float]:
    """(t0, t1) of the window of segment [start_sec, end_sec] at `position` in [0, 1].

    0.5: the reference test sampler, centred without clamp (float64, the reference's order of
    operations); other positions: the reference train sampler's start t0 = start + position *
    max(d - D, 0) (see the module docstring).
    """
    if not 0.0 <= position <= 1.0:
        raise ValueError(f"position must be in [0, 1], got {position}")
    duration = (num_frames * sampling_rate) / target_fps
    start_sec, end_sec = float(start_sec), float(end_sec)
    if position == 0.5:  # CenterClipVideoSampler(clip_duration)(0.0, d, ...) + clip_start_boundary
        clip_start = (end_sec - start_sec) / 2 - duration / 2
        return clip_start + start_sec, (clip_start + duration) + start_sec
    t0 = start_sec + position * max(end_sec - start_sec - duration, 0.0)
    return t0, t0 + duration


def clip_frames_in(t0: float, t1: float, *, info: "ClipInfo | None" = None, fps: float | None = None,
                   num_clip_frames: int | None = None) -> np.ndarray:
    """Native frame indices that pytorchvideo's PyAV `get_clip(t0, t1)` returns (ascending, contiguous).

    With `info`: frames whose pts lie in [ceil(t0/tb) + start_pts, ceil(t1/tb) + start_pts), from the
    probed timestamps. Without: a clip whose frame k has pts k in time base 1/fps, `num_clip_frames`
    long (unbounded when None).

    Raises:
        WindowOutOfRange: no frame in the window (it starts after the clip's last frame).
    """
    if info is not None:
        tb, start_pts, pts = info.time_base, info.start_pts, info.frame_pts
        lo, hi = math.ceil(t0 / tb) + start_pts, math.ceil(t1 / tb) + start_pts
        first, stop = int(np.searchsorted(pts, lo, side="left")), int(np.searchsorted(pts, hi, side="left"))
        n_clip, rate = info.num_frames, info.fps
    else:
        if fps is None:
            raise ValueError("clip_frames_in needs info or fps")
        tb = 1.0 / fps
        first, stop = max(math.ceil(t0 / tb), 0), max(math.ceil(t1 / tb), 0)
        n_clip, rate = num_clip_frames, fps
        if n_clip is not None:
            first, stop = min(first, n_clip), min(stop, n_clip)
    if stop <= first:
        if n_clip is not None and first >= n_clip:
            raise WindowOutOfRange(f"window [{t0:.3f}, {t1:.3f}) s starts after the clip's last frame ({n_clip} "
                                   f"frames at {rate:g} fps = {n_clip / rate:.3f} s)")
        raise WindowOutOfRange(f"window [{t0:.3f}, {t1:.3f}) s holds no frame of the clip")
    return np.arange(first, stop, dtype=np.int64)


def window_frame_indices(start_sec: float, end_sec: float, *, num_frames: int, sampling_rate: int,
                         fps: float | None = None, position: float = 0.5, target_fps: float = 30.0,
                         num_clip_frames: int | None = None, info: "ClipInfo | None" = None,
                         num_input_clips: int = 1, linspace: str = "torch19") -> np.ndarray:
    """Native frame indices (num_frames,) of the window of segment [start_sec, end_sec] (module docstring).

    Args:
        fps, num_clip_frames: the clip's rate and length when `info` is not given (pts grid 1/fps).
        position: window position (0.5 = the reference test window).
        target_fps: only sets the window duration (`num_frames * sampling_rate / target_fps`), as the reference.
        info: the probed clip (exact pts selection); preferred.
        num_input_clips: the LTA loader's N_in; >= 2 adds the 64-frame step.
        linspace: "torch19" | "torch" (see `linspace_f32`).

    Raises:
        WindowOutOfRange: the window holds no frame of the clip.
    """
    t0, t1 = window_bounds_sec(start_sec, end_sec, num_frames=num_frames, sampling_rate=sampling_rate,
                               target_fps=target_fps, position=position)
    decoded = clip_frames_in(t0, t1, info=info, fps=fps, num_clip_frames=num_clip_frames)
    if num_input_clips >= 2:  # LabeledVideoDataset: each clip to 64 frames before stacking
        decoded = uniform_subsample(decoded, 64, linspace=linspace)
    return uniform_subsample(decoded, num_frames, linspace=linspace)


@dataclass(frozen=True)
class ClipInfo:
    """What PyAV says about a clip: frames, fps, display size, rotation and keyframe indices.

    `width`/`height` are the display size: a clip whose display matrix rotates it by +-90 degrees
    has them swapped relative to the coded frames, and `decode_frames` yields frames rotated
    upright, as ffmpeg (and so `lta resize`) shows them.
    """

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    keyframes: np.ndarray  # (K,) sorted frame indices of keyframes
    keyframe_pts: np.ndarray  # (K,) their presentation timestamps (stream time base), the seek targets
    rotation: int = 0  # counter-clockwise degrees in {0, 90, 180, 270} that make the coded frames upright
    variable_rate: bool = False  # timestamps do not round onto the 1/fps grid (only with probe_clip(allow_vfr=True))
    constant_spacing: bool = True  # timestamps exactly 1/fps apart (False: jitter, or variable_rate)
    time_base: float = 0.0  # stream time base as a float (what pytorchvideo converts seconds with)
    start_pts: int = 0  # stream start_time (0 when unset), pytorchvideo's offset
    frame_pts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (num_frames,) pts of frame i

    @property
    def duration_sec(self) -> float:
        return self.num_frames / self.fps  # fps is the average rate for a variable-rate clip


def _frame_index(pts: int, time_base: float, start_pts: int, fps: float) -> int:
    return int(round((pts - start_pts) * time_base * fps))


def _grid_fps(pts: np.ndarray, time_base: float, start_pts: int, fps: float) -> float | None:
    """`fps` if the sorted timestamps sit on its grid, else the rate of their constant spacing, else None.

    ffmpeg's constant-rate output of a variable-rate source can report an average rate that is not
    its frame spacing (the container duration keeps the source's last frame duration), hence the
    second try.
    """
    ordered = np.sort(pts)
    if np.array_equal([_frame_index(p, time_base, start_pts, fps) for p in ordered], np.arange(len(ordered))):
        return fps
    steps = np.diff(ordered)
    if len(steps) and steps.min() > 0 and steps.max() - steps.min() <= 1:  # constant spacing (1 tick of rounding)
        grid = 1.0 / (float(np.mean(steps)) * time_base)
        if np.array_equal([_frame_index(p, time_base, start_pts, grid) for p in ordered], np.arange(len(ordered))):
            return grid
    return None


def _display_rotation(path: Path) -> int:
    """Counter-clockwise degrees (0/90/180/270) of the clip's display matrix, read from its first frame."""
    import av

    with av.open(str(path)) as container:
        frame = next(container.decode(video=0), None)
    if frame is None:
        raise DecodeError(f"{path}: no decodable video frame")
    rotation = int(round(frame.rotation or 0)) % 360
    if rotation % 90:
        raise DecodeError(f"{path}: display rotation of {rotation} degrees is not a multiple of 90 (unsupported)")
    return rotation


def probe_clip(path: Path | str, *, allow_vfr: bool = False) -> ClipInfo:
    """Frame count, fps, size, rotation and keyframe indices by demuxing every packet (decoding one frame).

    Frame i is the packet whose timestamp rounds to i / fps: timestamps that jitter by less than half
    a frame still give every frame its own index (`constant_spacing` is then False); timestamps that
    do not (bursts, gaps) are a variable frame rate.

    Args:
        allow_vfr: accept a variable frame rate (`lta resize` re-times such sources); frame indices
            are then only approximate, so decoding refuses them.

    Raises:
        DecodeError: the file is missing, empty, not a video, truncated (fewer or cut packets than
            its index lists), variable-rate (unless `allow_vfr`) or holds no video frames.
    """
    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"{path}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    d = _demux(path, size)
    pts, listed, cut, fps = d.pts, d.listed, d.cut, d.fps
    if not pts:
        raise DecodeError(f"{path}: no video frames")
    if (listed and len(pts) < listed) or cut:
        raise DecodeError(f"{path}: truncated: the container lists {listed or '?'} frames, {len(pts)} packets are "
                          f"present, {cut} cut short ({size} bytes)")
    start_pts = d.start_time if d.start_time is not None else min(pts)
    pts_arr = np.asarray(pts, dtype=np.int64)
    grid = _grid_fps(pts_arr, d.time_base, start_pts, fps)
    if grid is None and not allow_vfr:
        raise DecodeError(f"{path}: variable frame rate: {len(pts)} timestamps are not on a constant 1/fps grid "
                          f"(average {fps:.3f} fps); re-time it to a constant rate first (`lta resize` does)")
    fps = grid or fps
    steps = np.diff(np.sort(pts_arr))
    constant_spacing = grid is not None and (len(steps) == 0 or int(steps.max() - steps.min()) <= 1)
    rotation = _display_rotation(path)
    width, height = (d.height, d.width) if rotation in (90, 270) else (d.width, d.height)
    if grid is None:  # approximate indices, made unique by order (resize only reads the count and size)
        idx = np.empty(len(pts), dtype=np.int64)
        idx[np.argsort(pts_arr, kind="stable")] = np.arange(len(pts))
    else:
        idx = np.array([_frame_index(p, d.time_base, start_pts, fps) for p in pts], dtype=np.int64)
    keyframes, keyframe_pts, frame_pts = _frame_table(idx, pts_arr, d.key)
    return ClipInfo(str(path), num_frames=int(idx.max()) + 1, fps=fps, width=width, height=height,
                    keyframes=keyframes, keyframe_pts=keyframe_pts, rotation=rotation, variable_rate=grid is None,
                    constant_spacing=constant_spacing, time_base=d.time_base,
                    start_pts=int(d.start_time) if d.start_time is not None else 0, frame_pts=frame_pts)


@dataclass
class _Demuxed:
    """What demuxing a clip's video packets tells (`probe_clip` checks and indexes it)."""

    fps: float  # the stream's average (or guessed) rate
    time_base: float
    listed: int  # frames in the container index (mp4 sample table); 0 if unknown
    pts: list[int]  # timestamps of the non-empty packets, in demux order
    key: list[bool]  # their keyframe flags
    cut: int  # packets flagged corrupt
    width: int  # coded size (before the display rotation)
    height: int
    start_time: int | None


def _demux(path: Path, size: int) -> _Demuxed:
    """Every video packet's timestamp and keyframe flag (no decoding); DecodeError for a file that is no video."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams}) or ["none"]
                raise DecodeError(f"{path}: no video stream (streams: {', '.join(kinds)})")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise DecodeError(f"{path}: unknown frame rate")
            fps = float(rate)
            time_base = float(stream.time_base)
            listed = int(stream.frames or 0)
            pts, key, cut = [], [], 0
            for packet in container.demux(stream):
                if packet.pts is None or packet.size == 0:
                    continue
                pts.append(packet.pts)
                key.append(packet.is_keyframe)
                cut += bool(packet.is_corrupt)
            width, height = stream.codec_context.width, stream.codec_context.height
            start_time = stream.start_time
    except av.error.FFmpegError as err:
        raise DecodeError(f"{path}: not a readable video file ({size} bytes; truncated download or not a video?): "
                          f"{err.strerror or err}") from None
    return _Demuxed(fps, time_base, listed, pts, key, cut, width, height, start_time)


def _frame_table(idx: np.ndarray, pts_arr: np.ndarray, key: list[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keyframe indices, their pts, frame_pts) of packets with frame indices `idx`; frame_pts[i] is frame i's
    pts, made non-decreasing so that searchsorted is valid (a missing index never matches)."""
    order = np.argsort(idx)
    is_key = np.asarray(key, dtype=bool)[order]
    keyframes, first = np.unique(idx[order][is_key], return_index=True)
    keyframe_pts = pts_arr[order][is_key][first]
    frame_pts = np.full(int(idx.max()) + 1, np.iinfo(np.int64).max, dtype=np.int64)  # a missing index never matches
    frame_pts[idx[order]] = pts_arr[order]
    frame_pts = np.minimum.accumulate(frame_pts[::-1])[::-1]  # non-decreasing, so searchsorted is valid
    return keyframes, keyframe_pts, frame_pts


def plan_decode(needed: np.ndarray, keyframes: np.ndarray, *, seek_cost: int = SEEK_COST_FRAMES) -> list[tuple[int, int]]:
    """Decode runs [(seek_to_keyframe, last_frame), ...] covering the sorted unique `needed` frames.

    Walking the needed frames in order, a run continues sequentially unless a keyframe after the
    current position lets us skip more than `seek_cost` frames; a run then starts at the keyframe
    at or before the next needed frame. Runs never overlap, so every frame is decoded at most once.
    """
    runs: list[tuple[int, int]] = []
    pos = -1  # last decoded frame
    for f in needed:
        k = int(keyframes[np.searchsorted(keyframes, f, side="right") - 1]) if f >= keyframes[0] else 0
        if not runs or (k > pos and (f - pos) > (f - k) + seek_cost):
            runs.append((k, int(f)))
        else:
            runs[-1] = (runs[-1][0], int(f))
        pos = int(f)
    return runs


@dataclass
class DecodeStats:
    """Frames decoded vs frames used (unique frames some window needs), per clip or summed."""

    frames_decoded: int = 0
    frames_used: int = 0
    seeks: int = 0
    decode_sec: float = 0.0
    decoded_per_index: dict[int, int] = field(default_factory=dict, repr=False)  # only with track=True

    def add(self, other: "DecodeStats") -> None:
        self.frames_decoded += other.frames_decoded
        self.frames_used += other.frames_used
        self.seeks += other.seeks
        self.decode_sec += other.decode_sec

    @property
    def decoded_per_used(self) -> float:
        return self.frames_decoded / max(self.frames_used, 1)


def decode_frames(path: Path | str, needed: Sequence[int], *, info: ClipInfo | None = None,
                  seek_cost: int = SEEK_COST_FRAMES, track: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame_idx, rgb uint8 (H, W, 3)) for each needed frame, ascending, each decoded once.

    The generator's `stats` are returned via StopIteration.value; `decode_rows` is the usual path (every window of a clip in one pass).

    Raises:
        DecodeError: a needed frame was never produced by the decoder (truncated or corrupt file).
    """
    import time

    import av

    t_start = time.perf_counter()
    info = info or probe_clip(path)
    if info.variable_rate:
        raise DecodeError(f"{path}: variable frame rate; frame indices are ambiguous, re-time it first (`lta resize`)")
    needed_arr = np.unique(np.asarray(needed, dtype=np.int64))
    stats = DecodeStats(frames_used=len(needed_arr))
    if len(needed_arr) == 0:
        return stats
    runs = plan_decode(needed_arr, info.keyframes, seek_cost=seek_cost)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            time_base = float(stream.time_base)
            start_pts = stream.start_time or 0
            cursor = 0  # position in needed_arr
            for run_idx, (key_idx, last_idx) in enumerate(runs):
                if run_idx > 0 or key_idx > 0:
                    target = int(info.keyframe_pts[np.searchsorted(info.keyframes, key_idx)])
                    container.seek(target, stream=stream, backward=True, any_frame=False)
                    stats.seeks += 1
                prev = -1
                for frame in container.decode(stream):
                    idx = _frame_index(frame.pts, time_base, start_pts, info.fps)
                    if idx < prev:
                        raise DecodeError(f"{path}: frame timestamps go backwards at frame {idx}")
                    prev = idx
                    stats.frames_decoded += 1
                    if track:
                        stats.decoded_per_index[idx] = stats.decoded_per_index.get(idx, 0) + 1
                    if cursor < len(needed_arr) and needed_arr[cursor] < idx:
                        raise DecodeError(f"{path}: frame {int(needed_arr[cursor])} missing from the stream")
                    if cursor < len(needed_arr) and needed_arr[cursor] == idx:
                        cursor += 1
                        rgb = frame.to_ndarray(format="rgb24")
                        yield idx, np.ascontiguousarray(np.rot90(rgb, info.rotation // 90)) if info.rotation else rgb
                    if idx >= last_idx:
                        break
            if cursor < len(needed_arr):
                raise DecodeError(f"{path}: stream ended before frame {int(needed_arr[cursor])} "
                                  f"({info.num_frames} frames expected)")
    except av.error.FFmpegError as err:
        raise DecodeError(f"{path}: decoding failed ({err})") from None
    stats.decode_sec = time.perf_counter() - t_start
    return stats


@dataclass
class WindowRequest:
    """Frames one row needs: per extractor, (V, T) native frame indices and (V, 2) window seconds."""

    row: int
    frame_idx: dict[str, np.ndarray]
    windows_sec: dict[str, np.ndarray]
    flips: np.ndarray  # (V,) bool


@dataclass
class RowFrames:
    """Decoded frames of one row: per extractor (V, T, H, W, 3) uint8 (flipped views already flipped)."""

    row: int
    frames: dict[str, np.ndarray]
    windows_sec: dict[str, np.ndarray]


def decode_rows(path: Path | str, requests: list[WindowRequest], *, info: ClipInfo | None = None,
                track: bool = False, stats_out: DecodeStats | None = None) -> Iterator[RowFrames]:
    """Decode the union of the frames of all `requests` once and yield each row as soon as its frames are in.

    Frames are released when no pending row needs them, so memory stays at the frames of the rows
    whose windows overlap the current position.
    """
    import time

    needed_by_row = {r.row: np.unique(np.concatenate([ix.ravel() for ix in r.frame_idx.values()])) for r in requests}
    pending = sorted(requests, key=lambda r: int(needed_by_row[r.row][-1]))
    refcount: dict[int, int] = {}
    for ix in needed_by_row.values():
        for f in ix.tolist():
            refcount[f] = refcount.get(f, 0) + 1
    cache: dict[int, np.ndarray] = {}
    gen = decode_frames(path, sorted(refcount), info=info, track=track)
    head = 0
    t_model = 0.0
    try:
        while True:
            idx, rgb = next(gen)
            cache[idx] = rgb
            while head < len(pending) and needed_by_row[pending[head].row][-1] <= idx:
                req = pending[head]
                head += 1
                out = {}
                for name, ix in req.frame_idx.items():
                    arr = np.stack([cache[int(f)] for f in ix.ravel()]).reshape(*ix.shape, *rgb.shape)
                    if req.flips.any():
                        arr[req.flips] = arr[req.flips][..., ::-1, :]
                    out[name] = arr
                for f in needed_by_row[req.row].tolist():
                    refcount[f] -= 1
                    if refcount[f] == 0:
                        del cache[f]
                t0 = time.perf_counter()
                yield RowFrames(req.row, out, req.windows_sec)
                t_model += time.perf_counter() - t0  # time the consumer held us, not decode time
    except StopIteration as stop:
        stats = stop.value or DecodeStats()
        stats.decode_sec = max(stats.decode_sec - t_model, 0.0)
        if stats_out is not None:
            stats_out.add(stats)
            stats_out.decoded_per_index.update(stats.decoded_per_index)


def decode_window(path: Path | str, start_sec: float, end_sec: float, *, num_frames: int, sampling_rate: int,
                  target_fps: float = 30.0, position: float | str = "center",
                  rng: np.random.Generator | None = None, num_input_clips: int = 1,
                  linspace: str = "torch19") -> np.ndarray:
    """The (num_frames, H, W, 3) uint8 frames of one segment's window (fine-tuning / single-window use).

    `position` is a float in [0, 1], "center" (0.5, the reference test window) or "random" (uniform
    start, the reference train sampler, drawn from `rng`); `num_input_clips`, `linspace`: as
    `window_frame_indices`.
    """
    if position == "center":
        position = 0.5
    elif position == "random":
        position = float((rng or np.random.default_rng()).uniform(0.0, 1.0))
    info = probe_clip(path)
    ix = window_frame_indices(start_sec, end_sec, num_frames=num_frames, sampling_rate=sampling_rate, info=info,
                              position=float(position), target_fps=target_fps, num_input_clips=num_input_clips,
                              linspace=linspace)
    frames = dict(decode_frames_all(path, ix, info=info))
    return np.stack([frames[int(f)] for f in ix])


def decode_frames_all(path: Path | str, needed: Sequence[int], *, info: ClipInfo | None = None) -> list[tuple[int, np.ndarray]]:
    """`decode_frames` collected into a list."""
    return list(decode_frames(path, needed, info=info))
