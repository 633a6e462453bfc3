"""The forecasting head: per-modality input projection, fusion, aggregator, decoder, recognition head.

    inputs[m] (B, N_in, D_m) or (B, N_in, F, D_m) per-frame
      -> frame pooling (mean, or learned attention pooling) -> (B, N_in, D_m)
      -> InputProjection: dropout, Linear(D_m -> P_m)   (the reference backbone head 2304->2048 / 768->768)
      -> concat over modalities -> (B, N_in, sum P_m)   (Video+CLIP: 2048 + 512 = 2560)
      -> aggregator -> (B, D') ; decoder -> {"verb": (B, Z, V), "noun": (B, Z, N)}
      -> recognition head on each fused observed token -> {"obs_verb": (B, N_in, V), "obs_noun": ...}

`build_model(model_cfg)` is the only place a config becomes constructor arguments.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from train_heads.aggregators import create_aggregator
from train_heads.decoders import create_decoder, is_autoregressive


from train_heads.schemas import ModalityConfig, ModelConfig  # noqa: E402,F401 - torch-free schemas, re-exported


def _init_normal_001(linear: nn.Linear) -> None:
    """N(0, 0.01) weight, zero bias: the reference SlowFast's Linear layers (weight_init_helper.init_weights)."""
    nn.init.normal_(linear.weight, mean=0.0, std=0.01)
    nn.init.zeros_(linear.bias)


def _init_trunc_normal_002(linear: nn.Linear) -> None:
    """trunc_normal(std 0.02) weight, zero bias: the reference MViT's Linear layers (MViT._init_weights)."""
    nn.init.trunc_normal_(linear.weight, std=0.02)
    nn.init.zeros_(linear.bias)


# name -> in-place init of the projection's nn.Linear ("pytorch": keep nn.Linear's own)
PROJECTION_INITS = {"pytorch": lambda linear: None, "normal_0.01": _init_normal_001,
                    "trunc_normal_0.02": _init_trunc_normal_002}


class InputProjection(nn.Module):
    """Dropout then Linear(in_dim -> out_dim), like the reference's backbone head; identity when out_dim is 0.

    `init` names the Linear's initialisation (`PROJECTION_INITS`)."""

    def __init__(self, *, in_dim: int, out_dim: int, dropout: float = 0.5, init: str = "pytorch"):
        super().__init__()
        if init not in PROJECTION_INITS:
            raise ValueError(f"unknown proj_init {init!r}; available: {list(PROJECTION_INITS)}")
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(in_dim, out_dim) if out_dim else nn.Identity()
        if out_dim:
            PROJECTION_INITS[init](self.proj)
        self.out_dim = out_dim or in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.dropout(x))


NORMALIZERS = ("none", "standardize", "l2")


class FeatureNorm(nn.Module):
    """Per-dimension input scaling of cached features, over the last (feature) dim of (..., D).

    `standardize`: (x - mean) / std with train-split statistics held as buffers, so they travel with the
    checkpoint (set once by `set_stats` before training). Backbones with random or foreign weights give
    features whose scale is far from what a freshly initialised projection expects; this puts every
    modality on the same footing. `l2`: unit L2 norm per vector (CLIP-style embeddings).
    """

    def __init__(self, *, dim: int, mode: str):
        super().__init__()
        if mode not in NORMALIZERS[1:]:
            raise ValueError(f"unknown normalize {mode!r}; available: {list(NORMALIZERS)}")
        self.mode = mode
        if mode == "standardize":
            self.register_buffer("mean", torch.zeros(dim))
            self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, chunks: Iterable[torch.Tensor]) -> None:
        """Fit the statistics over `chunks`, each (..., D), summed in float64: memory stays one chunk.

        A constant dimension keeps std 1.
        """
        if self.mode != "standardize":
            return
        count, total, squares = 0, torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        for chunk in chunks:
            flat = chunk.reshape(-1, chunk.shape[-1]).double()
            count += flat.shape[0]
            total, squares = total + flat.sum(0), squares + (flat * flat).sum(0)
        if not count:
            raise ValueError("FeatureNorm.fit: no features to fit on")
        mean = total / count
        std = (squares / count - mean * mean).clamp_min(0).sqrt()
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)).to(self.std))

    def set_stats(self, features: torch.Tensor) -> None:
        """Fit the statistics on one tensor (..., D)."""
        self.fit([features])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "l2":
            return F.normalize(x, dim=-1)
        return (x - self.mean) / self.std


class AttentionPool(nn.Module):
    """A learned query attends over a segment's frame features (Das & Ryoo's CLIP attention).

    (B, N_in, F, D) -> (B, N_in, D); `depth` rounds of multi-head attention, each followed by
    Linear + dropout with a residual on the query.
    """

    def __init__(self, *, dim: int, heads: int = 4, depth: int = 3, dropout: float = 0.2, query_std: float = 0.02):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) * query_std)
        self.attn = nn.ModuleList(nn.MultiheadAttention(dim, heads, batch_first=True) for _ in range(depth))
        self.ffn = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout)) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, f, d = x.shape
        frames = x.reshape(b * n, f, d)
        q = self.query.expand(b * n, 1, d)
        for attn, ffn in zip(self.attn, self.ffn):
            a, _ = attn(q, frames, frames, need_weights=False)
            q = q + ffn(a)
        return q.reshape(b, n, d)


class MeanFramePool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(2)


class ForecastModel(nn.Module):
    """Forecasting head over cached features; see the module docstring for shapes."""

    def __init__(self, *, modalities: list[ModalityConfig], num_input: int, num_future: int, num_verbs: int,
                 num_nouns: int, aggregator: str, aggregator_kwargs: dict, decoder: str, decoder_kwargs: dict,
                 recognition: bool = True, pair_prior: bool = False):
        super().__init__()
        if not modalities:
            raise ValueError("ForecastModel needs at least one modality")
        if num_verbs < 1 or num_nouns < 1:
            raise ValueError(f"num_verbs/num_nouns must be set (got {num_verbs}, {num_nouns})")
        self.modality_names = [m.name for m in modalities]
        self.num_verbs, self.num_nouns, self.num_future = num_verbs, num_nouns, num_future
        self.frame_pools = nn.ModuleDict()
        self.norms = nn.ModuleDict()  # only modalities with normalize != none (state dicts of others unchanged)
        self.inputs = nn.ModuleDict()
        for m in modalities:
            if m.in_dim < 1:
                raise ValueError(f"modality {m.name!r}: in_dim is not set (it comes from the feature store)")
            if m.normalize != "none":
                self.norms[m.name] = FeatureNorm(dim=m.in_dim, mode=m.normalize)
            if m.frames:
                if m.frame_pool == "attention":
                    self.frame_pools[m.name] = AttentionPool(dim=m.in_dim, query_std=m.query_init_std)
                elif m.frame_pool == "mean":
                    self.frame_pools[m.name] = MeanFramePool()
                else:
                    raise ValueError(f"modality {m.name!r}: unknown frame_pool {m.frame_pool!r}; available: ['attention', 'mean']")
            self.inputs[m.name] = InputProjection(in_dim=m.in_dim, out_dim=m.proj_dim, dropout=m.dropout,
                                                  init=m.proj_init)
        fused_dim = sum(p.out_dim for p in self.inputs.values())
        self.aggregator = create_aggregator(aggregator, dim=fused_dim, num_input=num_input, **aggregator_kwargs)
        self.decoder = create_decoder(decoder, dim_in=self.aggregator.out_dim, token_dim=self.aggregator.token_dim,
                                      num_future=num_future, num_verbs=num_verbs, num_nouns=num_nouns, **decoder_kwargs)
        self.recognition = nn.Linear(fused_dim, num_verbs + num_nouns) if recognition else None
        if pair_prior:  # only then a buffer: state dicts of other heads are unchanged
            from train_heads.pair_prior import PairPrior

            self.pair_prior = PairPrior(num_verbs, num_nouns)
        else:
            self.pair_prior = None

    def fuse(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """modality -> (B, N_in, [F,] D_m) -> fused observed tokens (B, N_in, sum P_m)."""
        parts = []
        for name in self.modality_names:
            x = inputs[name]
            if name in self.norms:
                x = self.norms[name](x)
            if name in self.frame_pools:
                x = self.frame_pools[name](x)
            parts.append(self.inputs[name](x))
        return torch.cat(parts, dim=-1)

    @property
    def autoregressive(self) -> bool:
        """True when the decoder emits step by step (teacher forcing in training, ancestral generation)."""
        return is_autoregressive(self.decoder)

    def context(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> fused observed tokens (B, N_in, D), aggregator tokens (B, N_in, D_tok), pooled (B, D')."""
        fused = self.fuse(inputs)  # (B, N_in, D)
        tokens = self.aggregator.encode(fused)
        return fused, tokens, self.aggregator.pool(tokens)

    def recognise(self, fused: torch.Tensor) -> dict[str, torch.Tensor]:
        """Observed-segment logits {"obs_verb": (B, N_in, V), "obs_noun": ...}; empty without a recognition head."""
        if self.recognition is None:
            return {}
        rec = self.recognition(fused)  # (B, N_in, V+N)
        return {"obs_verb": rec[..., :self.num_verbs], "obs_noun": rec[..., self.num_verbs:]}

    def forward(self, inputs: dict[str, torch.Tensor], future: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Logits of the Z future steps and of the observed segments.

        `future` {"verb": (B, Z), "noun": (B, Z)} is read by autoregressive decoders only (teacher forcing);
        without it they decode greedily. Other decoders ignore it.
        """
        fused, tokens, pooled = self.context(inputs)
        if self.autoregressive:
            out = self.decoder(pooled, tokens, future=future)
        else:
            out = self.decoder(pooled, tokens)
        out.update(self.recognise(fused))
        return out


def model_config_from_dict(cfg: ModelConfig | dict) -> ModelConfig:
    """A ModelConfig from itself or a plain dict (e.g. read from a run's config.yaml)."""
    if isinstance(cfg, ModelConfig):
        return cfg
    cfg = dict(cfg)
    cfg["modalities"] = [m if isinstance(m, ModalityConfig) else ModalityConfig(**m) for m in cfg.get("modalities", [])]
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
    return ModelConfig(**cfg)


def build_model(model_cfg: ModelConfig | dict) -> ForecastModel:
    """The single factory from a head config to a `ForecastModel`."""
    c = model_config_from_dict(model_cfg)
    return ForecastModel(modalities=c.modalities, num_input=c.num_input, num_future=c.num_future,
                         num_verbs=c.num_verbs, num_nouns=c.num_nouns, aggregator=c.aggregator,
                         aggregator_kwargs=dict(c.aggregator_kwargs), decoder=c.decoder,
                         decoder_kwargs=dict(c.decoder_kwargs), recognition=c.recognition, pair_prior=c.pair_prior)
