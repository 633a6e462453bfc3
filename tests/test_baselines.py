"""The no-training baselines on data built so that their answers are known exactly.

Every clip walks one fixed cycle of distinct (verb, noun) actions, starting at its own phase, and a segment's
feature is the one-hot code of its action. Then, by construction:
- the Markov chain started from the true last observed action (`markov_oracle`) replays the cycle: ED = 0;
- a kNN recogniser on one-hot features recognises every observed segment, so `markov_knn` is the oracle;
- the nearest training windows (`knn_retrieval`) hold the same observed actions, hence the same future: ED = 0;
- the frequency prior ignores the history and cannot follow the cycle: far from 0.
A baseline that starts its chain from the wrong observed segment, retrieves the wrong windows' futures or
mixes verb and noun sequences of different candidates fails these.
"""
from __future__ import annotations

import types

import numpy as np
import pytest

from train_heads.baselines import TrainingSet
from train_heads.data import FeatureBank, SplitWindows
from train_heads.evaluate import evaluate_split

CYCLE = [(0, 3), (1, 5), (2, 0), (3, 6), (4, 2)]  # (verb, noun); distinct verbs and nouns
NUM_VERBS, NUM_NOUNS, N_IN, Z, K = 6, 7, 2, 20, 5


class _Rows:
    """RowTable stand-in: bank row r is row r of the concatenated splits."""

    def __init__(self, clip_uid: np.ndarray, action_idx: np.ndarray):
        self.index = {(c, int(a)): r for r, (c, a) in enumerate(zip(clip_uid, action_idx))}

    def lookup(self, clip_uid, action_idx):
        return np.array([self.index.get((c, int(a)), -1) for c, a in zip(clip_uid, action_idx)], dtype=np.int64)


def _cycle_data(train_clips: int = 60, val_clips: int = 5, length: int = 100):
    rng = np.random.default_rng(0)
    clip_uid, action_idx, verb, noun, split = [], [], [], [], []
    for c in range(train_clips + val_clips):
        phase = int(rng.integers(len(CYCLE)))
        for a in range(length):
            v, n = CYCLE[(phase + a) % len(CYCLE)]
            clip_uid.append(f"clip{c:03d}")
            action_idx.append(a)
            verb.append(v)
            noun.append(n)
            split.append("train" if c < train_clips else "val")
    clip_uid, action_idx, verb, noun, split = map(np.asarray, (clip_uid, action_idx, verb, noun, split))
    feats = np.zeros((len(verb), 1, len(CYCLE)), dtype=np.float32)  # (R, V=1, D): one-hot action code
    feats[np.arange(len(verb)), 0, [CYCLE.index((v, n)) for v, n in zip(verb, noun)]] = 1.0
    bank = FeatureBank(arrays={"slowfast": feats}, valid=np.ones(len(verb), bool), rows=_Rows(clip_uid, action_idx))

    def windows(name: str) -> SplitWindows:
        keys, last = [], []
        for c in np.unique(clip_uid[split == name]):
            rows = np.flatnonzero(clip_uid == c)
            for p in range(N_IN - 1, len(rows) - Z):
                keys.append(f"{c}_{action_idx[rows[p]]}")
                last.append(rows[p])
        last = np.asarray(last)
        obs, fut = last[:, None] + np.arange(-N_IN + 1, 1), last[:, None] + np.arange(1, Z + 1)
        return SplitWindows(name, keys, obs, verb[obs], noun[obs], verb[fut], noun[fut])

    train = split == "train"
    ann = types.SimpleNamespace(clip_uid=clip_uid[train], action_idx=action_idx[train], verb=verb[train], noun=noun[train])
    return TrainingSet(ann=ann, windows=windows("train"), bank=bank, num_verbs=NUM_VERBS, num_nouns=NUM_NOUNS), \
        windows("val"), bank


@pytest.fixture(scope="module")
def metrics():
    train_set, val, bank = _cycle_data()
    return evaluate_split(None, train_set=train_set, windows=val, bank=bank, generators={}, k=K, seed=0,
                          baselines=("frequency_prior", "markov", "knn_retrieval"))


def test_history_reading_baselines_replay_the_cycle_exactly(metrics):
    assert metrics["knn.recognition.verb_acc"] == metrics["knn.recognition.noun_acc"] == 1.0
    for name in ("markov_oracle", "markov_knn", "knn_retrieval"):
        for what in ("verb", "noun", "action"):
            assert metrics[f"{name}.{what}_ed"] == 0.0, (name, what, metrics[f"{name}.{what}_ed"])
        assert metrics[f"{name}.action_ed_curve"] == [0.0] * Z


def test_frequency_prior_cannot_follow_the_cycle(metrics):
    # its draws are independent of the history: even the best of K = 5 random sequences misses most of 20 steps
    assert metrics["frequency_prior.action_ed"] > 0.5
    assert metrics["frequency_prior.verb_ed"] > 0.3 and metrics["frequency_prior.noun_ed"] > 0.3
    assert metrics["num_windows"] == 5 * (100 - Z - N_IN + 1)
