"""Windows over cached features, held in memory; a batch is an index gather.

`FeatureBank` holds each modality's features for all rows, (R, V, *view_shape) (view_shape is
(D,) per segment or (F, D) per frame), plus the row identity (a RowTable-like object with
`lookup(clip_uid, action_idx)`). Slot-dependent stores (SlowFast with the reference LTA slow
pathway) hold one variant per (N_in, slot) of each temporal view; the observed segment at input
position j then reads the variant of slot j (`features.store.slot_views`). `SplitWindows` maps a split's forecasting windows
(features/windows.build_windows) to bank rows and labels; windows with a missing feature row
are dropped and counted. `iterate_batches` yields batches by gathering rows (and, in training,
a random cached view per observed segment) -- no per-sample Python, no DataLoader.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from features.store import slot_views
from features.windows import build_windows

log = logging.getLogger(__name__)


@dataclass
class FeatureBank:
    """Features of every row, per modality, in memory (numpy until `to(device)`)."""

    arrays: dict[str, Any]  # modality -> (R, V, *view_shape) array or tensor
    valid: np.ndarray  # (R,) bool: rows present in every modality
    rows: Any  # RowTable-like: lookup(clip_uid, action_idx) -> (n,) row or -1
    cache_keys: dict[str, str] = field(default_factory=dict)  # modality -> cache key
    slots: dict[str, list] = field(default_factory=dict)  # modality -> [(N_in, slot), ...] variants per view ([]: none)
    flips: dict[str, list] = field(default_factory=dict)  # modality -> flip flag per temporal view ([]: none flipped)
    _tables: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_loaded(cls, loaded: Any, modality_keys: dict[str, str]) -> "FeatureBank":
        """From `features.store.load_features(...)` output; `modality_keys` maps modality -> cache key."""
        valid = np.ones(len(loaded.rows), dtype=bool)
        for key in modality_keys.values():
            valid &= loaded.valid[key]
        arrays = {m: loaded.arrays[k] for m, k in modality_keys.items()}
        slots = {m: list(getattr(loaded, "slots", {}).get(k, [])) for m, k in modality_keys.items()}
        flips = {m: list(getattr(loaded, "flips", {}).get(k, [])) for m, k in modality_keys.items()}
        return cls(arrays=arrays, valid=valid, rows=loaded.rows, cache_keys=dict(modality_keys), slots=slots,
                   flips=flips)

    @property
    def modalities(self) -> list[str]:
        return list(self.arrays)

    def view_shape(self, modality: str) -> tuple[int, ...]:
        return tuple(self.arrays[modality].shape[2:])

    def num_views(self, modality: str) -> int:
        """Temporal views (slot variants of one view count once)."""
        return int(self.arrays[modality].shape[1]) // max(len(self.slots.get(modality, [])), 1)

    def view_table(self, modality: str, num_input: int) -> np.ndarray:
        """(V, num_input) view-axis index of temporal view v at input position j (StoreError if the
        store has no variants for N_in = num_input; the message says how to extract them)."""
        key = (modality, num_input)
        if key not in self._tables:
            self._tables[key] = slot_views(self.slots.get(modality, []), int(self.arrays[modality].shape[1]), num_input)
        return self._tables[key]

    def check_num_input(self, num_input: int) -> None:
        """Raise StoreError naming the modality when a slot-dependent store lacks N_in = num_input."""
        from features.store import StoreError

        for m in self.arrays:
            try:
                self.view_table(m, num_input)
            except StoreError as err:
                raise StoreError(f"modality {m!r} ({self.cache_keys.get(m, '?')}): {err}") from None

    def to(self, device: str | torch.device) -> "FeatureBank":
        """Move the arrays to `device` as tensors (kept in their stored dtype, e.g. float16)."""
        arrays = {}
        for m, a in self.arrays.items():
            t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
            arrays[m] = t.to(device)
        return FeatureBank(arrays=arrays, valid=self.valid, rows=self.rows, cache_keys=self.cache_keys, slots=self.slots,
                           flips=self.flips)

    def view_flips(self, modality: str) -> np.ndarray:
        """(V_temporal,) bool: which temporal views of `modality` are horizontally flipped."""
        flags = np.zeros(self.num_views(modality), dtype=bool)
        given = np.asarray(self.flips.get(modality, []), dtype=bool)
        flags[:len(given)] = given[:len(flags)]
        return flags

    def _window_views(self, modality: str, u: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
        """(B, N_in) temporal view of each position: among the views whose flip is the window's `flipped` (B, 1)
        (any view when the store holds none of that kind), the one `u` (B, N_in) in [0, 1) picks."""
        flags = torch.as_tensor(self.view_flips(modality))
        pools = [torch.nonzero(flags == f).flatten() for f in (False, True)]
        pools = [p if len(p) else torch.arange(len(flags)) for p in pools]
        pick = [p[(u * len(p)).long().clamp_max(len(p) - 1)] for p in pools]
        return torch.where(flipped.cpu(), pick[1], pick[0])

    def gather(self, rows: torch.Tensor, *, train: bool, rng: torch.Generator | None = None,
               window_flip_prob: float | None = None) -> dict[str, torch.Tensor]:
        """rows (B, N_in) -> modality -> (B, N_in, *view_shape) float32; view 0 outside training; position j
        reads slot j's variant of slot-dependent stores.

        In training, `window_flip_prob` None: each position draws any cached temporal view (flipped or not)
        uniformly, per modality. A probability: the reference's draw (one scale/crop/flip per window, shared by
        its N_in clips, EGO4D/forecasting datasets/long_term_anticipation.py:236-243; a random start per input
        segment, ptv_dataset_helper.py:327-333): the window is flipped with that probability, shared by its
        positions and modalities, and each position draws its temporal view among the views of that flip."""
        out = {}
        shared = None
        if train and window_flip_prob is not None:
            dev = rng.device if rng else "cpu"
            flipped = torch.rand((rows.shape[0], 1), generator=rng, device=dev) < window_flip_prob  # (B, 1)
            shared = (torch.rand(tuple(rows.shape), generator=rng, device=dev).cpu(), flipped)
        for m, a in self.arrays.items():
            table = self.view_table(m, int(rows.shape[1]))  # (V, N_in)
            if shared is not None:
                views = self._window_views(m, *shared).to(rows.device)
            elif train and table.shape[0] > 1:
                views = torch.randint(0, table.shape[0], rows.shape, generator=rng, device=rng.device if rng else "cpu")
                views = views.to(rows.device)
            else:
                views = torch.zeros_like(rows)
            if self.slots.get(m):
                t = torch.as_tensor(table, device=rows.device)
                views = t[views, torch.arange(rows.shape[1], device=rows.device)[None, :]]
            out[m] = a[rows, views].float()
        return out

    def pooled(self, rows: np.ndarray) -> np.ndarray:
        """View-0 features of `rows` (any shape S) averaged over frames and concatenated over modalities: (*S, D_total).

        For slot-dependent stores and rows (W, N_in), position j reads slot j's variant; other shapes read slot 0.
        """
        parts = []
        for m, a in self.arrays.items():
            if self.slots.get(m) and rows.ndim == 2:
                v = np.broadcast_to(self.view_table(m, rows.shape[1])[0][None, :], rows.shape).reshape(-1)
            else:
                v = np.zeros(rows.size, dtype=np.int64)
            x = a[rows.reshape(-1), v]
            x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            x = x.astype(np.float32)
            if x.ndim == 3:  # (n, F, D) per-frame
                x = x.mean(1)
            parts.append(x)
        return np.concatenate(parts, axis=1).reshape(*rows.shape, -1)


@dataclass
class SplitWindows:
    """A split's usable windows: bank rows of the observed segments and the labels."""

    split: str
    keys: list[str]  # (W,) "<clip_uid>_<action_idx>" of the last observed segment
    observed_rows: np.ndarray  # (W, N_in) int64 rows into the FeatureBank
    observed_verb: np.ndarray  # (W, N_in) int64, -1 when unlabelled
    observed_noun: np.ndarray
    future_verb: np.ndarray  # (W, Z) int64, -1 when unlabelled
    future_noun: np.ndarray
    dropped_keys: list[str] = field(default_factory=list)  # windows lacking a feature row

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def labelled(self) -> bool:
        return len(self) > 0 and bool((self.future_verb >= 0).all())

    def subset(self, index: np.ndarray) -> "SplitWindows":
        return SplitWindows(self.split, [self.keys[i] for i in index], self.observed_rows[index],
                            self.observed_verb[index], self.observed_noun[index], self.future_verb[index],
                            self.future_noun[index], list(self.dropped_keys))


def make_split_windows(ann: Any, bank: FeatureBank, *, num_input: int, num_future: int = 20,
                       num_seen: int | None = None, convention: str = "plus_one") -> SplitWindows:
    """Windows of `ann` (SplitAnnotations) whose observed segments all have features in `bank`.

    Dropped windows are counted in the log and kept in `dropped_keys` (predict gives them a fallback).
    """
    bank.check_num_input(num_input)
    win = build_windows(ann, num_input=num_input, num_future=num_future, num_seen=num_seen, convention=convention)
    seg_rows = bank.rows.lookup(np.asarray(ann.clip_uid).astype(str), ann.action_idx)  # (R_ann,) bank row or -1
    seg_ok = seg_rows >= 0
    seg_ok[seg_ok] = bank.valid[seg_rows[seg_ok]]
    obs = win.observed  # (W, N_in) annotation rows
    keep = seg_ok[obs].all(axis=1) if len(win) else np.zeros(0, dtype=bool)
    dropped = [k for k, ok in zip(win.keys, keep) if not ok]
    if dropped:
        log.warning("%s: dropped %d of %d windows with missing feature rows, e.g. %s",
                    ann.split, len(dropped), len(win), dropped[:3])
    idx = np.flatnonzero(keep)
    return SplitWindows(
        split=ann.split,
        keys=[win.keys[i] for i in idx],
        observed_rows=seg_rows[obs[idx]].astype(np.int64),
        observed_verb=ann.verb[obs[idx]],
        observed_noun=ann.noun[obs[idx]],
        future_verb=ann.verb[win.future[idx]],
        future_noun=ann.noun[win.future[idx]],
        dropped_keys=dropped,
    )


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # modality -> (B, N_in, *view_shape)
    future_verb: torch.Tensor  # (B, Z)
    future_noun: torch.Tensor
    observed_verb: torch.Tensor  # (B, N_in)
    observed_noun: torch.Tensor
    index: torch.Tensor  # (B,) window index


class DeviceWindows:
    """A split's window tensors on the device, ready for gathers."""

    def __init__(self, windows: SplitWindows, device: str | torch.device):
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        self.windows = windows
        self.device = torch.device(device)
        self.observed_rows = t(windows.observed_rows)
        self.future_verb, self.future_noun = t(windows.future_verb), t(windows.future_noun)
        self.observed_verb, self.observed_noun = t(windows.observed_verb), t(windows.observed_noun)

    def __len__(self) -> int:
        return len(self.windows)


def iterate_batches(data: DeviceWindows, bank: FeatureBank, *, batch_size: int, train: bool,
                    rng: torch.Generator | None = None, drop_last: bool = False,
                    window_flip_prob: float | None = None) -> Iterator[Batch]:
    """Batches of windows: shuffled (with `rng`) with random views in training (drawn as `FeatureBank.gather`
    says for `window_flip_prob`), in order with view 0 otherwise."""
    n = len(data)
    if train:
        order = torch.randperm(n, generator=rng, device=rng.device if rng else "cpu").to(data.device)
    else:
        order = torch.arange(n, device=data.device)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for lo in range(0, stop, batch_size):
        idx = order[lo:lo + batch_size]
        rows = data.observed_rows[idx]  # (B, N_in)
        yield Batch(
            inputs=bank.gather(rows, train=train, rng=rng, window_flip_prob=window_flip_prob),
            future_verb=data.future_verb[idx], future_noun=data.future_noun[idx],
            observed_verb=data.observed_verb[idx], observed_noun=data.observed_noun[idx],
            index=idx,
        )
