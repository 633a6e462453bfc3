"""`lta resize`: reference ffmpeg command, output size/parity, keyframe interval, skip/atomic/failures."""
from __future__ import annotations

import json

import numpy as np
import pytest

from features.errors import RunFailure
from extract import decode, resize
from pipelines import cmd_resize
from test_decode import write_video


def test_expected_size_short_side_and_even_padding():
    assert resize.expected_size(640, 480, 320) == (428, 320)  # 426.67 -> 427 -> padded to 428
    assert resize.expected_size(480, 640, 320) == (320, 428)
    assert resize.expected_size(101, 75, 320) == (432, 320)  # 430.9 -> 431 -> 432
    assert resize.expected_size(320, 320, 320) == (320, 320)


def test_default_command_is_the_reference():
    """EGO4D/forecasting@38d1931 tools/long_term_anticipation/resize_clips.sh:30-34:
    ffmpeg -y -i IN -c:v libx264 -crf 28 -vf "scale=320:320:force_original_aspect_ratio=increase,
    pad='iw+mod(iw,2)':'ih+mod(ih,2)'" -an OUT -- no -g, no -threads (bench/resize_gop.py: -g 30 changes the
    decoded pixels of most frames of the e2e fixture footage)."""
    cmd = resize.resize_command("in.mp4", "out.mp4", resize.ResizeParams(), exe="ffmpeg")
    for a, b in [("-vcodec", "libx264"), ("-crf", "28"), ("-i", "in.mp4")]:
        assert cmd[cmd.index(a) + 1] == b
    assert "-an" in cmd and cmd[-1] == "out.mp4"
    assert "-g" not in cmd and "-threads" not in cmd
    assert "scale=320:320:force_original_aspect_ratio=increase" in " ".join(cmd)
    one = resize.resize_command("in.mp4", "out.mp4", resize.ResizeParams(threads=1), exe="ffmpeg")
    assert one[one.index("-threads") + 1] == "1"


def test_command_is_the_reference_plus_keyframes():
    cmd = resize.resize_command("in.mp4", "out.mp4", resize.ResizeParams(keyframe_interval=15), exe="ffmpeg")
    assert cmd[0] == "ffmpeg" and "out.mp4" in cmd and "-y" in cmd
    joined = " ".join(cmd)
    assert "scale=320:320:force_original_aspect_ratio=increase" in joined
    assert "pad=iw+mod(iw\\,2):ih+mod(ih\\,2)" in joined
    for a, b in [("-vcodec", "libx264"), ("-crf", "28"), ("-g", "15"), ("-loglevel", "error")]:
        assert cmd[cmd.index(a) + 1] == b
    assert "-an" in cmd


@pytest.mark.parametrize("size", [(75, 51), (52, 97)])
def test_resize_odd_input_sizes(tmp_path, size):
    w, h = size
    write_video(tmp_path / "clips_hq" / "c1.mp4", 40, width=w, height=h, lossless=False) if w % 2 == 0 and h % 2 == 0 else \
        _write_odd(tmp_path / "clips_hq" / "c1.mp4", w, h)
    params = resize.ResizeParams(short_side=64, keyframe_interval=10, preset="ultrafast")
    (res,) = resize.resize_many(tmp_path, ["c1"], params)
    assert res.status == "done", res.reason
    info = decode.probe_clip(tmp_path / "clips" / "c1.mp4")
    assert (info.width, info.height) == resize.expected_size(w, h, 64)
    assert info.width % 2 == 0 and info.height % 2 == 0 and min(info.width, info.height) in (64, 65)
    assert info.num_frames == 40
    assert np.array_equal(info.keyframes, np.arange(0, 40, 10))
    assert not list((tmp_path / "clips").glob(".*tmp*"))  # no temp file left behind


def _write_odd(path, w, h):
    """Odd-sized sources need a codec without 4:2:0 parity limits: lossless RGB x264."""
    return write_video(path, 40, width=w, height=h, lossless=True)


def test_cli_skip_done_redo_bad_and_record_failures(tmp_path, caplog):
    for uid in ("a", "b"):
        write_video(tmp_path / "clips_hq" / f"{uid}.mp4", 30, width=96, height=64, lossless=False)
    (tmp_path / "clips_hq" / "broken.mp4").write_bytes(b"\x00" * 1000)
    argv = [f"data={tmp_path}", "jobs=2", "short_side=48", "preset=ultrafast", "max_failed_frac=0.5"]
    assert cmd_resize.main(argv) == 0
    out = tmp_path / "clips"
    assert sorted(p.name for p in out.glob("*.mp4")) == ["a.mp4", "b.mp4"]
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["clip_uid"] for f in failures] == ["broken"] and "source unreadable" in failures[0]["reason"]
    assert json.loads((out / resize.RESIZE_MANIFEST).read_text())["short_side"] == 48
    # a truncated output is detected and redone; a good one is skipped
    mtime_a = (out / "a.mp4").stat().st_mtime_ns
    (out / "b.mp4").write_bytes((out / "b.mp4").read_bytes()[:500])
    results = {r.clip_uid: r for r in resize.resize_many(tmp_path, ["a", "b"], resize.ResizeParams(short_side=48, preset="ultrafast"))}
    assert results["a"].status == "skipped" and results["b"].status == "done"
    assert (out / "a.mp4").stat().st_mtime_ns == mtime_a
    assert decode.probe_clip(out / "b.mp4").num_frames == 30
    # past the failure threshold the command raises RunFailure (the boundary prints it and exits 1)
    with pytest.raises(RunFailure, match="more than max_failed_frac=0.0"):
        cmd_resize.main(argv[:-1] + ["max_failed_frac=0.0"])


def test_ffmpeg_error_is_reported_with_stderr(tmp_path):
    write_video(tmp_path / "clips_hq" / "a.mp4", 10, width=64, height=48, lossless=False)
    (res,) = resize.resize_many(tmp_path, ["a"], resize.ResizeParams(short_side=48, preset="no-such-preset"))
    assert res.status == "failed" and res.reason.startswith("ffmpeg exit") and "preset" in res.reason.lower()
    assert not (tmp_path / "clips" / "a.mp4").exists()
