"""Sequence generators: a model's distribution over future sequences -> K candidate sequences.

Interface: `generator.generate_from(source, *, k, rng) -> (verb (W, K, Z), noun (W, K, Z))` int64 numpy
arrays; candidate k pairs verb k with noun k. `rng` is a CPU `torch.Generator`, so a seeded evaluation
draws the same sequences every time. A *source* is what the generators draw from:

- `LogitsSource(verb_logits (W, Z, V), noun_logits (W, Z, N))`: per-position logits of the multihead /
  query decoders; a sequence is Z independent per-position draws. `generator.generate(verb_logits,
  noun_logits, *, k, rng)` is the shorthand for it (the reference interface).
- `AutoregressiveSource(decoder, pooled, tokens)`: an autoregressive decoder in the loop; a draw is
  ancestral sampling (step t sampled given the sampled steps < t), greedy is step-wise argmax.

So every generator below works for both kinds of model and keeps its meaning ("sample" = K draws from
the model's sequence distribution; for an autoregressive model that is ancestral sampling). `beam_search`
needs an autoregressive decoder (`requires_autoregressive`); `forecast_split` refuses it for a
logits model with a clear error.

- `sample`: the reference (§3.5): K independent categorical draws per position, verb and noun
  independent of each other; `temperature` divides the logits.
- `greedy+sample`: the argmax sequence first, then K-1 draws.
- `mbr`: minimum Bayes risk: draw `num_samples` action sequences, keep the K (distinct) with the
  lowest mean edit distance to the other draws.
- `mbr_set`: the same draws; chooses the set greedily to minimise the expected *minimum* edit
  distance over the set, which is what ED@Z (min over K) rewards.
- `beam_search` (autoregressive only): the K most probable sequences of a beam of `beam_size`.
- `pair_sample` (per-position logits only): candidates of coherent (verb, noun) pairs from the head's
  logits and its training verb-noun prior (`train_heads.pair_prior`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from features.metric import edit_distance_table, levenshtein_pairs
from train_heads.registry import Registry

GENERATORS = Registry("generator")


def create_generator(name: str, **kwargs):
    """Build a registered generator, e.g. `create_generator("mbr", num_samples=64, temperature=1.0)`."""
    return GENERATORS.create(name, **kwargs)


def list_generators() -> list[str]:
    return GENERATORS.names()


def create_generators(names: list[str] | tuple[str, ...], *, temperature: float | None = None,
                      mbr_samples: int = 64) -> dict:
    """name -> generator, as the commands configure them: every one samples at `temperature` (None: each at its
    own default, 1.0 for the reference's `sample` and the others, 0.4 for `pair_sample`); the
    minimum-Bayes-risk ones also draw `mbr_samples` candidates per window."""
    out = {}
    for name in names:
        kwargs = {} if temperature is None else {"temperature": temperature}
        if issubclass(GENERATORS.get(name), _MBRBase):
            kwargs["num_samples"] = mbr_samples
        out[name] = GENERATORS.create(name, **kwargs)
    return out


def _draw(logits: torch.Tensor, num: int, temperature: float, rng: torch.Generator) -> torch.Tensor:
    """(W, Z, C) logits -> (W, num, Z) class ids; independent categorical draws per position."""
    w, z, c = logits.shape
    if temperature <= 0:
        return logits.argmax(-1).unsqueeze(1).expand(w, num, z)
    probs = torch.softmax(logits.float().reshape(w * z, c) / temperature, dim=-1)
    ids = torch.multinomial(probs, num, replacement=True, generator=rng)  # (W*Z, num)
    return ids.reshape(w, z, num).transpose(1, 2)


def _to_numpy(*tensors: torch.Tensor) -> tuple[np.ndarray, ...]:
    return tuple(t.detach().cpu().numpy().astype(np.int64) for t in tensors)


class LogitsSource:
    """Per-position logits: each sequence is Z independent draws (verb and noun independent too)."""

    autoregressive = False

    def __init__(self, verb_logits: torch.Tensor, noun_logits: torch.Tensor):
        self.verb_logits, self.noun_logits = verb_logits, noun_logits
        self.num_nouns = noun_logits.shape[-1]

    def draw(self, num: int, temperature: float, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """-> verb, noun (W, num, Z); verb drawn first, then noun (the rng order of the reference)."""
        return _draw(self.verb_logits, num, temperature, rng), _draw(self.noun_logits, num, temperature, rng)

    def greedy(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> per-position argmax verb, noun (W, 1, Z)."""
        return self.verb_logits.argmax(-1).unsqueeze(1), self.noun_logits.argmax(-1).unsqueeze(1)


def _sample_ids(logits: torch.Tensor, temperature: float, rng: torch.Generator) -> torch.Tensor:
    """(B, C) logits -> (B,) ids on the logits' device; drawn on the CPU so a seed gives the same ids anywhere."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    # inverse CDF: one uniform per row, the first class whose cumulative probability exceeds it
    # (same distribution as torch.multinomial(probs, 1), several times faster on wide rows)
    cdf = probs.cumsum(-1)
    u = torch.rand((probs.shape[0], 1), generator=rng) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_max(probs.shape[-1] - 1).to(logits.device)


class AutoregressiveSource:
    """An autoregressive decoder (`start` / `step` / `reorder`) and the context of W windows."""

    autoregressive = True

    def __init__(self, decoder, pooled: torch.Tensor, tokens: torch.Tensor | None):
        self.decoder, self.pooled, self.tokens = decoder, pooled, tokens
        self.num_windows, self.num_future, self.num_nouns = pooled.shape[0], decoder.num_future, decoder.num_nouns

    def _start(self, per_window: int) -> dict:
        """Decoding state with `per_window` consecutive rows per window (window w -> rows w*per_window...)."""
        state = self.decoder.start(self.pooled, self.tokens)
        index = torch.arange(self.num_windows, device=self.pooled.device).repeat_interleave(per_window)
        return self.decoder.reorder(state, index) if per_window > 1 else state

    @torch.no_grad()
    def draw(self, num: int, temperature: float, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Ancestral sampling: -> verb, noun (W, num, Z); per step the verb is drawn, then the noun."""
        w, z = self.num_windows, self.num_future
        if num == 0:
            empty = torch.zeros((w, 0, z), dtype=torch.int64)
            return empty, empty
        state = self._start(num)
        verb = noun = None
        verbs, nouns = [], []
        for _ in range(z):
            lv, ln = self.decoder.step(state, verb, noun)  # (W*num, V), (W*num, N)
            verb, noun = _sample_ids(lv, temperature, rng), _sample_ids(ln, temperature, rng)
            verbs.append(verb)
            nouns.append(noun)
        return (torch.stack(verbs, 1).reshape(w, num, z).cpu(), torch.stack(nouns, 1).reshape(w, num, z).cpu())

    def greedy(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Step-wise argmax: -> verb, noun (W, 1, Z)."""
        return self.draw(1, 0.0, torch.Generator())

    @torch.no_grad()
    def beam(self, beam_size: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The `k` highest joint log-probability sequences of a beam search: -> verb, noun (W, k, Z)."""
        w, z, b = self.num_windows, self.num_future, beam_size
        dev = self.pooled.device
        state = self._start(b)
        score = torch.full((w, b), -math.inf, device=dev)
        score[:, 0] = 0.0  # all beams start identical: keep one alive
        seq_v = torch.zeros((w * b, 0), dtype=torch.int64, device=dev)
        seq_n = seq_v
        verb = noun = None
        for _ in range(z):
            lv, ln = self.decoder.step(state, verb, noun)
            lv, ln = torch.log_softmax(lv.float(), -1), torch.log_softmax(ln.float(), -1)
            # the top-b (verb, noun) pairs of a beam lie among its top-b verbs x top-b nouns
            tv, iv = lv.topk(min(b, lv.shape[-1]), dim=-1)  # (W*b, bv)
            tn, in_ = ln.topk(min(b, ln.shape[-1]), dim=-1)  # (W*b, bn)
            bv, bn = tv.shape[-1], tn.shape[-1]
            cand = score.reshape(w * b, 1, 1) + tv[:, :, None] + tn[:, None, :]  # (W*b, bv, bn)
            score, flat = cand.reshape(w, b * bv * bn).topk(b, dim=-1)  # (W, b)
            src = (torch.arange(w, device=dev)[:, None] * b + flat // (bv * bn)).reshape(-1)  # parent rows (W*b,)
            rest = (flat % (bv * bn)).reshape(-1)
            verb, noun = iv[src, rest // bn], in_[src, rest % bn]
            seq_v = torch.cat([seq_v[src], verb[:, None]], 1)
            seq_n = torch.cat([seq_n[src], noun[:, None]], 1)
            state = self.decoder.reorder(state, src)
        # beams come out sorted by score (topk); the first k are the k best
        return seq_v.reshape(w, b, z)[:, :k].cpu(), seq_n.reshape(w, b, z)[:, :k].cpu()


@GENERATORS.register("sample")
class SampleGenerator:
    """K independent draws per position (the reference generator, `temperature=1`)."""

    def __init__(self, *, temperature: float = 1.0):
        self.temperature = temperature

    requires_autoregressive = False

    def generate(self, verb_logits, noun_logits, *, k: int, rng: torch.Generator):
        return self.generate_from(LogitsSource(verb_logits, noun_logits), k=k, rng=rng)

    def generate_from(self, source, *, k: int, rng: torch.Generator):
        return _to_numpy(*source.draw(k, self.temperature, rng))


@GENERATORS.register("greedy+sample")
class GreedySampleGenerator:
    """The argmax sequence as candidate 0, then K-1 independent draws."""

    def __init__(self, *, temperature: float = 1.0):
        self.temperature = temperature

    requires_autoregressive = False

    def generate(self, verb_logits, noun_logits, *, k: int, rng: torch.Generator):
        return self.generate_from(LogitsSource(verb_logits, noun_logits), k=k, rng=rng)

    def generate_from(self, source, *, k: int, rng: torch.Generator):
        greedy = source.greedy()  # (W, 1, Z) each
        if k == 1:
            return _to_numpy(*greedy)
        draws = source.draw(k - 1, self.temperature, rng)
        return _to_numpy(*(torch.cat([g, d], dim=1) for g, d in zip(greedy, draws)))


def pairwise_edit_distance(tokens: np.ndarray) -> np.ndarray:
    """(W, M, Z) token sequences -> (W, M, M) edit distances between every pair of one window's candidates."""
    w, m, z = tokens.shape
    iu, ju = np.triu_indices(m, k=1)  # the distance is symmetric and 0 on the diagonal: each pair once
    dist = np.zeros((w, m, m), dtype=np.float32)
    if z == 0 or len(iu) == 0 or w == 0:
        return dist
    a = tokens[:, iu].reshape(-1, z)  # (W * P, Z)
    b = tokens[:, ju].reshape(-1, z)
    pair = (levenshtein_pairs(a, b) if z <= 64 else edit_distance_table(a, b)[:, -1]).reshape(w, -1).astype(np.float32)
    dist[:, iu, ju] = pair
    dist[:, ju, iu] = pair
    return dist


class _MBRBase:
    requires_autoregressive = False

    def __init__(self, *, num_samples: int = 64, temperature: float = 1.0, chunk_windows: int = 256):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.temperature = temperature
        self.chunk_windows = chunk_windows

    def _select(self, dist: np.ndarray, tokens: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError

    def generate(self, verb_logits, noun_logits, *, k: int, rng: torch.Generator):
        return self.generate_from(LogitsSource(verb_logits, noun_logits), k=k, rng=rng)

    def generate_from(self, source, *, k: int, rng: torch.Generator):
        num_nouns = source.num_nouns
        verb, noun = _to_numpy(*source.draw(self.num_samples, self.temperature, rng))  # (W, M, Z)
        actions = verb * num_nouns + noun
        chosen = np.empty((len(verb), k), dtype=np.int64)
        for lo in range(0, len(verb), self.chunk_windows):
            hi = min(lo + self.chunk_windows, len(verb))
            chosen[lo:hi] = self._select(pairwise_edit_distance(actions[lo:hi]), actions[lo:hi], k)
        rows = np.arange(len(verb))[:, None]
        return verb[rows, chosen], noun[rows, chosen]


@GENERATORS.register("mbr")
class MBRGenerator(_MBRBase):
    """Keep the K distinct draws with the lowest expected edit distance to the other draws."""

    def _select(self, dist: np.ndarray, tokens: np.ndarray, k: int) -> np.ndarray:
        risk = dist.mean(axis=2)  # (W, M)
        # a draw identical to an earlier one (distance 0) goes to the back, so the K slots stay distinct
        earlier_same = np.tril(dist == 0, k=-1).any(axis=2)  # (W, M)
        order = np.argsort(risk + earlier_same * 1e6, axis=1, kind="stable")
        return order[:, :k] if dist.shape[1] >= k else np.pad(order, ((0, 0), (0, k - dist.shape[1])), mode="edge")


@GENERATORS.register("mbr_set")
class MBRSetGenerator(_MBRBase):
    """Greedy set: each next pick minimises the mean over draws of min distance to the set so far."""

    def _select(self, dist: np.ndarray, tokens: np.ndarray, k: int) -> np.ndarray:
        w, m, _ = dist.shape
        best = np.full((w, m), np.inf, dtype=np.float32)  # (W, M): min distance of each draw to the chosen set
        chosen = np.empty((w, k), dtype=np.int64)
        rows = np.arange(w)
        for slot in range(k):
            risk = np.minimum(dist, best[:, None, :]).mean(axis=2)  # (W, M) expected min-distance if added
            pick = risk.argmin(axis=1)
            chosen[:, slot] = pick
            best = np.minimum(best, dist[rows, pick])
        return chosen


@GENERATORS.register("beam_search")
class BeamSearchGenerator:
    """Autoregressive decoders only: the K most probable sequences of a beam search (`beam_size` >= K).

    Beams share long prefixes, so the K candidates are less diverse than ancestral draws; ED@Z (min over K)
    usually prefers `greedy+sample` or `mbr_set`. Deterministic (`rng` unused); `temperature` is accepted
    so one CLI option can set every generator, and ignored (beams rank the model's own log-probabilities).
    """

    requires_autoregressive = True

    def __init__(self, *, beam_size: int = 8, temperature: float = 1.0):
        self.beam_size = beam_size

    def generate_from(self, source, *, k: int, rng: torch.Generator):
        if not getattr(source, "autoregressive", False):
            raise ValueError("generator 'beam_search' needs an autoregressive decoder (decoder: autoregressive); "
                             "for per-position logits use sample, greedy+sample, mbr or mbr_set")
        if self.beam_size < k:
            raise ValueError(f"beam_search: beam_size {self.beam_size} < K {k}")
        return _to_numpy(*source.beam(self.beam_size, k))


@GENERATORS.register("pair_sample")
class PairSampleGenerator:
    """Coherent (verb, noun) pairs from per-position logits and the pair prior (`train_heads.pair_prior`, whose
    docstring gives the rule and the measurements that chose the defaults)."""

    requires_autoregressive = False

    def __init__(self, *, temperature: float = 0.4, pair_weight: float = 1.2, verb_first: int = 2, top_verbs: int = 8,
                 top_nouns: int = 12):
        if verb_first < 0 or top_verbs < 1 or top_nouns < 1:
            raise ValueError(f"pair_sample: need verb_first >= 0, top_verbs >= 1, top_nouns >= 1, got {verb_first}, "
                             f"{top_verbs}, {top_nouns}")
        self.temperature, self.pair_weight, self.verb_first = temperature, pair_weight, verb_first
        self.top_verbs, self.top_nouns = top_verbs, top_nouns

    def generate(self, verb_logits, noun_logits, *, k: int, rng: torch.Generator, log_pmi: torch.Tensor | None = None):
        source = LogitsSource(verb_logits, noun_logits)
        source.pair_log_pmi = log_pmi
        return self.generate_from(source, k=k, rng=rng)

    def _sample(self, score: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """(W, Z, C) scores -> (W, Z) ids: one draw per position at `temperature` (argmax at <= 0)."""
        w, z, c = score.shape
        if self.temperature <= 0:
            return score.argmax(-1)
        probs = torch.softmax(score.reshape(w * z, c) / self.temperature, -1)
        return torch.multinomial(probs, 1, generator=rng).reshape(w, z)

    def _verb_first(self, ln, pmi, verb_ids: torch.Tensor, rng, *, draw_noun: bool) -> torch.Tensor:
        """The nouns paired with `verb_ids` (W, Z): log p(n) + pair_weight * PMI(v, n), argmax or drawn."""
        score = ln if pmi is None else ln + self.pair_weight * pmi[verb_ids]
        return self._sample(score, rng) if draw_noun else score.argmax(-1)

    def _joint(self, lv, ln, pmi, num: int, rng) -> tuple[torch.Tensor, torch.Tensor]:
        """`num` joint draws per position over the top_verbs x top_nouns pairs -> (W, num, Z) verbs, nouns."""
        sv, iv = lv.topk(min(self.top_verbs, lv.shape[-1]), -1)
        sn, in_ = ln.topk(min(self.top_nouns, ln.shape[-1]), -1)
        w, z, tv = sv.shape
        tn = sn.shape[-1]
        score = sv[..., :, None] + sn[..., None, :]  # (W, Z, tv, tn)
        if pmi is not None:
            score = score + self.pair_weight * pmi[iv[..., :, None], in_[..., None, :]]
        flat = score.reshape(w * z, tv * tn)
        if self.temperature <= 0:
            idx = flat.argmax(-1, keepdim=True).expand(-1, num)
        else:
            idx = torch.multinomial(torch.softmax(flat / self.temperature, -1), num, replacement=True, generator=rng)
        idx = idx.reshape(w, z, num).permute(0, 2, 1)  # (W, num, Z) into the tv x tn grid
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
        pmi = getattr(source, "pair_log_pmi", None)
        pmi = pmi.to(lv.device).float() if pmi is not None else None
        verbs, nouns = [lv.argmax(-1)], []  # candidate 0: the head's argmax verbs, each with its best noun
        nouns.append(self._verb_first(ln, pmi, verbs[0], rng, draw_noun=False))
        for _ in range(min(self.verb_first, k - 1)):  # verb drawn from the head, noun drawn given the verb
            verbs.append(self._sample(lv, rng))
            nouns.append(self._verb_first(ln, pmi, verbs[-1], rng, draw_noun=True))
        verb, noun = torch.stack(verbs[:k], 1), torch.stack(nouns[:k], 1)
        if k > verb.shape[1]:  # the rest: joint draws of coherent pairs
            jv, jn = self._joint(lv, ln, pmi, k - verb.shape[1], rng)
            verb, noun = torch.cat([verb, jv], 1), torch.cat([noun, jn], 1)
        return _to_numpy(verb, noun)
