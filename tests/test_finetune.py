"""Backbone fine-tuning (`lta finetune-backbone`) on a tiny SlowFast and a tiny synthetic sample, CPU only.

Budget: about 1.5 minutes on 2 cores (the training runs use width 8, crop 32, 8 frames, num_workers=0).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from extract import decode  # noqa: E402
from extract.finetune.train import TrainOptions, finetune  # noqa: E402
from extract.finetune.data import EpochBatchSampler, RecognitionDataset, pack_pathways, sample_rng, transform_clip  # noqa: E402
from extract.finetune.model import (  # noqa: E402
    BACKBONE_FILE,
    RECIPES,
    SPEC_FILE,
    build_recognition_model,
    cosine_warmup_factor,
    init_backbone,
    load_finetuned_backbone,
    make_spec,
    param_groups,
    recognition_loss,
)
from features.annotations import load_split  # noqa: E402
from features.errors import UsageError  # noqa: E402

TINY = dict(backbone="slowfast_r50_8x8", init="random", resized=False, width_per_group=8, crop_size=32, num_frames=8,
            num_workers=0, log_every=1000, warmup_steps=3)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny backbones: one thread is faster than two and keeps the numbers reproducible."""


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """8 clips (4 train / 4 val, ~37 segments each), 96x64, 4 verbs, 6 nouns (noun = shape + colour)."""
    from extract.render import write_sample
    from features.synthetic import plan_sample

    root = tmp_path_factory.mktemp("ft_sample")
    summary = write_sample(plan_sample(clips=8, seed=1, segments_per_clip=(9, 10), width=96, height=64, verbs=4, nouns=6,
                                       train_fraction=0.5, val_fraction=0.5), root)
    assert summary["segments"]["train"] >= 32 and summary["segments"]["val"] >= 32
    return root


def test_reference_recipe_and_spec():
    spec = make_spec("slowfast_r101_8x8")
    assert spec.feature_dim == 2304 and spec.num_frames == 32 and spec.sampling_rate == 2 and spec.alpha == 4
    assert (spec.crop_size, spec.short_side, spec.train_jitter) == (224, 256, (256, 320))
    assert math.isclose(spec.window_sec, 64 / 30)
    assert spec.builder_kwargs == {"depth": 101, "num_frames": 32, "crop_size": 224}
    assert (RECIPES["slowfast_r101_8x8"]["lr"], RECIPES["slowfast_r101_8x8"]["epochs"]) == (1e-4, 30)
    assert (RECIPES["mvit_b_16x4"]["lr"], RECIPES["mvit_b_16x4"]["epochs"]) == (1e-2, 40)
    mvit = make_spec("mvit_b_16x4")
    assert (mvit.feature_dim, mvit.num_frames, mvit.sampling_rate, mvit.alpha) == (768, 16, 4, 0)
    tiny = make_spec("slowfast_r50_8x8", width_per_group=8, crop_size=32, num_frames=8)
    assert tiny.feature_dim == 288 and tiny.sampling_rate == 8 and math.isclose(tiny.window_sec, 64 / 30)
    with pytest.raises(ValueError, match="unknown backbone 'x3d'"):
        make_spec("x3d")
    with pytest.raises(ValueError, match="multiple of 8"):
        make_spec("slowfast_r50_8x8", width_per_group=4)


def test_cosine_warmup_schedule():
    f = [cosine_warmup_factor(s, warmup_steps=10, total_steps=110) for s in (0, 5, 10, 60, 110, 200)]
    assert f == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0, 0.0])


def test_bn_params_get_no_weight_decay_and_loss_is_ce_on_logits():
    spec = make_spec("slowfast_r50_8x8", width_per_group=8, crop_size=32, num_frames=8)
    model = build_recognition_model(spec, num_verbs=4, num_nouns=6)
    groups = {g["name"]: g for g in param_groups(model, weight_decay=1e-4)}
    bn = [p for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d) for p in m.parameters()]
    assert {id(p) for p in groups["bn"]["params"]} == {id(p) for p in bn} and groups["bn"]["weight_decay"] == 0.0
    assert groups["default"]["weight_decay"] == 1e-4
    assert any(p is model.verb_head.weight for p in groups["default"]["params"])
    assert len(groups["bn"]["params"]) + len(groups["default"]["params"]) == len(list(model.parameters()))
    logits = {"verb": torch.tensor([[2.0, 0.0, 0.0, 0.0]]), "noun": torch.zeros(1, 6)}
    expected = -math.log(math.exp(2) / (math.exp(2) + 3)) + math.log(6)
    assert float(recognition_loss(logits, torch.tensor([0]), torch.tensor([5]))) == pytest.approx(expected, rel=1e-6)


def test_transforms_flip_half_and_val_centre_crop():
    spec = make_spec("slowfast_r50_8x8", width_per_group=8, crop_size=32, num_frames=8)
    frames = torch.arange(8 * 48 * 64 * 3, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(8, 48, 64, 3)
    val_a = transform_clip(frames, spec, train=False)
    assert val_a.shape == (3, 8, 32, 32) and torch.equal(val_a, transform_clip(frames, spec, train=False))
    flips = 0
    for i in range(200):
        out = transform_clip(frames, spec, train=True, rng=sample_rng(0, 0, i))
        assert out.shape == (3, 8, 32, 32)
        # with the same draws minus the flip, a flipped clip is the mirror image
        ref = transform_clip(frames, spec, train=True, rng=sample_rng(0, 0, i), flip_prob=0.0)
        flipped = not torch.equal(out, ref)
        if flipped:
            assert torch.equal(out, ref.flip(-1))
        flips += flipped
    assert 70 < flips < 130  # p = 0.5, not the reference's always-on flip
    slow, fast = pack_pathways(val_a, 4)
    assert torch.equal(fast, val_a) and torch.equal(slow, val_a[:, [0, 7]])  # linspace(0, T-1, T/alpha), as PackPathway


def test_dataset_uses_stage_one_windows(sample):
    ann = load_split(sample, "val")
    spec = make_spec("slowfast_r50_8x8", width_per_group=8, crop_size=32, num_frames=8)
    val = RecognitionDataset(sample, ann, spec, train=False, resized=False)
    (slow, fast), verb, noun, idx, failures = val[3]
    assert (verb, noun, idx, failures) == (ann.verb[3], ann.noun[3], 3, [])
    path = sample / "clips_hq" / f"{ann.clip_uid[3]}.mp4"
    frames = decode.decode_window(path, ann.start_sec[3], ann.end_sec[3], num_frames=8, sampling_rate=8, position="center")
    assert torch.equal(fast, transform_clip(torch.from_numpy(frames), spec, train=False))
    train = RecognitionDataset(sample, ann, spec, train=True, resized=False, seed=5)
    a, b = train[3][0][1], train[3][0][1]
    assert torch.equal(a, b)  # per-sample generator: the same draws on every call / worker
    train.set_epoch(1)
    assert not torch.equal(a, train[3][0][1])
    with pytest.raises(ValueError, match="unlabelled"):
        RecognitionDataset(sample, _unlabelled(ann), spec, train=False, resized=False)
    with pytest.raises(FileNotFoundError, match="clips/"):
        RecognitionDataset(sample, ann, spec, train=False)  # resized clips/ were never written


def _unlabelled(ann):
    import dataclasses

    return dataclasses.replace(ann, verb=np.full_like(ann.verb, -1), noun=np.full_like(ann.noun, -1))


def test_epoch_batch_sampler_shards_and_skips():
    shards = [list(EpochBatchSampler(23, 4, shuffle=True, seed=1, epoch=2, rank=r, world_size=2)) for r in range(2)]
    flat = [i for s in shards for b in s for i in b]
    assert all(len(b) == 4 for s in shards for b in s) and len(shards[0]) == len(shards[1]) == 2
    assert len(set(flat)) == len(flat) == 16
    full = list(EpochBatchSampler(23, 4, shuffle=True, seed=1, epoch=2))
    assert list(EpochBatchSampler(23, 4, shuffle=True, seed=1, epoch=2, start_batch=3)) == full[3:]
    assert full != list(EpochBatchSampler(23, 4, shuffle=True, seed=1, epoch=3))
    val = [list(EpochBatchSampler(23, 4, shuffle=False, rank=r, world_size=2)) for r in range(2)]
    assert sorted(i for s in val for b in s for i in b) == list(range(23))  # every segment once, no padding


def test_init_is_explicit():
    spec = make_spec("slowfast_r50_8x8", width_per_group=8, crop_size=32, num_frames=8)
    model = build_recognition_model(spec, num_verbs=4, num_nouns=6)
    with pytest.raises(ValueError, match="unknown init"):
        init_backbone(model.backbone, spec, "imagenet")
    with pytest.raises(ValueError, match="ego4d:PATH"):
        init_backbone(model.backbone, spec, "ego4d")


@pytest.mark.slow
def test_training_learns_the_sample(sample, tmp_path):
    opts = dict(TINY, warmup_steps=8)
    result = finetune(TrainOptions(data=str(sample), out=str(tmp_path / "run"), **opts, batch_size=8, epochs=12, lr=0.1,
                                   dropout=0.0, val_every=4))
    ev = tmp_path / "run" / "tensorboard"
    assert ev.is_dir() and any(ev.iterdir())
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val_noun = load_split(sample, "val").noun
    assert [m["epoch"] for m in metrics] == [3, 7, 11] and metrics[-1]["num_samples"] == len(val_noun)
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] - 0.3  # mean train loss of the last 4 vs first 4 epochs
    majority = np.bincount(val_noun).max() / len(val_noun)  # 0.31; uniform chance is 1/6
    assert result["val"]["noun_top1"] > majority + 0.1
    assert result["val"]["noun_top5"] >= result["val"]["noun_top1"]


@pytest.mark.slow
def test_resume_equals_uninterrupted(sample, tmp_path):
    # 37 segments, batch 8 as 2 accumulation steps of 4 -> 4 steps/epoch; the restart at step 3 is mid-epoch,
    # and the run crosses an epoch boundary after it. Dropout stays on, so the RNG must be restored too.
    opts = dict(data=str(sample), **TINY, batch_size=8, accum_steps=2, epochs=2, lr=0.05, val_split="")
    full = finetune(TrainOptions(out=str(tmp_path / "full"), max_steps=6, **opts))["model"]
    finetune(TrainOptions(out=str(tmp_path / "parts"), max_steps=3, **opts))
    resumed = finetune(TrainOptions(out=str(tmp_path / "parts"), max_steps=6, resume=True, **opts))
    assert resumed["step"] == 6
    a, b = full.state_dict(), resumed["model"].state_dict()
    assert a.keys() == b.keys()
    changed = 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
        changed += 1
    assert changed > 100
    fresh = build_recognition_model(make_spec("slowfast_r50_8x8", width_per_group=8, crop_size=32, num_frames=8),
                                    num_verbs=4, num_nouns=6)
    assert not torch.equal(fresh.verb_head.weight, b["verb_head.weight"])  # training did move the weights


@pytest.mark.slow
def test_exported_backbone_extracts_the_same_features(sample, tmp_path):
    result = finetune(TrainOptions(data=str(sample), out=str(tmp_path / "run"), **TINY, batch_size=8, epochs=1, lr=0.05,
                                   val_split=""))
    for name in (BACKBONE_FILE, SPEC_FILE, "heads.pt", "checkpoints/last.pt"):
        assert (tmp_path / "run" / name).is_file(), name
    loaded, spec = load_finetuned_backbone(tmp_path / "run")
    assert spec == result["spec"] and not loaded.training
    assert load_finetuned_backbone(tmp_path / "run" / BACKBONE_FILE)[1] == spec
    val = RecognitionDataset(sample, load_split(sample, "val"), spec, train=False, resized=False)
    batch = [val[i][0] for i in range(4)]
    inputs = [torch.stack([b[p] for b in batch]) for p in range(2)]
    in_memory = result["model"].backbone.eval()
    with torch.no_grad():
        expected = in_memory(inputs)
        got = loaded(inputs)
    assert got.shape == (4, spec.feature_dim) == (4, 288)
    assert torch.equal(got, expected)
    assert json.loads((tmp_path / "run" / SPEC_FILE).read_text())["extra"]["step"] == result["step"]

    # the extraction path: `extract.extractors.SlowFastExtractor` (uint8 frames in, its own val transform)
    # around the loaded backbone gives the features of the in-memory model on the training code's val transform
    from extract.extractors import ExtractorSpec, SlowFastExtractor

    ext_spec = ExtractorSpec(name="slowfast_r50_8x8.test", arch="slowfast_r50", num_frames=spec.num_frames,
                             window_frames=spec.num_frames, sampling_rate=spec.sampling_rate, short_side=spec.short_side,
                             crop_size=spec.crop_size, interpolation="bilinear", mean=spec.mean, std=spec.std,
                             view_shape=(spec.feature_dim,), tapped_layer="pooled", weights=str(tmp_path / "run"))
    extractor = SlowFastExtractor(ext_spec, loaded, "cpu")
    ann = load_split(sample, "val")
    frames = np.stack([decode.decode_window(sample / "clips_hq" / f"{ann.clip_uid[i]}.mp4", ann.start_sec[i], ann.end_sec[i],
                                            num_frames=8, sampling_rate=8) for i in range(4)])
    torch.testing.assert_close(extractor(frames), expected, rtol=1e-4, atol=1e-5)


def test_cli_local_and_slurm_debug(sample, tmp_path, capsys):
    from pipelines.cmd_finetune import main

    assert main(["--help"]) == 0 and "width_per_group" in capsys.readouterr().out
    from pipelines import cli

    assert cli.main(["finetune-backbone", "bogus_key=1"]) == 2  # a config error: the boundary's one line, exit 2
    assert "lta finetune-backbone: unknown key 'bogus_key'" in capsys.readouterr().err
    common = [f"data={sample}", "backbone=slowfast_r50_8x8", "init=random", "resized=false", "width_per_group=8",
              "crop_size=32", "num_frames=8", "batch_size=8", "epochs=1", "max_steps=1", "num_workers=0", "val_split="]
    assert main(common + [f"out={tmp_path / 'local'}"]) == 0
    assert (tmp_path / "local" / "config.yaml").is_file() and (tmp_path / "local" / BACKBONE_FILE).is_file()
    assert main(common + [f"out={tmp_path / 'slurm'}", "launcher=slurm", "submitit_cluster=debug", "nodes=1", "slurm_gpus=1"]) == 0
    ckpt = torch.load(tmp_path / "slurm" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["state"]["step"] == 1
    if not torch.cuda.is_available():  # device=cuda without CUDA: a usage error (exit 2), never a silent CPU run
        with pytest.raises(UsageError, match="device=cuda: CUDA is not available"):
            main(common + [f"out={tmp_path / 'cuda'}", "device=cuda"])


@pytest.mark.slow
def test_torchrun_two_processes_ddp(sample, tmp_path):
    """torchrun, 2 CPU processes (gloo): DDP + accumulation (no_sync) + sharded validation summed over ranks."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571",
           "-m", "pipelines.cli", "finetune-backbone", f"data={sample}", f"out={out}", "backbone=slowfast_r50_8x8",
           "init=random", "resized=false", "width_per_group=8", "crop_size=32", "num_frames=8", "batch_size=8",
           "accum_steps=2", "epochs=1", "num_workers=0", "warmup_steps=2", "lr=0.05"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(__file__)), env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch 8 = 2 proc x 2 accum x 2" in proc.stderr
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["num_samples"] == len(load_split(sample, "val").verb)
    ckpt = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["state"]["step"] == 4  # 37 segments // 2 ranks // 2 = 9 -> 4 steps
    assert (out / "checkpoints" / "rng_rank1.pt").is_file() and (out / BACKBONE_FILE).is_file()
