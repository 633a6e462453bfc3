"""Video faults fed to `lta resize` and `lta extract`: each gives a correct result or a precise failure.

Policy (what each fault must produce; the run always continues and every other row equals a clean run):

| fault                                   | resize (clips_hq -> clips)               | extract (clips -> store)                          |
|-----------------------------------------|------------------------------------------|---------------------------------------------------|
| truncated mp4, index at the end         | failure "not a readable video file"      | clip failure "not a readable video file"          |
| truncated mp4, index first (faststart)  | failure "truncated: ... lists N frames"  | clip failure "truncated" (never a shorter clip)   |
| zero-byte file                          | failure "empty file (0 bytes)"           | clip failure "empty file (0 bytes)"               |
| non-video file named .mp4               | failure "not a readable video file"      | clip failure "not a readable video file"          |
| audio-only mp4                          | failure "no video stream (streams: audio)" | clip failure "no video stream"                  |
| missing clip                            | (not listed: resize reads clips_hq/*.mp4) | clip failure "file not found"                    |
| variable frame rate (bursts, gaps)      | re-timed: -fps_mode cfr -r <average fps>, same duration | clip failure "variable frame rate" (resize first) |
| timestamps jittering < half a frame     | re-timed as above                        | frame i = i-th frame (as constant rate)           |
| rotation metadata (90 degrees)          | output upright (ffmpeg applies it), displayed size | frames rotated upright, equal to ffmpeg's     |
| odd (37x23) and tiny (8x6) resolution   | short side 320 (here 64), even sides     | correct features (resize + crop in preprocessing) |
| segment past the end of the clip        | -                                        | row failure "starts after the clip's last frame" once its centred window does; a window that still reaches into the clip is decoded, as the reference |
| zero-length segment                     | -                                        | window centred on it, frames outside the clip dropped |
| clip shorter than one window            | -                                        | window clamped: the existing frames spread over it (repeats) |

Windows and frames are the reference test loader's: `CenterClipVideoSampler` (centred, no clamp) and
pytorchvideo's PyAV `get_clip`, which drops the frames outside the clip (extract/decode.py docstring);
the checks below compare with a transcription of the former and with pytorchvideo itself.
Failures go to failures.jsonl with the clip (and action_idx for row failures); `rows lost` counts
rows of the good clips that are missing or differ from a clean run (must be 0).
"""
from __future__ import annotations

import fractions
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from features.errors import RunFailure
from extract import decode, resize
from features.store import FeatureStore, open_root
from pipelines import cmd_extract, cmd_resize
from test_decode import frame_ids, ptv_clip_ids, pytorchvideo_modules, reference_center_window, write_video

EXT = "clip_vit_b32.openai"
EXTRACT_ARGS = [f"extractors=[{EXT}]", "weights=random", "device=cpu", "crop_size=32", "batch_size=4", "views=1",
                "chunk_rows=4", "progress=false", "decode_workers=2", "splits=[train]", "max_failed_frac=1.0"]
WINDOW_SEC = 32 * 2 / 30  # CLIP window: 32 frames at sampling rate 2, 30 fps
BURSTS_MS = [10, 10, 10, 100]  # frame durations of a variable-rate clip (timestamps collide on any grid)
JITTER_MS = [20, 33, 50, 33]  # frame durations within half a frame of a constant ~29.4 fps grid


def record_fault(fault: str, trials: int, survived: int, rows_lost: int) -> None:
    """Append one campaign result to $LTA_FAULTS_LOG (read by bench/faults.py); no-op when unset."""
    path = os.environ.get("LTA_FAULTS_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"fault": fault, "trials": trials, "survived": survived, "rows_lost": rows_lost}) + "\n")


# -- fault files ---------------------------------------------------------------------------------
def faststart(src: Path, dst: Path) -> Path:
    """Remux `src` with the mp4 index (moov) first, as streaming downloads are."""
    subprocess.run([resize.ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-i", str(src), "-c", "copy",
                    "-movflags", "+faststart", str(dst)], check=True, capture_output=True)
    return dst


def truncate(src: Path, dst: Path, frac: float) -> Path:
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: min(int(len(data) * frac), len(data) - 1)])
    return dst


def write_audio_only(path: Path) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_special(path: Path, num_frames: int, *, width: int = 48, height: int = 40, rotation: int = 0,
                  frame_ms: list[int] | None = None) -> Path:
    """Lossless RGB clip (frame i has R = i) with a display rotation and/or variable frame durations (ms)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264rgb", rate=30, options={"qp": "0", "preset": "ultrafast"})
        stream.pix_fmt, stream.width, stream.height = "rgb24", width, height
        if rotation:
            stream.set_display_rotation(rotation)
        if frame_ms:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        t_ms = 0
        for i in range(num_frames):
            img = np.empty((height, width, 3), np.uint8)
            img[..., 0], img[..., 1] = i, 0
            img[..., 2] = rng.integers(0, 256, (height, width), dtype=np.uint8)
            img[: height // 4, -(width // 3):, 1] = 255  # a marker in the coded top-right corner
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if frame_ms:
                frame.pts, frame.time_base = t_ms, fractions.Fraction(1, 1000)
                t_ms += frame_ms[i % len(frame_ms)]
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _seg(uid: str, idx: int, start: float, end: float) -> dict:
    return {"clip_uid": uid, "action_idx": idx, "action_clip_start_sec": start, "action_clip_end_sec": end,
            "verb_label": idx % 2, "noun_label": idx % 3}


def write_annotations(root: Path, segments: list[dict]) -> None:
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "fho_lta_taxonomy.json").write_text(json.dumps({"verbs": ["a", "b"], "nouns": ["x", "y", "z"]}))
    (ann / "fho_lta_train.json").write_text(json.dumps({"version": "v2", "split": "train", "clips": segments}))


def read_failures(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


# -- resize ---------------------------------------------------------------------------------------
RESIZE_ARGS = ["jobs=2", "short_side=64", "preset=ultrafast", "keyframe_interval=10"]
# fault clip -> (policy: "fail" + reason regex | "done"), in clips_hq
RESIZE_FAULTS = {
    "trunc_moov_10": ("fail", r"not a readable video file"),
    "trunc_moov_60": ("fail", r"not a readable video file"),
    "trunc_fast_30": ("fail", r"truncated: the container lists 45 frames"),
    "trunc_fast_70": ("fail", r"truncated: the container lists 45 frames"),
    "trunc_fast_last": ("fail", r"truncated: the container lists 45 frames, 45 packets are present, 1 cut short"),
    "empty": ("fail", r"empty file \(0 bytes\)"),
    "not_video": ("fail", r"not a readable video file"),
    "audio_only": ("fail", r"no video stream \(streams: audio\)"),
    "vfr": ("done", ""),
    "jitter": ("done", ""),
    "rot90": ("done", ""),
    "odd_37x23": ("done", ""),
    "tiny_8x6": ("done", ""),
}
RESIZE_GROUPS = {"truncated mp4 (5 byte offsets)": [k for k in RESIZE_FAULTS if k.startswith("trunc")],
                 "zero-byte file": ["empty"], "non-video .mp4": ["not_video"], "audio-only mp4": ["audio_only"],
                 "variable frame rate (bursts)": ["vfr"], "variable frame rate (jitter)": ["jitter"],
                 "rotation metadata": ["rot90"], "odd / tiny resolution": ["odd_37x23", "tiny_8x6"]}


def make_raw_clips(folder: Path, *, faults: bool) -> None:
    """Two good yuv420p clips, plus (with `faults`) every RESIZE_FAULTS clip."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, uid in enumerate(("good_a", "good_b")):
        write_video(folder / f"{uid}.mp4", 45, width=64, height=48, lossless=False, seed=i)
    if not faults:
        return
    scratch = folder.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    src = write_video(scratch / "src.mp4", 45, width=64, height=48, lossless=False, seed=5)
    fast = faststart(src, scratch / "fast.mp4")
    truncate(src, folder / "trunc_moov_10.mp4", 0.1)
    truncate(src, folder / "trunc_moov_60.mp4", 0.6)
    truncate(fast, folder / "trunc_fast_30.mp4", 0.3)
    truncate(fast, folder / "trunc_fast_70.mp4", 0.7)
    truncate(fast, folder / "trunc_fast_last.mp4", 1.0)  # the last byte cut
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "not_video.mp4").write_text("<html>404 Not Found</html>\n" * 50)
    write_audio_only(folder / "audio_only.mp4")
    write_special(folder / "vfr.mp4", 60, width=64, height=48, frame_ms=BURSTS_MS)
    write_special(folder / "jitter.mp4", 60, width=64, height=48, frame_ms=JITTER_MS)
    write_special(folder / "rot90.mp4", 30, width=64, height=48, rotation=90)
    write_special(folder / "odd_37x23.mp4", 30, width=37, height=23)
    write_special(folder / "tiny_8x6.mp4", 30, width=8, height=6)
    shutil.rmtree(scratch)


def decoded(path: Path) -> np.ndarray:
    info = decode.probe_clip(path)
    return np.stack([f for _, f in decode.decode_frames_all(path, range(info.num_frames), info=info)])


def test_resize_campaign(tmp_path):
    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    make_raw_clips(clean / "clips_hq", faults=False)
    make_raw_clips(faulty / "clips_hq", faults=True)
    assert cmd_resize.main([f"data={clean}", *RESIZE_ARGS]) == 0
    # failures past max_failed_frac are a RunFailure (exit 1 at the boundary), but every clip was still attempted
    with pytest.raises(RunFailure, match=r"clips failed to resize \(.*%\), more than max_failed_frac=.*failures.jsonl"):
        cmd_resize.main([f"data={faulty}", *RESIZE_ARGS])
    failures = {f["clip_uid"]: f for f in read_failures(faulty / "clips" / "failures.jsonl")}
    ok = {}
    for uid, (policy, pattern) in RESIZE_FAULTS.items():
        out = faulty / "clips" / f"{uid}.mp4"
        if policy == "fail":
            ok[uid] = uid in failures and re.search(pattern, failures[uid]["reason"]) is not None and not out.exists()
            assert ok[uid], (uid, failures.get(uid))
            assert failures[uid]["path"].endswith(f"clips_hq/{uid}.mp4") and f"{uid}.mp4" in failures[uid]["reason"]
        else:
            ok[uid] = uid not in failures and out.is_file()
            assert ok[uid], failures.get(uid)
    # variable frame rate: a constant-rate output of the same duration at the average rate
    for uid, vfr in (("vfr", True), ("jitter", False)):
        src_info = decode.probe_clip(faulty / "clips_hq" / f"{uid}.mp4", allow_vfr=True)
        out_info = decode.probe_clip(faulty / "clips" / f"{uid}.mp4")  # strict: on the grid
        assert src_info.variable_rate == vfr and not src_info.constant_spacing and out_info.constant_spacing
        assert abs(out_info.duration_sec - src_info.duration_sec) <= 3 / out_info.fps + 0.02
        assert abs(out_info.fps - src_info.fps) < 1e-3
    # rotation: upright, with the displayed size (48x64 -> short side 64 -> 64x86)
    rot = decode.probe_clip(faulty / "clips" / "rot90.mp4")
    assert (rot.width, rot.height, rot.rotation) == (*resize.expected_size(48, 64, 64), 0) == (64, 86, 0)
    upright = decoded(faulty / "clips" / "rot90.mp4")[0]
    assert upright[:20, :12, 1].mean() > 200 and upright[-20:, :12, 1].mean() < 60  # coded top-right is now top-left
    for uid, (w, h) in {"odd_37x23": (37, 23), "tiny_8x6": (8, 6)}.items():
        info = decode.probe_clip(faulty / "clips" / f"{uid}.mp4")
        assert (info.width, info.height, info.num_frames) == (*resize.expected_size(w, h, 64), 30)
    # good clips: the same frames as a clean run; no temp files left
    lost = sum(not np.array_equal(decoded(clean / "clips" / f"{u}.mp4"), decoded(faulty / "clips" / f"{u}.mp4"))
               for u in ("good_a", "good_b"))
    assert not list((faulty / "clips").glob(".*tmp*"))
    for fault, uids in RESIZE_GROUPS.items():
        record_fault(f"resize: {fault}", len(uids), sum(ok[u] for u in uids), lost)
    assert lost == 0


# -- extract --------------------------------------------------------------------------------------
# clip -> segments [(start, end)]; policy per row: "ok" (equals a clean run or a checked correct
# result) or a failure reason regex
GOOD = {"good_a": [(0.0, 1.0), (0.8, 2.2), (1.5, 2.9)], "good_b": [(0.2, 0.9), (1.0, 2.5), (2.0, 2.8)]}
CLIP_FAULTS = {  # whole-clip failures
    "trunc_moov_50": r"not a readable video file",
    "trunc_fast_20": r"truncated: the container lists 90 frames",
    "trunc_fast_60": r"truncated: the container lists 90 frames",
    "trunc_fast_last": r"truncated: .* 1 cut short",
    "empty": r"empty file \(0 bytes\)",
    "not_video": r"not a readable video file",
    "audio_only": r"no video stream",
    "missing": r"file not found",
    "vfr": r"variable frame rate",
}
# rows of the "edge" clip (60 frames = 2 s): action_idx -> (start, end, policy)
EDGE = {0: (0.2, 1.0, "ok"), 1: (3.5, 4.0, r"starts after the clip's last frame"),
        2: (1.0, 1.0, "ok"), 3: (2.5, 3.0, "ok")}  # 3: after the clip, but its centred window starts at 1.68 s
CORRECT = {"rot90": (0.1, 0.5), "odd_37x23": (0.0, 0.8), "tiny_8x6": (0.0, 0.8), "short": (0.0, 0.5),
           "jitter": (0.0, 1.0)}
EXTRACT_GROUPS = {
    "truncated mp4 (4 byte offsets)": [k for k in CLIP_FAULTS if k.startswith("trunc")],
    "zero-byte file": ["empty"], "non-video .mp4": ["not_video"], "audio-only mp4": ["audio_only"],
    "missing clip": ["missing"], "variable frame rate (bursts)": ["vfr"], "variable frame rate (jitter)": ["jitter"],
    "rotation metadata": ["rot90"],
    "odd / tiny resolution": ["odd_37x23", "tiny_8x6"], "segment past the clip end": ["edge_1", "edge_3"],
    "zero-length segment": ["edge_2"], "clip shorter than one window": ["short"],
}


def make_extract_data(root: Path, *, faults: bool) -> None:
    clips = root / "clips"
    segs = []
    for i, (uid, windows) in enumerate(GOOD.items()):
        write_video(clips / f"{uid}.mp4", 90, width=48, height=40, gop=15, seed=i)
        segs += [_seg(uid, k, s, e) for k, (s, e) in enumerate(windows)]
    if faults:
        scratch = root / "scratch"
        src = write_video(scratch / "src.mp4", 90, width=48, height=40, gop=15, seed=9)
        fast = faststart(src, scratch / "fast.mp4")
        truncate(src, clips / "trunc_moov_50.mp4", 0.5)
        truncate(fast, clips / "trunc_fast_20.mp4", 0.2)
        truncate(fast, clips / "trunc_fast_60.mp4", 0.6)
        truncate(fast, clips / "trunc_fast_last.mp4", 1.0)
        (clips / "empty.mp4").write_bytes(b"")
        (clips / "not_video.mp4").write_text('{"error": "quota exceeded"}\n' * 40)
        write_audio_only(clips / "audio_only.mp4")
        write_special(clips / "vfr.mp4", 90, frame_ms=BURSTS_MS)
        write_special(clips / "jitter.mp4", 60, frame_ms=JITTER_MS)
        write_special(clips / "rot90.mp4", 45, width=48, height=40, rotation=90)
        write_special(clips / "odd_37x23.mp4", 45, width=37, height=23)
        write_special(clips / "tiny_8x6.mp4", 45, width=8, height=6)
        write_video(clips / "short.mp4", 20, width=48, height=40)
        write_video(clips / "edge.mp4", 60, width=48, height=40, gop=15, seed=3)
        shutil.rmtree(scratch)
        segs += [_seg(uid, 0, 0.0, 1.0) for uid in CLIP_FAULTS]
        segs += [_seg(uid, 0, *CORRECT[uid]) for uid in CORRECT]
        segs += [_seg("edge", k, s, e) for k, (s, e, _) in EDGE.items()]
    write_annotations(root, segs)


@pytest.fixture(scope="module")
def cached_extractor():
    """One random-weight CLIP shared by every run of this module (building it is most of a run's time)."""
    from extract import extractors

    built: dict = {}
    original = extractors.create_extractor

    def create(name, **kw):
        key = (name, tuple(sorted(kw.items())))
        if key not in built:
            built[key] = original(name, **kw)
        return built[key]

    mp = pytest.MonkeyPatch()
    mp.setattr(extractors, "create_extractor", create)
    yield lambda: create(EXT, weights="random", device="cpu", crop_size=32)
    mp.undo()


@pytest.fixture(scope="module")
def extract_runs(tmp_path_factory, cached_extractor):
    root = tmp_path_factory.mktemp("extract_faults")
    out = {}
    for name, faults in (("clean", False), ("faulty", True)):
        make_extract_data(root / name, faults=faults)
        assert cmd_extract.main([f"data={root / name}", f"store={root / name / 'store'}", *EXTRACT_ARGS]) == 0
        (store,) = open_root(root / name / "store")
        out[name] = store
    out["root"] = root
    return out


def _row(store: FeatureStore, uid: str, idx: int) -> int:
    (r,) = store.rows.lookup(np.array([uid]), np.array([idx]))
    assert r >= 0
    return int(r)


@pytest.mark.slow
def test_extract_campaign(extract_runs, cached_extractor):
    clean, faulty, root = extract_runs["clean"], extract_runs["faulty"], extract_runs["root"]
    data = root / "faulty"
    assert clean.key == faulty.key
    failures = read_failures(root / "faulty" / "store" / "failures.jsonl")
    clip_fail = {f["clip_uid"]: f["reason"] for f in failures if "action_idx" not in f}
    row_fail = {(f["clip_uid"], f["action_idx"]): f["reason"] for f in failures if "action_idx" in f}
    ok: dict[str, bool] = {}
    filled = faulty.filled()
    for uid, pattern in CLIP_FAULTS.items():
        ok[uid] = uid in clip_fail and re.search(pattern, clip_fail[uid]) is not None and not filled[_row(faulty, uid, 0)]
        assert ok[uid], (uid, clip_fail.get(uid))
        assert uid == "missing" or f"{uid}.mp4" in clip_fail[uid]  # the reason names the file
    ext = cached_extractor()
    expected_windows = {}
    for k, (start, end, policy) in EDGE.items():
        r = _row(faulty, "edge", k)
        if policy == "ok":
            ok[f"edge_{k}"] = bool(filled[r]) and ("edge", k) not in row_fail
        else:
            reason = row_fail.get(("edge", k), "")
            ok[f"edge_{k}"] = not filled[r] and re.search(policy, reason) is not None
        assert ok[f"edge_{k}"], (k, row_fail.get(("edge", k)))
        expected_windows[("edge", k)] = start
    for uid, (start, _) in CORRECT.items():
        ok[uid] = bool(filled[_row(faulty, uid, 0)]) and uid not in clip_fail
        assert ok[uid], clip_fail.get(uid)
        expected_windows[(uid, 0)] = start
    # correct results: the stored feature is the extractor on decode_window's frames, the window as documented
    for (uid, k), start in expected_windows.items():
        if uid == "edge" and EDGE[k][2] != "ok":
            continue
        r = _row(faulty, uid, k)
        seg_start, seg_end = faulty.rows.start_sec[r], faulty.rows.end_sec[r]
        path = data / "clips" / f"{uid}.mp4"  # extraction's default N_in values are >= 2: the 64-frame step applies
        frames = decode.decode_window(path, seg_start, seg_end, num_frames=32, sampling_rate=2, num_input_clips=2)
        want = ext(decode.uniform_subsample(frames, 8)[None]).numpy().astype(np.float16)
        assert np.array_equal(faulty.read(np.array([r]))[0, 0].view(np.uint16), want[0].view(np.uint16)), uid
        t0, t1 = reference_center_window(seg_start, seg_end, WINDOW_SEC)
        assert tuple(faulty.read_windows(np.array([r]))[0, 0]) == (t0, t1), uid
        if uid in ("jitter", "short") or uid == "edge":  # frame i is the i-th frame; pytorchvideo decodes the same
            got = decode.decode_window(path, seg_start, seg_end, num_frames=32, sampling_rate=2, num_input_clips=2,
                                       linspace="torch")
            _, ptv_f = pytorchvideo_modules()
            ids = ptv_f.uniform_temporal_subsample(torch.from_numpy(ptv_clip_ids(path, t0, t1)), 64, temporal_dim=0)
            assert np.array_equal(frame_ids(got), ptv_f.uniform_temporal_subsample(ids, 32, temporal_dim=0).numpy()), uid
        if uid == "rot90":  # upright: the coded 48x40 frames turned 90 degrees counter-clockwise
            assert frames.shape[1:3] == (48, 40) and frames[0, :16, :10, 1].min() == 255
    # nothing silently lost: every unfilled row has a failure record, every filled row is accounted for
    unfilled = {(faulty.rows.clip_uid[r], int(faulty.rows.action_idx[r])) for r in np.flatnonzero(~filled)}
    assert unfilled == {k for k in row_fail} | {(u, 0) for u in clip_fail}
    summary = json.loads((root / "faulty" / "store" / "extract_summary.json").read_text())[0]
    assert summary["rows_failed"] == len(unfilled) and summary["rows_done"] == int(filled.sum())
    # the good clips: byte-identical features and windows to the clean run
    lost = 0
    for r in range(clean.num_rows):
        f = _row(faulty, clean.rows.clip_uid[r], int(clean.rows.action_idx[r]))
        same = (filled[f] and np.array_equal(clean.read(np.array([r])).view(np.uint16), faulty.read(np.array([f])).view(np.uint16))
                and np.array_equal(clean.read_windows(np.array([r])), faulty.read_windows(np.array([f]))))
        lost += not same
    assert clean.filled().all() and clean.num_rows == 6
    for fault, uids in EXTRACT_GROUPS.items():
        record_fault(f"extract: {fault}", len(uids), sum(ok[u] for u in uids), lost)
    assert lost == 0


@pytest.mark.slow
def test_rerun_skips_done_rows_and_retries_failed_ones(extract_runs):
    """A re-run redoes only the failed rows (they fail again, with the same reasons) and keeps the rest."""
    root = extract_runs["root"] / "faulty"
    before = extract_runs["faulty"].read(slice(None), allow_missing=True)
    n_fail = len(read_failures(root / "store" / "failures.jsonl"))
    assert cmd_extract.main([f"data={root}", f"store={root / 'store'}", *EXTRACT_ARGS]) == 0
    summary = json.loads((root / "store" / "extract_summary.json").read_text())[0]
    assert summary["rows_done"] == 0 and summary["rows_skipped"] == int(extract_runs["faulty"].filled().sum())
    failures = read_failures(root / "store" / "failures.jsonl")
    assert len(failures) == 2 * n_fail
    key = lambda f: (f["clip_uid"], f.get("action_idx", -1), f["reason"])  # noqa: E731
    assert sorted(map(key, failures[:n_fail])) == sorted(map(key, failures[n_fail:]))
    (store,) = open_root(root / "store")
    np.testing.assert_array_equal(store.read(slice(None), allow_missing=True).view(np.uint16), before.view(np.uint16))
