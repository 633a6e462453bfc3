"""fine-tune -> extract -> train-heads as one path, through the three CLI entry points, on the CPU.

    lta finetune-backbone data=D out=RUN/ft_tiny backbone=slowfast_r50_8x8 ...
    lta extract data=D store=S extractors=[slowfast_r50_8x8.ft_tiny] weights=RUN/ft_tiny
    lta train-heads data=D store=S head.modalities=[{name: slowfast}] ...

Budget: ~30 s on 2 cores (tiny SlowFast: width 8, crop 32, 8 frames; 2 optimiser steps; ~145 rows).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from e2e_helpers import record_backbone_forwards  # noqa: E402
from features.files import file_sha256  # noqa: E402
from extract.finetune.model import build_backbone, load_finetuned_backbone  # noqa: E402
from features.store import FeatureStore, store_paths  # noqa: E402
from pipelines import cmd_extract, cmd_finetune, cmd_train_heads  # noqa: E402

TINY_FINETUNE = ["backbone=slowfast_r50_8x8", "init=random", "resized=false", "width_per_group=8", "crop_size=32",
                 "num_frames=8", "batch_size=8", "epochs=1", "max_steps=2", "warmup_steps=1", "lr=0.05",
                 "num_workers=0", "val_split="]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny backbones: one thread is faster than two and keeps the numbers reproducible."""


@pytest.fixture(scope="module")
def pipeline(tiny_sample, tmp_path_factory):
    """Run the three stages once; returns the paths each one wrote."""
    root = tmp_path_factory.mktemp("ft_extract")
    run, store, heads = root / "runs" / "ft_tiny", root / "store", root / "heads"
    assert cmd_finetune.main([f"data={tiny_sample}", f"out={run}", *TINY_FINETUNE]) == 0
    extract_args = [f"data={tiny_sample}", f"store={store}", "extractors=[slowfast_r50_8x8.ft_tiny]", "device=cpu",
                    "batch_size=16", "raw_clips=true", "dtype=float32", "decode_workers=1", "progress=false",
                    "max_failed_frac=0"]
    with record_backbone_forwards() as recorded:  # the exact inputs and outputs of every backbone forward
        assert cmd_extract.main([*extract_args, f"weights={run}"]) == 0
    first = json.loads((store / "extract_summary.json").read_text())[0]
    # weights=RUN/backbone.pt names the same weights: same cache key, every row already done
    assert cmd_extract.main([*extract_args, f"weights={run / 'backbone.pt'}"]) == 0
    second = json.loads((store / "extract_summary.json").read_text())[0]
    assert cmd_train_heads.main([f"data={tiny_sample}", f"store={store}", f"out={heads}",
                                 "head.modalities=[{name: slowfast, proj_dim: 16}]", "head.num_input=2",
                                 "head.aggregator=concat", "train.epochs=1", "train.batch_size=16"]) == 0
    return {"data": tiny_sample, "run": run, "store": store, "heads": heads, "summaries": (first, second),
            "recorded": recorded}


def test_store_is_keyed_by_the_finetuned_run(pipeline):
    first, second = pipeline["summaries"]
    assert first["rows_failed"] == 0 and first["rows_done"] == first["rows_total"] > 100
    assert second["store_keys"] == first["store_keys"] and second["rows_skipped"] == first["rows_total"]
    (path,) = store_paths(pipeline["store"])
    store = FeatureStore.open(path)
    assert store.key == first["store_keys"][0] and store.key.startswith("slowfast_r50_8x8.ft_tiny-")
    ext = store.spec["extractor"]
    backbone = pipeline["run"] / "backbone.pt"
    assert ext["weights"] == str(backbone.resolve()) and ext["weights_sha256"] == file_sha256(backbone)
    assert (ext["num_frames"], ext["sampling_rate"], ext["crop_size"], ext["short_side"]) == (8, 8, 32, 37)
    assert store.view_shape == (288,) and store.filled().all()


def test_stored_features_are_the_finetuned_models_forward(pipeline):
    """Every stored row is the fine-tuned backbone (loaded here, independently of lta extract) applied to the
    input lta extract gave it, and not what a fresh net makes of that input.

    Which frames go into that input (the reference test-time sampling) is proven by tests/test_e2e_extract.py
    and tests/test_decode.py; this test is about the weights: extraction used the fine-tuned run's."""
    model, spec = load_finetuned_backbone(pipeline["run"])
    random_init = build_backbone(spec).eval()
    (path,) = store_paths(pipeline["store"])
    store = FeatureStore.open(path)
    stored = store.read(np.arange(store.num_rows))  # (rows, V*S, 288), float32
    stored = stored.reshape(-1, stored.shape[-1])
    recorded = pipeline["recorded"]
    assert recorded and sum(r.output.shape[0] for r in recorded) >= store.num_rows
    checked = 0
    for rec in recorded[:: max(1, len(recorded) // 4)]:  # a few batches spread over the run
        with torch.no_grad():
            expected = model(rec.inputs)
            unfinetuned = random_init(rec.inputs)
        torch.testing.assert_close(rec.output, expected, rtol=1e-5, atol=1e-5)
        assert (expected - unfinetuned).abs().max() > 1e-2  # the fine-tuned weights matter for these inputs
        for out in expected.numpy():  # each forward's output is a stored feature vector
            assert np.abs(stored - out).max(axis=1).min() < 1e-5
            checked += 1
    assert checked >= 4


def test_heads_train_on_the_finetuned_features(pipeline):
    heads = pipeline["heads"]
    (path,) = store_paths(pipeline["store"])
    key = FeatureStore.open(path).key
    assert json.loads((heads / "cache_keys.json").read_text())["modalities"] == {"slowfast": key}
    metrics = json.loads((heads / "metrics.json").read_text())
    assert len(metrics["history"]) == 1
    assert (heads / "checkpoints" / "last.pt").is_file()


def test_kinetics_init_file_is_read_safely(tmp_path):
    """`init=kinetics:PATH` reads a model-zoo .pyth through the restricted unpickler: weights load, pickled calls are refused."""
    from extract.finetune.model import init_backbone, make_spec
    from features.checkpoint_io import UnsafeCheckpointError

    spec = make_spec("slowfast_r50_8x8", width_per_group=8, crop_size=32, num_frames=8)
    source = build_backbone(spec)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in source.state_dict().items()}
    state["blocks.6.proj.weight"] = torch.zeros(400, spec.feature_dim)  # the Kinetics classifier is dropped
    path = tmp_path / "SLOWFAST_8x8_R50.pyth"
    torch.save({"epoch": 196, "model_state": state, "cfg": "RESNET:\n  DEPTH: 50\n"}, path)
    target = build_backbone(spec)
    assert init_backbone(target, spec, f"kinetics:{path}") == f"kinetics weights {path}"
    for k, v in target.state_dict().items():
        assert torch.equal(v, state[k]), k

    class RunsCode:
        def __reduce__(self):
            return print, ("pickled code ran",)

    torch.save({"model_state": state, "cfg": RunsCode()}, path)
    with pytest.raises(UnsafeCheckpointError, match=rf"{path}: .*print.*not on the allow-list"):
        init_backbone(build_backbone(spec), spec, f"kinetics:{path}")
