"""Verb-noun pair prior for per-position-logits heads, and the `pair_sample` generator that decodes with it.

A multihead (or query) decoder scores verb and noun of a future step independently, so a draw pairs a likely
verb with a likely noun that may never occur together ("open" + "knife"); action ED counts only exact pairs.
`PairPrior` holds log PMI(v, n) = log P(n | v) - log P(n) of the training split's (verb, noun) pairs
(add-`alpha` smoothed counts over the future steps of the training windows), fitted once before training
(`train_heads.train.train`) and saved with the checkpoint as a buffer. It reads labels only, so it works
the same for any features (SlowFast, MViT, CLIP, ...). Enable it with `head.pair_prior: true`.

`pair_sample` (logits heads): per step, the joint score of the top `top_verbs` x `top_nouns` pairs is
log p(v) + log p(n) + `pair_weight` * PMI(v, n). Candidate 0 is the per-position argmax without the prior
(`plain` candidates in all: argmax, then draws at `temperature` without the prior), which keeps the verb
and noun forecasts of the head; the other K - `plain` candidates are joint draws at `temperature` with the
prior, which make coherent actions. ED@Z takes the min over K per metric, so both kinds count.
A model without a fitted prior decodes with PMI = 0.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from train_heads.generators import GENERATORS, _to_numpy


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


@GENERATORS.register("pair_sample")
class PairSampleGenerator:
    """Joint (verb, noun) draws with the pair prior; the first `plain` candidates without it (see module doc)."""

    requires_autoregressive = False

    def __init__(self, *, temperature: float = 0.7, pair_weight: float = 1.2, plain: int = 2, top_verbs: int = 8,
                 top_nouns: int = 24):
        if plain < 0 or top_verbs < 1 or top_nouns < 1:
            raise ValueError(f"pair_sample: need plain >= 0, top_verbs >= 1, top_nouns >= 1, got {plain}, {top_verbs}, {top_nouns}")
        self.temperature, self.pair_weight, self.plain = temperature, pair_weight, plain
        self.top_verbs, self.top_nouns = top_verbs, top_nouns

    def generate(self, verb_logits, noun_logits, *, k: int, rng: torch.Generator, log_pmi: torch.Tensor | None = None):
        from train_heads.generators import LogitsSource

        source = LogitsSource(verb_logits, noun_logits)
        source.pair_log_pmi = log_pmi
        return self.generate_from(source, k=k, rng=rng)

    def _draw(self, sv, iv, sn, in_, pmi, weight: float, num: int, rng, argmax_first: bool):
        w, z, tv = sv.shape
        tn = sn.shape[-1]
        score = sv[..., :, None] + sn[..., None, :]  # (W, Z, tv, tn)
        if weight and pmi is not None:
            score = score + weight * pmi[iv[..., :, None], in_[..., None, :]]
        flat = score.reshape(w * z, tv * tn)
        picks = []
        if argmax_first:
            picks.append(flat.argmax(-1, keepdim=True))
        rest = num - len(picks)
        if rest > 0:
            if self.temperature <= 0:
                picks.append(flat.argmax(-1, keepdim=True).expand(-1, rest))
            else:
                probs = torch.softmax(flat / self.temperature, -1)
                picks.append(torch.multinomial(probs, rest, replacement=True, generator=rng))
        idx = torch.cat(picks, -1).reshape(w, z, num).permute(0, 2, 1)  # (W, num, Z) into the tv x tn grid
        verb = torch.gather(iv[:, None].expand(w, num, z, tv), -1, (idx // tn)[..., None])[..., 0]
        noun = torch.gather(in_[:, None].expand(w, num, z, tn), -1, (idx % tn)[..., None])[..., 0]
        return verb, noun

    @torch.no_grad()
    def generate_from(self, source, *, k: int, rng: torch.Generator):
        if getattr(source, "autoregressive", False):
            raise ValueError("generator 'pair_sample' reads per-position logits (multihead / query decoders); "
                             "for an autoregressive decoder use sample, greedy+sample, mbr_set or beam_search")
        lv = torch.log_softmax(source.verb_logits.float(), -1)
        ln = torch.log_softmax(source.noun_logits.float(), -1)
        sv, iv = lv.topk(min(self.top_verbs, lv.shape[-1]), -1)
        sn, in_ = ln.topk(min(self.top_nouns, ln.shape[-1]), -1)
        pmi = getattr(source, "pair_log_pmi", None)
        pmi = pmi.to(lv.device).float() if pmi is not None else None
        plain = min(self.plain, k)
        parts = []
        if plain:
            parts.append(self._draw(sv, iv, sn, in_, None, 0.0, plain, rng, argmax_first=True))
        if k - plain:
            parts.append(self._draw(sv, iv, sn, in_, pmi, self.pair_weight, k - plain, rng, argmax_first=False))
        return _to_numpy(torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1))
