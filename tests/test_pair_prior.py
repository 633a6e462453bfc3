"""The verb-noun pair prior (train_heads/pair_prior.py) and the pair_sample generator."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from train_heads.generators import create_generators, list_generators
from train_heads.model import ModalityConfig, ModelConfig, build_model
from train_heads.pair_prior import PairPrior


def test_fit_is_log_pmi_of_smoothed_counts():
    rng = np.random.default_rng(0)
    v, n = rng.integers(0, 3, (40, 5)), rng.integers(0, 4, (40, 5))
    v[0, 0] = n[0, 1] = -1  # unlabelled entries are skipped
    prior = PairPrior(3, 4, alpha=0.5)
    prior.fit(v, n)
    ok = (v >= 0) & (n >= 0)
    c = np.full((3, 4), 0.5)
    for a, b in zip(v[ok], n[ok]):
        c[a, b] += 1
    expect = np.log(c[1, 2] / c[1].sum()) - np.log(c[:, 2].sum() / c.sum())
    assert prior.log_pmi[1, 2].item() == pytest.approx(expect, rel=1e-5)


def test_pair_sample_follows_the_prior_and_keeps_plain_candidates():
    assert "pair_sample" in list_generators()
    w, z, V, N = 6, 20, 5, 7
    rng = np.random.default_rng(1)
    lv, ln = torch.zeros(w, z, V), torch.zeros(w, z, N)  # flat logits: only the prior decides
    allowed = {int(v): int(rng.integers(N)) for v in range(V)}  # one noun per verb ever seen in training
    prior = PairPrior(V, N, alpha=1e-3)
    vs = np.repeat(np.arange(V), 50)
    prior.fit(vs, np.array([allowed[int(v)] for v in vs]))
    gen = create_generators(["pair_sample"], temperature=1.0)["pair_sample"]
    gen.pair_weight, gen.plain = 5.0, 1
    verb, noun = gen.generate(lv, ln, k=5, rng=torch.Generator().manual_seed(0), log_pmi=prior.log_pmi)
    assert verb.shape == noun.shape == (w, 5, z)
    joint = [(a, b) for a, b in zip(verb[:, 1:].ravel(), noun[:, 1:].ravel())]
    share = np.mean([allowed[a] == b for a, b in joint])
    assert share > 0.95, share  # chance would be 1/N
    # without the prior the same draws pair verbs and nouns at chance
    verb0, noun0 = gen.generate(lv, ln, k=5, rng=torch.Generator().manual_seed(0), log_pmi=None)
    assert np.mean([allowed[a] == b for a, b in zip(verb0.ravel(), noun0.ravel())]) < 0.5
    # candidate 0 is the per-position argmax without the prior
    lv2 = torch.randn(w, z, V)
    ln2 = torch.randn(w, z, N)
    v2, n2 = gen.generate(lv2, ln2, k=5, rng=torch.Generator().manual_seed(0), log_pmi=prior.log_pmi)
    assert (v2[:, 0] == lv2.argmax(-1).numpy()).all() and (n2[:, 0] == ln2.argmax(-1).numpy()).all()


def _cfg(pair_prior: bool, decoder: str = "multihead") -> ModelConfig:
    kwargs = {"dim": 16, "depth": 1, "heads": 2, "ff_dim": 32} if decoder == "autoregressive" else {}
    return ModelConfig(modalities=[ModalityConfig("slowfast", proj_dim=8, in_dim=12)], num_input=2, num_future=20,
                       decoder=decoder, decoder_kwargs=kwargs, num_verbs=5, num_nouns=7, pair_prior=pair_prior)


def test_prior_is_a_checkpoint_buffer_only_when_enabled():
    assert not any("pair_prior" in k for k in build_model(_cfg(False)).state_dict())
    assert build_model(_cfg(True)).state_dict()["pair_prior.log_pmi"].shape == (5, 7)


def test_pair_sample_refuses_an_autoregressive_model():
    from train_heads.generators import AutoregressiveSource

    model = build_model(_cfg(True, "autoregressive")).eval()
    fused, tokens, pooled = model.context({"slowfast": torch.randn(3, 2, 12)})
    gen = create_generators(["pair_sample"])["pair_sample"]
    with pytest.raises(ValueError, match="pair_sample"):
        gen.generate_from(AutoregressiveSource(model.decoder, pooled, tokens), k=5, rng=torch.Generator())
