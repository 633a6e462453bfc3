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
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from extract.finetune_model import BackboneSpec
from features.annotations import SplitAnnotations, clip_path

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


class RecognitionDataset:
    """Map-style dataset: item i = (inputs, verb, noun, i) for labelled segment i of a split.

    Args:
        data_dir: dataset root (annotations/, clips/).
        ann: the split's segments (`features.annotations.load_split`).
        spec: backbone spec (frames, sampling rate, crop, mean/std).
        train: random window position and augmentation (True) or centred window and centre crop.
        seed: base seed of the per-sample generators; `set_epoch` changes the draws per epoch.
        flip_prob: horizontal flip probability in training.
        resized: read `clips/` (short side 320, the default) or the raw `clips_hq/`.
    """

    def __init__(self, data_dir: Path | str, ann: SplitAnnotations, spec: BackboneSpec, *, train: bool,
                 seed: int = 0, flip_prob: float = 0.5, resized: bool = True):
        if not ann.has_labels:
            raise ValueError(f"{ann.path}: split {ann.split!r} has unlabelled segments; recognition needs verb/noun labels")
        self.data_dir = Path(data_dir)
        self.ann = ann
        self.spec = spec
        self.train = train
        self.seed = seed
        self.flip_prob = flip_prob
        self.epoch = 0
        self._info: dict[Path, Any] = {}  # per-process cache of decode.probe_clip
        self.paths = {uid: clip_path(data_dir, uid, resized=resized) for uid in ann.clip_uids}
        missing = [str(p) for p in self.paths.values() if not p.is_file()]
        if missing:  # validate before the first frame is decoded
            raise FileNotFoundError(f"{len(missing)} clip(s) of {ann.path} not found, e.g. {missing[:3]}")

    def __len__(self) -> int:
        return self.ann.num_segments

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _decode(self, path: Path, index: int, rng: np.random.Generator | None) -> np.ndarray:
        """(T, H, W, 3) uint8 frames of segment `index`'s window: random position in train, centred in val."""
        from extract import decode

        info = self._info.get(path)
        if info is None:  # probing demuxes the whole clip: once per clip and worker
            info = self._info[path] = decode.probe_clip(path)
        spec = self.spec
        position = float(rng.uniform(0.0, 1.0)) if self.train else 0.5
        frame_idx = decode.window_frame_indices(
            float(self.ann.start_sec[index]), float(self.ann.end_sec[index]), num_frames=spec.num_frames,
            sampling_rate=spec.sampling_rate, fps=info.fps, position=position, target_fps=spec.target_fps,
            num_clip_frames=info.num_frames)
        frames = dict(decode.decode_frames_all(path, frame_idx, info=info))  # each distinct frame decoded once
        return np.stack([frames[int(f)] for f in frame_idx])

    def __getitem__(self, index: int) -> tuple[Any, int, int, int]:
        import torch

        ann, spec = self.ann, self.spec
        rng = sample_rng(self.seed, self.epoch, index) if self.train else None
        path = self.paths[ann.clip_uid[index]]
        try:
            frames = self._decode(path, index, rng)
        except Exception as err:
            raise RuntimeError(f"{path}: decoding segment clip_uid={ann.clip_uid[index]!r} "
                               f"action_idx={int(ann.action_idx[index])} failed: {err}") from err
        clip = transform_clip(torch.as_tensor(np.asarray(frames)), spec, train=self.train, rng=rng, flip_prob=self.flip_prob)
        return pack_pathways(clip, spec.alpha), int(ann.verb[index]), int(ann.noun[index]), index


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
                      generator=generator,
                      worker_init_fn=_worker_init if num_workers else None,
                      prefetch_factor=4 if num_workers else None, persistent_workers=False)
