"""Numerical conformance with the Ego4D reference implementation (EGO4D/forecasting fixtures).

The fixture folder (checkpoints in the released format, fixed inputs, the reference outputs, full-size
key manifests; its README documents the format) comes from $LTA_REFERENCE_FIXTURES, default
`tests/fixtures/ego4d_reference` (a copy of the reference fixtures kept in the repo). A missing folder FAILS. Every class count,
width, crop and clip count comes from the checkpoints' own configs (or, for the key manifests, from
the tensor shapes), so any fixture set made the same way passes. fp32, eval mode, rtol = atol = 1e-4.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from extract.backbones import (
    SLOWFAST_STAGE_DEPTHS,
    build_from_checkpoint,
    build_mvit,
    build_slowfast,
    convert_mvit_state_dict,
    convert_slowfast_state_dict,
)
from features.checkpoint_io import cfg_get, load_lightning_checkpoint
from train_heads.import_ckpt import convert_lta_state_dict, import_lta_checkpoint

pytestmark = pytest.mark.conformance

REPO_ROOT = Path(__file__).resolve().parents[1]
TOL = dict(rtol=1e-4, atol=1e-4)
MAX_ERRORS: dict[str, float] = {}  # name -> max abs error, printed at the end with -s


def reference_fixtures_dir() -> Path:
    """$LTA_REFERENCE_FIXTURES, else the copy in tests/fixtures/ego4d_reference."""
    root = Path(os.environ.get("LTA_REFERENCE_FIXTURES") or REPO_ROOT / "tests/fixtures/ego4d_reference")
    if not root.is_dir():
        pytest.fail(f"reference fixture folder not found: {root} (set LTA_REFERENCE_FIXTURES)")
    return root


def assert_matches(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} vs reference {tuple(expected.shape)}"
    MAX_ERRORS[name] = float((actual - expected).abs().max())
    torch.testing.assert_close(actual, expected, **TOL, msg=lambda m: f"{name}: {m}")


@pytest.fixture(scope="module", autouse=True)
def _report_errors():
    yield
    for name, err in sorted(MAX_ERRORS.items()):
        print(f"conformance max|err| {name:<45} {err:.3g}")


@pytest.fixture(scope="module")
def fixtures() -> Path:
    return reference_fixtures_dir()


def _io(fixtures: Path, name: str) -> dict:
    return torch.load(fixtures / name, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------------------------- SlowFast


@pytest.fixture(scope="module")
def slowfast(fixtures):
    model, info = build_from_checkpoint(fixtures / "slowfast_tiny_recognition.ckpt")
    io = _io(fixtures, "slowfast_tiny_io.pt")
    return model, info, io, [io["slow"].float(), io["fast"].float()]


def test_slowfast_built_from_its_config(slowfast, fixtures):
    model, info, io, _ = slowfast
    cfg = load_lightning_checkpoint(fixtures / "slowfast_tiny_recognition.ckpt").cfg
    assert info.arch == "slowfast" and info.leftover_keys == []
    assert info.builder_kwargs["depth"] == cfg_get(cfg, "RESNET.DEPTH")
    assert info.builder_kwargs["crop_size"] == cfg_get(cfg, "DATA.CROP_SIZE")
    assert info.num_classes == list(cfg_get(cfg, "MODEL.NUM_CLASSES"))
    assert info.feature_dim == io["feature"].shape[1]


def test_slowfast_feature_and_logits(slowfast):
    model, info, io, inputs = slowfast
    with torch.no_grad():
        feature = model(inputs)
        verb, noun = info.head(feature)
    assert_matches("slowfast.feature", feature, io["feature"])
    assert_matches("slowfast.verb_logits", verb, io["verb_logits"])
    assert_matches("slowfast.noun_logits", noun, io["noun_logits"])


def test_slowfast_stage_outputs(slowfast):
    model, _, io, inputs = slowfast
    names = ["s1_fuse", "s2_fuse", "s3_fuse", "s4_fuse", "s5"]
    x = list(inputs)
    with torch.no_grad():
        for i, name in enumerate(names):  # blocks[0..4] of create_slowfast = s1_fuse .. s5 of the reference
            x = model.blocks[i](x)
            assert_matches(f"slowfast.stage_{name}_slow_b0", x[0][:1], io[f"stage_{name}_slow_b0"])
            assert_matches(f"slowfast.stage_{name}_fast_b0", x[1][:1], io[f"stage_{name}_fast_b0"])


def test_slowfast_fully_convolutional_path(slowfast):
    """A taller-than-crop input: stride-1 head pool positions, logits averaged after projection."""
    model, info, io, (slow, fast) = slowfast
    half = slow.shape[3] // 2
    tall = [torch.cat([x[0:1], x[1:2, :, :, :half]], dim=3) for x in (slow, fast)]
    with torch.no_grad():
        pooled = model.forward_pooled(tall)  # (1, C, T', H', W')
        per_position = [proj(pooled.permute(0, 2, 3, 4, 1)) for proj in info.head.projections]
        verb, noun = info.head(pooled)
    assert_matches("slowfast.fullconv_pooled", pooled.permute(0, 2, 3, 4, 1), io["fullconv_pooled"])
    assert_matches("slowfast.fullconv_position_logits_verb", per_position[0], io["fullconv_position_logits_verb"])
    assert_matches("slowfast.fullconv_position_logits_noun", per_position[1], io["fullconv_position_logits_noun"])
    assert_matches("slowfast.fullconv_verb_logits", verb, io["fullconv_verb_logits"])
    assert_matches("slowfast.fullconv_noun_logits", noun, io["fullconv_noun_logits"])


# --------------------------------------------------------------------------------------------- MViT


@pytest.fixture(scope="module")
def mvit(fixtures):
    model, info = build_from_checkpoint(fixtures / "mvit_tiny_recognition.ckpt")
    io = _io(fixtures, "mvit_tiny_io.pt")
    return model, info, io, io["fast"].float()


def test_mvit_patch_embed_and_blocks(mvit):
    model, info, io, x = mvit
    assert info.arch == "mvit" and info.leftover_keys == []
    with torch.no_grad():
        tokens = model.patch_embed(x)  # (B, T'H'W', C) in (t, h, w) order
        assert_matches("mvit.patch_embed_b0", tokens[:1], io["patch_embed_b0"])
        tokens = model.cls_positional_encoding(tokens)
        thw = model.cls_positional_encoding.patch_embed_shape
        assert len(model.blocks) == len(io["block_outputs_b0"])
        for i, block in enumerate(model.blocks):
            tokens, thw = block(tokens, thw)
            assert_matches(f"mvit.block_outputs_b0[{i:02d}]", tokens[:1], io["block_outputs_b0"][i])
            assert list(thw) == io["block_thw"][i].tolist(), f"block {i}: thw {thw}"


def test_mvit_cls_feature_logits_probs(mvit):
    model, info, io, x = mvit
    with torch.no_grad():
        feature = model(x)
        logits = [proj(feature) for proj in info.head.projections]
        probs = info.head(feature)  # the reference MultiTaskMViTHead applies softmax
    assert_matches("mvit.cls_feature", feature, io["cls_feature"])
    assert_matches("mvit.verb_logits", logits[0], io["verb_logits"])
    assert_matches("mvit.noun_logits", logits[1], io["noun_logits"])
    assert_matches("mvit.verb_probs", probs[0], io["verb_probs"])
    assert_matches("mvit.noun_probs", probs[1], io["noun_probs"])


# --------------------------------------------------------------------------------------------- LTA


@pytest.fixture(scope="module")
def lta(fixtures):
    ckpt = load_lightning_checkpoint(fixtures / "lta_tiny_trf.ckpt")
    head_model, import_info = import_lta_checkpoint(ckpt)
    return ckpt, head_model, import_info, _io(fixtures, "lta_tiny_io.pt")


def test_lta_head_sized_from_config(lta):
    ckpt, model, info, io = lta
    cfg = info.model_cfg
    assert cfg["num_input"] == cfg_get(ckpt.cfg, "FORECASTING.NUM_INPUT_CLIPS") == io["clip_features"].shape[1]
    assert cfg["num_future"] == cfg_get(ckpt.cfg, "FORECASTING.NUM_ACTIONS_TO_PREDICT") == io["verb_logits"].shape[1]
    assert [cfg["num_verbs"], cfg["num_nouns"]] == list(cfg_get(ckpt.cfg, "MODEL.NUM_CLASSES"))
    assert info.skipped_backbone_keys + info.loaded_keys == len(ckpt.state_dict)


def test_lta_aggregator_decoder_from_clip_features(lta):
    """Stored clip features -> the stage-two aggregator and decoder (imported, no training)."""
    _, model, _, io = lta
    with torch.no_grad():
        tokens = model.aggregator.encode(io["clip_features"])  # (B, N_in, D)
        aggregated = model.aggregator.pool(tokens)
        out = model.decoder(aggregated, tokens)
    assert_matches("lta.encoder_output", tokens.transpose(0, 1), io["encoder_output"])
    assert_matches("lta.aggregated", aggregated, io["aggregated"])
    assert_matches("lta.verb_logits(from clip_features)", out["verb"], io["verb_logits"])
    assert_matches("lta.noun_logits(from clip_features)", out["noun"], io["noun_logits"])


def test_lta_end_to_end_backbone_features_to_logits(lta):
    """Video -> converted backbone trunk (what `lta extract` caches) -> imported ForecastModel."""
    ckpt, model, info, io = lta
    backbone, binfo = build_from_checkpoint(ckpt)  # trunk only: pooled features, as cached
    slow, fast = io["slow"].float(), io["fast"].float()
    with torch.no_grad():
        cached = torch.stack([backbone([slow[:, i], fast[:, i]]) for i in range(slow.shape[1])], dim=1)
        assert cached.shape[-1] == info.feature_dim == binfo.feature_dim
        inputs = {info.modality: cached}
        clip_features = model.fuse(inputs)  # the imported backbone head projection
        out = model(inputs)
    assert_matches("lta.clip_features", clip_features, io["clip_features"])
    assert_matches("lta.verb_logits(end to end)", out["verb"], io["verb_logits"])
    assert_matches("lta.noun_logits(end to end)", out["noun"], io["noun_logits"])


def test_import_checkpoint_command_writes_a_run_that_reproduces_the_reference(lta, fixtures, tmp_path):
    """`lta import-checkpoint` -> run dir -> load_run (what evaluate/predict use) -> reference logits."""
    from pipelines import cli
    from pipelines.cmd_import_checkpoint import main
    from train_heads.run import load_run

    ckpt, _, info, io = lta
    out = tmp_path / "run"
    argv = [f"ckpt={fixtures / 'lta_tiny_trf.ckpt'}", f"out={out}", f"store={tmp_path / 'none'}"]
    assert cli.main(["import-checkpoint", *argv]) == 2  # no features extracted yet: refused with a hint
    assert main(argv + ["cache_key=slowfast_r101_8x8.ego4d-0123456789"]) == 0
    run = load_run(out)
    assert run.cache_keys == {info.modality: "slowfast_r101_8x8.ego4d-0123456789"}
    backbone, _ = build_from_checkpoint(ckpt)
    slow, fast = io["slow"].float(), io["fast"].float()
    with torch.no_grad():
        cached = torch.stack([backbone([slow[:, i], fast[:, i]]) for i in range(slow.shape[1])], dim=1)
        result = run.model({info.modality: cached})
    assert_matches("lta.verb_logits(import-checkpoint run)", result["verb"], io["verb_logits"])
    assert_matches("lta.noun_logits(import-checkpoint run)", result["noun"], io["noun_logits"])


def test_lta_backbone_with_head_projection(lta):
    """The backbone can also be built with the reference LTA head: clip_features directly."""
    ckpt, _, _, io = lta
    backbone, _ = build_from_checkpoint(ckpt, head_projection=True)
    slow, fast = io["slow"].float(), io["fast"].float()
    with torch.no_grad():
        clip_features = torch.stack([backbone([slow[:, i], fast[:, i]]) for i in range(slow.shape[1])], dim=1)
    assert_matches("lta.clip_features(backbone head)", clip_features, io["clip_features"])


# --------------------------------------------------------------------------------------------- manifests


def _manifest(fixtures: Path, name: str) -> dict[str, torch.Tensor]:
    shapes = json.loads((fixtures / name).read_text())
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def _slowfast_shape_args(sd: dict, prefix: str) -> dict:
    """depth and width from the tensor shapes (a manifest carries no config)."""
    blocks = [0, 0, 0, 0]
    for k in sd:
        m = re.match(rf"{re.escape(prefix)}s(\d)\.pathway0_res(\d+)\.", k)
        if m:
            blocks[int(m[1]) - 2] = max(blocks[int(m[1]) - 2], int(m[2]) + 1)
    depth = {v: k for k, v in SLOWFAST_STAGE_DEPTHS.items()}[tuple(blocks)]
    width = sd[f"{prefix}s1.pathway0_stem.conv.weight"].shape[0]
    beta_inv = width // sd[f"{prefix}s1.pathway1_stem.conv.weight"].shape[0]
    fusion = sd[f"{prefix}s1_fuse.conv_f2s.weight"]
    return dict(depth=depth, width_per_group=width, beta_inv=beta_inv, fusion_kernel_size=fusion.shape[2],
                fusion_conv_channel_ratio=fusion.shape[0] // fusion.shape[1])


def _assert_covers(converted: dict, model_sd: dict, leftover: list[str], source: dict, label: str) -> None:
    assert set(converted) == set(model_sd), f"{label}: keys differ: {sorted(set(converted) ^ set(model_sd))[:5]}"
    bad = [k for k in converted if tuple(converted[k].shape) != tuple(model_sd[k].shape)]
    assert not bad, f"{label}: shape mismatches {bad[:5]}"
    mapped = sum(v.numel() for v in converted.values())
    left = sum(source[k].numel() for k in leftover)
    assert mapped + left == sum(v.numel() for v in source.values())


def test_manifest_slowfast_recognition(fixtures):
    sd = _manifest(fixtures, "slowfast_r101_recognition_keys.json")
    args = _slowfast_shape_args(sd, "model.")
    converted, leftover = convert_slowfast_state_dict(sd, args["depth"])
    with torch.device("meta"):
        model = build_slowfast(**args)
    _assert_covers(converted, model.state_dict(), leftover, sd, "slowfast")
    assert sorted(leftover) == sorted(k for k in sd if k.startswith("model.head.projections."))


def test_manifest_mvit_recognition(fixtures):
    sd = _manifest(fixtures, "mvit_b_16x4_recognition_keys.json")
    embed_dim, _, kt, kh, kw = sd["model.patch_embed.proj.weight"].shape
    depth = 1 + max(int(m[1]) for k in sd if (m := re.match(r"model\.blocks\.(\d+)\.", k)))
    # positional embeddings fix the input size: tokens x patch stride (the reference patch stride 2x4x4)
    spatial = int(round(sd["model.pos_embed_spatial"].shape[1] ** 0.5)) * 4
    temporal = sd["model.pos_embed_temporal"].shape[1] * 2
    converted, leftover = convert_mvit_state_dict(sd)
    torch.manual_seed(0)
    model = build_mvit(embed_dim=embed_dim, spatial_size=spatial, temporal_size=temporal, depth=depth,
                       patch_kernel=(kt, kh, kw))
    _assert_covers(converted, model.state_dict(), leftover, sd, "mvit")
    assert sorted(leftover) == sorted(k for k in sd if k.startswith("model.head.projections."))
    assert sum(1 for k in sd if k.endswith("attn.qkv.weight")) * 3 == sum(1 for k in converted if re.search(r"attn\.[qkv]\.weight$", k))


@pytest.mark.slow
def test_manifest_lta_slowfast_transformer(fixtures):
    from train_heads.model import build_model

    sd = _manifest(fixtures, "lta_slowfast_trf_keys.json")
    args = _slowfast_shape_args(sd, "model.backbone.")
    proj = sd["model.backbone.head.projection.weight"]
    backbone_conv, leftover = convert_slowfast_state_dict(sd, args["depth"], keep_head_projection=True)
    with torch.device("meta"):
        backbone = build_slowfast(**args, head_dim=proj.shape[0])
    assert set(backbone_conv) == set(backbone.state_dict())
    assert all(tuple(v.shape) == tuple(backbone.state_dict()[k].shape) for k, v in backbone_conv.items())

    head_conv, trunk = convert_lta_state_dict(sd, "slowfast")
    assert set(trunk) | set(head_conv) and len(trunk) + len(head_conv) == len(sd)
    layers = 1 + max(int(m[1]) for k in sd if (m := re.match(r"model\.clip_aggregator\.encoder\.layers\.(\d+)\.", k)))
    num_future = 1 + max(int(m[1]) for k in sd if (m := re.match(r"model\.decoder\.head\.projections\.(\d+)\.", k)))
    num_classes = sd["model.decoder.head.projections.0.weight"].shape[0]
    model_cfg = dict(  # heads and the verb/noun split do not change any shape
        modalities=[dict(name="slowfast", proj_dim=proj.shape[0], in_dim=proj.shape[1])],
        num_input=4, num_future=num_future, aggregator="transformer",
        aggregator_kwargs=dict(depth=layers, heads=8, ff_dim=sd["model.clip_aggregator.encoder.layers.0.linear1.weight"].shape[0],
                               max_len=sd["model.clip_aggregator.pos_encoder.pe"].shape[0]),
        decoder="multihead", recognition=False, num_verbs=num_classes - 1, num_nouns=1,
    )
    with torch.device("meta"):
        head = build_model(model_cfg)
    _assert_covers(head_conv, head.state_dict(), trunk, sd, "lta head")
    # the trunk is exactly the backbone minus its head projection, which stage two owns
    assert sorted(trunk) == sorted(k for k in sd if k.startswith("model.backbone.") and "head.projection" not in k)
    assert len(backbone_conv) + len(head_conv) - 2 == len(sd)  # the projection is in both views
