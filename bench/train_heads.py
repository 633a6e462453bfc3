"""Benchmark: training a forecasting head on cached features vs the reference design, on this CPU.

1. Windows/s of a training epoch of the same head (slowfast_transformer: 2304->2048 projection,
   6-layer 8-head transformer, 20 linear heads, N_in=4, V=117, N=521, batch 64):
   - cached: a batch is an index gather from in-memory features (train_heads.data);
   - reference: per window, decode each observed segment's 2.13 s window from an mp4 (PyAV), take
     32 frames, crop 224, run a frozen SlowFast (pytorchvideo, random weights) to 2304-d, plus the
     same head's per-window training cost at batch 64 (the Ego4D code re-runs the backbone at every
     step of every epoch).
2. Wall time of a full 50-epoch slowfast_transformer run at Ego4D v2 scale (synthetic features,
   120k training windows): measured on a subset of steps and extrapolated (labelled as such).

    .venv/bin/python bench/train_heads.py [--depth 50] [--ref-windows 4] [--cached-steps 12]
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

# run as `python bench/train_heads.py`: this file's folder would shadow the `train_heads` package
sys.path[:1] = [str(Path(__file__).resolve().parents[1])]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from train_heads.data import DeviceWindows, FeatureBank, SplitWindows, iterate_batches
from train_heads.model import ModalityConfig, ModelConfig, build_model
from train_heads.train import TrainConfig, forecast_loss, make_optimizer, recognition_loss

V, N, Z, N_IN, D_SF = 117, 521, 20, 4, 2304
FPS, WINDOW_SEC, FRAMES, CROP = 30, 2.133, 32, 224


def head_config() -> ModelConfig:
    """pipelines/configs/slowfast_transformer.yaml with the v2 taxonomy."""
    return ModelConfig(modalities=[ModalityConfig("slowfast", proj_dim=2048, dropout=0.5, in_dim=D_SF)], num_input=N_IN,
                       num_future=Z, aggregator="transformer",
                       aggregator_kwargs={"depth": 6, "heads": 8, "ff_dim": 2048, "dropout": 0.1, "pos_dropout": 0.2},
                       decoder="multihead", decoder_kwargs={"dropout": 0.5}, num_verbs=V, num_nouns=N)


class RowIdentity:
    def __init__(self, n: int):
        self.n = n

    def lookup(self, clip_uid, action_idx):
        return np.asarray(action_idx, dtype=np.int64)


def synthetic_windows(num_windows: int, num_rows: int, rng: np.random.Generator) -> SplitWindows:
    last = rng.integers(N_IN - 1, num_rows, size=num_windows)
    obs = last[:, None] + np.arange(-N_IN + 1, 1)[None]
    lab = lambda c, s: rng.integers(0, c, size=s)  # noqa: E731
    return SplitWindows("train", [str(i) for i in range(num_windows)], obs, lab(V, obs.shape), lab(N, obs.shape),
                        lab(V, (num_windows, Z)), lab(N, (num_windows, Z)))


def train_step(model, optimizer, inputs, batch, cfg: TrainConfig) -> None:
    out = model(inputs)
    loss = forecast_loss(out, batch.future_verb, batch.future_noun) + recognition_loss(out, batch.observed_verb, batch.observed_noun)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def time_cached(num_rows: int, num_windows: int, steps: int, num_views: int = 2) -> dict:
    """Seconds per training step (batch 64) of the head on an in-memory float16 bank."""
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    feats = rng.standard_normal((num_rows, num_views, D_SF), dtype=np.float32).astype(np.float16)
    bank = FeatureBank({"slowfast": feats}, np.ones(num_rows, bool), RowIdentity(num_rows)).to("cpu")
    build_sec = time.perf_counter() - t0
    data = DeviceWindows(synthetic_windows(num_windows, num_rows, rng), "cpu")
    torch.manual_seed(0)
    model = build_model(head_config()).train()
    cfg = TrainConfig()
    optimizer = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(0)
    times, gather = [], []
    batches = iterate_batches(data, bank, batch_size=64, train=True, rng=gen)
    for i in range(steps + 2):  # 2 warm-up steps
        t = time.perf_counter()
        batch = next(batches)
        g = time.perf_counter()
        train_step(model, optimizer, batch.inputs, batch, cfg)
        if i >= 2:
            times.append(time.perf_counter() - t)
            gather.append(g - t)
    sec = float(np.median(times))
    return {"sec_per_step": sec, "gather_ms": 1000 * float(np.median(gather)), "windows_per_sec": 64 / sec,
            "bank_gb": feats.nbytes / 1e9, "bank_build_sec": build_sec}


def write_mp4(path: Path, seconds: float = 12.0, width: int = 426, height: int = 320) -> None:
    """A noisy moving-pattern H.264 clip at the resized Ego4D resolution (short side 320)."""
    import av

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height, width * 2, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * FPS)):
            shift = (i * 3) % width
            img = base[:, shift:shift + width].copy()
            img[rng.integers(0, height, 500), rng.integers(0, width, 500)] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def decode_window(path: Path, start_sec: float) -> torch.Tensor:
    """32 frames of the 2.13 s window starting at `start_sec`, cropped to 224, normalised: (3, 32, 224, 224)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(int(start_sec / stream.time_base), stream=stream, backward=True)
        frames = []
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base)
            if t < start_sec:
                continue
            if t >= start_sec + WINDOW_SEC:
                break
            frames.append(frame.to_ndarray(format="rgb24"))
    idx = np.linspace(0, len(frames) - 1, FRAMES).round().astype(int)
    clip = torch.from_numpy(np.stack([frames[i] for i in idx])).permute(3, 0, 1, 2).float() / 255  # (3, T, H, W)
    h0, w0 = (clip.shape[2] - CROP) // 2, (clip.shape[3] - CROP) // 2
    clip = clip[:, :, h0:h0 + CROP, w0:w0 + CROP]
    return (clip - 0.45) / 0.225


def time_reference(depth: int, num_windows: int, head_sec_per_window: float, windows_per_batch: int = 2) -> dict:
    """Seconds per window of decode + frozen SlowFast forward, plus the same head's training cost per window.

    The head step is timed once on the cached path (batch 64) and added per window, so both paths
    train the identical head at the identical batch size; only the input side differs.
    """
    from extract.backbones import build_slowfast

    torch.manual_seed(0)
    backbone = build_slowfast(depth=depth, num_frames=FRAMES, crop_size=CROP, head_dim=None)
    backbone.train()  # as in the reference: frozen weights, BN in train mode
    for p in backbone.parameters():
        p.requires_grad_(False)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        mp4 = Path(tmp) / "clip.mp4"
        write_mp4(mp4)
        decode_sec = backbone_sec = 0.0
        done = 0
        while done < num_windows:
            b = min(windows_per_batch, num_windows - done)
            t = time.perf_counter()
            clips = torch.stack([decode_window(mp4, float(s)) for s in rng.uniform(0, 9.5, size=b * N_IN)])  # (b*N_in, 3, T, H, W)
            t1 = time.perf_counter()
            with torch.no_grad():
                feats = backbone([clips[:, :, ::4].contiguous(), clips])  # fresh list: pytorchvideo mutates it
            assert feats.shape == (b * N_IN, D_SF), feats.shape
            decode_sec, backbone_sec = decode_sec + t1 - t, backbone_sec + time.perf_counter() - t1
            done += b
    total = (decode_sec + backbone_sec) / num_windows + head_sec_per_window
    return {"sec_per_window": total, "windows_per_sec": 1 / total, "decode_sec_per_window": decode_sec / num_windows,
            "backbone_sec_per_window": backbone_sec / num_windows, "head_sec_per_window": head_sec_per_window}


def time_validation(num_windows: int) -> float:
    """Seconds per val window: head forward (view 0) + K=5 sampling + ED@20 (train_heads.evaluate)."""
    from train_heads.evaluate import forecast_split, score_sequences
    from train_heads.generators import create_generator

    rng = np.random.default_rng(1)
    feats = rng.standard_normal((num_windows + N_IN, 1, D_SF), dtype=np.float32).astype(np.float16)
    bank = FeatureBank({"slowfast": feats}, np.ones(len(feats), bool), RowIdentity(len(feats))).to("cpu")
    win = synthetic_windows(num_windows, len(feats), rng)
    model = build_model(head_config())
    t = time.perf_counter()
    fc = forecast_split(model, DeviceWindows(win, "cpu"), bank, generators={"sample": create_generator("sample")}, k=5)
    score_sequences("model.sample", *fc.sequences["sample"], win.future_verb, win.future_noun, num_nouns=N)
    return (time.perf_counter() - t) / num_windows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=50, help="reference SlowFast depth (50 = small; the reference uses 101)")
    ap.add_argument("--ref-windows", type=int, default=4, help="windows timed on the reference path")
    ap.add_argument("--cached-steps", type=int, default=12, help="training steps timed on the cached path")
    ap.add_argument("--train-windows", type=int, default=120_000, help="Ego4D v2-scale training windows")
    ap.add_argument("--val-windows", type=int, default=30_000, help="Ego4D v2-scale val windows (per-epoch ED@20)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")

    rows = args.train_windows + 3000 * (N_IN + Z)  # segments: windows plus the per-clip tails
    cached = time_cached(num_rows=rows, num_windows=args.train_windows, steps=args.cached_steps)
    print(f"cached: bank {rows} rows x 2 views x {D_SF} fp16 = {cached['bank_gb']:.2f} GB (built in {cached['bank_build_sec']:.1f} s); "
          f"{cached['sec_per_step'] * 1000:.0f} ms/step (gather {cached['gather_ms']:.1f} ms) -> {cached['windows_per_sec']:.1f} windows/s")
    ref = time_reference(args.depth, args.ref_windows, cached["sec_per_step"] / 64)
    print(f"reference (SlowFast R{args.depth}, decode + frozen backbone per window): {ref['sec_per_window']:.2f} s/window "
          f"(decode {ref['decode_sec_per_window']:.2f}, backbone {ref['backbone_sec_per_window']:.2f}, "
          f"head {ref['head_sec_per_window']:.3f} as cached) -> {ref['windows_per_sec']:.3f} windows/s")
    ratio = cached["windows_per_sec"] / ref["windows_per_sec"]
    val_sec = time_validation(2048)
    steps_per_epoch = math.ceil(args.train_windows / 64)
    epoch_sec = steps_per_epoch * cached["sec_per_step"] + args.val_windows * val_sec
    total_h = 50 * epoch_sec / 3600
    ref_epoch_h = args.train_windows / ref["windows_per_sec"] / 3600
    print()
    print("| measurement (this CPU) | value |")
    print("|---|---|")
    print(f"| head training, cached features | {cached['windows_per_sec']:.1f} windows/s |")
    print(f"| head training, reference design (decode + SlowFast R{args.depth} per window) | {ref['windows_per_sec']:.3f} windows/s |")
    print(f"| speed-up of the cached path | {ratio:.0f}x |")
    print(f"| val ED@20 per window (forward + K=5 sampling + metric) | {val_sec * 1000:.2f} ms |")
    print(f"| 50-epoch slowfast_transformer, {args.train_windows // 1000}k train / {args.val_windows // 1000}k val windows, cached "
          f"| {total_h:.1f} h EXTRAPOLATED from {args.cached_steps} timed steps ({epoch_sec / 60:.1f} min/epoch) |")
    print(f"| one epoch of the reference design at that scale | {ref_epoch_h:.0f} h EXTRAPOLATED "
          f"(R{args.depth}; R101 is ~1.6x slower per dependency_notes) |")


if __name__ == "__main__":
    main()
