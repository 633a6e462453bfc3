"""Extractor registry: every row of the table with random weights on CPU at small crops (budget ~60 s)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from features.errors import UsageError
from extract import extractors
from extract.extractors import TABLE, create_extractor, list_extractors

CROP = 64
# rows a random-weight model can be built for (`*_ckpt.ego4d` build what a checkpoint file describes: they are
# run on the reference fixtures' tiny checkpoints by tests/test_conformance.py and tests/test_e2e_*.py)
BUILDABLE = [e for e in TABLE if e.arch != "checkpoint"]
# the first buildable row of each builder kind gets the full battery (the others differ only in widths)
ONE_PER_KIND = list({e.kind: e for e in reversed(BUILDABLE)}.values())


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("entry", BUILDABLE, ids=lambda e: e.name)
def test_every_row_builds_what_the_table_lists(entry):
    """The table is data read without a model: the model built from each row must agree with it, with the output
    size measured from a forward pass."""
    ext = create_extractor(entry.name, weights="random", crop_size=CROP)
    s = ext.spec
    assert (s.name, s.arch, s.num_frames, s.window_frames, s.sampling_rate, s.interpolation) == (
        entry.name, entry.arch, entry.num_frames, entry.window_frames, entry.sampling_rate, entry.interpolation)
    assert s.mean == pytest.approx(entry.mean) and s.std == pytest.approx(entry.std)
    assert s.crop_size == CROP and s.weights == "random"
    # the short side scales with the crop override: the same short-side / crop ratio as the row's
    assert s.short_side == round(CROP * entry.short_side / entry.crop_size)
    frames = np.random.default_rng(0).integers(0, 256, (2, s.num_frames, 72, 90, 3), dtype=np.uint8)
    assert tuple(ext(frames).shape) == (2, *entry.view_shape)


def test_listing_needs_no_model():
    """`lta extract --list` prints every registered name from the table alone (torch is never imported)."""
    import subprocess
    import sys

    code = ("import sys; from pipelines import cmd_extract; rc = cmd_extract.main(['--list']); "
            "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules; sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    listed = [line.split()[0] for line in res.stdout.splitlines()[1:] if line and not line.startswith(("also:", "crop:"))]
    assert listed == [e.name for e in TABLE] and sorted(listed) == list_extractors()


@pytest.mark.parametrize("entry", ONE_PER_KIND, ids=lambda e: e.name)
def test_shapes_finite_batch_invariant_deterministic(entry):
    name, crop, shape = entry.name, CROP, entry.view_shape
    ext = create_extractor(name, weights="random", crop_size=crop)
    assert ext.spec.view_shape == shape and ext.spec.crop_size == crop and ext.spec.weights == "random"
    frames = np.random.default_rng(0).integers(0, 256, (4, ext.spec.num_frames, 72, 90, 3), dtype=np.uint8)
    out = ext(frames)
    assert out.dtype == torch.float32 and tuple(out.shape) == (4, *shape)
    assert torch.isfinite(out).all() and out.abs().max() > 0
    one_by_one = torch.cat([ext(frames[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(out, one_by_one, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out[0], out[1])  # different inputs, different features
    again = create_extractor(name, weights="random", crop_size=crop)  # seeded: same net in every process
    torch.testing.assert_close(again(frames[:1]), out[:1], atol=1e-5, rtol=1e-5)


def test_registry_names_and_errors():
    names = list_extractors()
    for required in ["slowfast_r50_8x8.kinetics", "slowfast_r101_8x8.kinetics", "slowfast_r101_8x8.ego4d",
                     "mvit_b_16x4.kinetics", "mvit_b_16x4.ego4d", "clip_vit_b32.openai", "clip_vit_b16.openai",
                     "clip_vit_l14.openai", "clip_vit_b32_dasryoo.openai", "slowfast_ckpt.ego4d"]:
        assert required in names
    with pytest.raises(ValueError, match=r"unknown extractor 'resnet9.x'; available: \["):
        create_extractor("resnet9.x")
    assert extractors.resolve_clip_name("clip_vit_b16.openai") == ("ViT-B-16", "openai")
    assert extractors.resolve_clip_name("clip_vit_l14.openai") == ("ViT-L-14", "openai")
    assert extractors.resolve_clip_name("clip_RN50.openai") == ("RN50", "openai")
    with pytest.raises(ValueError, match="no pretrained tag 'nope'.*openai"):
        extractors.resolve_clip_name("clip_vit_b32.nope")
    with pytest.raises(ValueError, match="needs|pass weights=PATH"):
        create_extractor("slowfast_r101_8x8.ego4d", weights="default", crop_size=64)
    with pytest.raises(FileNotFoundError, match="not found"):
        create_extractor("mvit_b_16x4.ego4d", weights="/no/such.ckpt", crop_size=64)
    with pytest.raises(ValueError, match="pass weights=PATH"):  # its architecture comes from the checkpoint
        create_extractor("slowfast_ckpt.ego4d", weights="random")


def test_cuda_without_gpu_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UsageError, match="CUDA is not available"):
        create_extractor("clip_vit_b32.openai", weights="random", device="cuda")


def test_dynamic_clip_name_and_spec_in_cache_key():
    from features.store import cache_key

    ext = create_extractor("clip_rn50.openai", weights="random", crop_size=64)
    assert ext.spec.arch == "RN50" and ext.spec.view_shape == (8, 1024)
    assert tuple(ext(np.zeros((1, 8, 64, 64, 3), np.uint8)).shape) == (1, 8, 1024)
    other = create_extractor("clip_rn50.openai", weights="random", crop_size=96)
    assert cache_key(ext.spec.name, ext.spec.to_dict()) != cache_key(other.spec.name, other.spec.to_dict())


def test_kinetics_checkpoint_file_loads_strictly(tmp_path):
    """A pytorchvideo-format checkpoint ({"model_state": ...}, with its classifier) loads; its sha256 is recorded."""
    src = create_extractor("mvit_b_16x4.kinetics", weights="random", crop_size=64)
    state = {k: v + 0.01 for k, v in src.model.state_dict().items()}
    state["head.proj.weight"], state["head.proj.bias"] = torch.zeros(400, 768), torch.zeros(400)
    path = tmp_path / "MVIT_B_16x4.pyth"
    torch.save({"model_state": state}, path)
    ext = create_extractor("mvit_b_16x4.kinetics", weights=str(path), crop_size=64)
    assert ext.spec.weights == str(path.resolve()) and ext.spec.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(ext.model.state_dict()["cls_positional_encoding.cls_token"], state["cls_positional_encoding.cls_token"])
    bad = dict(state)
    bad.pop("cls_positional_encoding.cls_token")
    torch.save({"model_state": bad}, path)
    with pytest.raises(Exception, match="missing keys.*cls_token"):
        create_extractor("mvit_b_16x4.kinetics", weights=str(path), crop_size=64)


def _natural_frames(tmp_path, n=3, w=200, h=150):
    """Smooth gradients + shapes + noise, through a lossy x264 round trip (what real decoded frames look like)."""
    import av

    yy, xx = np.mgrid[0:h, 0:w]
    path = tmp_path / "n.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=30, options={"crf": "23"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        rng = np.random.default_rng(0)
        for i in range(n):
            img = np.stack([xx * 255 / w, yy * 255 / h, 128 + 100 * np.sin((xx + yy + 9 * i) / 13)], -1)
            img[(xx - 60 - 5 * i) ** 2 + (yy - 70) ** 2 < 900] = (240, 30, 60)
            img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_open_clip_variant_preprocessing_matches_open_clip_pil(tmp_path):
    """`clip_vit_b32.openai` is the open_clip-preprocessed variant, not the reference: Das & Ryoo feed CLIP the
    SlowFast-normalised slow-pathway crops (`clip_vit_b32_dasryoo.openai`, pinned against the reference's own
    tensors in tests/test_clip_dasryoo.py). This pins the variant to open_clip's own PIL `preprocess`: within 4
    uint8 levels (max) / 0.3 level (mean); measured 3 / 0.14, PIL's vs torch's antialiased bicubic kernels."""
    import open_clip
    from PIL import Image

    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    ext = create_extractor("clip_vit_b32.openai", weights="random")
    frames = _natural_frames(tmp_path)
    ref = torch.stack([preprocess(Image.fromarray(f)) for f in frames])  # (F, 3, 224, 224)
    ours = ext.preprocess(torch.as_tensor(np.stack(frames))[None])  # (1*F, 3, 224, 224)
    std = torch.tensor(ext.spec.std).view(1, 3, 1, 1)
    levels = ((ours - ref) * std * 255).abs()  # difference in uint8 levels
    assert ours.shape == ref.shape
    assert levels.max() <= 4 and levels.mean() < 0.3, (levels.max(), levels.mean())


class _RunsCode:
    """Pickles to `os.system(...)`: what a crafted checkpoint would run on a plain `torch.load`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_crafted_pickle_as_weights_is_refused(tmp_path):
    """`weights=` files go through the restricted unpickler: a pickled call is named and refused, never run."""
    from features.checkpoint_io import UnsafeCheckpointError

    marker = tmp_path / "pwned"
    path = tmp_path / "SLOWFAST_8x8_R50.pyth"
    torch.save({"model_state": {}, "epoch": 1, "cfg": _RunsCode(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match=rf"{path}.*(posix|os)\.system.*not on the allow-list"):
        create_extractor("slowfast_r50_8x8.kinetics", weights=str(path), crop_size=64)
    assert not marker.exists()
    # the same payload as a fine-tuned run's backbone.pt (torch weights_only) is refused too, naming the file
    run = _finetuned_run(tmp_path / "run")
    torch.save({"x": _RunsCode(marker)}, run / "backbone.pt")
    with pytest.raises(UnsafeCheckpointError, match=rf"{run / 'backbone.pt'}: not a plain state dict"):
        create_extractor("slowfast_r50_8x8.run", weights=str(run))
    assert not marker.exists()


def test_pyslowfast_style_pyth_with_optimizer_and_cfg_loads(tmp_path):
    """A model-zoo .pyth as PySlowFast writes it (model_state + optimizer_state + epoch + cfg YAML) loads strictly."""
    src = create_extractor("slowfast_r50_8x8.kinetics", weights="random", crop_size=64)
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in src.model.state_dict().items()}
    state["blocks.6.proj.weight"], state["blocks.6.proj.bias"] = torch.zeros(400, 2304), torch.zeros(400)
    optimizer_state = {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    path = tmp_path / "SLOWFAST_8x8_R50.pyth"
    torch.save({"epoch": 196, "model_state": state, "optimizer_state": optimizer_state,
                "cfg": "MODEL:\n  ARCH: slowfast\nRESNET:\n  DEPTH: 50\n"}, path)
    ext = create_extractor("slowfast_r50_8x8.kinetics", weights=str(path), crop_size=64)
    key = "blocks.0.multipathway_blocks.0.conv.weight"
    assert torch.equal(ext.model.state_dict()[key], state[key]) and ext.spec.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def _finetuned_run(run, *, backbone="slowfast_r50_8x8", weights=True):
    """A `lta finetune-backbone`-style run dir (random weights, tiny SlowFast) without training."""
    from extract.finetune.model import build_recognition_model, export_backbone, make_spec

    if backbone == "slowfast_r50_8x8":
        spec = make_spec(backbone, width_per_group=8, crop_size=32, num_frames=8)
        export_backbone(build_recognition_model(spec, num_verbs=3, num_nouns=4), spec, run)
    else:  # only the spec matters for the name checks, which run before any weights are read
        import json

        run.mkdir(parents=True)
        (run / "backbone.json").write_text(json.dumps(make_spec(backbone, crop_size=32).to_json()))
        torch.save({}, run / "backbone.pt")
    return run


def test_finetuned_run_dir_is_an_extractor(tmp_path):
    """`<arch>.<run name>` + weights=RUN_DIR: spec from backbone.json, strict load, sha256 in the cache key."""
    from extract.finetune.model import load_finetuned_backbone
    from features.store import cache_key

    run = _finetuned_run(tmp_path / "ft_tiny")
    ext = create_extractor("slowfast_r50_8x8.ft_tiny", weights=str(run))
    s = ext.spec
    assert (s.name, s.arch, s.num_frames, s.window_frames, s.sampling_rate) == ("slowfast_r50_8x8.ft_tiny", "slowfast_r50", 8, 8, 8)
    assert (s.crop_size, s.short_side, s.view_shape, s.mean) == (32, 37, (288,), (0.45, 0.45, 0.45))
    assert dict(s.arch_kwargs) == {"depth": 50, "fusion_kernel_size": 7, "num_frames": 8, "crop_size": 32, "width_per_group": 8}
    assert s.weights == str((run / "backbone.pt").resolve()) and s.weights_sha256 == hashlib.sha256((run / "backbone.pt").read_bytes()).hexdigest()
    model, _ = load_finetuned_backbone(run)
    for k, v in model.state_dict().items():
        assert torch.equal(ext.model.state_dict()[k], v), k
    frames = np.random.default_rng(0).integers(0, 256, (2, 8, 48, 64, 3), dtype=np.uint8)
    out = ext(frames)
    assert out.shape == (2, 288) and torch.isfinite(out).all()
    via_file = create_extractor("slowfast_r50_8x8.ft_tiny", weights=str(run / "backbone.pt"), crop_size=32)
    assert via_file.spec == s and torch.equal(via_file(frames), out)
    # other weights -> another sha256 -> another cache key
    other = _finetuned_run(tmp_path / "other" / "ft_tiny")
    assert cache_key(s.name, s.to_dict()) != cache_key(s.name, create_extractor(s.name, weights=str(other)).spec.to_dict())


def test_finetuned_run_errors(tmp_path):
    sf = _finetuned_run(tmp_path / "sf_run")
    mvit = _finetuned_run(tmp_path / "mvit_run", backbone="mvit_b_16x4")
    with pytest.raises(ValueError, match=r"'slowfast_r101_8x8.mvit_run' is a slowfast_r101_8x8 but .* fine-tuned mvit_b_16x4 run"):
        create_extractor("slowfast_r101_8x8.mvit_run", weights=str(mvit))
    with pytest.raises(ValueError, match=r"is a slowfast_r101_8x8 but .* fine-tuned slowfast_r50_8x8 run .*slowfast_r50_8x8.sf_run"):
        create_extractor("slowfast_r101_8x8.sf_run", weights=str(sf))
    with pytest.raises(ValueError, match=r"'clip_vit_b32.openai' cannot load .* name its features slowfast_r50_8x8.<run name>"):
        create_extractor("clip_vit_b32.openai", weights=str(sf))
    with pytest.raises(ValueError, match=r"'.ego4d' names released weights; name it slowfast_r50_8x8.<run name>, e.g. slowfast_r50_8x8.sf_run"):
        create_extractor("slowfast_r50_8x8.ego4d", weights=str(sf))
    with pytest.raises(ValueError, match=r"crop_size=64, but the fine-tuned run .* crop 32"):
        create_extractor("slowfast_r50_8x8.sf_run", weights=str(sf), crop_size=64)
    with pytest.raises(ValueError, match=r"unknown extractor 'slowfast_r50_8x8.sf_run'.*<run name> with weights=RUN_DIR"):
        create_extractor("slowfast_r50_8x8.sf_run", weights="default")
    with pytest.raises(FileNotFoundError, match=r"backbone.pt: not found .*finetune-backbone"):
        create_extractor("slowfast_r50_8x8.x", weights=str(tmp_path))  # a directory that is not a run
    state = torch.load(sf / "backbone.pt", weights_only=True)
    state.pop(next(iter(state)))
    torch.save(state, sf / "backbone.pt")
    with pytest.raises(Exception, match=r"backbone.pt does not fit .* 1 missing keys"):
        create_extractor("slowfast_r50_8x8.sf_run", weights=str(sf))
