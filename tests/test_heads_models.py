"""Every registered aggregator / decoder / generator / baseline: shapes, gradients, checkpoint round trip."""
import math

import numpy as np
import pytest
import torch

from train_heads.aggregators import TransformerAggregator, create_aggregator, list_aggregators
from train_heads.baselines import MarkovBaseline, TrainingSet, create_baseline, list_baselines
from train_heads.decoders import MultiHeadDecoder, create_decoder, list_decoders
from train_heads.generators import create_generator, list_generators, pairwise_edit_distance
from train_heads.model import ModalityConfig, ModelConfig, build_model

torch.set_num_threads(1)
B, N_IN, D, Z, V, N = 3, 4, 16, 5, 6, 7
SMALL = {"transformer": {"depth": 2, "heads": 4, "ff_dim": 32}}


def test_registries_list_and_reject_unknown_names():
    assert list_aggregators() == ["concat", "mean", "transformer"]
    assert list_decoders() == ["autoregressive", "multihead", "query"]
    assert set(list_generators()) == {"sample", "greedy+sample", "mbr", "mbr_set", "beam_search", "pair_sample"}
    assert list_baselines() == ["frequency_prior", "knn_retrieval", "markov"]
    with pytest.raises(ValueError, match=r"unknown aggregator 'lstm'; available: \['concat', 'mean', 'transformer'\]"):
        create_aggregator("lstm", dim=D, num_input=N_IN)
    with pytest.raises(ValueError, match="unknown decoder 'x'"):
        create_decoder("x", dim_in=D, num_future=Z, num_verbs=V, num_nouns=N)
    with pytest.raises(ValueError, match="unknown generator 'beam'"):
        create_generator("beam")


@pytest.mark.parametrize("name", ["concat", "mean", "transformer"])
def test_aggregator_forward_backward_and_round_trip(name, tmp_path):
    torch.manual_seed(0)
    agg = create_aggregator(name, dim=D, num_input=N_IN, **SMALL.get(name, {}))
    x = torch.randn(B, N_IN, D, requires_grad=True)
    out = agg(x)
    assert out.shape == (B, agg.out_dim) and agg.out_dim == {"concat": N_IN * D}.get(name, D)
    assert agg.encode(x).shape == (B, N_IN, agg.token_dim)
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    agg.eval()
    torch.save(agg.state_dict(), tmp_path / "a.pt")
    agg2 = create_aggregator(name, dim=D, num_input=N_IN, **SMALL.get(name, {}))
    agg2.load_state_dict(torch.load(tmp_path / "a.pt", weights_only=True), strict=True)
    agg2.eval()
    assert torch.equal(agg(x), agg2(x))


@pytest.mark.parametrize("name", ["multihead", "query"])
def test_decoder_forward_backward_and_round_trip(name, tmp_path):
    torch.manual_seed(0)
    kw = dict(dim_in=2 * D, token_dim=D, num_future=Z, num_verbs=V, num_nouns=N)
    dec = create_decoder(name, **kw)
    x, tokens = torch.randn(B, 2 * D, requires_grad=True), torch.randn(B, N_IN, D, requires_grad=True)
    out = dec(x, tokens)
    assert out["verb"].shape == (B, Z, V) and out["noun"].shape == (B, Z, N)
    (out["verb"].logsumexp(-1).sum() + out["noun"].logsumexp(-1).sum()).backward()
    assert x.grad.abs().sum() > 0
    if name == "query":
        assert tokens.grad.abs().sum() > 0  # the queries attend to the observed tokens
    dec.eval()
    torch.save(dec.state_dict(), tmp_path / "d.pt")
    dec2 = create_decoder(name, **kw)
    dec2.load_state_dict(torch.load(tmp_path / "d.pt", weights_only=True), strict=True)
    dec2.eval()
    assert torch.equal(dec(x, tokens)["noun"], dec2(x, tokens)["noun"])


def test_reference_structure_and_parameter_names():
    agg = TransformerAggregator(dim=16, depth=2, heads=8)
    names = set(agg.state_dict())
    assert {"pos_encoder.pe", "encoder.layers.0.self_attn.in_proj_weight", "encoder.layers.1.linear2.bias",
            "encoder.norm.weight", "encoder.layers.0.norm1.weight"} <= names
    pe = agg.pos_encoder.pe
    assert pe.shape == (1000, 1, 16)
    # standard sinusoid: pe[pos, 0, 2i] = sin(pos / 10000^(2i/D)), pe[pos, 0, 2i+1] = cos(...)
    assert math.isclose(pe[3, 0, 4].item(), math.sin(3 / 10000 ** (4 / 16)), rel_tol=1e-5)
    assert math.isclose(pe[7, 0, 5].item(), math.cos(7 / 10000 ** (4 / 16)), rel_tol=1e-5)
    layer = agg.encoder.layers[0]
    assert layer.linear1.out_features == 2048 and not layer.self_attn.batch_first and not layer.norm_first
    dec = MultiHeadDecoder(dim_in=16, num_future=20, num_verbs=117, num_nouns=521)
    assert len(dec.projections) == 20 and dec.projections[0].weight.shape == (638, 16)
    # last-token output depends only on tokens up to the end; changing the first token still changes it (attention)
    agg.eval()
    x = torch.randn(2, 4, 16)
    y = x.clone()
    y[:, 0] += 1
    assert not torch.allclose(agg(x), agg(y))


@pytest.mark.parametrize("aggregator", ["concat", "mean", "transformer"])
@pytest.mark.parametrize("decoder", ["multihead", "query"])
def test_full_model_two_modalities_and_run_round_trip(aggregator, decoder, tmp_path):
    from train_heads.run import load_run, save_run

    torch.manual_seed(0)
    cfg = ModelConfig(modalities=[ModalityConfig("slowfast", proj_dim=24, in_dim=20),
                                  ModalityConfig("clip", proj_dim=0, in_dim=8, frames=3, frame_pool="attention")],
                      num_input=N_IN, num_future=Z, aggregator=aggregator, aggregator_kwargs=SMALL.get(aggregator, {}),
                      decoder=decoder, num_verbs=V, num_nouns=N)
    model = build_model(cfg)
    inputs = {"slowfast": torch.randn(B, N_IN, 20), "clip": torch.randn(B, N_IN, 3, 8)}
    out = model(inputs)
    assert out["verb"].shape == (B, Z, V) and out["obs_noun"].shape == (B, N_IN, N)
    sum(o.sum() for o in out.values()).backward()
    assert model.inputs["slowfast"].proj.weight.grad.abs().sum() > 0
    assert model.frame_pools["clip"].query.grad.abs().sum() > 0
    model.eval()
    save_run(tmp_path / "run", model, {"head": cfg}, ["slowfast_x-1", "clip_y-2"], metrics={"a": 1})
    run = load_run(tmp_path / "run")
    assert run.cache_keys == {"slowfast": "slowfast_x-1", "clip": "clip_y-2"} and run.metrics == {"a": 1}
    assert torch.equal(run.model(inputs)["verb"], model(inputs)["verb"])


def _logits(seed=0, w=6, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(w, Z, V, generator=g) * scale, torch.randn(w, Z, N, generator=g) * scale


@pytest.mark.parametrize("name", ["sample", "greedy+sample", "mbr", "mbr_set"])
def test_generator_shapes_ranges_and_determinism(name):
    vl, nl = _logits()
    gen = create_generator(name, **({"num_samples": 16} if name.startswith("mbr") else {}))
    v1, n1 = gen.generate(vl, nl, k=5, rng=torch.Generator().manual_seed(1))
    v2, n2 = gen.generate(vl, nl, k=5, rng=torch.Generator().manual_seed(1))
    assert v1.shape == n1.shape == (6, 5, Z) and v1.dtype == np.int64
    assert v1.min() >= 0 and v1.max() < V and n1.max() < N
    assert np.array_equal(v1, v2) and np.array_equal(n1, n2)


def test_greedy_first_and_temperature_zero():
    vl, nl = _logits()
    v, n = create_generator("greedy+sample").generate(vl, nl, k=5, rng=torch.Generator().manual_seed(0))
    assert np.array_equal(v[:, 0], vl.argmax(-1).numpy()) and np.array_equal(n[:, 0], nl.argmax(-1).numpy())
    v, _ = create_generator("sample", temperature=0.0).generate(vl, nl, k=3, rng=torch.Generator())
    assert (v == vl.argmax(-1).numpy()[:, None]).all()


def test_sample_matches_probabilities():
    vl = torch.log(torch.tensor([0.7, 0.2, 0.1])).expand(1, 1, 3)
    v, _ = create_generator("sample").generate(vl, vl, k=20000, rng=torch.Generator().manual_seed(0))
    freq = np.bincount(v.ravel(), minlength=3) / v.size
    assert np.allclose(freq, [0.7, 0.2, 0.1], atol=0.015)


def test_mbr_picks_distinct_low_risk_candidates():
    tokens = np.array([[[1, 2, 3], [1, 2, 3], [1, 2, 4], [9, 9, 9]]])
    d = pairwise_edit_distance(tokens)
    assert d[0, 0, 3] == 3 and d[0, 0, 2] == 1 and d[0, 0, 1] == 0
    gen = create_generator("mbr", num_samples=4)
    assert list(gen._select(d, tokens, 2)[0]) == [0, 2]  # the duplicate draw 1 is pushed back
    # a peaked distribution: MBR of many draws returns the mode first
    vl = torch.full((2, Z, V), -10.0)
    vl[..., 2] = 5.0
    v, _ = create_generator("mbr", num_samples=32).generate(vl, vl[..., :N - 1].clone(), k=5, rng=torch.Generator().manual_seed(0))
    assert (v[:, 0] == 2).all()


def test_mbr_set_lowers_expected_min_distance():
    """On bimodal draws, the greedy set covers both modes; top-K by risk may not."""
    tokens = np.array([[[0, 0, 0]] * 6 + [[5, 5, 5]] * 4])
    d = pairwise_edit_distance(tokens)
    chosen = create_generator("mbr_set", num_samples=10)._select(d, tokens, 2)[0]
    assert {tuple(tokens[0, c]) for c in chosen} == {(0, 0, 0), (5, 5, 5)}


def _toy_training_set(cycle, repeats=30):
    from types import SimpleNamespace

    verb = np.array([c[0] for c in cycle] * repeats)
    noun = np.array([c[1] for c in cycle] * repeats)
    ann = SimpleNamespace(verb=verb, noun=noun, clip_uid=np.array(["c"] * len(verb), dtype=object))
    return TrainingSet(ann, None, None, num_verbs=V, num_nouns=N)


def test_markov_follows_a_deterministic_cycle():
    from train_heads.data import SplitWindows

    cycle = [(0, 1), (2, 3), (4, 5)]
    base = MarkovBaseline(alpha=1e-9).fit(_toy_training_set(cycle))
    win = SplitWindows("val", ["k"], np.zeros((1, 2), np.int64), np.zeros((1, 2), np.int64), np.zeros((1, 2), np.int64),
                       np.zeros((1, Z), np.int64), np.zeros((1, Z), np.int64))
    v, n = base.predict(win, k=2, rng=torch.Generator().manual_seed(0), recognised=(np.array([[0, 2]]), np.array([[1, 3]])))
    expect = [cycle[(2 + i) % 3] for i in range(Z)]
    assert v.shape == (1, 2, Z)
    assert v[0, 0].tolist() == [e[0] for e in expect] and n[0, 1].tolist() == [e[1] for e in expect]


def test_frequency_prior_follows_training_counts():
    prior = create_baseline("frequency_prior").fit(_toy_training_set([(1, 2)] * 9 + [(3, 4)]))
    v, n = prior.predict_keys(200, Z, k=5, rng=torch.Generator().manual_seed(0))
    assert abs((v == 1).mean() - 0.9) < 0.02 and set(np.unique(n)) <= {2, 4}


def test_create_generators_maps_the_command_options():
    from train_heads.generators import create_generators

    gens = create_generators(["sample", "mbr", "mbr_set", "greedy+sample"], temperature=0.7, mbr_samples=12)
    assert list(gens) == ["sample", "mbr", "mbr_set", "greedy+sample"]
    assert all(g.temperature == 0.7 for g in gens.values())
    assert gens["mbr"].num_samples == 12 and gens["mbr_set"].num_samples == 12
    with pytest.raises(ValueError, match="unknown generator 'nope'"):
        create_generators(["nope"])
