"""Recognition samples for backbone fine-tuning: one per labelled action segment, decoded in DataLoader workers.

Windows are placed with the stage-one code (`extract.decode.window_frame_indices`): a uniformly random
position inside the segment in training (reference `random` clip sampler), centred in validation
(`CenterClipVideoSampler`). Frames are decoded with PyAV (`extract.decode`) inside the workers.

Transforms (reference §2.3), on (3, T, H, W) float frames:
    train: /255 -> Normalize(0.45, 0.225) -> RandomShortSideScale(256, 320) -> RandomCrop(224) -> HorizontalFlip(p)
    val:   /255 -> Normalize -> ShortSideScale(256) -> CenterCrop(224)
The reference passes the boolean `RANDOM_FLIP=True` as the flip probability, so it flips *every*
training clip; here `flip_prob` defaults to 0.5, the intended augmentation.

All randomness of a sample (window position, scale, crop, flip) comes from a generator seeded by
(seed, epoch, index), so a sample is the same whichever worker decodes it and after a resume.

Bad clips (bad-input standard): `probe_split` checks every clip of a split before training (exists,
safe path, opens with PyAV, has a video stream, not truncated, constant rate: `decode.probe_clip`, the
check `lta extract` runs; and every segment's window starts inside the clip) and returns the rows kept
plus one failure record per bad clip. A clip that probed fine but fails to decode later (changed on
disk, damaged past the demuxed index) does not stop training: the item records the failure and, in
training, is replaced by another sample drawn from a generator seeded by (seed, epoch, index, attempt),
so the replacement is the same in every worker and after a resume; in validation the item is left out.
Records travel back with the batch (`collate`, 5th field) and the main process writes them.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from extract import decode
from extract.finetune.model import BackboneSpec
from features.annotations import RAW_CLIP_DIR, RESIZED_CLIP_DIR, SplitAnnotations, clip_path

MAX_REPLACEMENTS = 10  # a training item whose sample and this many replacements all fail to decode raises

if TYPE_CHECKING:
    import torch


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation draws (independent of worker and process)."""
    return np.random.default_rng([seed, epoch, index])


def transform_clip(
    frames: "torch.Tensor", spec: BackboneSpec, *, train: bool, rng: np.random.Generator | None = None, flip_prob: float = 0.5
) -> "torch.Tensor":
    """uint8 frames (T, H, W, 3) -> normalised float (3, T, crop, crop) as described in the module docstring."""
    import torch
    import torch.nn.functional as F

    x = frames.permute(3, 0, 1, 2).float().div_(255.0)  # (3, T, H, W)
    mean = torch.tensor(spec.mean, dtype=x.dtype).view(3, 1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype).view(3, 1, 1, 1)
    x = (x - mean) / std
    if train:
        assert rng is not None, "training transforms need the sample's generator"
        short = int(rng.integers(spec.train_jitter[0], spec.train_jitter[1] + 1))
    else:
        short = spec.short_side
    h, w = x.shape[-2:]
    # pytorchvideo short_side_scale: the long side is floored
    new_h, new_w = (int(math.floor(h / w * short)), short) if w < h else (short, int(math.floor(w / h * short)))
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)  # C acts as batch, T as channels
    c = spec.crop_size
    if new_h < c or new_w < c:
        raise ValueError(f"frames {new_h}x{new_w} after scaling are smaller than the crop {c}")
    if train:
        top, left = int(rng.integers(0, new_h - c + 1)), int(rng.integers(0, new_w - c + 1))
    else:
        top, left = int(round((new_h - c) / 2.0)), int(round((new_w - c) / 2.0))  # torchvision CenterCrop
    x = x[..., top : top + c, left : left + c]
    if train and rng.random() < flip_prob:
        x = x.flip(-1)
    return x.contiguous()


def pack_pathways(x: "torch.Tensor", alpha: int) -> Any:
    """(3, T, H, W) -> [slow (3, T/alpha, H, W), fast (3, T, H, W)] for SlowFast (alpha > 0), else `x`."""
    import torch

    if not alpha:
        return x
    t = x.shape[1]
    slow_idx = torch.linspace(0, t - 1, t // alpha).long()  # pytorchvideo PackPathway
    return [x.index_select(1, slow_idx), x]


@dataclass
class ProbeReport:
    """What `probe_split` found: the rows to use, the probed clips, one failure record per bad clip."""

    split: str
    num_segments: int  # segments of the split
    rows: np.ndarray  # (K,) int64 annotation rows kept, ascending
    infos: dict[str, decode.ClipInfo] = field(default_factory=dict)  # clip_uid -> info, clips with kept rows
    failures: list[dict] = field(default_factory=list)  # failures.jsonl records: stage, split, clip_uid, path, rows, reason

    @property
    def num_dropped(self) -> int:
        return self.num_segments - len(self.rows)


def _probe_clip(data_dir: Path, ann: SplitAnnotations, uid: str, *, position: float, spec: BackboneSpec,
                resized: bool) -> tuple[decode.ClipInfo | None, list[int], dict | None]:
    """(info, rows kept, failure record or None) of one clip: `decode.probe_clip` plus every segment's window."""
    rows = list(range(ann.clip_slices[uid].start, ann.clip_slices[uid].stop))
    # the path as named (an unsafe one is recorded, never opened)
    record = {"stage": "finetune-probe", "split": ann.split, "clip_uid": uid,
              "path": str(data_dir / (RESIZED_CLIP_DIR if resized else RAW_CLIP_DIR) / f"{uid}.mp4")}
    try:
        path = clip_path(data_dir, uid, resized=resized)
        info = decode.probe_clip(path)
    except decode.DecodeError as err:  # missing, empty, unreadable, truncated, no video stream, variable rate
        return None, [], record | {"rows": len(rows), "reason": str(err)}
    except Exception as err:  # an unsafe path (a link out of the data root), permissions, ...: recorded, not fatal
        return None, [], record | {"rows": len(rows), "reason": f"{type(err).__name__}: {err}"}
    kept, outside, reason = [], [], ""
    for r in rows:
        try:  # the latest window start the sampler can draw (train) or the centred one (val)
            decode.window_frame_indices(float(ann.start_sec[r]), float(ann.end_sec[r]), num_frames=spec.num_frames,
                                        sampling_rate=spec.sampling_rate, fps=info.fps, position=position,
                                        target_fps=spec.target_fps, num_clip_frames=info.num_frames)
            kept.append(r)
        except decode.WindowOutOfRange as err:
            outside.append(int(ann.action_idx[r]))
            reason = reason or f"{path}: action_idx={outside[0]}: {err}"
    if not outside:
        return info, kept, None
    return info, kept, record | {"rows": len(outside), "action_idx": outside,
                                 "reason": f"{len(outside)} segment window(s) outside the video, e.g. {reason}"}


def probe_split(data_dir: Path | str, ann: SplitAnnotations, spec: BackboneSpec, *, train: bool, resized: bool = True,
                threads: int = 4) -> ProbeReport:
    """Probe every clip of `ann` (demux only, one frame decoded) before training; bad clips' rows are dropped.

    A clip fails as a whole when `decode.probe_clip` refuses it or its path is unsafe; single segments
    are dropped when their window starts after the clip's last frame (for `train`, at the latest
    position the random sampler can draw). Never raises for a bad clip: it becomes a record.
    """
    position = 1.0 if train else 0.5
    data_dir = Path(data_dir)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(ann.clip_uids)))) as pool:
        results = list(pool.map(lambda uid: _probe_clip(data_dir, ann, uid, position=position, spec=spec, resized=resized),
                                ann.clip_uids))
    report = ProbeReport(ann.split, ann.num_segments, np.zeros(0, dtype=np.int64))
    kept: list[int] = []
    for uid, (info, rows, failure) in zip(ann.clip_uids, results):
        if rows:
            report.infos[uid] = info
            kept += rows
        if failure is not None:
            report.failures.append(failure)
    report.rows = np.asarray(sorted(kept), dtype=np.int64)
    return report


class RecognitionDataset:
    """Map-style dataset: item i = (inputs, verb, noun, index, failures) for the i-th labelled segment kept.

    `index` is the dataset index of the sample returned (a replacement's, see the module docstring);
    `failures` lists the records of decode failures met on the way (usually empty). A validation item
    whose decode failed has `inputs` None and is left out of the batch by `collate`.

    Args:
        data_dir: dataset root (annotations/, clips/).
        ann: the split's segments (`features.annotations.load_split`).
        spec: backbone spec (frames, sampling rate, crop, mean/std).
        train: random window position and augmentation (True) or centred window and centre crop.
        seed: base seed of the per-sample generators; `set_epoch` changes the draws per epoch.
        flip_prob: horizontal flip probability in training.
        resized: read `clips/` (short side 320, the default) or the raw `clips_hq/`.
        probe: `probe_split`'s report: only its rows are used and its clip infos are reused. Without
            it every segment is used and every clip must exist.
    """

    def __init__(self, data_dir: Path | str, ann: SplitAnnotations, spec: BackboneSpec, *, train: bool,
                 seed: int = 0, flip_prob: float = 0.5, resized: bool = True, probe: ProbeReport | None = None):
        if not ann.has_labels:
            raise ValueError(f"{ann.path}: split {ann.split!r} has unlabelled segments; recognition needs verb/noun labels")
        self.data_dir = Path(data_dir)
        self.ann = ann
        self.spec = spec
        self.train = train
        self.seed = seed
        self.flip_prob = flip_prob
        self.epoch = 0
        self.rows = probe.rows if probe is not None else np.arange(ann.num_segments)
        uids = sorted({str(u) for u in ann.clip_uid[self.rows]})
        self.paths = {uid: clip_path(data_dir, uid, resized=resized) for uid in uids}
        self._info: dict[Path, Any] = {}  # per-process cache of decode.probe_clip
        if probe is not None:
            self._info = {self.paths[uid]: info for uid, info in probe.infos.items() if uid in self.paths}
        missing = [str(p) for p in self.paths.values() if p not in self._info and not p.is_file()]
        if missing:  # validate before the first frame is decoded
            raise FileNotFoundError(f"{len(missing)} clip(s) of {ann.path} not found, e.g. {missing[:3]}")

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _decode(self, path: Path, row: int, position: float) -> np.ndarray:
        """(T, H, W, 3) uint8 frames of segment `row`'s window at `position` in [0, 1]."""
        info = self._info.get(path)
        if info is None:  # probing demuxes the whole clip: once per clip and worker
            info = self._info[path] = decode.probe_clip(path)
        spec = self.spec
        frame_idx = decode.window_frame_indices(
            float(self.ann.start_sec[row]), float(self.ann.end_sec[row]), num_frames=spec.num_frames,
            sampling_rate=spec.sampling_rate, fps=info.fps, position=position, target_fps=spec.target_fps,
            num_clip_frames=info.num_frames)
        frames = dict(decode.decode_frames_all(path, frame_idx, info=info))  # each distinct frame decoded once
        return np.stack([frames[int(f)] for f in frame_idx])

    def _failure(self, row: int, path: Path, position: float, err: Exception) -> dict:
        ann, spec = self.ann, self.spec
        t0, t1 = decode.window_bounds_sec(float(ann.start_sec[row]), float(ann.end_sec[row]), num_frames=spec.num_frames,
                                          sampling_rate=spec.sampling_rate, target_fps=spec.target_fps, position=position)
        return {"stage": "finetune-decode", "split": ann.split, "clip_uid": str(ann.clip_uid[row]),
                "action_idx": int(ann.action_idx[row]), "path": str(path), "epoch": self.epoch,
                "window_sec": [round(t0, 3), round(t1, 3)], "reason": str(err)}

    def __getitem__(self, index: int) -> tuple[Any, int, int, int, list[dict]]:
        import torch

        ann, spec = self.ann, self.spec
        failures: list[dict] = []
        for attempt in range(MAX_REPLACEMENTS + 1):
            row = int(self.rows[index])
            rng = sample_rng(self.seed, self.epoch, index) if self.train else None
            position = float(rng.uniform(0.0, 1.0)) if self.train else 0.5  # the first draw of the sample
            path = self.paths[ann.clip_uid[row]]
            try:
                frames = self._decode(path, row, position)
            except (decode.DecodeError, decode.WindowOutOfRange, OSError) as err:  # bad data, not a bug: recorded
                failures.append(self._failure(row, path, position, err))
                if not self.train:
                    return None, -1, -1, index, failures
                index = int(np.random.default_rng([self.seed, self.epoch, index, attempt, 7907]).integers(len(self)))
                failures[-1]["replaced_by"] = index
                continue
            except Exception as err:
                raise RuntimeError(f"{path}: decoding segment clip_uid={ann.clip_uid[row]!r} "
                                   f"action_idx={int(ann.action_idx[row])} failed: {err}") from err
            clip = transform_clip(torch.as_tensor(np.asarray(frames)), spec, train=self.train, rng=rng, flip_prob=self.flip_prob)
            return pack_pathways(clip, spec.alpha), int(ann.verb[row]), int(ann.noun[row]), index, failures
        raise RuntimeError(f"{ann.path}: {len(failures)} samples in a row failed to decode (too many bad clips?): "
                           + "; ".join(f["reason"] for f in failures[:3]))


def collate(items: list[tuple]) -> tuple[Any, Any, Any, Any, list[dict]]:
    """Default collation of (inputs, verb, noun, index) over the items with inputs, plus every item's failure records.

    A batch whose items all failed has inputs None and empty label tensors.
    """
    import torch
    from torch.utils.data import default_collate

    failures = [rec for item in items for rec in item[4]]
    kept = [item[:4] for item in items if item[0] is not None]
    if not kept:
        empty = torch.zeros(0, dtype=torch.int64)
        return None, empty, empty, empty, failures
    return (*default_collate(kept), failures)


class EpochBatchSampler:
    """Per-rank batches of one epoch: a seeded permutation (train) or the natural order (val), split over ranks.

    Train: `perm[rank::world]`, truncated so every rank gets the same number of full batches
    (drop_last, as the reference). Val: `range(n)[rank::world]`, no padding, last batch partial, so
    every segment is evaluated exactly once. `start_batch` skips the batches already consumed
    before a resume.
    """

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                 rank: int = 0, world_size: int = 1, start_batch: int = 0):
        self.num_samples, self.batch_size, self.shuffle = num_samples, batch_size, shuffle
        self.seed, self.epoch, self.rank, self.world_size, self.start_batch = seed, epoch, rank, world_size, start_batch

    def _indices(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 7919]).permutation(self.num_samples)
            per_rank = self.num_samples // self.world_size
            mine = order[self.rank :: self.world_size][:per_rank]
            return mine[: len(mine) // self.batch_size * self.batch_size]
        return np.arange(self.num_samples)[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(self._indices())
        return max(0, -(-n // self.batch_size) - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        idx = self._indices()
        for b in range(self.start_batch, -(-len(idx) // self.batch_size)):
            yield idx[b * self.batch_size : (b + 1) * self.batch_size].tolist()


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)  # decoding + transforms run in parallel workers; one intra-op thread each


def make_loader(dataset: RecognitionDataset, batch_sampler: EpochBatchSampler, *, num_workers: int, pin_memory: bool = False):
    """DataLoader decoding in `num_workers` processes (0 = in the main process).

    The loader gets its own generator (seeded from the sampler's seed and epoch): creating an
    iterator draws a worker base seed, which must not advance the global RNG that dropout uses,
    or a resumed run would diverge from an uninterrupted one.
    """
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(batch_sampler.seed * 1_000_003 + batch_sampler.epoch)
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, pin_memory=pin_memory,
                      generator=generator, collate_fn=collate,
                      worker_init_fn=_worker_init if num_workers else None,
                      prefetch_factor=4 if num_workers else None, persistent_workers=False)
