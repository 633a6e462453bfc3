"""ED@Z: edit distance between K candidate sequences and the ground truth, vectorised over samples.

ED@Z (reference §4.1) = Levenshtein(pred_k, label) / Z, minimum over the K candidates, mean over
samples; action tokens are (verb, noun) pairs with candidate k pairing verb sequence k with noun
sequence k. AUED is the trapezoid area under ED@z for z = 1..Z, divided by Z - 1.

The dynamic programme runs over the Z x Z table once for all N*K pairs at the same time; the
table's diagonal D[z, z] is the distance between the length-z prefixes, so the ED@z curve (and
AUED) comes from the same pass.
"""
from __future__ import annotations

import numpy as np


def edit_distance_table(pred: np.ndarray, label: np.ndarray, *, transpositions: bool = False) -> np.ndarray:
    """Prefix edit distances between `pred` (M, Z) and `label` (M, Z) integer sequences.

    Returns:
        (M, Z) int array: entry [m, z-1] is the distance between pred[m, :z] and label[m, :z].
        With `transpositions=True` an adjacent swap costs 1 (optimal string alignment, the
        restricted Damerau-Levenshtein distance).
    """
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape or pred.ndim != 2:
        raise ValueError(f"expected two (M, Z) arrays of the same shape, got {pred.shape} and {label.shape}")
    m, z = pred.shape
    dtype = np.int16 if z < 30000 else np.int32
    # D[i][j]: distance between pred[:, :i] and label[:, :j]; rows kept as a list of (M, Z+1) arrays
    cols = np.arange(z + 1, dtype=dtype)
    prev2 = None
    prev = np.broadcast_to(cols, (m, z + 1)).copy()
    diag = np.empty((m, z), dtype=dtype)
    for i in range(1, z + 1):
        cur = np.empty((m, z + 1), dtype=dtype)
        cur[:, 0] = i
        a = pred[:, i - 1]
        sub_cost = (a[:, None] != label).astype(dtype)  # (M, Z): cost of substituting into label[j-1]
        # deletion and substitution are vectorised over j; insertion needs the running row
        best = np.minimum(prev[:, 1:] + 1, prev[:, :-1] + sub_cost)
        if transpositions and i >= 2 and prev2 is not None:
            swap = (a[:, None] == np.concatenate([label[:, :1], label[:, :-1]], axis=1)) & (
                pred[:, i - 2][:, None] == label
            )
            swap[:, 0] = False
            best = np.where(swap, np.minimum(best, np.concatenate([prev2[:, :1], prev2[:, :-2]], axis=1) + 1), best)
        for j in range(1, z + 1):
            cur[:, j] = np.minimum(best[:, j - 1], cur[:, j - 1] + 1)
        diag[:, i - 1] = cur[:, i]
        prev2, prev = prev, cur
    return diag


def levenshtein_pairs(pred: np.ndarray, label: np.ndarray, *, chunk: int = 16384) -> np.ndarray:
    """Levenshtein distance between `pred` (M, Z) and `label` (M, Z) integer sequences: (M,) int, Z <= 64.

    Bit-parallel (Myers 1999, Hyyro's global form): the DP column of each pair lives in the bits of one
    uint64, so a pair costs Z word operations instead of the Z x Z table; `chunk` pairs at a time. Only the
    full-length distance (what MBR's pairwise risks need); `edit_distance_table` gives every prefix.
    """
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape or pred.ndim != 2:
        raise ValueError(f"expected two (M, Z) arrays of the same shape, got {pred.shape} and {label.shape}")
    m, z = pred.shape
    if z > 64:
        raise ValueError(f"edit_distance: sequences of length {z} > 64; use edit_distance_table")
    out = np.empty(m, dtype=np.int64)
    if z == 0 or m == 0:
        out[:] = 0
        return out
    word = np.uint32 if z <= 31 else np.uint64  # a spare top bit for the carry of the addition below
    mask = word((1 << z) - 1) if z < 64 else word(2**64 - 1)
    top, one = word(1 << (z - 1)), word(1)
    for lo in range(0, m, chunk):
        a, b = pred[lo:lo + chunk], label[lo:lo + chunk]
        n = len(a)
        peq = np.zeros((n, z), dtype=word)  # peq[:, j]: bit i set where pred[:, i] == label[:, j]
        for i in range(z):
            peq |= (a[:, i, None] == b).astype(word) << word(i)
        peq = np.ascontiguousarray(peq.T)  # (Z, n): one row per step below
        vp = np.full(n, mask, dtype=word)
        vn = np.zeros(n, dtype=word)
        score = np.full(n, z, dtype=np.int64)
        for j in range(z):
            eq = peq[j]
            xv = eq | vn
            xh = ((((eq & vp) + vp) & mask) ^ vp) | eq
            hp = vn | (~(xh | vp) & mask)
            hn = vp & xh
            score += (hp & top) != 0
            score -= (hn & top) != 0
            hp = ((hp << one) | one) & mask  # row 0 of the table is 0, 1, 2, ...: a horizontal +1 enters at the top
            hn = (hn << one) & mask
            vp = hn | (~(xv | hp) & mask)
            vn = hp & xv
        out[lo:lo + n] = score
    return out


def _check_candidates(pred: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.ndim != 3 or label.ndim != 2 or pred.shape[0] != label.shape[0] or pred.shape[2] != label.shape[1]:
        raise ValueError(f"expected pred (N, K, Z) and label (N, Z), got {pred.shape} and {label.shape}")
    return pred, label


def ed_curve(pred: np.ndarray, label: np.ndarray, *, transpositions: bool = False) -> np.ndarray:
    """Per-sample ED@z for z = 1..Z: (N, Z) floats, min over the K candidates of distance / z."""
    pred, label = _check_candidates(pred, label)
    n, k, z = pred.shape
    if n == 0:
        return np.zeros((0, z))
    labels = np.repeat(label, k, axis=0)  # (N*K, Z)
    table = edit_distance_table(pred.reshape(n * k, z), labels, transpositions=transpositions)
    best = table.reshape(n, k, z).min(axis=1)  # (N, Z)
    return best / np.arange(1, z + 1)


def edit_distance(pred: np.ndarray, label: np.ndarray, *, transpositions: bool = False) -> float:
    """ED@Z: mean over samples of min over K of distance(pred_k, label) / Z."""
    curve = ed_curve(pred, label, transpositions=transpositions)
    return float(curve[:, -1].mean()) if len(curve) else float("nan")


def aued(curve: np.ndarray) -> float:
    """Area under the mean ED@z curve for z = 1..Z (trapezoid rule), divided by Z - 1."""
    mean = np.asarray(curve, dtype=np.float64).mean(axis=0)
    if len(mean) < 2:
        return float(mean[0]) if len(mean) else float("nan")
    return float(((mean[1:] + mean[:-1]) / 2).sum() / (len(mean) - 1))


def lta_metrics(
    verb_pred: np.ndarray,
    noun_pred: np.ndarray,
    verb_label: np.ndarray,
    noun_label: np.ndarray,
    *,
    num_nouns: int,
    transpositions: bool = False,
) -> dict[str, float | list[float]]:
    """Verb, noun and action ED@Z, AUED and the mean ED@z curves.

    Args:
        verb_pred, noun_pred: (N, K, Z) class ids; candidate k pairs verb k with noun k.
        verb_label, noun_label: (N, Z) class ids.
        num_nouns: noun classes, for the action token `verb * num_nouns + noun`.
    """
    action_pred = np.asarray(verb_pred, dtype=np.int64) * num_nouns + np.asarray(noun_pred, dtype=np.int64)
    action_label = np.asarray(verb_label, dtype=np.int64) * num_nouns + np.asarray(noun_label, dtype=np.int64)
    out: dict[str, float | list[float]] = {}
    for name, p, l in (("verb", verb_pred, verb_label), ("noun", noun_pred, noun_label), ("action", action_pred, action_label)):
        curve = ed_curve(p, l, transpositions=transpositions)
        out[f"{name}_ed"] = float(curve[:, -1].mean()) if len(curve) else float("nan")
        out[f"{name}_aued"] = aued(curve) if len(curve) else float("nan")
        out[f"{name}_ed_curve"] = [float(v) for v in curve.mean(axis=0)] if len(curve) else []
    out["num_samples"] = int(np.asarray(verb_label).shape[0])
    return out
