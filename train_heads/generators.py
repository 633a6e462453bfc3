"""Sequence generators: per-position verb/noun logits -> K candidate sequences.

Interface: `generator.generate(verb_logits (W, Z, V), noun_logits (W, Z, N), *, k, rng) ->
(verb (W, K, Z), noun (W, K, Z))` int64 numpy arrays; candidate k pairs verb k with noun k.
`rng` is a `torch.Generator`, so a seeded evaluation draws the same sequences every time.

- `sample`: the reference (§3.5): K independent categorical draws per position, verb and noun
  independent of each other; `temperature` divides the logits.
- `greedy+sample`: the argmax sequence first, then K-1 draws.
- `mbr`: minimum Bayes risk: draw `num_samples` action sequences, keep the K (distinct) with the
  lowest mean edit distance to the other draws.
- `mbr_set`: the same draws; chooses the set greedily to minimise the expected *minimum* edit
  distance over the set, which is what ED@Z (min over K) rewards.
"""
from __future__ import annotations

import numpy as np
import torch

from features.metric import edit_distance_table
from train_heads.registry import Registry

GENERATORS = Registry("generator")


def create_generator(name: str, **kwargs):
    """Build a registered generator, e.g. `create_generator("mbr", num_samples=64, temperature=1.0)`."""
    return GENERATORS.create(name, **kwargs)


def list_generators() -> list[str]:
    return GENERATORS.names()


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


@GENERATORS.register("sample")
class SampleGenerator:
    """K independent draws per position (the reference generator, `temperature=1`)."""

    def __init__(self, *, temperature: float = 1.0):
        self.temperature = temperature

    def generate(self, verb_logits, noun_logits, *, k: int, rng: torch.Generator):
        return _to_numpy(_draw(verb_logits, k, self.temperature, rng), _draw(noun_logits, k, self.temperature, rng))


@GENERATORS.register("greedy+sample")
class GreedySampleGenerator:
    """The argmax sequence as candidate 0, then K-1 independent draws."""

    def __init__(self, *, temperature: float = 1.0):
        self.temperature = temperature

    def generate(self, verb_logits, noun_logits, *, k: int, rng: torch.Generator):
        out = []
        for logits in (verb_logits, noun_logits):
            greedy = logits.argmax(-1).unsqueeze(1)  # (W, 1, Z)
            out.append(torch.cat([greedy, _draw(logits, k - 1, self.temperature, rng)], dim=1) if k > 1 else greedy)
        return _to_numpy(*out)


def pairwise_edit_distance(tokens: np.ndarray) -> np.ndarray:
    """(W, M, Z) token sequences -> (W, M, M) edit distances between every pair of one window's candidates."""
    w, m, z = tokens.shape
    a = np.repeat(tokens, m, axis=1).reshape(w * m * m, z)  # candidate i
    b = np.tile(tokens, (1, m, 1)).reshape(w * m * m, z)  # candidate j
    return edit_distance_table(a, b)[:, -1].reshape(w, m, m).astype(np.float32)


class _MBRBase:
    def __init__(self, *, num_samples: int = 64, temperature: float = 1.0, chunk_windows: int = 256):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.temperature = temperature
        self.chunk_windows = chunk_windows

    def _select(self, dist: np.ndarray, tokens: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError

    def generate(self, verb_logits, noun_logits, *, k: int, rng: torch.Generator):
        num_nouns = noun_logits.shape[-1]
        verb, noun = _to_numpy(_draw(verb_logits, self.num_samples, self.temperature, rng),
                               _draw(noun_logits, self.num_samples, self.temperature, rng))  # (W, M, Z)
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
