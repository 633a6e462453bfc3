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


def pytorchvideo_modules():
    """pytorchvideo's PyAV video and its functional transforms (the reference's own decoding and sub-sampling).

    pytorchvideo 0.1.5 imports `torchvision.transforms.functional_tensor`, which torchvision 0.17
    renamed to `_functional_tensor`; the alias is the only shim (as in the e2e fixture's README).
    """
    import sys

    import torchvision.transforms._functional_tensor as ft

    sys.modules.setdefault("torchvision.transforms.functional_tensor", ft)
    from pytorchvideo.data.encoded_video_pyav import EncodedVideoPyAV
    from pytorchvideo.transforms import functional as ptv_f

    return EncodedVideoPyAV, ptv_f


def ptv_clip_ids(path: Path, t0: float, t1: float) -> np.ndarray | None:
    """Frame ids that pytorchvideo's PyAV decoder returns for get_clip(t0, t1) (None: no frame)."""
    EncodedVideoPyAV, _ = pytorchvideo_modules()
    with open(path, "rb") as f:
        video = EncodedVideoPyAV(f, decode_audio=False)
        clip = video.get_clip(t0, t1)["video"]
        video.close()
    if clip is None:
        return None
    return frame_ids(clip.permute(1, 2, 3, 0).numpy().astype(np.uint8))  # (C, T, H, W) -> (T, H, W, C)


def reference_center_window(start: float, end: float, duration: float) -> tuple[float, float]:
    """EGO4D/forecasting 38d1931: ForecastingClipSampler(CenterClipVideoSampler(duration)), transcribed."""
    d = end - start
    clip_start = d / 2 - duration / 2
    return clip_start + start, (clip_start + duration) + start


@pytest.mark.parametrize("fps", [30, 25])
def test_window_frames_are_pytorchvideo_get_clip(tmp_path, fps):
    # inside, before the clip (negative start), past its end, on frame timestamps, one frame, no frame
    path = write_video(tmp_path / "a.mp4", 75, fps=fps, gop=8)
    info = decode.probe_clip(path)
    last = (info.num_frames - 1) / fps
    cases = [(0.5, 1.2), (-0.7, 1.4), (-2.0, 0.01), (last - 0.3, last + 2.0), (1.0, 2.0), (2 / fps, 5 / fps),
             (1 / fps + 1e-9, 2.5 / fps), (last, last + 0.5), (0.0, 1e-6)]
    for t0, t1 in cases:
        want = ptv_clip_ids(path, t0, t1)
        assert want is not None and len(want), (t0, t1)
        assert np.array_equal(decode.clip_frames_in(t0, t1, info=info), want), (t0, t1)
    for t0, t1 in [(last + 0.5 / fps, last + 1.0), (-3.0, -1.0)]:  # no frame: pytorchvideo returns none
        assert ptv_clip_ids(path, t0, t1) is None
        with pytest.raises(decode.WindowOutOfRange, match="holds no frame|starts after the clip.s last frame"):
            decode.clip_frames_in(t0, t1, info=info)


@pytest.mark.parametrize("num_input_clips", [1, 2])
def test_window_frame_indices_are_the_reference_loader(tmp_path, num_input_clips):
    # pytorchvideo get_clip on the reference's centred window, then (N_in >= 2) uniform_temporal_subsample
    # to 64 and UniformTemporalSubsample(T), all with the installed torch (linspace="torch")
    _, ptv_f = pytorchvideo_modules()
    import torch

    path = write_video(tmp_path / "a.mp4", 120, fps=25, gop=10)
    info = decode.probe_clip(path)
    for start, end in [(1.0, 3.5), (0.0, 0.4), (2.0, 2.0), (4.3, 4.76), (0.2, 4.76)]:
        for frames, rate in [(32, 2), (16, 4)]:
            t0, t1 = reference_center_window(start, end, frames * rate / 30)
            assert decode.window_bounds_sec(start, end, num_frames=frames, sampling_rate=rate) == (t0, t1)
            ids = torch.from_numpy(ptv_clip_ids(path, t0, t1))
            if num_input_clips >= 2:
                ids = ptv_f.uniform_temporal_subsample(ids, 64, temporal_dim=0)
            want = ptv_f.uniform_temporal_subsample(ids, frames, temporal_dim=0).numpy()
            got = decode.window_frame_indices(start, end, num_frames=frames, sampling_rate=rate, info=info,
                                              num_input_clips=num_input_clips, linspace="torch")
            assert np.array_equal(got, want), (start, end, frames)


@pytest.mark.parametrize("num_input_clips,frames", [(1, 32), (2, 32), (3, 32), (4, 32), (2, 16), (4, 16)])
def test_slow_positions_are_the_folded_lta_pathway(num_input_clips, frames):
    # the reference LTA loader: fold N_in clips on one time axis, UniformTemporalSubsampleRepeated((4, 1)), unfold
    _, ptv_f = pytorchvideo_modules()
    import torch

    folded = torch.arange(num_input_clips * frames).reshape(1, -1, 1, 1).float()  # (C, N_in*T, H, W), value = position
    slow, fast = ptv_f.uniform_temporal_subsample_repeated(folded, (4, 1), temporal_dim=-3)
    slow = slow.reshape(num_input_clips, -1).long()  # unfolded per clip
    want = [(slow[j] - j * frames).tolist() for j in range(num_input_clips)]
    got = [p.tolist() for p in decode.slow_positions(frames, num_input_clips, linspace="torch")]
    assert got == want


def test_torch19_linspace_differs_from_torch2_only_by_rounding():
    # the emulated torch 1.9 kernel and the installed torch agree to a few float32 ulps for every n
    import torch

    for n in range(1, 300):
        for steps in (8, 16, 32, 64):
            a = decode.linspace_f32(0, n - 1, steps)
            b = torch.linspace(0, n - 1, steps).numpy()
            assert np.abs(a - b).max() <= 4 * np.spacing(np.float32(max(n, 1))), (n, steps)
            assert a[0] == 0 and a[-1] == n - 1


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
    frames = decode.decode_window(path, 0.5, 2.5, num_frames=8, sampling_rate=4, position="center", linspace="torch")
    _, ptv_f = pytorchvideo_modules()
    import torch

    ids = torch.from_numpy(ptv_clip_ids(path, *reference_center_window(0.5, 2.5, 8 * 4 / 30)))
    assert frames.shape == (8, 48, 64, 3)
    assert np.array_equal(frame_ids(frames), ptv_f.uniform_temporal_subsample(ids, 8, temporal_dim=0).numpy())


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
