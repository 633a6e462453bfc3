"""Training views of the reference configs are drawn as the reference draws its augmentation.

Values read from EGO4D/forecasting @ 38d1931:
  ego4d_forecasting/datasets/long_term_anticipation.py:236-243 ReduceExpandInputClips folds the N_in clips of a
      window into one (C, N_in*T, H, W) tensor before random_scale_crop_flip: one scale, crop and flip per window,
      shared by its clips.
  ego4d_forecasting/utils/video_transformer.py:30 RandomHorizontalFlip(p=cfg.DATA.RANDOM_FLIP), and
      config/defaults.py:416 DATA.RANDOM_FLIP = True; torchvision flips when torch.rand(1) < p, i.e. always.
  ego4d_forecasting/datasets/ptv_dataset_helper.py:327-333 ForecastingClipSampler draws a start per input clip
      (the temporal position is per segment).
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from train_heads.data import FeatureBank

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
RANDOM_FLIP = True  # defaults.py:416


def _bank(num_rows=64, flips=(False, True, False, True, False, True), v=6):
    """Two modalities whose feature value is the view index (of `v`); views alternate unflipped / flipped."""
    a = np.broadcast_to(np.arange(v, dtype=np.float32)[None, :, None], (num_rows, v, 1)).copy()
    return FeatureBank(arrays={"slowfast": a, "clip": a.copy()}, valid=np.ones(num_rows, bool), rows=None,
                       flips={"slowfast": list(flips), "clip": list(flips)}).to("cpu")


def _draw(bank, p, n_in=4, batch=4000, seed=0):
    rows = torch.randint(0, 64, (batch, n_in), generator=torch.Generator().manual_seed(seed + 1))
    out = bank.gather(rows, train=True, rng=torch.Generator().manual_seed(seed), window_flip_prob=p)
    return {m: x[..., 0].long().numpy() for m, x in out.items()}  # (B, N_in) view index


@pytest.mark.parametrize("name", ["slowfast_concat", "slowfast_transformer", "mvit_concat", "mvit_concat_pretrained",
                                  "video_clip", "clip_only"])
def test_reference_configs_draw_per_window(name):
    from pipelines.cmd_train_heads import TrainHeadsConfig
    from pipelines.config import parse_config

    t = parse_config(TrainHeadsConfig, [f"config={CONFIGS / name}.yaml"]).train
    assert t.view_draw == "window"
    assert t.flip_prob == float(RANDOM_FLIP)  # torchvision flips when torch.rand(1) < p: always for p = True


def test_window_draw_shares_one_flip_per_window():
    flips = np.array([False, True, False, True, False, True])
    views = _draw(_bank(), p=float(RANDOM_FLIP))
    v = views["slowfast"]
    assert flips[v].all()  # RANDOM_FLIP=True: every training clip flipped
    assert np.array_equal(views["clip"], v)  # one decoded clip feeds every modality
    assert (v != v[:, :1]).any(axis=1).mean() > 0.5  # temporal positions still drawn per segment
    half = _draw(_bank(), p=0.5)["slowfast"]
    per_window = flips[half]
    assert (per_window == per_window[:, :1]).all()  # the flip is shared by the window's N_in segments
    assert per_window[:, 0].mean() == pytest.approx(0.5, abs=0.03)


def test_segment_draw_is_unchanged_for_project_configs():
    """The project's default (view_draw=segment) keeps drawing any view per segment."""
    flips = np.array([False, True, False, True, False, True])
    bank = _bank()
    rows = torch.randint(0, 64, (2000, 4), generator=torch.Generator().manual_seed(1))
    v = bank.gather(rows, train=True, rng=torch.Generator().manual_seed(0))["slowfast"][..., 0].long().numpy()
    assert (flips[v] != flips[v][:, :1]).any(axis=1).mean() > 0.5


def test_store_without_flipped_views_is_logged(caplog):
    from train_heads.schemas import TrainConfig
    from train_heads.train import view_draw_flip_prob

    bank = _bank(flips=())
    with caplog.at_level("WARNING"):
        assert view_draw_flip_prob(TrainConfig(view_draw="window", flip_prob=1.0), bank) == 1.0
    assert "holds no flipped views" in caplog.text
    views = _draw(bank, p=1.0)["slowfast"]
    assert set(np.unique(views)) == set(range(6))  # falls back to every view (none is flipped), as logged
    assert view_draw_flip_prob(TrainConfig(), bank) is None
