"""Window sampling and decode-once on tiny lossless mp4s whose frames encode their own index."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from extract import decode


def write_video(path: Path, num_frames: int, *, fps: int = 30, width: int = 64, height: int = 48,
                gop: int | None = None, lossless: bool = True, seed: int = 0) -> Path:
    """An mp4 whose frame i has R = i % 256 and G = i // 256 everywhere (B = noise), exactly (libx264rgb qp=0).

    `lossless=False` writes ordinary yuv420p x264 (frame identity then only approximate).
    """
    import av

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        if lossless:
            stream = out.add_stream("libx264rgb", rate=fps, options={"qp": "0", "preset": "ultrafast"})
            stream.pix_fmt = "rgb24"
        else:
            stream = out.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "ultrafast"})
            stream.pix_fmt = "yuv420p"
        stream.width, stream.height = width, height
        if gop is not None:
            stream.codec_context.gop_size = gop
            stream.options = dict(stream.options, **{"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"})
        for i in range(num_frames):
            img = np.empty((height, width, 3), np.uint8)
            img[..., 0] = i % 256
            img[..., 1] = i // 256
            img[..., 2] = rng.integers(0, 256, (height, width), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def frame_ids(frames: np.ndarray) -> np.ndarray:
    """The frame index each decoded lossless frame carries: (..., H, W, 3) -> (...)."""
    return frames[..., 0, 0, 0].astype(np.int64) + 256 * frames[..., 0, 0, 1].astype(np.int64)


def test_window_frame_indices_reference_sampling():
    # 32 x 2 at 30 fps: a 2.133 s window = 64 native frames, subsampled as linspace(0, 63, 32).long()
    ix = decode.window_frame_indices(10.0, 20.0, num_frames=32, sampling_rate=2, fps=30.0)
    t0 = 10.0 + 0.5 * (10.0 - 64 / 30)
    first = int(np.ceil(t0 * 30 - 1e-6))
    assert ix[0] == first and ix[-1] == first + 63 and len(ix) == 32
    assert np.array_equal(ix - first, np.linspace(0, 63, 32).astype(int))
    # position 0 starts at the segment start; a short segment is covered from its start, past its end
    assert decode.window_frame_indices(1.0, 1.5, num_frames=16, sampling_rate=4, fps=30.0, position=1.0)[0] == 30
    assert decode.window_frame_indices(1.0, 1.5, num_frames=16, sampling_rate=4, fps=30.0, position=0.0)[-1] == 30 + 63


def test_window_clip_end_policy():
    # the window runs past the last frame: frames are spread over those that exist (as pytorchvideo)
    ix = decode.window_frame_indices(2.9, 3.0, num_frames=8, sampling_rate=8, fps=30.0, num_clip_frames=100)
    assert ix[0] == 87 and ix[-1] == 99 and np.all(np.diff(ix) >= 0)
    with pytest.raises(decode.WindowOutOfRange, match="starts after the clip's last frame"):
        decode.window_frame_indices(5.0, 6.0, num_frames=8, sampling_rate=8, fps=30.0, num_clip_frames=100)


def test_views_are_nested_and_centre_first():
    assert decode.view_positions(1) == [0.5]
    assert decode.view_positions(5) == [0.5, 0.0, 1.0, 0.25, 0.75]
    assert decode.view_positions(9)[:5] == decode.view_positions(5)
    views = decode.make_views(4, flip=True)
    assert views[0] == decode.View(0.5, False) and views[1] == decode.View(0.5, True) and len(views) == 4


def test_probe_and_exact_frames(tmp_path):
    path = write_video(tmp_path / "a.mp4", 90, gop=10)
    info = decode.probe_clip(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (90, 30.0, 64, 48)
    assert np.array_equal(info.keyframes, np.arange(0, 90, 10))
    frames = decode.decode_window(path, 0.5, 2.5, num_frames=8, sampling_rate=4, position="center")
    expect = decode.window_frame_indices(0.5, 2.5, num_frames=8, sampling_rate=4, fps=30.0, num_clip_frames=90)
    assert frames.shape == (8, 48, 64, 3)
    assert np.array_equal(frame_ids(frames), expect)


@pytest.mark.parametrize("gop", [1, 12, 300])
def test_decode_once_each_frame_at_most_once(tmp_path, gop):
    path = write_video(tmp_path / "a.mp4", 240, gop=gop)
    info = decode.probe_clip(path)
    rng = np.random.default_rng(gop)
    requests = []
    for row, start in enumerate([0.2, 1.0, 1.1, 5.0, 6.5]):
        ix_a = np.stack([decode.window_frame_indices(start, start + 1.5, num_frames=8, sampling_rate=2, fps=30.0,
                                                     position=p, num_clip_frames=240) for p in (0.5, 0.0, 0.5)])
        ix_b = np.stack([decode.window_frame_indices(start, start + 1.5, num_frames=4, sampling_rate=4, fps=30.0,
                                                     position=p, num_clip_frames=240) for p in (0.5, 0.0, 0.5)])
        requests.append(decode.WindowRequest(row, {"a": ix_a, "b": ix_b}, {"a": np.zeros((3, 2)), "b": np.zeros((3, 2))},
                                             flips=np.array([False, False, True])))
    rng.shuffle(requests)
    stats = decode.DecodeStats()
    rows = list(decode.decode_rows(path, requests, info=info, track=True, stats_out=stats))
    assert sorted(r.row for r in rows) == list(range(5))
    needed = np.unique(np.concatenate([ix.ravel() for r in requests for ix in r.frame_idx.values()]))
    assert stats.frames_used == len(needed)
    assert max(stats.decoded_per_index.values()) == 1  # decode-once
    assert set(needed) <= set(stats.decoded_per_index)
    # exactly the frames of the planned runs are decoded (keyframe .. last needed frame of each run)
    runs = decode.plan_decode(needed, info.keyframes)
    assert stats.frames_decoded == sum(last - key + 1 for key, last in runs)
    if gop == 300:  # one GOP: a single sequential run
        assert runs == [(0, int(needed[-1]))]
    if gop == 1:  # all-intra: seeks skip every gap longer than the seek cost
        assert stats.seeks >= 3
    by_row = {r.row: r for r in requests}
    for r in rows:
        for name in ("a", "b"):
            assert np.array_equal(frame_ids(r.frames[name]), by_row[r.row].frame_idx[name])
            # view 2 is view 0 flipped horizontally (the noise in B tells)
            assert np.array_equal(r.frames[name][2], r.frames[name][0][..., ::-1, :])
            assert not np.array_equal(r.frames[name][2], r.frames[name][0])


def test_plan_decode_prefers_seek_over_long_gaps():
    keyframes = np.arange(0, 1000, 30)
    runs = decode.plan_decode(np.array([1, 2, 3, 500, 501]), keyframes)
    assert runs == [(0, 3), (480, 501)]
    # close frames are read sequentially, not with a seek
    assert decode.plan_decode(np.array([1, 10, 25]), keyframes) == [(0, 25)]
    assert decode.plan_decode(np.array([1, 10, 45]), keyframes) == [(0, 10), (30, 45)]


def test_missing_and_corrupt_files_raise_decode_error(tmp_path):
    with pytest.raises(decode.DecodeError, match="file not found"):
        decode.probe_clip(tmp_path / "nope.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(decode.DecodeError, match="bad.mp4"):
        decode.probe_clip(bad)
