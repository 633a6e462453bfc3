"""No-training baselines, scored by the same code as the trained heads (the bar every head must clear).

Interface: `baseline.fit(train)` with a `TrainingSet` (train annotations, windows, feature bank),
then `baseline.predict(windows, bank, *, k, rng, recognised) -> (verb (W, K, Z), noun (W, K, Z))`.
`recognised` is (verb (W, N_in), noun (W, N_in)) of the observed segments as recognised by a model
(test segments carry no labels), used by the transition model.

- `frequency_prior`: K draws per position from the training marginals of verbs and of nouns.
- `markov`: a first-order Markov chain over (verb, noun) actions from consecutive training segments,
  add-alpha backed off to the unigram, started from the recognised last observed action; K sampled chains.
- `knn_retrieval`: the training futures of the K nearest training windows (cosine on pooled view-0 features).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from train_heads.data import FeatureBank, SplitWindows
from train_heads.generators import create_generator
from train_heads.registry import Registry

BASELINES = Registry("baseline")


def create_baseline(name: str, **kwargs):
    return BASELINES.create(name, **kwargs)


def list_baselines() -> list[str]:
    return BASELINES.names()


@dataclass
class TrainingSet:
    ann: Any  # SplitAnnotations of the training split
    windows: SplitWindows
    bank: FeatureBank
    num_verbs: int
    num_nouns: int


@BASELINES.register("frequency_prior")
class FrequencyPrior:
    """Sample every position from the training class frequencies (verb and noun independently)."""

    def __init__(self, *, generator: str = "sample", chunk_windows: int = 1024):
        self.generator = create_generator(generator)
        self.chunk_windows = chunk_windows

    def fit(self, train: TrainingSet) -> "FrequencyPrior":
        self.verb_log_prob = np.log(np.bincount(train.ann.verb, minlength=train.num_verbs) + 1e-3)
        self.noun_log_prob = np.log(np.bincount(train.ann.noun, minlength=train.num_nouns) + 1e-3)
        self.num_verbs, self.num_nouns = train.num_verbs, train.num_nouns
        return self

    def predict(self, windows: SplitWindows, bank: FeatureBank | None = None, *, k: int, rng: torch.Generator,
                recognised: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.predict_keys(len(windows), windows.future_verb.shape[1], k=k, rng=rng)

    def predict_keys(self, num: int, num_future: int, *, k: int, rng: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Predictions for `num` windows without features (also the fallback of `lta predict`)."""
        verb_lp = torch.from_numpy(self.verb_log_prob).float()
        noun_lp = torch.from_numpy(self.noun_log_prob).float()
        verbs, nouns = [], []
        for lo in range(0, num, self.chunk_windows):
            n = min(self.chunk_windows, num - lo)
            v, nn_ = self.generator.generate(verb_lp.expand(n, num_future, -1), noun_lp.expand(n, num_future, -1), k=k, rng=rng)
            verbs.append(v)
            nouns.append(nn_)
        empty = np.zeros((0, k, num_future), dtype=np.int64)
        return (np.concatenate(verbs) if verbs else empty), (np.concatenate(nouns) if nouns else empty)


@BASELINES.register("markov")
class MarkovBaseline:
    """First-order transitions between actions, started from the recognised last observed action."""

    def __init__(self, *, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, train: TrainingSet) -> "MarkovBaseline":
        from scipy import sparse

        ann = train.ann
        actions = ann.verb * train.num_nouns + ann.noun  # (R,)
        self.vocab, codes = np.unique(actions, return_inverse=True)  # compact state ids
        self.num_nouns = train.num_nouns
        same_clip = ann.clip_uid[1:] == ann.clip_uid[:-1]  # rows are sorted by (clip_uid, action_idx)
        a, b = codes[:-1][same_clip], codes[1:][same_clip]
        s = len(self.vocab)
        counts = sparse.csr_matrix((np.ones(len(a)), (a, b)), shape=(s, s))
        counts.sum_duplicates()
        self.row_total = np.asarray(counts.sum(axis=1)).ravel()  # (S,)
        self.unigram_cum = np.cumsum(np.bincount(codes, minlength=s) / len(codes))
        # row r's normalised cumulative mass lives in (r, r + 1], so one searchsorted serves every row
        data = counts.data / np.repeat(np.maximum(self.row_total, 1), np.diff(counts.indptr))
        cum = np.concatenate([np.cumsum(data[lo:hi]) for lo, hi in zip(counts.indptr[:-1], counts.indptr[1:])]) if len(data) else data
        self.cum_offset = cum + np.repeat(np.arange(s), np.diff(counts.indptr))
        self.indptr, self.indices = counts.indptr, counts.indices
        return self

    def _encode(self, verb: np.ndarray, noun: np.ndarray) -> np.ndarray:
        act = np.asarray(verb, dtype=np.int64) * self.num_nouns + np.asarray(noun, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.vocab, act), len(self.vocab) - 1)
        return np.where((self.vocab[pos] == act) & (act >= 0), pos, -1)

    def predict(self, windows: SplitWindows, bank: FeatureBank | None = None, *, k: int, rng: torch.Generator,
                recognised: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if recognised is None:
            raise ValueError("markov baseline needs the recognised observed actions")
        np_rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
        z = windows.future_verb.shape[1]
        state = np.repeat(self._encode(recognised[0][:, -1], recognised[1][:, -1]), k)  # (W*K,)
        out = np.empty((len(state), z), dtype=np.int64)
        for step in range(z):
            known = state >= 0
            total = np.where(known, self.row_total[np.maximum(state, 0)], 0)
            use_row = known & (np_rng.random(len(state)) < total / (total + self.alpha))
            nxt = np.searchsorted(self.unigram_cum, np_rng.random(len(state)) * self.unigram_cum[-1])
            rows = state[use_row]
            j = np.searchsorted(self.cum_offset, rows + np_rng.random(len(rows)))
            j = np.clip(j, self.indptr[rows], self.indptr[rows + 1] - 1)
            nxt[use_row] = self.indices[j]
            state = np.minimum(nxt, len(self.vocab) - 1)
            out[:, step] = state
        actions = self.vocab[out].reshape(len(windows), k, z)
        return actions // self.num_nouns, actions % self.num_nouns


@BASELINES.register("knn_retrieval")
class KNNRetrieval:
    """Copy the futures of the K nearest training windows (cosine distance on pooled view-0 features)."""

    def __init__(self, *, max_train_windows: int = 50000, seed: int = 0):
        self.max_train_windows = max_train_windows
        self.seed = seed

    @staticmethod
    def _embed(windows: SplitWindows, bank: FeatureBank) -> np.ndarray:
        x = bank.pooled(windows.observed_rows).mean(axis=1)  # (W, D)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)

    def fit(self, train: TrainingSet) -> "KNNRetrieval":
        from sklearn.neighbors import NearestNeighbors

        w = train.windows
        if len(w) > self.max_train_windows:
            w = w.subset(np.sort(np.random.default_rng(self.seed).choice(len(w), self.max_train_windows, replace=False)))
        self.future_verb, self.future_noun = w.future_verb, w.future_noun
        self.index = NearestNeighbors(metric="euclidean").fit(self._embed(w, train.bank))
        return self

    def predict(self, windows: SplitWindows, bank: FeatureBank | None = None, *, k: int, rng: torch.Generator,
                recognised: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        if len(windows) == 0:
            z = windows.future_verb.shape[1]
            return np.zeros((0, k, z), np.int64), np.zeros((0, k, z), np.int64)
        k_eff = min(k, len(self.future_verb))
        _, idx = self.index.kneighbors(self._embed(windows, bank), n_neighbors=k_eff)  # (W, K)
        if k_eff < k:
            idx = np.pad(idx, ((0, 0), (0, k - k_eff)), mode="edge")
        return self.future_verb[idx], self.future_noun[idx]


class KNNRecognizer:
    """Recognise (verb, noun) of segments from features with a kNN classifier (for runs without a head)."""

    def __init__(self, *, neighbours: int = 5, max_rows: int = 20000, seed: int = 0):
        self.neighbours, self.max_rows, self.seed = neighbours, max_rows, seed

    def fit(self, train: TrainingSet) -> "KNNRecognizer":
        from sklearn.neighbors import KNeighborsClassifier

        rows, first = np.unique(train.windows.observed_rows.ravel(), return_index=True)
        verb = train.windows.observed_verb.ravel()[first]
        noun = train.windows.observed_noun.ravel()[first]
        if len(rows) > self.max_rows:
            sel = np.sort(np.random.default_rng(self.seed).choice(len(rows), self.max_rows, replace=False))
            rows, verb, noun = rows[sel], verb[sel], noun[sel]
        x = self._embed(train.bank, rows)
        n = min(self.neighbours, len(rows))
        self.verb_clf = KNeighborsClassifier(n_neighbors=n).fit(x, verb)
        self.noun_clf = KNeighborsClassifier(n_neighbors=n).fit(x, noun)
        return self

    @staticmethod
    def _embed(bank: FeatureBank, rows: np.ndarray) -> np.ndarray:
        x = bank.pooled(rows)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)

    def predict(self, windows: SplitWindows, bank: FeatureBank) -> tuple[np.ndarray, np.ndarray]:
        """(verb (W, N_in), noun (W, N_in)) of every observed segment."""
        rows = windows.observed_rows
        if rows.size == 0:
            return np.zeros(rows.shape, np.int64), np.zeros(rows.shape, np.int64)
        x = self._embed(bank, rows.ravel())
        return self.verb_clf.predict(x).reshape(rows.shape), self.noun_clf.predict(x).reshape(rows.shape)
