"""The autoregressive decoder and its model-in-the-loop generation (CPU, ~75 s).

Teacher forcing is causal and equals incremental (KV-cached) decoding; ancestral draws follow the model's
joint distribution; beam search is exact with a beam as wide as the sequence space; seeded generation is
deterministic; a run dir round-trips; on data whose futures are one of two whole sequences the AR head is as
coherent as theory allows and the reference Z independent heads cannot be; beam search runs through `lta predict`.
"""
import itertools
import json
import types

import numpy as np
import pytest
import torch

from train_heads.decoders import create_decoder
from train_heads.generators import AutoregressiveSource, LogitsSource, create_generator
from train_heads.model import ModalityConfig, ModelConfig, build_model

torch.set_num_threads(1)
B, N_IN, D, Z, V, N = 3, 4, 16, 5, 6, 7
SMALL = {"dim": 32, "depth": 2, "heads": 4, "ff_dim": 64, "dropout": 0.1}


def _decoder(z=Z, v=V, n=N, seed=0, **kw):
    torch.manual_seed(seed)
    return create_decoder("autoregressive", dim_in=2 * D, token_dim=D, num_future=z, num_verbs=v, num_nouns=n,
                          **{**SMALL, **kw})


def _context(b=B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2 * D, generator=g), torch.randn(b, N_IN, D, generator=g)


def _future(b=B, z=Z, v=V, n=N, seed=2):
    g = torch.Generator().manual_seed(seed)
    return {"verb": torch.randint(0, v, (b, z), generator=g), "noun": torch.randint(0, n, (b, z), generator=g)}


def test_forward_backward_shapes():
    dec = _decoder()
    x, tokens = _context()
    x.requires_grad_(True)
    tokens.requires_grad_(True)
    out = dec(x, tokens, future=_future())
    assert out["verb"].shape == (B, Z, V) and out["noun"].shape == (B, Z, N)
    (out["verb"].logsumexp(-1).sum() + out["noun"].logsumexp(-1).sum()).backward()
    assert x.grad.abs().sum() > 0 and tokens.grad.abs().sum() > 0
    assert dec.verb_emb.weight.grad[:V].abs().sum() > 0 and dec.noun_emb.weight.grad[:N].abs().sum() > 0
    dec.eval()
    greedy = dec(x, tokens)  # no future: greedy decoding, same shapes
    assert greedy["verb"].shape == (B, Z, V) and greedy["noun"].shape == (B, Z, N)
    # -1 (unlabelled) targets read as the "unknown" embedding, not an index error
    fut = _future()
    fut["verb"][0, 2] = -1
    assert torch.isfinite(dec(x, tokens, future=fut)["verb"]).all()


@pytest.mark.parametrize("t", [0, 2, Z - 2])
def test_teacher_forcing_is_causal(t):
    dec = _decoder().eval()
    x, tokens = _context()
    fut = _future()
    changed = {k: v.clone() for k, v in fut.items()}
    changed["verb"][:, t] = (changed["verb"][:, t] + 1) % V
    changed["noun"][:, t] = (changed["noun"][:, t] + 3) % N
    a, b = dec(x, tokens, future=fut), dec(x, tokens, future=changed)
    for what in ("verb", "noun"):
        assert torch.equal(a[what][:, : t + 1], b[what][:, : t + 1])  # positions <= t never see a_t
        assert not torch.allclose(a[what][:, t + 1], b[what][:, t + 1])  # position t+1 reads it


def test_incremental_decoding_equals_teacher_forcing_and_greedy():
    dec = _decoder().eval()
    x, tokens = _context()
    fut = _future()
    tf = dec(x, tokens, future=fut)
    state, verb, noun, steps = dec.start(x, tokens), None, None, []
    for t in range(Z):
        steps.append(dec.step(state, verb, noun))
        verb, noun = fut["verb"][:, t], fut["noun"][:, t]
    assert torch.allclose(torch.stack([s[0] for s in steps], 1), tf["verb"], atol=1e-5)
    assert torch.allclose(torch.stack([s[1] for s in steps], 1), tf["noun"], atol=1e-5)
    with pytest.raises(ValueError, match="already emitted"):
        dec.step(state, verb, noun)
    # forward without `future` = teacher forcing on its own argmax sequence
    g = dec(x, tokens)
    g_ids = {"verb": g["verb"].argmax(-1), "noun": g["noun"].argmax(-1)}
    assert torch.allclose(dec(x, tokens, future=g_ids)["verb"], g["verb"], atol=1e-5)


def _joint_log_prob(dec, x, tokens, verb, noun):
    """log p(sequence) under teacher forcing: verb, noun (S, Z) for one window -> (S,)."""
    s = verb.shape[0]
    out = dec(x.expand(s, -1), tokens.expand(s, -1, -1), future={"verb": verb, "noun": noun})
    lv = torch.log_softmax(out["verb"], -1).gather(-1, verb[..., None])[..., 0]
    ln = torch.log_softmax(out["noun"], -1).gather(-1, noun[..., None])[..., 0]
    return (lv + ln).sum(1)


def test_ancestral_draws_follow_the_joint_and_beam_search_is_exact():
    z, v, n = 2, 2, 3
    dec = _decoder(z=z, v=v, n=n, seed=5, dim=16, heads=2).eval()
    for p in dec.parameters():  # sharpen the random model so the joint is far from uniform and from independent
        p.data.mul_(3.0)
    x, tokens = _context(b=1, seed=7)
    actions = list(itertools.product(range(v), range(n)))
    seqs = list(itertools.product(actions, repeat=z))  # all (v*n)^z sequences
    verb = torch.tensor([[a[0] for a in s] for s in seqs])
    noun = torch.tensor([[a[1] for a in s] for s in seqs])
    with torch.no_grad():
        prob = _joint_log_prob(dec, x, tokens, verb, noun).exp().numpy()
    assert abs(prob.sum() - 1) < 1e-5
    source = AutoregressiveSource(dec, x, tokens)
    dv, dn = source.draw(20000, 1.0, torch.Generator().manual_seed(0))  # (1, 20000, Z)
    code = lambda vv, nn_: ((vv * n + nn_) * np.array([v * n, 1])).sum(-1)  # noqa: E731
    freq = np.bincount(code(dv[0].numpy(), dn[0].numpy()), minlength=len(seqs)) / 20000
    assert np.abs(freq - prob[np.argsort(code(verb.numpy(), noun.numpy()))]).max() < 0.015
    # a beam as wide as the sequence space keeps the exact top-K
    bv, bn = create_generator("beam_search", beam_size=len(seqs)).generate_from(source, k=4, rng=torch.Generator())
    top = np.argsort(-prob, kind="stable")[:4]
    assert sorted(map(tuple, np.concatenate([bv[0], bn[0]], 1))) == sorted(
        tuple(verb[i].tolist() + noun[i].tolist()) for i in top)
    beam_prob = _joint_log_prob(dec, x, tokens, torch.from_numpy(bv[0]), torch.from_numpy(bn[0])).exp().detach().numpy()
    assert np.allclose(beam_prob, np.sort(prob)[::-1][:4], atol=1e-5)  # and in order


@pytest.mark.parametrize("name", ["sample", "greedy+sample", "mbr", "mbr_set", "beam_search"])
def test_generation_shapes_ranges_and_determinism(name):
    dec = _decoder().eval()
    source = AutoregressiveSource(dec, *_context(b=6))
    gen = create_generator(name, **({"num_samples": 12} if name.startswith("mbr") else {}))
    v1, n1 = gen.generate_from(source, k=5, rng=torch.Generator().manual_seed(1))
    v2, n2 = gen.generate_from(source, k=5, rng=torch.Generator().manual_seed(1))
    assert v1.shape == n1.shape == (6, 5, Z) and v1.dtype == np.int64
    assert v1.min() >= 0 and v1.max() < V and n1.min() >= 0 and n1.max() < N
    assert np.array_equal(v1, v2) and np.array_equal(n1, n2)
    if name in ("sample", "greedy+sample"):
        v3, _ = gen.generate_from(source, k=5, rng=torch.Generator().manual_seed(2))
        assert not np.array_equal(v1, v3)
    if name == "greedy+sample":
        g = source.greedy()
        assert np.array_equal(v1[:, :1], g[0].numpy()) and np.array_equal(n1[:, :1], g[1].numpy())


def test_logits_generators_unchanged_and_beam_refused_for_logits_models():
    g = torch.Generator().manual_seed(0)
    vl, nl = torch.randn(4, Z, V, generator=g) * 3, torch.randn(4, Z, N, generator=g) * 3
    for name in ("sample", "greedy+sample", "mbr"):
        gen = create_generator(name, **({"num_samples": 8} if name == "mbr" else {}))
        a = gen.generate(vl, nl, k=5, rng=torch.Generator().manual_seed(3))
        b = gen.generate_from(LogitsSource(vl, nl), k=5, rng=torch.Generator().manual_seed(3))
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="beam_search' needs an autoregressive decoder"):
        create_generator("beam_search").generate_from(LogitsSource(vl, nl), k=5, rng=torch.Generator())


def _model_cfg(decoder, aggregator="transformer"):
    return ModelConfig(modalities=[ModalityConfig("slowfast", proj_dim=24, in_dim=20),
                                   ModalityConfig("clip", proj_dim=0, in_dim=8, frames=3)],
                       num_input=N_IN, num_future=Z, aggregator=aggregator,
                       aggregator_kwargs={"depth": 1, "heads": 4, "ff_dim": 32} if aggregator == "transformer" else {},
                       decoder=decoder, decoder_kwargs=SMALL if decoder == "autoregressive" else {},
                       num_verbs=V, num_nouns=N)


def _inputs(b=B):
    g = torch.Generator().manual_seed(4)
    return {"slowfast": torch.randn(b, N_IN, 20, generator=g), "clip": torch.randn(b, N_IN, 3, 8, generator=g)}


@pytest.mark.parametrize("decoder", ["multihead", "query"])
def test_other_decoders_ignore_future(decoder):
    model = build_model(_model_cfg(decoder)).eval()
    assert not model.autoregressive
    a, b = model(_inputs()), model(_inputs(), future=_future())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_model_checkpoint_round_trip_through_run_dir(tmp_path):
    from train_heads.run import load_run, save_run

    torch.manual_seed(0)
    cfg = _model_cfg("autoregressive")
    model = build_model(cfg)
    assert model.autoregressive
    out = model(_inputs(), future=_future())
    assert out["verb"].shape == (B, Z, V) and out["obs_noun"].shape == (B, N_IN, N)
    sum(o.sum() for o in out.values()).backward()
    assert model.decoder.token_proj.weight.grad.abs().sum() > 0 and model.inputs["slowfast"].proj.weight.grad.abs().sum() > 0
    model.eval()
    save_run(tmp_path / "run", model, {"head": cfg}, ["slowfast_x-1", "clip_y-2"])
    loaded = load_run(tmp_path / "run").model
    assert torch.equal(loaded(_inputs())["verb"], model(_inputs())["verb"])
    draws = []
    for m in (model, loaded):
        _, tokens, pooled = m.context(_inputs())
        draws.append(create_generator("sample").generate_from(AutoregressiveSource(m.decoder, pooled, tokens), k=5,
                                                              rng=torch.Generator().manual_seed(0)))
    assert np.array_equal(draws[0][0], draws[1][0]) and np.array_equal(draws[0][1], draws[1][1])


# --- AR vs the reference independent heads on data whose answer is known ---------------------------------------
# Every window's future is one of two constant sequences, (0, 0) x Z or (1, 1) x Z, by a fair coin that the
# observed segments say nothing about. A model that draws whole sequences coherently (the AR decoder) misses
# only when all K candidates pick the wrong mode: ED@Z = 2^-K. A model whose Z verb and Z noun outputs are
# independent (the multihead decoder) cannot be coherent; `_factorized_floor` is the best ED@Z such a sampler
# reaches. The AR head must be nearer its ideal than that floor, the independent heads must not.
ZB, K = 10, 5
MODES = ((0, 0), (1, 1))


class _RowIdentity:
    def lookup(self, clip_uid, action_idx):
        return np.asarray(action_idx, dtype=np.int64)


def _bimodal_windows(name, n, rng, first_row):
    from train_heads.data import SplitWindows

    rows = first_row + np.arange(n * N_IN).reshape(n, N_IN)
    mode = rng.integers(0, 2, n)
    fv = np.repeat(np.array([MODES[m][0] for m in mode])[:, None], ZB, 1)
    fn = np.repeat(np.array([MODES[m][1] for m in mode])[:, None], ZB, 1)
    ov, on = rng.integers(2, V, (n, N_IN)), rng.integers(2, N, (n, N_IN))  # observed: never a mode's action
    return SplitWindows(name, [f"{name}_{i}" for i in range(n)], rows, ov, on, fv, fn)


def _binom_sf(z, q, m):
    """P(Binomial(z, q) >= m)."""
    from math import comb

    return sum(comb(z, j) * q**j * (1 - q) ** (z - j) for j in range(m, z + 1))


def _factorized_floor(z=ZB, k=K):
    """Best expected ED@Z of K independent draws from any verb/noun-factorised model with one p per mode.

    Against a constant truth, the edit distance of an equal-length candidate is its number of mismatching
    positions. With P(verb of mode 0) = P(noun of mode 0) = p at every position, a position matches truth
    mode 0 with q0 = p^2 and mode 1 with q1 = (1-p)^2; E[min of K Binomial(Z, 1-q)] = sum_m P(X >= m)^K.
    """
    def expected_min(q):
        return sum(_binom_sf(z, 1 - q, m) ** k for m in range(1, z + 1)) / z

    return min(0.5 * expected_min(p * p) + 0.5 * expected_min((1 - p) ** 2) for p in np.linspace(0, 1, 101))


@pytest.fixture(scope="module")
def bimodal(tmp_path_factory):
    from train_heads.baselines import TrainingSet
    from train_heads.data import FeatureBank

    rng = np.random.default_rng(0)
    tr = _bimodal_windows("train", 2000, rng, 0)
    va = _bimodal_windows("val", 400, rng, 2000 * N_IN)
    rows = 2400 * N_IN
    feats = rng.standard_normal((rows, 1, D)).astype(np.float32)  # (R, V=1, D): noise ...
    for w in (tr, va):  # ... plus a code of the observed verb, so recognition has something to learn
        feats[w.observed_rows.ravel(), 0, w.observed_verb.ravel()] += 3.0
    bank = FeatureBank(arrays={"slowfast": feats}, valid=np.ones(rows, bool), rows=_RowIdentity())
    ann = types.SimpleNamespace(verb=tr.observed_verb.ravel(), noun=tr.observed_noun.ravel(),
                                clip_uid=np.arange(tr.observed_verb.size).astype(str))
    train_set = TrainingSet(ann=ann, windows=tr, bank=bank, num_verbs=V, num_nouns=N)
    return tmp_path_factory.mktemp("bimodal"), train_set, va, bank


def _train_and_score(bimodal, decoder, decoder_kwargs):
    from train_heads.evaluate import evaluate_split
    from train_heads.run import load_run
    from train_heads.train import TrainConfig, train

    root, train_set, va, bank = bimodal
    head = ModelConfig(modalities=[ModalityConfig("slowfast", proj_dim=16, in_dim=D)], num_input=N_IN, num_future=ZB,
                       aggregator="concat", decoder=decoder, decoder_kwargs=decoder_kwargs, num_verbs=V, num_nouns=N)
    cfg = TrainConfig(epochs=8, batch_size=64, lr=2e-3, warmup_steps=10, patience=0, log_every=1000)
    train(head, cfg, train_windows=train_set.windows, val_windows=va, bank=bank, run_dir=root / decoder,
          full_cfg={"head": head, "train": cfg})
    model = load_run(root / decoder).model  # the run dir rebuilds the decoder it was trained with
    assert model.autoregressive == (decoder == "autoregressive")
    return evaluate_split(model, train_set=train_set, windows=va, bank=bank, generators={"sample": create_generator("sample")},
                          baselines=(), k=K)


def test_ar_head_draws_coherent_sequences_the_independent_heads_cannot(bimodal):
    ideal, floor = 2.0**-K, _factorized_floor()
    assert floor > 0.4  # the floor is far from the ideal: the data separates the two kinds of decoder
    mh = _train_and_score(bimodal, "multihead", {})
    ar = _train_and_score(bimodal, "autoregressive", {"dim": 32, "depth": 1, "heads": 2, "ff_dim": 64, "dropout": 0.0})
    midpoint = (ideal + floor) / 2
    assert ar["model.sample.action_ed"] < midpoint < mh["model.sample.action_ed"], (ar["model.sample.action_ed"],
                                                                                      mh["model.sample.action_ed"])
    # the AR head's miss rate is the ideal's up to sampling noise (400 windows, Bernoulli(2^-K) misses)
    assert ar["model.sample.action_ed"] <= ideal + 4 * np.sqrt(ideal * (1 - ideal) / 400) + 0.02


# --- the CLI: an autoregressive run dir predicts with beam_search, a multihead one refuses it ------------------
MODALITIES = {"slowfast": ("slowfast_r101_8x8.synthetic", (64,))}
TRAIN_ARGS = ["head.num_input=2", "head.aggregator=concat", "train.epochs=1", "train.warmup_steps=1",
              "train.log_every=100", "train.batch_size=32", "num_seen=4", "head.modalities=[{name: slowfast, proj_dim: 16}]"]
AR_ARGS = ["head.decoder=autoregressive", "head.decoder_kwargs={dim: 16, depth: 1, heads: 2, ff_dim: 32, dropout: 0.1}"]


def test_beam_search_through_lta_predict(tmp_path):
    from pipelines import cmd_predict, cmd_train_heads
    from synthetic_store import write_synthetic_dataset, write_synthetic_stores

    plan = write_synthetic_dataset(tmp_path / "data", clips=8, seed=3)
    write_synthetic_stores(tmp_path / "data", tmp_path / "store", plan, modalities=MODALITIES, noise=2.0)
    for name, extra in (("multihead", []), ("autoregressive", AR_ARGS)):
        argv = [f"data={tmp_path / 'data'}", f"store={tmp_path / 'store'}", f"out={tmp_path / name}", *TRAIN_ARGS, *extra]
        assert cmd_train_heads.main(argv) == 0
    out = tmp_path / "ar_val_outputs.json"
    assert cmd_predict.main([f"run={tmp_path / 'autoregressive'}", "split=val", f"out={out}", "generator=beam_search"]) == 0
    predictions = json.loads(out.read_text())
    assert predictions and all(np.shape(p["verb"]) == (5, 20) for p in predictions.values())
    with pytest.raises(ValueError, match="needs an autoregressive decoder"):
        cmd_predict.main([f"run={tmp_path / 'multihead'}", "split=val", f"out={tmp_path / 'mh.json'}",
                          "generator=beam_search"])
