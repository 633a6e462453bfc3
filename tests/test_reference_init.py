"""The reference configs initialise their head as the reference code does.

Values read from the reference code:
  R = EGO4D/forecasting @ 38d1931, D = srijandas07/clip_baseline_LTA_Ego4d @ 2db257f
  R ego4d_forecasting/models/video_model_builder.py:164-166 SlowFast.__init__ calls
      init_helper.init_weights(self, cfg.MODEL.FC_INIT_STD, ...) after building its head (the LTA backbone head
      2304 -> 2048, :353 ResNetBasicHead); R config/defaults.py:198 FC_INIT_STD = 0.01;
      R ego4d_forecasting/utils/weight_init_helper.py:41-43 every nn.Linear: weight normal_(0, fc_init_std),
      bias zero_().
  R video_model_builder.py:794-814 MViT builds its TransformerBasicHead (768 -> 768) then self.apply(_init_weights);
      :816-820 nn.Linear: nn.init.trunc_normal_(weight, std=0.02) (torch's default bounds a=-2, b=2), bias 0.
  D ego4d/models/lta_models.py:233 TransformerAggregator_clip_text: self.text_q = nn.Parameter(torch.randn(1, 1, 512))
      (std 1, no scaling).
The statistics are checked against those numbers, with sampling tolerances for the layer sizes.
"""
from pathlib import Path

import pytest
import torch

from pipelines.cmd_train_heads import TrainHeadsConfig
from pipelines.config import parse_config

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
FC_INIT_STD = 0.01  # R defaults.py:198
MVIT_STD = 0.02  # R video_model_builder.py:818
TRUNC_BOUND = 2.0  # torch.nn.init.trunc_normal_ defaults a=-2, b=2 (absolute), as R calls it
QUERY_STD = 1.0  # D lta_models.py:233 torch.randn
IN_DIM = {"slowfast": 2304, "mvit": 768, "mvit_b_16x4_random": 768, "clip": 512}  # backbone feature dims (reference §3.1, §3.2, §5.2)


def _model(name: str, seed: int = 0):
    from train_heads.model import build_model

    cfg = parse_config(TrainHeadsConfig, [f"config={CONFIGS / name}.yaml"]).head
    for m in cfg.modalities:
        m.in_dim = IN_DIM[m.name]
        m.frames = 8 if m.name == "clip" else 0
    cfg.num_verbs, cfg.num_nouns = 117, 521
    torch.manual_seed(seed)
    return build_model(cfg)


@pytest.mark.parametrize("name", ["slowfast_concat", "slowfast_transformer", "video_clip"])
def test_slowfast_projection_is_normal_001(name):
    proj = _model(name).inputs["slowfast"].proj
    w = proj.weight.detach()
    assert w.shape == (2048, 2304)
    assert w.std().item() == pytest.approx(FC_INIT_STD, rel=0.01)
    assert abs(w.mean().item()) < 1e-4
    assert torch.count_nonzero(proj.bias) == 0
    # a normal, not nn.Linear's default uniform(-1/sqrt(in), 1/sqrt(in)): about 0.3% of |w| beyond 3 std
    assert (w.abs() > 3 * FC_INIT_STD).float().mean().item() == pytest.approx(0.0027, abs=0.0005)


def test_mvit_projection_is_trunc_normal_002():
    proj = _model("mvit_concat").inputs["mvit_b_16x4_random"].proj
    w = proj.weight.detach()
    assert w.shape == (768, 768)
    assert w.std().item() == pytest.approx(MVIT_STD, rel=0.02)
    assert w.abs().max().item() <= TRUNC_BOUND
    assert torch.count_nonzero(proj.bias) == 0


def test_das_ryoo_query_token_is_randn():
    pool = _model("clip_only").frame_pools["clip"]
    q = pool.query.detach()
    assert q.shape == (1, 1, 512)
    assert q.std().item() == pytest.approx(QUERY_STD, abs=0.1)  # 512 draws: std of the estimate ~0.03


def test_project_configs_keep_pytorch_default():
    """Our own configs keep nn.Linear's default (kaiming-uniform, bound 1/sqrt(in_dim)) and a 0.02 query."""
    proj = _model("best").inputs["slowfast"].proj
    bound = 1 / 2304 ** 0.5
    assert proj.weight.abs().max().item() <= bound and torch.count_nonzero(proj.bias) > 0


def test_unknown_projection_init_is_refused():
    from train_heads.model import InputProjection

    with pytest.raises(ValueError, match="unknown proj_init 'xavier'"):
        InputProjection(in_dim=4, out_dim=2, init="xavier")
