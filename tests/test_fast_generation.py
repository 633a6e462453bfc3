"""The vectorised pieces of evaluation: bit-parallel Levenshtein, MBR pairwise distances, inverse-CDF ancestral draws.

Checked against independent implementations (the `editdistance` package, `torch.multinomial` frequencies).
"""
from __future__ import annotations

import editdistance
import numpy as np
import pytest
import torch

from features.metric import levenshtein_pairs
from train_heads.generators import _sample_ids, pairwise_edit_distance


@pytest.mark.parametrize("z", [1, 2, 7, 20, 31, 32, 33, 64])
@pytest.mark.parametrize("vocab", [2, 6, 500])
def test_levenshtein_pairs_equals_editdistance(z, vocab):
    rng = np.random.default_rng(z * 1000 + vocab)
    a, b = rng.integers(0, vocab, (600, z)), rng.integers(0, vocab, (600, z))
    b[:50] = a[:50]  # identical pairs
    b[50:100, 1:] = a[50:100, :-1]  # shifted by one
    expected = np.array([editdistance.eval(x.tolist(), y.tolist()) for x, y in zip(a, b)])
    assert np.array_equal(levenshtein_pairs(a, b, chunk=97), expected)


def test_levenshtein_pairs_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        levenshtein_pairs(np.zeros((3, 4), int), np.zeros((3, 5), int))
    with pytest.raises(ValueError, match="> 64"):
        levenshtein_pairs(np.zeros((2, 65), int), np.zeros((2, 65), int))


def test_pairwise_edit_distance_is_every_pair():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 5, (4, 9, 20))
    d = pairwise_edit_distance(tokens)
    for w in range(4):
        for i in range(9):
            for j in range(9):
                assert d[w, i, j] == editdistance.eval(tokens[w, i].tolist(), tokens[w, j].tolist())


def test_inverse_cdf_draws_follow_the_distribution():
    torch.manual_seed(0)
    logits = torch.randn(3, 7) * 2
    logits[1, 3] = -float("inf")  # a class of probability 0 is never drawn
    rows = logits.repeat_interleave(20000, 0)
    ids = _sample_ids(rows, 1.0, torch.Generator().manual_seed(1)).reshape(3, 20000)
    probs = torch.softmax(logits, -1)
    for r in range(3):
        freq = torch.bincount(ids[r], minlength=7).double() / 20000
        assert torch.allclose(freq, probs[r].double(), atol=0.012), (freq, probs[r])
    assert not (ids[1] == 3).any()
    again = _sample_ids(rows, 1.0, torch.Generator().manual_seed(1)).reshape(3, 20000)
    assert torch.equal(ids, again)
    assert torch.equal(_sample_ids(logits, 0.0, torch.Generator()), logits.argmax(-1))
