"""Safe checkpoint loading: allow-listed globals only, clear errors for truncated or mismatching files."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from extract.backbones import build_from_checkpoint, build_slowfast, convert_slowfast_state_dict
from extract.weights import BackboneMismatchError, load_state_dict_strictly
from features.checkpoint_io import (
    CheckpointError,
    LoadedCheckpoint,
    UnsafeCheckpointError,
    describe,
    load_lightning_checkpoint,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference_fixtures_dir() -> Path:
    """$LTA_REFERENCE_FIXTURES, else the copy in tests/fixtures/ego4d_reference (as in test_conformance)."""
    root = Path(os.environ.get("LTA_REFERENCE_FIXTURES") or REPO_ROOT / "tests/fixtures/ego4d_reference")
    if not root.is_dir():
        pytest.fail(f"reference fixture folder not found: {root} (set LTA_REFERENCE_FIXTURES)")
    return root

TINY = dict(depth=50, width_per_group=8, crop_size=64)


class _Payload:
    """Unpickling this calls `fn(*args)`: the classic pickle code-execution exploit."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _tiny_state_dict() -> dict:
    return {"model.s1.pathway0_stem.conv.weight": torch.zeros(2, 3, 1, 1, 1)}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize(
    "payload, global_name",
    [
        (lambda marker: _Payload(os.system, f"touch {marker}"), "system"),
        (lambda marker: _Payload(exec, f"open({str(marker)!r}, 'w').close()"), r"(builtins|__builtin__)\.exec"),
        (lambda marker: _Payload(shutil.copy, __file__, str(marker)), "shutil.copy"),
    ],
    ids=["os.system", "exec", "shutil.copy"],
)
def test_malicious_global_is_refused_without_running(tmp_path, payload, global_name, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    ckpt = {"state_dict": _tiny_state_dict(), "hyper_parameters": {"cfg": payload(marker)}}
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError, match=global_name) as err:
        load_lightning_checkpoint(path)
    assert "allow-list" in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


def test_malicious_global_in_optimizer_state_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _tiny_state_dict(), "optimizer_states": [_Payload(os.system, f"touch {marker}")]}, path)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_lightning_checkpoint(path)
    assert not marker.exists()


def test_cfgnode_becomes_plain_nested_dicts(tmp_path):
    fvcore_config = pytest.importorskip("fvcore.common.config")
    cfg = fvcore_config.CfgNode({"RESNET": {"DEPTH": 101, "NUM_BLOCK_TEMP_KERNEL": [[3, 3]]}, "MODEL": {"NUM_CLASSES": [117, 521]}})
    cfg.freeze()
    path = tmp_path / "ok.ckpt"
    torch.save({"state_dict": _tiny_state_dict(), "epoch": 3, "hyper_parameters": {"cfg": cfg},
                "pytorch-lightning_version": "1.5.6"}, path)
    loaded = load_lightning_checkpoint(path)
    assert type(loaded.cfg) is dict and type(loaded.cfg["RESNET"]) is dict
    assert loaded.cfg == {"RESNET": {"DEPTH": 101, "NUM_BLOCK_TEMP_KERNEL": [[3, 3]]}, "MODEL": {"NUM_CLASSES": [117, 521]}}
    info = describe(loaded)
    assert info["depth"] == 101 and info["num_classes"] == [117, 521] and info["epoch"] == 3
    assert info["format"] == "lightning" and info["num_tensors"] == 1 and info["num_elements"] == 6


def test_pyslowfast_model_state_with_yaml_cfg(tmp_path):
    path = tmp_path / "pyslowfast.pyth"
    torch.save({"model_state": _tiny_state_dict(), "epoch": 5, "cfg": "RESNET:\n  DEPTH: 50\nDATA:\n  NUM_FRAMES: 32\n"}, path)
    loaded = load_lightning_checkpoint(path)
    assert loaded.meta["format"] == "pyslowfast" and loaded.meta["epoch"] == 5
    assert describe(loaded)["depth"] == 50 and describe(loaded)["num_frames"] == 32
    assert list(loaded.state_dict) == ["model.s1.pathway0_stem.conv.weight"]


def test_reference_fixtures_load_with_their_config():
    root = reference_fixtures_dir()
    sf = load_lightning_checkpoint(root / "slowfast_tiny_recognition.ckpt")
    assert sf.meta["format"] == "lightning" and all(k.startswith("model.") for k in sf.state_dict)
    info = describe(sf)
    assert info["arch"] == "slowfast" and isinstance(info["depth"], int) and len(info["num_classes"]) == 2
    assert sf.state_dict["model.head.projections.0.weight"].shape[0] == info["num_classes"][0]


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.99])
def test_truncated_checkpoint_gives_clear_error(tmp_path, fraction):
    src = reference_fixtures_dir() / "slowfast_tiny_recognition.ckpt"
    data = src.read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_lightning_checkpoint(path)
    assert str(path) in str(err.value)


def test_truncated_legacy_checkpoint_gives_clear_error(tmp_path):
    full = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, full, _use_new_zipfile_serialization=False)
    path = tmp_path / "legacy_truncated.ckpt"
    path.write_bytes(full.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_lightning_checkpoint(path)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_missing_file_and_torchscript_archive(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_lightning_checkpoint(tmp_path / "nope.ckpt")
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    path = tmp_path / "scripted.pt"
    torch.jit.save(scripted, path)
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        load_lightning_checkpoint(path)


def test_wrong_architecture_names_the_mismatching_keys():
    """Depth taken from a doctored config: the strict load lists the blocks the checkpoint lacks."""
    ckpt = load_lightning_checkpoint(reference_fixtures_dir() / "slowfast_tiny_recognition.ckpt")
    depth = ckpt.cfg["RESNET"]["DEPTH"]
    wrong = {**ckpt.cfg, "RESNET": {**ckpt.cfg["RESNET"], "DEPTH": 152 if depth != 152 else 101, "NUM_BLOCK_TEMP_KERNEL": None}}
    with pytest.raises(BackboneMismatchError, match=r"missing keys, first: \['blocks\.\d\.multipathway_blocks\.0\.res_blocks"):
        build_from_checkpoint(LoadedCheckpoint(ckpt.state_dict, wrong, ckpt.meta))
    wider = {**ckpt.cfg, "RESNET": {**ckpt.cfg["RESNET"], "WIDTH_PER_GROUP": 2 * ckpt.cfg["RESNET"]["WIDTH_PER_GROUP"]}}
    with pytest.raises(BackboneMismatchError, match=r"shape mismatches, first: \['blocks\.0\.multipathway_blocks\.0\.conv\.weight: checkpoint"):
        build_from_checkpoint(LoadedCheckpoint(ckpt.state_dict, wider, ckpt.meta))


def test_truncated_state_dict_names_the_missing_keys():
    ckpt = load_lightning_checkpoint(reference_fixtures_dir() / "slowfast_tiny_recognition.ckpt")
    dropped = [k for k in ckpt.state_dict if "s3.pathway1_res2" in k]
    partial = {k: v for k, v in ckpt.state_dict.items() if k not in dropped}
    with pytest.raises(BackboneMismatchError, match=r"missing keys, first: \['blocks\.2\.multipathway_blocks\.1\.res_blocks\.2\.branch2"):
        build_from_checkpoint(LoadedCheckpoint(partial, ckpt.cfg, ckpt.meta))


def test_converter_is_strict_about_unknown_backbone_keys():
    sd = {"model.s2.pathway0_nonlocal0.conv_theta.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="pathway0_nonlocal0"):
        convert_slowfast_state_dict(sd)
    sd = {"model.s4.pathway0_res7.branch2.a.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="outside a depth-50"):
        convert_slowfast_state_dict(sd, 50)
    converted, leftover = convert_slowfast_state_dict(sd, 101)
    assert list(converted) == ["blocks.3.multipathway_blocks.0.res_blocks.7.branch2.conv_a.weight"] and leftover == []


def test_slowfast_forward_leaves_the_callers_list_alone():
    torch.manual_seed(0)
    model = build_slowfast(**TINY, num_frames=8).eval()
    slow, fast = torch.randn(1, 3, 2, 64, 64), torch.randn(1, 3, 8, 64, 64)
    pathways = [slow, fast]
    with torch.no_grad():
        first = model(pathways)
        second = model(pathways)
    assert pathways[0] is slow and pathways[1] is fast
    assert first.shape == (1, 288) and torch.equal(first, second)


def test_load_state_dict_strictly_reports_unexpected_keys():
    model = torch.nn.Linear(2, 3)
    sd = {**model.state_dict(), "extra.weight": torch.zeros(1)}
    with pytest.raises(BackboneMismatchError, match=r"1 unexpected keys, first: \['extra.weight'\]"):
        load_state_dict_strictly(model, sd, source="x.ckpt")


def test_import_concat_mvit_lta_checkpoint_matches_a_manual_forward():
    """An lta_mvit_concat-style checkpoint (no aggregator weights) imports into the concat stage-two model."""
    from extract.backbones import convert_mvit_state_dict
    from train_heads.import_ckpt import import_lta_checkpoint

    rec = load_lightning_checkpoint(reference_fixtures_dir() / "mvit_tiny_recognition.ckpt")
    g = torch.Generator().manual_seed(0)
    width, dim, num_input, z, (v, n) = 64, 24, 2, 3, rec.cfg["MODEL"]["NUM_CLASSES"]
    sd = {"model.backbone." + k[len("model."):]: t for k, t in rec.state_dict.items() if ".head." not in f".{k}"}
    sd["model.backbone.head.projection.weight"] = torch.randn(dim, width, generator=g)
    sd["model.backbone.head.projection.bias"] = torch.randn(dim, generator=g)
    for i in range(z):
        sd[f"model.decoder.head.projections.{i}.weight"] = torch.randn(v + n, num_input * dim, generator=g)
        sd[f"model.decoder.head.projections.{i}.bias"] = torch.randn(v + n, generator=g)
    cfg = {**rec.cfg, "MODEL": {**rec.cfg["MODEL"], "MODEL_NAME": "ForecastingEncoderDecoder", "MULTI_INPUT_FEATURES": dim},
           "FORECASTING": {"AGGREGATOR": "ConcatAggregator", "DECODER": "MultiHeadDecoder",
                           "NUM_INPUT_CLIPS": num_input, "NUM_ACTIONS_TO_PREDICT": z}}
    model, info = import_lta_checkpoint(LoadedCheckpoint(sd, cfg, {"path": "lta_mvit_concat.ckpt"}))
    assert info.modality == "mvit" and info.feature_dim == width and info.model_cfg["aggregator"] == "concat"
    converted, leftover = convert_mvit_state_dict(sd)  # the trunk `lta extract` runs
    assert sorted(leftover) == sorted(k for k in sd if not k.startswith("model.backbone.") or ".head.projection." in k)
    trunk, trunk_info = build_from_checkpoint(LoadedCheckpoint(sd, cfg, {"path": "lta_mvit_concat.ckpt"}))
    assert trunk_info.feature_dim == width and trunk_info.head is None

    feats = torch.randn(2, num_input, width, generator=g)
    with torch.no_grad():
        out = model({"mvit": feats})
        clip = feats @ sd["model.backbone.head.projection.weight"].T + sd["model.backbone.head.projection.bias"]
        flat = clip.flatten(1)  # (B, N_in * D), clips in order
        logits = torch.stack([flat @ sd[f"model.decoder.head.projections.{i}.weight"].T
                              + sd[f"model.decoder.head.projections.{i}.bias"] for i in range(z)], 1)
    torch.testing.assert_close(out["verb"], logits[..., :v], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["noun"], logits[..., v:], rtol=1e-5, atol=1e-5)
