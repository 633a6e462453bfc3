"""What the reference MViT-Concat trained on: its backbone loading, run on a real reference checkpoint.

EGO4D/forecasting @ 38d1931 scripts/run_lta.py, the MODEL.ARCH == "mvit" branch:
  :109 ms = task.model (the LTA ForecastingEncoderDecoder; its state-dict keys are `backbone.*`, `decoder.*`)
  :115-120 the checkpoint's `state_dict` keys lose their first 6 characters (`model.`)
  :122-125 the *model's* keys lose `backbone.` (x[9:]) -- only to compare names and shapes
  :128-132 pre_train_dict_match = checkpoint tensors whose stripped name and shape match
  :158 ms.load_state_dict(pre_train_dict_match, strict=False) -- into the top-level model, under the stripped names
The LTA backbone is the MViT with an LTA head (models/lta_models.py build_clip_backbone; video_model_builder.py:794
TransformerBasicHead `head.projection`), the decoder `decoder.head.projections.{i}` (lta_models.py MultiHeadDecoder).

The recognition checkpoint is the reference-made tiny MViT of tests/fixtures/ego4d_reference (README there); the LTA
model is a module tree with exactly the reference's key names and shapes, so torch's own load_state_dict decides.
"""
from pathlib import Path

import torch
from torch import nn

from features.checkpoint_io import load_lightning_checkpoint

torch.set_num_threads(1)
RECOGNITION = Path(__file__).resolve().parent / "fixtures" / "ego4d_reference" / "mvit_tiny_recognition.ckpt"


def _tree(shapes: dict[str, torch.Size]) -> nn.Module:
    """A module whose state dict has exactly these dotted names and shapes (random values)."""
    root = nn.Module()
    for key, shape in shapes.items():
        *path, leaf = key.split(".")
        m = root
        for part in path:
            if part not in m._modules:
                m.add_module(part, nn.Module())
            m = m._modules[part]
        m.register_parameter(leaf, nn.Parameter(torch.randn(shape)))
    return root


def _reference_lta_model(recognition: dict[str, torch.Tensor]) -> nn.Module:
    """ForecastingEncoderDecoder's key layout for this MViT: backbone = the MViT without its recognition head plus
    the LTA head projection (D -> D), concat aggregator (no parameters), Z=20 decoder heads."""
    backbone = {k[len("model."):]: v.shape for k, v in recognition.items() if ".head." not in f".{k[6:]}"}
    dim = recognition["model.norm.weight"].shape[0]
    backbone.update({"head.projection.weight": torch.Size([dim, dim]), "head.projection.bias": torch.Size([dim])})
    decoder = {f"head.projections.{i}.{p}": torch.Size([18, 2 * dim] if p == "weight" else [18])
               for i in range(20) for p in ("weight", "bias")}
    model = nn.Module()
    model.add_module("backbone", _tree(backbone))
    model.add_module("decoder", _tree(decoder))
    return model


def test_reference_mvit_load_matches_names_but_loads_nothing():
    state = load_lightning_checkpoint(RECOGNITION).state_dict
    assert all(k.startswith("model.") for k in state)
    torch.manual_seed(0)
    ms = _reference_lta_model(state)
    before = {k: v.clone() for k, v in ms.state_dict().items()}
    # run_lta.py:115-132, as written there
    pre_train_dict = {k[6:]: v for k, v in state.items()}
    model_dict = {(k[9:] if "backbone." in k else k): v for k, v in ms.state_dict().items()}
    match = {k: v for k, v in pre_train_dict.items() if k in model_dict and v.size() == model_dict[k].size()}
    backbone_keys = [k for k in before if k.startswith("backbone.") and not k.startswith("backbone.head.")]
    assert len(match) == len(backbone_keys) > 0  # every MViT weight matched by name and shape ...
    result = ms.load_state_dict(match, strict=False)  # run_lta.py:158
    assert sorted(result.unexpected_keys) == sorted(match)  # ... but under names the LTA model does not have
    assert sorted(result.missing_keys) == sorted(before)  # so every parameter of the model is left as it was
    assert all(torch.equal(v, before[k]) for k, v in ms.state_dict().items())
    # the same tensors loaded into the backbone do change it (the check above can see a load)
    ms.backbone.load_state_dict(match, strict=False)
    changed = [k for k in backbone_keys if not torch.equal(ms.state_dict()[k], before[k])]
    assert len(changed) == len(backbone_keys)


def test_random_mvit_extractor_is_seeded_and_refuses_weights(tmp_path):
    import pytest

    from extract.extractors import create_extractor

    a = create_extractor("mvit_b_16x4_random.seed0", crop_size=32)
    b = create_extractor("mvit_b_16x4_random.seed0", weights="random", crop_size=32)
    assert a.spec.weights == b.spec.weights == "random" and a.spec.view_shape == (768,)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # one fixed network
    # the reference MViT._init_weights rules (video_model_builder.py:816-823): Linear trunc_normal(0.02), bias 0
    linears = [m for m in a.model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(torch.count_nonzero(m.bias) == 0 for m in linears if m.bias is not None)
    big = max(linears, key=lambda m: m.weight.numel())
    assert abs(big.weight.std().item() - 0.02) < 0.001
    with pytest.raises(ValueError, match="randomly initialised by definition"):
        create_extractor("mvit_b_16x4_random.seed0", weights=str(tmp_path / "x.ckpt"), crop_size=32)


def test_mvit_concat_reads_the_random_mvit_store_and_the_pretrained_variant_its_own(tmp_path):
    from features.store import cache_key
    from pipelines.cmd_train_heads import TrainHeadsConfig
    from pipelines.config import parse_config
    from train_heads.inputs import resolve_feature_keys

    configs = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
    random_key = cache_key("mvit_b_16x4_random.seed0", {"weights": "random"})
    ego4d_key = cache_key("mvit_b_16x4.ego4d", {"weights": "ego4d_mvit16x4.ckpt"})
    for key in (random_key, ego4d_key):
        (tmp_path / f"{key}.zarr").mkdir()  # resolve_feature_keys reads the store names only
    ref = parse_config(TrainHeadsConfig, [f"config={configs / 'mvit_concat.yaml'}"])
    assert resolve_feature_keys(tmp_path, [m.name for m in ref.head.modalities]) == {"mvit_b_16x4_random": random_key}
    pre = parse_config(TrainHeadsConfig, [f"config={configs / 'mvit_concat_pretrained.yaml'}"])
    (modality,) = [m.name for m in pre.head.modalities]
    assert resolve_feature_keys(tmp_path, [modality], [ego4d_key]) == {modality: ego4d_key}
    assert (pre.train.lr, pre.train.epochs, pre.train.batch_size) == (ref.train.lr, ref.train.epochs, ref.train.batch_size)
