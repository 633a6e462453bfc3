"""Aggregators: the observed segments' features (B, N_in, D) -> one vector (B, D').

Each aggregator has `encode(x) -> tokens (B, N_in, D_tok)` (what a query decoder attends to)
and `pool(tokens) -> (B, D')`; `forward(x) = pool(encode(x))`. `out_dim` is D', `token_dim` is D_tok.

`TransformerAggregator` has the reference's structure and parameter names (reference §3.3,
checkpoint_conversion_notes §3), so released `clip_aggregator.*` weights load strictly:
`pos_encoder.pe` (max_len, 1, D) and a sequence-first `nn.TransformerEncoder` with a final LayerNorm.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from train_heads.registry import Registry

AGGREGATORS = Registry("aggregator")


def create_aggregator(name: str, **kwargs) -> nn.Module:
    """Build a registered aggregator, e.g. `create_aggregator("transformer", dim=2048, num_input=4)`."""
    return AGGREGATORS.create(name, **kwargs)


def list_aggregators() -> list[str]:
    return AGGREGATORS.names()


@AGGREGATORS.register("concat")
class ConcatAggregator(nn.Module):
    """Flatten the N_in features in order: (B, N_in, D) -> (B, N_in * D). No parameters."""

    def __init__(self, *, dim: int, num_input: int):
        super().__init__()
        self.num_input = num_input
        self.token_dim = dim
        self.out_dim = dim * num_input

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.num_input:
            raise ValueError(f"ConcatAggregator built for {self.num_input} inputs, got {x.shape[1]}")
        return x

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encode(x))


@AGGREGATORS.register("mean")
class MeanAggregator(nn.Module):
    """Average over the observed segments: (B, N_in, D) -> (B, D). No parameters."""

    def __init__(self, *, dim: int, num_input: int | None = None):
        super().__init__()
        self.token_dim = dim
        self.out_dim = dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encode(x))


class PositionalEncoding(nn.Module):
    """Standard sinusoid added to a sequence-first tensor, then dropout (no sqrt(D) input scaling).

    Buffer `pe` (max_len, 1, D): even dims sin(pos * div), odd dims cos(pos * div),
    div = exp(arange(0, D, 2) * -ln(10000) / D) -- identical to the reference buffer.
    """

    def __init__(self, dim: int, *, dropout: float = 0.2, max_len: int = 1000):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)  # (L, 1)
        div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        pe = torch.zeros(max_len, dim)
        pe[:, 0::2] = torch.sin(position * div)
        pe[:, 1::2] = torch.cos(position * div[: dim // 2])
        self.register_buffer("pe", pe.unsqueeze(1))  # (L, 1, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, B, D)
        return self.dropout(x + self.pe[: x.shape[0]])


@AGGREGATORS.register("transformer")
class TransformerAggregator(nn.Module):
    """The reference transformer: positions + post-norm encoder + final LayerNorm, last position out.

    (B, N_in, D) -> transpose -> + pe[:N_in] -> dropout -> encoder -> (B, N_in, D) tokens -> last (B, D).
    PyTorch defaults as in the reference: ReLU, post-norm, sequence-first, `dim_feedforward` 2048.
    """

    def __init__(self, *, dim: int, depth: int = 6, heads: int = 8, ff_dim: int = 2048, dropout: float = 0.1,
                 pos_dropout: float = 0.2, max_len: int = 1000, num_input: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"TransformerAggregator: dim {dim} is not divisible by heads {heads}")
        if num_input is not None and num_input > max_len:
            raise ValueError(f"TransformerAggregator: num_input {num_input} > max_len {max_len}")
        self.token_dim = dim
        self.out_dim = dim
        self.pos_encoder = PositionalEncoding(dim, dropout=pos_dropout, max_len=max_len)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ff_dim, dropout=dropout)
        self.encoder = nn.TransformerEncoder(layer, num_layers=depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pos_encoder(x.transpose(0, 1))  # (N_in, B, D)
        return self.encoder(h).transpose(0, 1)  # (B, N_in, D)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, -1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encode(x))
