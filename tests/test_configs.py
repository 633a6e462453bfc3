"""Every head config in pipelines/configs/ loads through the real `lta train-heads` loader, and the reference
configs carry the reference recipe field by field.

The expected values below are read from the reference code, not from our configs:
  R = EGO4D/forecasting @ 38d1931 (the Ego4D LTA baseline), D = srijandas07/clip_baseline_LTA_Ego4d @ 2db257f
  (Das & Ryoo's Video + CLIP, a fork of R that keeps R's optimiser, scheduler, loss and loaders).
  R configs/Ego4dLTA/MULTISLOWFAST_8x8_R101.yaml:4 TRAIN.BATCH_SIZE 64, :61 BASE_LR 1e-4, :62 LR_POLICY cosine_warmup,
      :63 MAX_EPOCH 50, :65 OPTIMIZING_METHOD adam, :66 WEIGHT_DECAY 1e-4, :80 NUM_GPUS 8, :81 NUM_SHARDS 1
  R configs/Ego4dLTA/MULTIMVIT_16x4.yaml:4 TRAIN.BATCH_SIZE 256, :63 BASE_LR 4e-2, :65 MAX_EPOCH 45, :67 adam,
      :68 WEIGHT_DECAY 1e-4, :70 WARMUP_STEPS 1000, :85 NUM_GPUS 8, :86 NUM_SHARDS 2
  R ego4d_forecasting/datasets/loader.py:70-74 per-GPU batch = TRAIN.BATCH_SIZE / NUM_GPUS, train drop_last=True
      (so the global batch is 64 for SlowFast and 256/8 x 8 GPUs x 2 nodes = 512 for MViT)
  R ego4d_forecasting/config/defaults.py:31 BN.WEIGHT_DECAY 0.0, :473 SOLVER.WARMUP_STEPS 1000
  R ego4d_forecasting/optimizers/optimizer.py:30-41 weight decay 0 only for parameters whose name contains "bn"
  R ego4d_forecasting/optimizers/lr_scheduler.py:15-20 cosine_warmup = linear warm-up then cosine, per step
  R ego4d_forecasting/tasks/long_term_anticipation.py:174-181 loss = sum of the 2Z forecasting CEs (no recognition
      loss), :157 checkpoint_metric val_0_ED_19 (verb ED@20)
  R scripts/run_lta.py:218-239 ModelCheckpoint only (no EarlyStopping), max_epochs=MAX_EPOCH, no precision (fp32)
  R tools/long_term_anticipation/ego4d_forecasting.sh:37 SlowFast-Trf NUM_INPUT_CLIPS 4; yaml :16 N_in 2 (Concat)
  D configs/Ego4dLTA/MULTISLOWFAST_8x8_R101.yaml:4 BATCH_SIZE 64, :61 BASE_LR 1e-4, :63 MAX_EPOCH 50, :65 adam,
      :66 WEIGHT_DECAY 1e-4; D ego4d/optimizers/optimizer.py:31 the same "bn" rule; D ego4d/datasets/loader.py:74
      drop_last; D tools/long_term_anticipation/ego4d_forecasting_clip.sh:36 NUM_INPUT_CLIPS 4
"""
from pathlib import Path

import pytest
import torch
from torch import nn

from pipelines.cmd_train_heads import TrainHeadsConfig
from pipelines.config import parse_config

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
ALL_CONFIGS = sorted(CONFIG_ROOT.rglob("*.yaml"))

# what every reference recipe shares (R and D, see the module docstring)
COMMON = {"optimizer": "adam", "weight_decay": 1e-4, "warmup_steps": 1000, "no_decay": "bn_name", "drop_last": True,
          "recognition_weight": 0.0, "amp": False, "patience": 0, "select_metric": "verb_ed", "label_smoothing": 0.0,
          "max_train_windows": 0}
REFERENCE = {
    # name: (num_input, epochs, global batch, lr)
    "slowfast_concat": (2, 50, 64, 1e-4),
    "slowfast_transformer": (4, 50, 64, 1e-4),
    "mvit_concat": (2, 45, 512, 4e-2),
    "mvit_concat_pretrained": (2, 45, 512, 4e-2),  # the same recipe on pretrained MViT features
    "video_clip": (4, 50, 64, 1e-4),
    "clip_only": (4, 50, 64, 1e-4),
}


def load(path: Path) -> TrainHeadsConfig:
    return parse_config(TrainHeadsConfig, [f"config={path}"])


def test_every_config_loads():
    assert {p.stem for p in ALL_CONFIGS if p.parent == CONFIG_ROOT} >= set(REFERENCE)
    assert any(p.parent.name == "demo" for p in ALL_CONFIGS)
    for path in ALL_CONFIGS:
        cfg = load(path)
        assert cfg.head.modalities and cfg.train.epochs > 0, path


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_recipe(name):
    cfg = load(CONFIG_ROOT / f"{name}.yaml")
    num_input, epochs, batch, lr = REFERENCE[name]
    t = cfg.train
    assert (cfg.head.num_input, t.epochs, t.batch_size, t.lr) == (num_input, epochs, batch, pytest.approx(lr)), name
    for key, value in COMMON.items():
        assert getattr(t, key) == value, f"{name}: train.{key} = {getattr(t, key)!r}, the reference has {value!r}"
    assert cfg.head.recognition is False, f"{name}: the reference model has no recognition head"


def test_das_ryoo_heads():
    """video_clip: mean of the raw frame embeddings (ForecastingEncoderDecoder_clip, lta_models.py:519);
    clip_only: each frame embedding L2-normalised (ForecastingEncoderDecoder_clip_text, lta_models.py:633)."""
    vc = {m.name: m for m in load(CONFIG_ROOT / "video_clip.yaml").head.modalities}
    assert (vc["clip"].frame_pool, vc["clip"].normalize, vc["slowfast"].proj_dim) == ("mean", "none", 2048)
    (co,) = load(CONFIG_ROOT / "clip_only.yaml").head.modalities
    assert (co.name, co.frame_pool, co.normalize) == ("clip", "attention", "l2")


def test_improvement_configs_keep_the_project_recipe():
    """best.yaml / ar_transformer.yaml are the improvements: auxiliary recognition loss, early stopping, bf16."""
    for name in ("best", "ar_transformer"):
        cfg = load(CONFIG_ROOT / f"{name}.yaml")
        assert cfg.head.recognition and cfg.train.recognition_weight > 0 and cfg.train.patience > 0, name


def test_bn_name_rule_is_the_reference_rule():
    """`bn_name` exempts exactly the parameters whose names contain "bn" (a LayerNorm named `norm` is decayed);
    `norm` exempts the norm layers instead."""
    from train_heads.train import param_groups

    model = nn.Sequential()
    model.add_module("conv", nn.Linear(3, 3))
    model.add_module("bn1", nn.BatchNorm1d(3))
    model.add_module("norm", nn.LayerNorm(3))

    def exempt(rule):
        decay, no_wd = param_groups(model, 1e-4, rule)
        assert (decay["weight_decay"], no_wd["weight_decay"]) == (1e-4, 0.0)
        names = {id(p): n for n, p in model.named_parameters()}
        return sorted(names[id(p)] for p in no_wd["params"])

    assert exempt("bn_name") == ["bn1.bias", "bn1.weight"]
    assert exempt("norm") == ["bn1.bias", "bn1.weight", "norm.bias", "norm.weight"]
    with pytest.raises(ValueError, match="no_decay"):
        param_groups(model, 1e-4, "layernorm")


def test_one_schedule_and_one_group_rule_for_both_trainers():
    """train-heads and finetune-backbone take the LR schedule and the weight-decay split from features.optim
    (torch-free: the split runs on any (name, param) pairs with `requires_grad`)."""
    from types import SimpleNamespace

    from extract.finetune import model as finetune_model
    from features import optim
    from train_heads import train as heads_train

    assert heads_train.cosine_warmup_factor is finetune_model.cosine_warmup_factor is optim.cosine_warmup_factor
    assert heads_train.weight_decay_groups is finetune_model.weight_decay_groups is optim.weight_decay_groups
    f = [optim.cosine_warmup_factor(s, warmup_steps=4, total_steps=12) for s in (0, 1, 4, 6, 8, 12, 13)]
    assert f == pytest.approx([0.0, 0.25, 1.0, 0.5 + 2 ** 0.5 / 4, 0.5, 0.0, 0.0])  # cos(pi/4) at a quarter of the cosine
    params = [(n, SimpleNamespace(requires_grad=n != "frozen")) for n in ("a", "bn1", "frozen", "b", "bn2")]
    decay, exempt = optim.weight_decay_groups(params, lambda n, _p: n.startswith("bn"), weight_decay=0.1,
                                              exempt_weight_decay=0.01, names=("default", "bn"))
    by_name = {id(p): n for n, p in params}
    assert [by_name[id(p)] for p in decay["params"]] == ["a", "b"] and [by_name[id(p)] for p in exempt["params"]] == ["bn1", "bn2"]
    assert (decay["weight_decay"], decay["name"], exempt["weight_decay"], exempt["name"]) == (0.1, "default", 0.01, "bn")
    assert set(optim.weight_decay_groups(params, lambda n, _p: False, weight_decay=0.1)[0]) == {"params", "weight_decay"}


def test_reference_head_decays_every_parameter():
    """On the reference transformer head nothing is named *bn*: all parameters, LayerNorms included, decay."""
    from train_heads.model import build_model
    from train_heads.train import param_groups

    cfg = load(CONFIG_ROOT / "slowfast_transformer.yaml").head
    cfg.modalities[0].in_dim, cfg.modalities[0].proj_dim = 16, 16
    cfg.aggregator_kwargs = {**cfg.aggregator_kwargs, "depth": 1, "heads": 2, "ff_dim": 8}
    cfg.num_verbs, cfg.num_nouns = 3, 4
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.recognition is None
    assert any(isinstance(m, nn.LayerNorm) for m in model.modules())
    decay, no_wd = param_groups(model, 1e-4, "bn_name")
    assert not no_wd["params"] and len(decay["params"]) == len(list(model.parameters()))


def test_drop_last_trains_only_full_batches(tmp_path, one_torch_thread):
    """train.drop_last=true: an epoch is floor(n / batch) steps (the reference's train loader), else ceil."""
    import json

    import numpy as np

    from features.annotations import load_split
    from features.store import RowTable
    from pipelines import cmd_train_heads
    from synthetic_store import write_synthetic_dataset, write_synthetic_stores

    plan = write_synthetic_dataset(tmp_path / "data", clips=8, seed=1)
    RowTable.from_annotations([load_split(tmp_path / "data", s) for s in ("train", "val", "test")])
    write_synthetic_stores(tmp_path / "data", tmp_path / "store", plan,
                           modalities={"slowfast": ("slowfast_r101_8x8.synthetic", (8,))}, noise=1.0)
    (tmp_path / "head.yaml").write_text("head:\n  modalities:\n    - {name: slowfast, proj_dim: 8}\n  num_input: 2\n")
    steps = {}
    for drop in (True, False):
        run = tmp_path / f"run_{drop}"
        argv = [f"config={tmp_path / 'head.yaml'}", f"data={tmp_path / 'data'}", f"store={tmp_path / 'store'}",
                f"out={run}", "num_seen=2", "train.epochs=1", "train.batch_size=7",
                f"train.drop_last={str(drop).lower()}", "train.device=cpu"]
        assert cmd_train_heads.main(argv) == 0
        metrics = json.loads((run / "metrics.json").read_text())
        steps[drop] = (metrics["history"][0]["step"], metrics["num_train_windows"])
    n = steps[True][1]
    assert n % 7, "the sample must leave a partial batch"
    assert steps[True][0] == n // 7 and steps[False][0] == int(np.ceil(n / 7))
