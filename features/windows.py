"""Forecasting windows: the observed segments before a key and the Z segments after it.

A sample is keyed by `<clip_uid>_<action_idx of the last observed segment>` (reference §1.4).
Which keys exist depends on `num_seen` (how many segments must precede the forecast; 8 in the
challenge) and on the window-range convention:

- "plus_one": last-observed positions p in [num_seen-1, L-Z-1] (the current reference code,
  `range(L - Z - N + 1)` window starts, after EGO4D/forecasting#31);
- "challenge": the same without the last window per clip (`range(L - Z - N)`, the range the
  challenge's evaluation keys were made with).

The model looks at the last `num_input <= num_seen` segments ending at p.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.annotations import SplitAnnotations

CONVENTIONS = ("plus_one", "challenge")
NUM_FUTURE = 20
NUM_SEQUENCES = 5


@dataclass
class Windows:
    """Windows of one split as arrays of row indices into the split's `SplitAnnotations`."""

    keys: list[str]  # (W,) "<clip_uid>_<action_idx>" of the last observed segment
    observed: np.ndarray  # (W, num_input) int64 rows, oldest first
    future: np.ndarray  # (W, Z) int64 rows
    num_input: int
    num_future: int

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, mask: np.ndarray) -> "Windows":
        idx = np.flatnonzero(mask)
        return Windows([self.keys[i] for i in idx], self.observed[idx], self.future[idx], self.num_input, self.num_future)


def build_windows(
    ann: SplitAnnotations,
    *,
    num_input: int,
    num_future: int = NUM_FUTURE,
    num_seen: int | None = None,
    convention: str = "plus_one",
) -> Windows:
    """All windows of a split (clips with too few segments yield none, as in the reference).

    Args:
        ann: the split's segments.
        num_input: observed segments fed to the model (N_in).
        num_future: segments to forecast (Z).
        num_seen: segments that must precede the forecast; defines the key set (default num_input).
        convention: "plus_one" or "challenge" (see module docstring).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown window convention {convention!r}; available: {list(CONVENTIONS)}")
    num_seen = num_input if num_seen is None else num_seen
    if not 1 <= num_input <= num_seen:
        raise ValueError(f"need 1 <= num_input ({num_input}) <= num_seen ({num_seen})")
    if num_future < 1:
        raise ValueError(f"num_future must be >= 1, got {num_future}")
    drop_last = 1 if convention == "challenge" else 0
    keys: list[str] = []
    last_rows: list[np.ndarray] = []
    for clip_uid, sl in ann.clip_slices.items():
        length = sl.stop - sl.start
        positions = np.arange(num_seen - 1, length - num_future - drop_last)  # last observed position
        if len(positions) == 0:
            continue
        last_rows.append(sl.start + positions)
        keys.extend(f"{clip_uid}_{a}" for a in ann.action_idx[sl.start + positions])
    last = np.concatenate(last_rows) if last_rows else np.zeros(0, dtype=np.int64)
    observed = last[:, None] + np.arange(-num_input + 1, 1)[None, :]
    future = last[:, None] + np.arange(1, num_future + 1)[None, :]
    return Windows(keys, observed.astype(np.int64), future.astype(np.int64), num_input, num_future)


def view_positions(num_views: int) -> list[float]:
    """Where the `num_views` cached views of a segment sit, as positions p in [0, 1] of the window start over the
    segment: 0.5 (centred, the reference test view) first, then 0, 1, 0.25, 0.75, 0.125, ... (a nested
    coarse-to-fine sequence, so adding views never changes earlier ones). Extraction (extract/decode.py) and
    the Ego4D feature importer (features/ego4d_features.py) both place views with it."""
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    positions = [0.5, 0.0, 1.0]
    level = 2
    while len(positions) < num_views:
        positions += [(2 * k + 1) / 2**level for k in range(2 ** (level - 1))]
        level += 1
    return positions[:num_views]
