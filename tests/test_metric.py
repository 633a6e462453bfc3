"""ED@Z against the `editdistance` package and a slow OSA reference; action pairing; AUED."""
from __future__ import annotations

import editdistance
import numpy as np
import pytest

from features.metric import aued, ed_curve, edit_distance, edit_distance_table, lta_metrics


def _osa(a, b) -> int:
    """Optimal string alignment distance (Levenshtein + adjacent transpositions), textbook DP."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


@pytest.mark.parametrize("alphabet", [2, 4, 30])
def test_prefix_table_matches_editdistance(alphabet):
    rng = np.random.default_rng(alphabet)
    m, z = 3000, 20
    pred = rng.integers(0, alphabet, size=(m, z))
    label = rng.integers(0, alphabet, size=(m, z))
    label[:300] = pred[:300]  # identical pairs
    label[300:600, 5:] = pred[300:600, 5:]  # equal suffixes
    table = edit_distance_table(pred, label)
    for i in range(m):
        for zz in (1, 7, 20) if i > 100 else range(1, z + 1):
            assert table[i, zz - 1] == editdistance.eval(pred[i, :zz].tolist(), label[i, :zz].tolist())
    assert (table[:300] == 0).all()


def test_transpositions_match_osa_reference():
    rng = np.random.default_rng(5)
    m, z = 2000, 12
    pred = rng.integers(0, 3, size=(m, z))
    label = pred.copy()
    for row in label[:1500]:  # a few random adjacent swaps and substitutions
        for _ in range(rng.integers(1, 4)):
            j = rng.integers(0, z - 1)
            row[j], row[j + 1] = row[j + 1], row[j]
        if rng.random() < 0.5:
            row[rng.integers(z)] = rng.integers(3)
    label[1500:] = rng.integers(0, 3, size=(500, z))
    table = edit_distance_table(pred, label, transpositions=True)
    plain = edit_distance_table(pred, label)
    for i in range(m):
        for zz in (2, 5, z):
            assert table[i, zz - 1] == _osa(pred[i, :zz].tolist(), label[i, :zz].tolist())
    assert (table <= plain).all() and (table < plain).any()
    assert edit_distance_table(np.array([[1, 2]]), np.array([[2, 1]]), transpositions=True)[0, 1] == 1


def test_ed_min_over_k_and_mean_over_samples():
    rng = np.random.default_rng(1)
    n, k, z = 500, 5, 20
    pred = rng.integers(0, 6, size=(n, k, z))
    label = rng.integers(0, 6, size=(n, z))
    expected = np.mean([min(editdistance.eval(pred[i, j].tolist(), label[i].tolist()) for j in range(k)) / z for i in range(n)])
    assert edit_distance(pred, label) == pytest.approx(expected, abs=1e-12)
    curve = ed_curve(pred, label)
    i, zz = 17, 9
    assert curve[i, zz - 1] == pytest.approx(min(editdistance.eval(pred[i, j, :zz].tolist(), label[i, :zz].tolist()) for j in range(k)) / zz)


def test_action_pairs_verb_k_with_noun_k():
    # candidate 0 has the right verbs, candidate 1 the right nouns: no candidate has the right actions
    verb_label = np.array([[1, 2, 3, 4]])
    noun_label = np.array([[5, 6, 7, 8]])
    verb_pred = np.array([[[1, 2, 3, 4], [0, 0, 0, 0]]])
    noun_pred = np.array([[[0, 0, 0, 0], [5, 6, 7, 8]]])
    m = lta_metrics(verb_pred, noun_pred, verb_label, noun_label, num_nouns=10)
    assert m["verb_ed"] == 0.0 and m["noun_ed"] == 0.0 and m["action_ed"] == 1.0
    noun_pred[0, 0] = [5, 6, 0, 8]
    m = lta_metrics(verb_pred, noun_pred, verb_label, noun_label, num_nouns=10)
    assert m["action_ed"] == 0.25 and m["num_samples"] == 1
    # verb + noun would collide (1+6 == 2+5); verb * num_nouns + noun does not
    m = lta_metrics(np.array([[[2]]]), np.array([[[5]]]), np.array([[1]]), np.array([[6]]), num_nouns=10)
    assert m["action_ed"] == 1.0


def test_aued_is_trapezoid_over_prefixes():
    curve = np.array([[0.0, 0.5, 1.0], [0.0, 0.5, 0.0]])  # mean curve [0, 0.5, 0.5]
    assert aued(curve) == pytest.approx(((0 + 0.5) / 2 + (0.5 + 0.5) / 2) / 2)
    rng = np.random.default_rng(2)
    pred = rng.integers(0, 4, size=(50, 5, 20))
    label = rng.integers(0, 4, size=(50, 20))
    mean = ed_curve(pred, label).mean(axis=0)
    trapz = getattr(np, "trapezoid", None) or np.trapz
    assert lta_metrics(pred, pred[:, :, :], label, label, num_nouns=4)["verb_aued"] == pytest.approx(trapz(mean) / 19)


def test_large_batch_is_fast():
    import time

    rng = np.random.default_rng(3)
    pred = rng.integers(0, 100, size=(20000, 5, 20))
    label = rng.integers(0, 100, size=(20000, 20))
    t0 = time.perf_counter()
    value = edit_distance(pred, label)
    assert 0.8 < value <= 1.0
    assert time.perf_counter() - t0 < 10  # 100k x 5 x 20 takes a few seconds; 20k well under
