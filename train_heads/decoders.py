"""Decoders: aggregated features -> verb and noun logits of the Z future actions.

Interface: `forward(x (B, D_in), tokens (B, N_in, D_tok) | None) -> {"verb": (B, Z, V), "noun": (B, Z, N)}`.
`MultiHeadDecoder` is the reference (`decoder.head.projections.{0..Z-1}`, reference §3.4) and uses
only `x`; `QueryDecoder` lets Z learned queries attend to the observed tokens and to each other.
`AutoregressiveDecoder` (`autoregressive = True`) emits the steps one at a time, conditioned on the
previous actions: `forward` also takes `future` (teacher forcing in training) and generation goes
through `start` / `step` / `reorder` (model-in-the-loop generators, train_heads/generators.py).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from train_heads.registry import Registry

DECODERS = Registry("decoder")


def create_decoder(name: str, **kwargs) -> nn.Module:
    """Build a registered decoder, e.g. `create_decoder("multihead", dim_in=2048, num_future=20, ...)`."""
    return DECODERS.create(name, **kwargs)


def list_decoders() -> list[str]:
    return DECODERS.names()


def split_logits(logits: torch.Tensor, num_verbs: int) -> dict[str, torch.Tensor]:
    """(B, Z, V+N) -> {"verb": (B, Z, V), "noun": (B, Z, N)}."""
    return {"verb": logits[..., :num_verbs], "noun": logits[..., num_verbs:]}


@DECODERS.register("multihead")
class MultiHeadDecoder(nn.Module):
    """Dropout, then Z independent Linear(D_in -> V+N) heads (the reference decoder)."""

    def __init__(self, *, dim_in: int, num_future: int, num_verbs: int, num_nouns: int, dropout: float = 0.5,
                 token_dim: int | None = None):
        super().__init__()
        self.num_verbs = num_verbs
        self.dropout = nn.Dropout(dropout)
        self.projections = nn.ModuleList(nn.Linear(dim_in, num_verbs + num_nouns) for _ in range(num_future))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = self.dropout(x)
        logits = torch.stack([proj(x) for proj in self.projections], dim=1)  # (B, Z, V+N)
        return split_logits(logits, self.num_verbs)


@DECODERS.register("query")
class QueryDecoder(nn.Module):
    """Z learned queries; each layer: self-attention over the queries, cross-attention to the memory.

    Memory = the observed tokens plus the pooled vector, both projected to `dim`. One shared
    Linear(dim -> V+N) reads every query, so future steps share parameters and see each other.
    """

    def __init__(self, *, dim_in: int, num_future: int, num_verbs: int, num_nouns: int, token_dim: int | None = None,
                 dim: int = 256, depth: int = 2, heads: int = 4, ff_dim: int = 1024, dropout: float = 0.1):
        super().__init__()
        self.num_verbs = num_verbs
        self.queries = nn.Parameter(torch.randn(num_future, dim) * 0.02)  # (Z, dim)
        self.pooled_proj = nn.Linear(dim_in, dim)
        self.token_proj = nn.Linear(token_dim or dim_in, dim)
        layer = nn.TransformerDecoderLayer(dim, heads, dim_feedforward=ff_dim, dropout=dropout, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers=depth, norm=nn.LayerNorm(dim))
        self.out = nn.Linear(dim, num_verbs + num_nouns)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        memory = self.pooled_proj(x).unsqueeze(1)  # (B, 1, dim)
        if tokens is not None:
            memory = torch.cat([self.token_proj(tokens), memory], dim=1)  # (B, N_in + 1, dim)
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, Z, dim)
        h = self.decoder(q, memory)  # (B, Z, dim)
        return split_logits(self.out(h), self.num_verbs)


class _Attention(nn.Module):
    """Multi-head attention with separate query and key/value inputs; keys/values can be cached."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"AutoregressiveDecoder: dim {dim} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, H, L, d_h)

    def keys_values(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(src).chunk(2, dim=-1)
        return self._split(k), self._split(v)  # (B, H, L_kv, d_h) each

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False) -> torch.Tensor:
        q = self._split(self.q(x))  # (B, H, L_q, d_h)
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=causal)
        b, _, n, _ = h.shape
        return self.out(h.transpose(1, 2).reshape(b, n, -1))


class _CausalBlock(nn.Module):
    """Pre-norm block: causal self-attention over the emitted steps, cross-attention to the context, MLP."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = _Attention(dim, heads, dropout)
        self.cross_attn = _Attention(dim, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, ff_dim), nn.GELU(), nn.Linear(ff_dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, memory_kv: tuple[torch.Tensor, torch.Tensor],
                cache: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """h (B, L, dim). With `cache` (incremental decoding, L = 1) the new keys/values are appended to it."""
        x = self.norm1(h)
        k, v = self.self_attn.keys_values(x)
        if cache is not None:  # preallocated (B, H, size, d_h) buffers, filled step by step (no growing concatenation)
            t = cache.get("len", 0)
            if "k" not in cache:
                b, heads, _, d = k.shape
                cache["k"] = k.new_empty((b, heads, cache["size"], d))
                cache["v"] = v.new_empty((b, heads, cache["size"], d))
            cache["k"][:, :, t:t + 1], cache["v"][:, :, t:t + 1] = k, v
            cache["len"] = t + 1
            k, v = cache["k"][:, :, :t + 1], cache["v"][:, :, :t + 1]
        # teacher forcing: causal mask; one new step attends to every cached (earlier) step and itself
        h = h + self.drop(self.self_attn(x, k, v, causal=cache is None))
        h = h + self.drop(self.cross_attn(self.norm2(h), *memory_kv))
        return h + self.drop(self.mlp(self.norm3(h)))


@DECODERS.register("autoregressive")
class AutoregressiveDecoder(nn.Module):
    """A small causal transformer that emits the Z future actions one at a time.

    Step t reads [BOS, a_1, ..., a_{t-1}] (a_i = verb_emb[v_i] + noun_emb[n_i] + pos_emb[i]) with causal
    self-attention and cross-attends to the context: the observed tokens (+ a learned embedding of their
    distance from the last observed segment) and the pooled vector, both projected to `dim`; the pooled
    vector is also added to every step input. One shared Linear(dim -> V+N) reads every step; verb and noun
    of one step are independent given the prefix, so the loss is the usual sum of 2Z cross-entropies.

    `forward(x (B, D_in), tokens (B, N_in, D_tok) | None, future={"verb": (B, Z), "noun": (B, Z)})` is
    teacher forcing (step t sees the true a_{<t}; -1 labels read as an "unknown" embedding); without
    `future` it decodes greedily and returns the logits of each greedy step. Generation goes through
    `start` / `step` / `reorder` (keys/values cached, O(Z) per sequence); see `generators.AutoregressiveSource`.
    `token_dropout` replaces teacher-forced inputs by "unknown" with that probability in training
    (a cheap guard against exposure bias).
    """

    autoregressive = True

    def __init__(self, *, dim_in: int, num_future: int, num_verbs: int, num_nouns: int, token_dim: int | None = None,
                 dim: int = 256, depth: int = 2, heads: int = 4, ff_dim: int = 1024, dropout: float = 0.1,
                 token_dropout: float = 0.1, max_input: int = 64):
        super().__init__()
        self.num_verbs, self.num_nouns, self.num_future = num_verbs, num_nouns, num_future
        self.token_dropout, self.max_input = token_dropout, max_input
        self.pooled_proj = nn.Linear(dim_in, dim)
        self.token_proj = nn.Linear(token_dim or dim_in, dim)
        self.memory_pos = nn.Parameter(torch.randn(max_input, dim) * 0.02)  # index 0 = last observed segment
        self.bos = nn.Parameter(torch.randn(dim) * 0.02)
        self.verb_emb = nn.Embedding(num_verbs + 1, dim)  # last row: unknown / dropped label
        self.noun_emb = nn.Embedding(num_nouns + 1, dim)
        self.step_pos = nn.Parameter(torch.randn(num_future, dim) * 0.02)
        self.blocks = nn.ModuleList(_CausalBlock(dim, heads, ff_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, num_verbs + num_nouns)
        self.drop = nn.Dropout(dropout)

    def _memory(self, x: torch.Tensor, tokens: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> memory (B, N_in + 1, dim) and the pooled context (B, 1, dim)."""
        ctx = self.pooled_proj(x).unsqueeze(1)  # (B, 1, dim)
        if tokens is None:
            return ctx, ctx
        n = tokens.shape[1]
        if n > self.max_input:
            raise ValueError(f"AutoregressiveDecoder: {n} observed tokens > max_input {self.max_input}")
        pos = self.memory_pos[:n].flip(0)  # (N_in, dim): the last token gets position 0
        return torch.cat([self.token_proj(tokens) + pos, ctx], dim=1), ctx

    def _embed(self, verb: torch.Tensor, noun: torch.Tensor) -> torch.Tensor:
        """(B, L) labels (-1 = unknown) -> (B, L, dim)."""
        verb = torch.where(verb < 0, torch.full_like(verb, self.num_verbs), verb)
        noun = torch.where(noun < 0, torch.full_like(noun, self.num_nouns), noun)
        return self.verb_emb(verb) + self.noun_emb(noun)

    def _read(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        return split_logits(self.out(self.norm(h)), self.num_verbs)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None,
                future: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        if future is None:
            return self.greedy(x, tokens)
        verb, noun = future["verb"][:, :-1], future["noun"][:, :-1]  # (B, Z-1): inputs of steps 1..Z-1
        if self.training and self.token_dropout > 0:
            drop = torch.rand(verb.shape, device=verb.device) < self.token_dropout
            verb, noun = verb.masked_fill(drop, -1), noun.masked_fill(drop, -1)
        memory, ctx = self._memory(x, tokens)
        b = x.shape[0]
        h = torch.cat([self.bos.expand(b, 1, -1), self._embed(verb, noun)], dim=1)  # (B, Z, dim)
        h = self.drop(h + self.step_pos + ctx)
        for block in self.blocks:
            h = block(h, block.cross_attn.keys_values(memory))
        return self._read(h)

    # --- incremental decoding -------------------------------------------------------------------------------
    def start(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> dict[str, Any]:
        """Decoding state of B sequences: the context's cross-attention keys/values, empty self-attention caches."""
        memory, ctx = self._memory(x, tokens)
        return {"t": 0, "ctx": ctx, "memory_kv": [block.cross_attn.keys_values(memory) for block in self.blocks],
                "cache": [{"size": self.num_future} for _ in self.blocks]}

    def step(self, state: dict[str, Any], verb: torch.Tensor | None = None,
             noun: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed the previous step's labels (B,) (None at t = 0); -> next verb (B, V) and noun (B, N) logits."""
        t = state["t"]
        if t >= self.num_future:
            raise ValueError(f"AutoregressiveDecoder: already emitted {self.num_future} steps")
        b = state["ctx"].shape[0]
        h = self.bos.expand(b, 1, -1) if t == 0 else self._embed(verb[:, None], noun[:, None])  # (B, 1, dim)
        h = self.drop(h + self.step_pos[t] + state["ctx"])
        for block, kv, cache in zip(self.blocks, state["memory_kv"], state["cache"]):
            h = block(h, kv, cache)
        state["t"] = t + 1
        out = self._read(h[:, 0])
        return out["verb"], out["noun"]

    @staticmethod
    def reorder(state: dict[str, Any], index: torch.Tensor) -> dict[str, Any]:
        """Select / repeat sequences of a state along the batch: index (B',) into its B rows."""
        pick = lambda a: a.index_select(0, index)  # noqa: E731
        return {"t": state["t"], "ctx": pick(state["ctx"]),
                "memory_kv": [(pick(k), pick(v)) for k, v in state["memory_kv"]],
                "cache": [{n: pick(a) if torch.is_tensor(a) else a for n, a in c.items()} for c in state["cache"]]}

    def greedy(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Greedy decoding; the logits of every step given the greedy prefix: {"verb": (B, Z, V), "noun": ...}."""
        state = self.start(x, tokens)
        verb = noun = None
        logits_v, logits_n = [], []
        for _ in range(self.num_future):
            lv, ln = self.step(state, verb, noun)
            verb, noun = lv.argmax(-1), ln.argmax(-1)
            logits_v.append(lv)
            logits_n.append(ln)
        return {"verb": torch.stack(logits_v, 1), "noun": torch.stack(logits_n, 1)}


def is_autoregressive(decoder: nn.Module) -> bool:
    """Whether `decoder` emits step by step (needs the targets in training and a model-in-the-loop generator)."""
    return bool(getattr(decoder, "autoregressive", False))
