"""A reference config, trained and used through the CLI with no extra keys, follows the reference at every step
after training: generation, scored key set and precision (train_heads/protocol.py).

Values read from the reference code (EGO4D/forecasting @ 38d1931):
  ego4d_forecasting/models/lta_models.py:286-298 `generate(x, k)`: for k > 1, `Categorical(logits=head_x)` and
      `k` independent `.sample()` calls per head (verb, noun), stacked to (B, k, Z); no temperature.
  ego4d_forecasting/tasks/long_term_anticipation.py: val and test both call `generate(..., k=5)`
      (FORECASTING.NUM_SEQUENCES_TO_PREDICT, config/defaults.py).
  ego4d_forecasting/datasets/ptv_dataset_helper.py:449-451: windows start at i in range(L - Z - N_in + 1), so the
      scored set holds every window whose last observed segment has at least N_in - 1 earlier segments.
  scripts/run_lta.py:218-239: the Trainer sets no precision (fp32).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines import cmd_evaluate, cmd_predict, cmd_report, cmd_train_heads
from synthetic_store import write_synthetic_dataset, write_synthetic_stores

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
REFERENCE_N_IN = {"slowfast_concat": 2, "slowfast_transformer": 4, "mvit_concat": 2, "mvit_concat_pretrained": 2, "video_clip": 4, "clip_only": 4}
Z, K = 20, 5  # lta yamls NUM_ACTIONS_TO_PREDICT, defaults.py NUM_SEQUENCES_TO_PREDICT
TINY = ["head.modalities.0.proj_dim=16", "train.epochs=2", "train.batch_size=16", "train.warmup_steps=2",
        "train.log_every=100", "device=cpu"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """slowfast_concat.yaml (a reference config) trained for 2 epochs on a 12-clip synthetic store."""
    root = tmp_path_factory.mktemp("refproto")
    plan = write_synthetic_dataset(root / "data", clips=12, seed=5)
    write_synthetic_stores(root / "data", root / "store", plan, num_views=1, noise=1.0,
                           modalities={"slowfast": ("slowfast_r101_8x8.synthetic", (32,))})
    run = root / "run"
    argv = [f"config={CONFIGS / 'slowfast_concat.yaml'}", f"data={root / 'data'}", f"store={root / 'store'}",
            f"out={run}", *[a for a in TINY if not a.startswith("device")], "train.device=cpu"]
    assert cmd_train_heads.main(argv) == 0
    return {"root": root, "run": run, "data": root / "data"}


def _windows(data: Path, split: str, num_seen: int):
    from features.annotations import load_split
    from features.windows import build_windows

    return build_windows(load_split(data, split), num_input=2, num_future=Z, num_seen=num_seen).keys


def _reference_keys(data: Path, split: str, n_in: int) -> list[str]:
    """The reference's scored keys, written from ptv_dataset_helper.py:449-451 (not from features.windows):
    per clip sorted by action_idx, window starts i in range(L - Z - N_in + 1), key = last observed segment."""
    from features.annotations import load_split

    ann = load_split(data, split)
    keys = []
    for uid, sl in ann.clip_slices.items():
        idx = sorted(int(a) for a in ann.action_idx[sl])
        keys += [f"{uid}_{idx[i + n_in - 1]}" for i in range(len(idx) - Z - n_in + 1)]
    return keys


@pytest.mark.parametrize("name", sorted(REFERENCE_N_IN))
def test_reference_configs_declare_the_reference_protocol(name):
    from pipelines.cmd_train_heads import TrainHeadsConfig
    from pipelines.config import parse_config
    from train_heads.protocol import reference_generator, run_amp

    cfg = parse_config(TrainHeadsConfig, [f"config={CONFIGS / name}.yaml"])
    assert cfg.reference, f"{name}.yaml: no `reference:`"
    assert cfg.num_seen == cfg.head.num_input == REFERENCE_N_IN[name]  # ptv_dataset_helper.py:449
    resolved = {"reference": cfg.reference, "train": {"amp": cfg.train.amp}}
    assert reference_generator(resolved)[0] == "sample"
    assert run_amp(resolved)[0] is False  # run_lta.py: no precision -> fp32
    assert cfg.train.val_generator == "sample"


def test_project_configs_keep_val_selection():
    from train_heads.protocol import reference_generator

    assert reference_generator({"reference": "", "train": {}}) is None


def test_sample_generator_is_the_reference_generate():
    """`sample` = lta_models.py:286-298: K independent Categorical(logits) draws per position, T = 1."""
    from train_heads.generators import LogitsSource, create_generator

    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]])  # (W=1, Z=2, C=3)
    w = 4000
    source = LogitsSource(logits.expand(w, -1, -1).clone(), logits.expand(w, -1, -1).clone())
    verb, noun = create_generator("sample").generate_from(source, k=K, rng=torch.Generator().manual_seed(0))
    assert verb.shape == (w, K, 2)
    probs = torch.softmax(logits[0], -1).numpy()  # Categorical(logits) at T = 1
    for z in range(2):
        freq = np.bincount(verb[:, :, z].ravel(), minlength=3) / (w * K)
        assert np.abs(freq - probs[z]).max() < 0.015, (z, freq, probs[z])
    # independent across the K sequences (the reference calls .sample() K times) and across positions
    same = (verb[:, 0, 0] == verb[:, 1, 0]).mean()
    assert same == pytest.approx((probs[0] ** 2).sum(), abs=0.03)
    assert np.corrcoef(verb[:, 0, 0], verb[:, 0, 1])[0, 1] == pytest.approx(0, abs=0.05)
    assert not np.array_equal(verb, noun)  # verb and noun drawn independently


def test_train_evaluate_predict_follow_the_reference(reference_run, tmp_path, capsys):
    """train-heads -> evaluate -> predict on slowfast_concat.yaml with no extra keys."""
    from features.submission import read_predictions
    from train_heads.data import DeviceWindows
    from train_heads.evaluate import forecast_split
    from train_heads.generators import create_generators
    from train_heads.inputs import load_bank, split_windows
    from train_heads.run import load_run

    run, data = reference_run["run"], reference_run["data"]
    ref_val = _reference_keys(data, "val", 2)
    # training validated on the reference's key set
    assert json.loads((run / "metrics.json").read_text())["num_val_windows"] == len(ref_val)
    assert cmd_evaluate.main([f"run={run}", "split=val", "baselines=[frequency_prior]", "device=cpu"]) == 0
    printed = capsys.readouterr().out
    ev = json.loads((run / "metrics_val.json").read_text())
    assert ev["num_windows"] == len(ref_val)  # the reference's set
    assert ev["selected_generator"] == "sample" and "lta_models.py" in ev["selected_generator_reason"]
    assert ev["amp"] is False and "train.amp=false" in ev["amp_reason"]
    # the project's default set (num_seen=8) reported beside it, labelled
    n8 = len(_windows(data, "val", 8))
    assert 0 < n8 < len(ref_val) and ev["keyset_num_seen8.num_windows"] == n8
    for g in ("sample", "greedy+sample", "mbr", "mbr_set"):
        assert 0 <= ev[f"keyset_num_seen8.model.{g}.action_ed"] <= 1
    assert "keys [keyset_num_seen8]" in printed and "num_seen=2" in printed
    # even when another generator scores better on val, predict submits the reference's draws
    out = tmp_path / "outputs.json"
    assert cmd_predict.main([f"run={run}", "split=test", f"out={out}", "device=cpu"]) == 0
    printed = capsys.readouterr().out
    assert "generator sample (reference config" in printed and "amp=false" in printed
    written = read_predictions(out)
    assert list(written) == _reference_keys(data, "test", 2)  # every N_in window of the test split
    # the written sequences are the seeded `sample` draws of the run's model in fp32, not another generator's
    loaded = load_run(run, device="cpu")
    bank = load_bank(loaded.cfg["store"], loaded.cache_keys, splits=["test"])
    _, win = split_windows(data, "test", bank, num_input=2, num_future=Z, num_seen=2, convention="plus_one")
    fc = forecast_split(loaded.model, DeviceWindows(win, "cpu"), bank.to("cpu"), k=K, seed=0, amp=False,
                        generators=create_generators(["sample", "greedy+sample"]))
    verb = np.array([written[key]["verb"] for key in win.keys])
    noun = np.array([written[key]["noun"] for key in win.keys])
    assert verb.shape == (len(win), K, Z)
    np.testing.assert_array_equal(verb, fc.sequences["sample"][0])
    np.testing.assert_array_equal(noun, fc.sequences["sample"][1])
    assert not np.array_equal(verb, fc.sequences["greedy+sample"][0])
    # lta report shows the sequences predict writes (the reference generator) and the run's own key set only
    html = tmp_path / "report.html"
    assert cmd_report.main([f"run={run}", "split=val", f"out={html}", "device=cpu", "windows=1",
                            "baselines=[frequency_prior]"]) == 0
    page = html.read_text()
    assert "generator sample" in page and "keyset_num_seen8" not in page


def test_precision_is_passed_through(reference_run, tmp_path, monkeypatch):
    """evaluate / predict run at the run's train.amp unless amp= is given (checked by the flag reaching
    train_heads.evaluate.autocast, which is where bf16 would be switched on on CUDA)."""
    import train_heads.evaluate as ev_mod

    seen = []
    real = ev_mod.autocast
    monkeypatch.setattr(ev_mod, "autocast", lambda device, enabled: seen.append(enabled) or real(device, enabled))
    run = reference_run["run"]
    assert cmd_predict.main([f"run={run}", "split=val", f"out={tmp_path / 'a.json'}", "device=cpu"]) == 0
    assert seen and not any(seen)
    seen.clear()
    assert cmd_predict.main([f"run={run}", "split=val", f"out={tmp_path / 'b.json'}", "device=cpu", "amp=true"]) == 0
    assert seen and all(seen)
    seen.clear()
    assert cmd_evaluate.main([f"run={run}", "split=val", "generators=[sample]", "baselines=[]", "device=cpu",
                              f"out={tmp_path / 'm.json'}"]) == 0
    assert seen and not any(seen)
    assert json.loads((tmp_path / "m.json").read_text())["amp"] is False
