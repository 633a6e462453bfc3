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


def _one_noun_per_verb_prior(V: int, N: int, rng) -> tuple[PairPrior, dict[int, int]]:
    allowed = {int(v): int(rng.integers(N)) for v in range(V)}  # one noun per verb ever seen in training
    prior = PairPrior(V, N, alpha=1e-3)
    vs = np.repeat(np.arange(V), 50)
    prior.fit(vs, np.array([allowed[int(v)] for v in vs]))
    return prior, allowed


def test_pair_sample_follows_the_prior():
    assert "pair_sample" in list_generators()
    w, z, V, N = 6, 20, 5, 7
    prior, allowed = _one_noun_per_verb_prior(V, N, np.random.default_rng(1))
    lv, ln = torch.zeros(w, z, V), torch.zeros(w, z, N)  # flat logits: only the prior decides
    gen = create_generators(["pair_sample"], temperature=1.0)["pair_sample"]
    gen.pair_weight = 5.0
    verb, noun = gen.generate(lv, ln, k=5, rng=torch.Generator().manual_seed(0), log_pmi=prior.log_pmi)
    assert verb.shape == noun.shape == (w, 5, z)
    for c in range(5):  # every kind of candidate pairs a verb with its noun (chance would be 1/N)
        share = np.mean([allowed[a] == b for a, b in zip(verb[:, c].ravel(), noun[:, c].ravel())])
        assert share > 0.95, (c, share)
    assert len(np.unique(verb[:, 1:])) > 1  # the draws do draw (flat verb logits)
    # without the prior the same draws pair verbs and nouns at chance
    verb0, noun0 = gen.generate(lv, ln, k=5, rng=torch.Generator().manual_seed(0), log_pmi=None)
    assert np.mean([allowed[a] == b for a, b in zip(verb0[:, 1:].ravel(), noun0[:, 1:].ravel())]) < 0.5


def test_pair_sample_keeps_the_heads_verbs():
    w, z, V, N = 8, 20, 5, 7
    rng = np.random.default_rng(2)
    prior, allowed = _one_noun_per_verb_prior(V, N, rng)
    lv, ln = torch.randn(w, z, V), torch.randn(w, z, N)
    gen = create_generators(["pair_sample"])["pair_sample"]  # its own defaults
    assert gen.temperature == 0.4 and gen.verb_first == 2
    argmax_v, argmax_n = lv.argmax(-1).numpy(), ln.argmax(-1).numpy()
    # candidate 0: the head's argmax verbs; its nouns go with them under a strong prior, and are the head's
    # argmax nouns without one
    gen.pair_weight = 20.0
    v, n = gen.generate(lv, ln, k=5, rng=torch.Generator().manual_seed(0), log_pmi=prior.log_pmi)
    assert (v[:, 0] == argmax_v).all()
    assert all(allowed[a] == b for a, b in zip(v[:, 0].ravel(), n[:, 0].ravel()))
    v, n = gen.generate(lv, ln, k=5, rng=torch.Generator().manual_seed(0), log_pmi=None)
    assert (v[:, 0] == argmax_v).all() and (n[:, 0] == argmax_n).all()
    # the verb-first candidates draw their verbs from the head's verb distribution even where the prior would
    # pull the joint draws elsewhere: a head sure of verb 0 whose training pairs are rare ...
    sure = torch.full((w, z, V), -4.0)
    sure[..., 0] = 4.0
    pmi = prior.log_pmi.clone()
    pmi[0] = -3.0  # verb 0 with any noun is rarer than chance
    gen.pair_weight = 3.0
    v, n = gen.generate(sure, ln, k=5, rng=torch.Generator().manual_seed(0), log_pmi=pmi)
    assert (v[:, :3] == 0).mean() > 0.99  # candidate 0 and the two verb-first draws
    assert (v[:, 3:] == 0).mean() < (v[:, :3] == 0).mean()  # the joint draws trade verb for pair likelihood


def test_pair_sample_k_smaller_than_its_kinds_and_bad_options():
    lv, ln = torch.randn(3, 20, 5), torch.randn(3, 20, 7)
    gen = create_generators(["pair_sample"])["pair_sample"]
    for k in (1, 2, 3, 6):
        v, n = gen.generate(lv, ln, k=k, rng=torch.Generator().manual_seed(0), log_pmi=torch.zeros(5, 7))
        assert v.shape == n.shape == (3, k, 20)
    from train_heads.generators import PairSampleGenerator

    with pytest.raises(ValueError, match="verb_first"):
        PairSampleGenerator(verb_first=-1)


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
