"""Verb-noun pair prior for per-position-logits heads (decoded by the `pair_sample` generator in
`train_heads.generators`).

A multihead (or query) decoder scores verb and noun of a future step independently, so a draw pairs a likely
verb with a likely noun that may never occur together ("open" + "knife"); action ED counts only exact pairs.
`PairPrior` holds log PMI(v, n) = log P(n | v) - log P(n) of the training split's (verb, noun) pairs
(add-`alpha` smoothed counts over the future steps of the training windows), fitted once before training
(`train_heads.train.train`) and saved with the checkpoint as a buffer. It reads labels only, so it works
the same for any features (SlowFast, MViT, CLIP, ...). Enable it with `head.pair_prior: true`.

`pair_sample` (logits heads, `train_heads.generators.PairSampleGenerator`), with log p from the head's
per-position softmax, T = `temperature` and w = `pair_weight`:
- candidate 0: the argmax verb of each step, with the noun maximising log p(n) + w * PMI(v, n);
- the next `verb_first` candidates: the verb drawn from p(v) at T, the noun drawn from the same score at T;
- the rest: joint draws at T over the top `top_verbs` x `top_nouns` pairs, scored log p(v) + log p(n) + w * PMI.
The first kinds keep the head's verb forecast (ED@Z takes the min over K per metric, so the verb ED comes mostly
from them) while pairing each verb with a noun it goes with; the joint draws move verbs towards coherent
actions. Defaults (T 0.4, w 1.2, verb_first 2, top 8 x 12) were chosen on training videos held out from training
(`bench/forecast_quality.py --holdout 6`, realistic setting), not on the benchmark's val split.
A model without a fitted prior decodes with PMI = 0.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class PairPrior(nn.Module):
    """log PMI(v, n) of training (verb, noun) pairs as a (V, N) buffer."""

    def __init__(self, num_verbs: int, num_nouns: int, alpha: float = 0.1):
        super().__init__()
        self.alpha = alpha
        self.register_buffer("log_pmi", torch.zeros(num_verbs, num_nouns))

    @torch.no_grad()
    def fit(self, verb: np.ndarray, noun: np.ndarray) -> None:
        """Count the labelled (verb, noun) pairs (arrays of any equal shape; -1 = unlabelled, skipped)."""
        v, n = np.asarray(verb).ravel(), np.asarray(noun).ravel()
        ok = (v >= 0) & (n >= 0)
        nv, nn_ = self.log_pmi.shape
        counts = np.bincount(v[ok] * nn_ + n[ok], minlength=nv * nn_).reshape(nv, nn_).astype(np.float64) + self.alpha
        log_n_given_v = np.log(counts / counts.sum(1, keepdims=True))
        log_n = np.log(counts.sum(0) / counts.sum())
        self.log_pmi.copy_(torch.from_numpy(log_n_given_v - log_n[None, :]).to(self.log_pmi))


def fit_pair_prior(model: nn.Module, windows) -> None:
    """Fit `model.pair_prior` (if it has one) on the future labels of the training windows."""
    prior = getattr(model, "pair_prior", None)
    if prior is not None:
        prior.fit(windows.future_verb, windows.future_noun)
