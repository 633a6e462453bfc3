"""Decoders: aggregated features -> verb and noun logits of the Z future actions.

Interface: `forward(x (B, D_in), tokens (B, N_in, D_tok) | None) -> {"verb": (B, Z, V), "noun": (B, Z, N)}`.
`MultiHeadDecoder` is the reference (`decoder.head.projections.{0..Z-1}`, reference §3.4) and uses
only `x`; `QueryDecoder` lets Z learned queries attend to the observed tokens and to each other.
"""
from __future__ import annotations

import torch
from torch import nn

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
