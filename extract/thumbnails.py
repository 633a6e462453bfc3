"""Small JPEG thumbnails of single frames of a clip, for reports (PyAV decode, PIL resize and encode).

`clip_thumbnails(path, times_sec)` probes the clip once, decodes every requested frame once (the
decode-once reader of `extract.decode`, seeking to keyframes) and returns one JPEG per time.
`find_clip(data_dir, clip_uid)` returns the resized clip if present, else the raw one, else None.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from extract.decode import DecodeError, decode_frames_all, probe_clip
from features.annotations import clip_path

__all__ = ["DecodeError", "clip_thumbnails", "encode_jpeg", "find_clip"]


def find_clip(data_dir: str | Path, clip_uid: str) -> Path | None:
    """`<data>/clips/<uid>.mp4` if it exists, else `<data>/clips_hq/<uid>.mp4`, else None."""
    for resized in (True, False):
        path = clip_path(data_dir, clip_uid, resized=resized)
        if path.is_file():
            return path
    return None


def encode_jpeg(rgb: np.ndarray, *, width: int = 160, quality: int = 80) -> bytes:
    """JPEG bytes of an (H, W, 3) uint8 frame resized to `width` pixels wide (aspect kept)."""
    from PIL import Image

    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 frame, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    height = max(1, round(h * width / w))
    img = Image.fromarray(rgb).resize((width, height), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def clip_thumbnails(path: str | Path, times_sec: Sequence[float], *, width: int = 160,
                    quality: int = 80) -> list[bytes]:
    """One JPEG per time in `times_sec` (clip-relative seconds): the frame shown at that time.

    Times are clamped to the clip (a time past the last frame gives the last frame).

    Raises:
        DecodeError: the file is missing, unreadable, or a frame cannot be decoded (names the file).
    """
    info = probe_clip(path)
    frame_idx = np.clip(np.floor(np.asarray(times_sec, dtype=np.float64) * info.fps).astype(np.int64),
                        0, info.num_frames - 1)  # (T,)
    frames = dict(decode_frames_all(path, np.unique(frame_idx), info=info))
    return [encode_jpeg(frames[int(f)], width=width, quality=quality) for f in frame_idx]
