"""Render a planned synthetic clip (features.synthetic) to frames and write it as an H.264 mp4.

    plan = features.synthetic.plan_sample(clips=12, seed=0)   # pure numpy: labels, recipes, segments
    write_sample(plan, "data/synthetic_lta")                  # annotations/ + clips_hq/*.mp4 (+ summary)

Each frame is a clip-specific smooth textured background plus mild temporal noise; every action
segment active at that frame draws its noun's object (shape + colour, a dark stripe marks its
orientation) moved by its verb's motion. Encoding uses libx264 with one thread, so the same plan
gives the same bitstream and the same decoded frames.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from features.annotations import RAW_CLIP_DIR, safe_join, check_clip_uid
from features.files import atomic_path
from features.synthetic import Appearance, ClipPlan, Motion, SamplePlan, sample_summary, write_annotations

log = logging.getLogger(__name__)

_NOISE_FRAMES = 8  # temporal noise cycles through a bank of this many frames
_NOISE_LEVEL = 3  # uint8 luma units added per pixel, 0.._NOISE_LEVEL


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of a unit-radius shape in object coordinates (u right, v down)."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.8
    if shape == "triangle":
        return (v <= 0.7) & (au <= (v + 1.0) * 0.5)
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "cross":
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.3)
    if shape == "bar":
        return (au <= 0.95) & (av <= 0.35)
    raise ValueError(f"unknown shape {shape!r}")


def motion_pose(motion: Motion, frac: float, sec: float, phase: float) -> tuple[float, float, float, float]:
    """(dx, dy, angle_rad, scale) of an object; dx, dy in units of the short side.

    `frac` in [0, 1) is the position inside the segment, `sec` the seconds since its start.
    Monotone motions follow `frac`; periodic ones follow `sec` so their speed does not depend on
    the segment's length.
    """
    k = motion.speed
    name = motion.name
    if name == "static":
        return 0.0, 0.0, 0.0, 1.0
    if name == "right":
        return 0.45 * (frac - 0.5) * min(k, 1.6), 0.0, 0.0, 1.0
    if name == "left":
        return -0.45 * (frac - 0.5) * min(k, 1.6), 0.0, 0.0, 1.0
    if name == "vertical":
        return 0.0, -0.35 * (frac - 0.5) * min(k, 1.6), 0.0, 1.0
    if name == "rotate":
        return 0.0, 0.0, 2 * math.pi * (0.6 * k * sec + phase), 1.0
    if name == "grow":
        return 0.0, 0.0, 0.0, 0.6 + 0.8 * frac
    if name == "shrink":
        return 0.0, 0.0, 0.0, 1.4 - 0.8 * frac
    if name == "bounce":
        return 0.0, -0.18 * abs(math.sin(math.pi * (1.2 * k * sec + phase))), 0.0, 1.0
    if name == "orbit":
        a = 2 * math.pi * (0.5 * k * sec + phase)
        return 0.15 * math.cos(a), 0.15 * math.sin(a), 0.0, 1.0
    if name == "shake":
        return 0.05 * math.sin(2 * math.pi * (4.0 * k * sec + phase)), 0.0, 0.0, 1.0
    raise ValueError(f"unknown motion {name!r}")


def rgb_to_yuv(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range (Y, U, V) of RGB values, float (..., 3)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    m = np.array([[0.257, 0.504, 0.098], [-0.148, -0.291, 0.439], [0.439, -0.368, -0.071]])
    return rgb @ m.T + np.array([16.0, 128.0, 128.0])


def _object_mask(shape: str, cx: float, cy: float, radius: float, angle: float, h: int, w: int):
    """(inside, stripe, y0, x0) masks of an object on an (h, w) pixel grid, or None when off-frame."""
    x0, x1 = max(int(cx - radius) - 1, 0), min(int(cx + radius) + 2, w)
    y0, y1 = max(int(cy - radius) - 1, 0), min(int(cy + radius) + 2, h)
    if x0 >= x1 or y0 >= y1:
        return None
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx  # (1, w) and (h, 1): broadcast, the same float32 values
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy  # as on a full mgrid, without building it per object
    c, s = math.cos(angle), math.sin(angle)
    u = (dx * c + dy * s) / radius  # rotate the pixel grid into object coordinates
    v = (-dx * s + dy * c) / radius
    inside = _shape_mask(shape, u, v)
    return inside, inside & (u >= 0.45), slice(y0, y1), slice(x0, x1)


@dataclass(frozen=True)
class _Ink:
    """An object's shape and its body / stripe colours in (Y, U, V) uint8."""

    shape: str
    body: tuple[int, int, int]
    stripe: tuple[int, int, int]


def _inks(looks: list[Appearance]) -> list[_Ink]:
    inks = []
    for look in looks:
        body = np.round(rgb_to_yuv(look.rgb)).astype(int)
        stripe = np.round(rgb_to_yuv(np.array(look.rgb) * 0.4)).astype(int)
        inks.append(_Ink(look.shape, tuple(int(x) for x in body), tuple(int(x) for x in stripe)))
    return inks


def _draw_object(planes: tuple[np.ndarray, np.ndarray, np.ndarray], ink: _Ink, cx: float, cy: float, radius: float, angle: float) -> None:
    """Draw one object centred at luma pixel (cx, cy) with `radius` luma pixels into Y, U, V planes, in place."""
    y_plane, u_plane, v_plane = planes
    h, w = y_plane.shape
    m = _object_mask(ink.shape, cx, cy, radius, angle, h, w)
    if m is not None:
        inside, stripe, ys, xs = m
        region = y_plane[ys, xs]
        region[inside] = ink.body[0]
        region[stripe] = ink.stripe[0]
    # chroma planes are subsampled 2x: chroma sample (i, j) sits at luma (2i + 0.5, 2j + 0.5)
    m = _object_mask(ink.shape, (cx - 0.5) / 2, (cy - 0.5) / 2, radius / 2, angle, h // 2, w // 2)
    if m is not None:
        inside, stripe, ys, xs = m
        for plane, ch in ((u_plane, 1), (v_plane, 2)):
            region = plane[ys, xs]
            region[inside] = ink.body[ch]
            region[stripe] = ink.stripe[ch]


def clip_background(seed: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth muted texture as a yuv420p buffer (H*3/2, W) uint8, and a (_NOISE_FRAMES, H, W) luma noise bank."""
    rng = np.random.default_rng(seed)
    gh, gw = 7, 9
    grid = rng.uniform(70, 150, size=(gh, gw, 1)) + rng.uniform(-15, 15, size=(gh, gw, 3))
    # bilinear upsampling of the coarse RGB grid
    yi = np.linspace(0, gh - 1, height)
    xi = np.linspace(0, gw - 1, width)
    y0 = np.minimum(yi.astype(int), gh - 2)
    x0 = np.minimum(xi.astype(int), gw - 2)
    fy = (yi - y0)[:, None, None]
    fx = (xi - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    yuv = rgb_to_yuv(top * (1 - fy) + bottom * fy)  # (H, W, 3)
    buf = np.empty((height * 3 // 2, width), dtype=np.uint8)
    y_plane, u_plane, v_plane = _planes(buf, width, height)
    y_plane[:] = np.clip(yuv[..., 0] + rng.normal(0, 5, size=(height, width)), 16, 235 - _NOISE_LEVEL)
    chroma = yuv.reshape(height // 2, 2, width // 2, 2, 3).mean(axis=(1, 3))
    u_plane[:] = np.clip(np.round(chroma[..., 1]), 16, 240)
    v_plane[:] = np.clip(np.round(chroma[..., 2]), 16, 240)
    noise = rng.integers(0, _NOISE_LEVEL + 1, size=(_NOISE_FRAMES, height, width), dtype=np.uint8)
    return buf, noise


def _planes(buf: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y (H, W), U and V (H/2, W/2) views into a packed yuv420p buffer (H*3/2, W)."""
    q = height // 4
    return (
        buf[:height],
        buf[height:height + q].reshape(height // 2, width // 2),
        buf[height + q:height + 2 * q].reshape(height // 2, width // 2),
    )


def render_frames(clip: ClipPlan, plan: SamplePlan) -> Iterator[np.ndarray]:
    """The clip's frames in order, each a packed yuv420p buffer (H*3/2, W) uint8 (Y, then U, then V)."""
    width, height, fps = plan.width, plan.height, plan.fps
    if width % 2 or height % 4:
        raise ValueError(f"yuv420p rendering needs an even width and a height divisible by 4, got {width}x{height}")
    short = min(width, height)
    inks = _inks(plan.looks)
    background, noise = clip_background(clip.render_seed, width, height)
    starts, ends = clip.start_frame, clip.end_frame
    for f in range(clip.num_frames):
        buf = background.copy()
        planes = _planes(buf, width, height)
        y_plane = planes[0]
        y_plane += noise[f % _NOISE_FRAMES]
        for s in np.flatnonzero((starts <= f) & (ends > f)):
            frac = (f - starts[s]) / (ends[s] - starts[s])
            dx, dy, angle, scale = motion_pose(plan.motions[clip.verb[s]], frac, (f - starts[s]) / fps, clip.phase[s])
            cx = clip.centre[s, 0] * width + dx * short
            cy = clip.centre[s, 1] * height + dy * short
            _draw_object(planes, inks[clip.noun[s]], cx, cy, clip.size[s] * scale * short, angle)
        yield buf


def encode_mp4(
    path: Path | str, frames: Iterable[np.ndarray], *, fps: int = 30, crf: int = 23, preset: str = "ultrafast", gop: int = 60
) -> int:
    """Write packed yuv420p frames (H*3/2, W) as H.264 (yuv420p, single-threaded, so deterministic) to `path` atomically.

    Returns:
        The number of frames written.
    """
    import av

    path = Path(path)
    count = 0
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = None
        for frame in frames:
            if stream is None:
                height, width = frame.shape[0] * 2 // 3, frame.shape[1]
                stream = container.add_stream("libx264", rate=fps)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.codec_context.gop_size = gop
                stream.codec_context.thread_count = 1
                stream.options = {"crf": str(crf), "preset": preset, "threads": "1"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="yuv420p")):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError(f"{path}: no frames to encode")
        for packet in stream.encode():
            container.mux(packet)
    return count


def render_clip(clip: ClipPlan, plan: SamplePlan, path: Path | str, *, crf: int = 23, preset: str = "ultrafast") -> int:
    """Render and encode one clip to `path`; returns the frame count."""
    return encode_mp4(path, render_frames(clip, plan), fps=plan.fps, crf=crf, preset=preset)


def render_sample(plan: SamplePlan, out_dir: Path | str, *, crf: int = 23, preset: str = "ultrafast") -> list[Path]:
    """Write `<out>/clips_hq/<clip_uid>.mp4` for every clip of the plan; returns the paths."""
    folder = Path(out_dir) / RAW_CLIP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, clip in enumerate(plan.clips):
        path = safe_join(folder, check_clip_uid(clip.clip_uid) + ".mp4")
        frames = render_clip(clip, plan, path, crf=crf, preset=preset)
        log.info("rendered clip %d/%d %s (%d frames)", i + 1, len(plan.clips), path.name, frames)
        paths.append(path)
    return paths


def write_sample(plan: SamplePlan, out_dir: Path | str, *, videos: bool = True, crf: int = 23,
                 preset: str = "ultrafast") -> dict:
    """Write the sample `plan` under `out_dir`: annotations, synthetic_sample.json and (if `videos`) clips_hq/*.mp4.

    Returns `features.synthetic.sample_summary(plan)` plus out, videos and render_sec.
    """
    out_dir = Path(out_dir)
    write_annotations(plan, out_dir)
    t0 = time.perf_counter()
    if videos:
        render_sample(plan, out_dir, crf=crf, preset=preset)
    return {"out": str(out_dir), **sample_summary(plan), "videos": bool(videos),
            "render_sec": round(time.perf_counter() - t0 if videos else 0.0, 3)}
