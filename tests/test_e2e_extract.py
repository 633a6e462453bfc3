"""End-to-end conformance of extraction with the reference's own test-time pipeline (marker `e2e`).

On the real mp4 bytes of `$LTA_REFERENCE_E2E` (default tests/fixtures/ego4d_reference_e2e; see
tests/e2e_helpers.py): window times and native frame indices equal windows.json, the tensors that
`lta extract` feeds the backbone equal the reference loader's (inputs_crop64.pt, rtol 0, atol 1e-6),
and the stored features of the tiny reference checkpoints equal outputs_tiny.pt (1e-4). Every
window, clip and count comes from the fixture files, so another fixture set made the same way passes.
The frame picks follow torch 1.9 (`linspace=torch19`, the default); `linspace=torch` is checked
against the `torch214_differs` values windows.json gives.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from e2e_helpers import extract_fixture, load_fixture
from extract import decode
from features.annotations import load_split
from features.windows import build_windows

pytestmark = pytest.mark.e2e

INPUT_TOL = dict(rtol=0.0, atol=1e-6)
FEATURE_TOL = dict(rtol=1e-4, atol=1e-4)
# outputs_tiny.pt section -> the checkpoint (MANIFEST.json name) that made it (fixture README, "Tiny models")
SLOWFAST_OUTPUTS = {"lta_trf": "lta_tiny_trf.ckpt", "recognition_slowfast": "slowfast_tiny_recognition.ckpt"}
MVIT_OUTPUTS = {"recognition_mvit": "mvit_tiny_recognition.ckpt"}


def sampling(pipeline: str) -> tuple[int, int]:
    """(frames, sampling rate) of a pipeline's config (MULTISLOWFAST_8x8: 32x2, MULTIMVIT_16x4: 16x4)."""
    return (16, 4) if pipeline.startswith("mvit") else (32, 2)


@pytest.fixture(scope="module")
def fx():
    return load_fixture()


@pytest.fixture(scope="module")
def infos(fx):
    uids = {w["clip_uid"] for p in fx.pipelines() for w in fx.windows(p)}
    return {uid: decode.probe_clip(fx.clip_path(uid)) for uid in uids}


def test_window_keys_and_inputs_are_the_reference_loaders(fx):
    for pipeline in fx.pipelines():
        n_in = int(fx.pipeline(pipeline)["num_input_clips"])
        for split in fx.splits():
            ann = load_split(fx.root, split)
            win = build_windows(ann, num_input=n_in, num_future=int(fx.spec["z"]), num_seen=n_in, convention="plus_one")
            got = {k: ann.action_idx[obs].tolist() for k, obs in zip(win.keys, win.observed)}
            want = {w["key"]: w["input_action_idx"] for w in fx.windows(pipeline) if w["split"] == split}
            assert got == want, (pipeline, split)


@pytest.mark.parametrize("linspace", ["torch19", "torch"])
def test_window_times_and_frame_indices(fx, infos, linspace):
    checked = 0
    for pipeline in fx.pipelines():
        n_in = int(fx.pipeline(pipeline)["num_input_clips"])
        frames, rate = sampling(pipeline)
        slow = decode.slow_positions(frames, n_in, linspace=linspace)
        assert [p.tolist() for p in slow] == fx.pipeline(pipeline)["slow_positions_in_fast"]
        for w in fx.windows(pipeline):
            info = infos[w["clip_uid"]]
            for j, c in enumerate(w["clips"]):
                ref = {**c, **c.get("torch214_differs", {})} if linspace == "torch" else c
                where = (pipeline, w["key"], j)
                t0, t1 = decode.window_bounds_sec(c["segment_start_sec"], c["segment_end_sec"], num_frames=frames,
                                                  sampling_rate=rate)
                assert (t0, t1) == (c["window_start_sec"], c["window_end_sec"]), where  # float64, exactly
                decoded = decode.clip_frames_in(t0, t1, info=info)
                assert [len(decoded), int(decoded[0]), int(decoded[-1])] == [c["num_decoded"], *c["decoded_first_last"]], where
                if n_in >= 2:
                    assert decode.uniform_subsample(decoded, 64, linspace=linspace).tolist() == ref["frames64"], where
                ix = decode.window_frame_indices(c["segment_start_sec"], c["segment_end_sec"], num_frames=frames,
                                                 sampling_rate=rate, info=info, num_input_clips=n_in, linspace=linspace)
                if pipeline.startswith("mvit"):
                    assert ix.tolist() == ref["mvit_frames"], where
                    assert ix[slow[j]].tolist() == ref["mvit_slow_frames_unused"], where
                else:
                    assert ix.tolist() == ref["fast_frames"], where
                    assert ix[slow[j]].tolist() == ref["slow_frames"], where
                checked += 1
    assert checked > 0


@pytest.fixture(scope="module")
def slowfast_runs(fx, tmp_path_factory, one_torch_thread):
    """`lta extract` with slowfast_ckpt.ego4d for each tiny SlowFast checkpoint that has outputs."""
    out = {}
    for section, ckpt in SLOWFAST_OUTPUTS.items():
        if section in fx.outputs_tiny:
            out[section] = extract_fixture(fx, tmp_path_factory.mktemp(section), "slowfast_ckpt.ego4d",
                                           fx.checkpoint(ckpt), num_input_clips=fx.num_input_clips("slowfast"))
    return out


@pytest.fixture(scope="module")
def mvit_runs(fx, tmp_path_factory, one_torch_thread):
    out = {}
    for section, ckpt in MVIT_OUTPUTS.items():
        if section in fx.outputs_tiny:
            out[section] = extract_fixture(fx, tmp_path_factory.mktemp(section), "mvit_ckpt.ego4d",
                                           fx.checkpoint(ckpt), num_input_clips=fx.num_input_clips("mvit"))
    return out


@pytest.mark.slow
def test_slowfast_pathways_fed_by_lta_extract_are_the_reference_inputs(fx, slowfast_runs):
    assert slowfast_runs
    checked = 0
    for run in slowfast_runs.values():
        assert run.rc == 0
        for pipeline in fx.pipelines("slowfast"):
            n_in = int(fx.pipeline(pipeline)["num_input_clips"])
            for w in fx.windows(pipeline):
                ref_fast = fx.inputs_crop64[pipeline][w["key"]]["fast"]
                ref_slow = fx.reference_slow(fx.inputs_crop64, pipeline, w["key"])
                for j, c in enumerate(w["clips"]):
                    slow, fast = run.model_inputs(w["clip_uid"], c["action_idx"], n_in=n_in, slot=j)
                    torch.testing.assert_close(fast, ref_fast[j], **INPUT_TOL, msg=f"{pipeline} {w['key']} clip {j} fast")
                    torch.testing.assert_close(slow, ref_slow[j], **INPUT_TOL, msg=f"{pipeline} {w['key']} clip {j} slow")
                    checked += 1
    assert checked > 0


def test_slowfast_stored_features_are_the_tiny_reference_models(fx, slowfast_runs):
    checked = 0
    for section, run in slowfast_runs.items():
        for pipeline, by_key in fx.outputs_tiny[section].items():
            n_in = int(fx.pipeline(pipeline)["num_input_clips"])
            for w in fx.windows(pipeline):
                want = by_key[w["key"]]["pooled"]  # (N_in, D): the pooled feature a cache holds
                got = torch.stack([run.feature(w["clip_uid"], c["action_idx"], n_in=n_in, slot=j)
                                   for j, c in enumerate(w["clips"])])
                torch.testing.assert_close(got, want.float(), **FEATURE_TOL, msg=f"{section} {pipeline} {w['key']}")
                checked += 1
    assert checked > 0


def test_mvit_inputs_and_features(fx, mvit_runs):
    assert mvit_runs
    checked = 0
    for section, run in mvit_runs.items():
        assert run.rc == 0
        assert run.store.slots == []  # MViT ignores the slow pathway: one variant per segment
        for pipeline, by_key in fx.outputs_tiny[section].items():
            for w in fx.windows(pipeline):
                ref = fx.inputs_crop64[pipeline][w["key"]]["frames16"]
                for j, c in enumerate(w["clips"]):
                    x = run.model_inputs(w["clip_uid"], c["action_idx"], n_in=len(w["clips"]), slot=j)
                    torch.testing.assert_close(x, ref[j], **INPUT_TOL, msg=f"{pipeline} {w['key']} clip {j}")
                got = torch.stack([run.feature(w["clip_uid"], c["action_idx"], n_in=len(w["clips"]), slot=j)
                                   for j, c in enumerate(w["clips"])])
                torch.testing.assert_close(got, by_key[w["key"]]["cls_feature"].float(), **FEATURE_TOL,
                                           msg=f"{section} {pipeline} {w['key']}")
                checked += 1
    assert checked > 0


def test_crop224_slow_pathway(fx, infos, one_torch_thread):
    """At the reference's own 256/224 geometry (where the fixture stores it): the extractor's preprocessing
    on the frames extraction decodes, slow frames per slot (no forward: a 224 backbone is too slow here)."""
    from extract.extractors import create_extractor

    stored = fx.inputs_crop224
    if not stored:
        pytest.skip("this fixture set stores no crop-224 inputs")
    checked = 0
    for pipeline, by_key in stored.items():
        n_in = int(fx.pipeline(pipeline)["num_input_clips"])
        frames, rate = sampling(pipeline)
        ext = create_extractor("slowfast_r50_8x8.kinetics", weights="random", num_input_clips=n_in)
        assert (ext.spec.short_side, ext.spec.crop_size) == (256, 224)
        for w in fx.windows(pipeline):
            if w["key"] not in by_key:
                continue
            ref_slow = fx.reference_slow(stored, pipeline, w["key"])
            for j, c in enumerate(w["clips"]):
                rgb = decode.decode_window(fx.clip_path(w["clip_uid"]), c["segment_start_sec"], c["segment_end_sec"],
                                           num_frames=frames, sampling_rate=rate, num_input_clips=n_in)
                x = ext.preprocess(torch.from_numpy(np.ascontiguousarray(rgb))[None])[0]  # (3, T, 224, 224)
                slot = ext.spec.slots.index((n_in, j))
                slow = x[:, list(ext.spec.slow_positions[slot])]
                torch.testing.assert_close(slow, ref_slow[j], **INPUT_TOL, msg=f"{pipeline} {w['key']} clip {j}")
                checked += 1
    assert checked > 0


def test_heads_read_each_input_position_from_its_slot(fx, slowfast_runs):
    """train_heads' data path (load_bank -> make_split_windows -> gather) gives every window exactly the
    reference features of its N_in clips, slot by slot; a head N_in the store lacks is refused by name."""
    from features.store import StoreError
    from train_heads.data import DeviceWindows, iterate_batches
    from train_heads.inputs import load_bank, split_windows

    section, run = next(iter(slowfast_runs.items()))
    bank = load_bank(run.store_path.parent, {"slowfast": run.store.key}, splits=fx.splits("slowfast")).to("cpu")
    checked = 0
    for pipeline, by_key in fx.outputs_tiny[section].items():
        n_in = int(fx.pipeline(pipeline)["num_input_clips"])
        for split in fx.splits(pipeline):
            _, win = split_windows(fx.root, split, bank, num_input=n_in, num_future=int(fx.spec["z"]),
                                   num_seen=n_in, convention="plus_one")
            batches = iterate_batches(DeviceWindows(win, "cpu"), bank, batch_size=max(len(win), 1), train=False)
            for batch in batches:
                for i, k in zip(batch.index.tolist(), batch.inputs["slowfast"]):
                    key = win.keys[i]
                    if key in by_key:
                        torch.testing.assert_close(k, by_key[key]["pooled"].float(), **FEATURE_TOL, msg=f"{pipeline} {key}")
                        checked += 1
    assert checked > 0
    missing = max(fx.num_input_clips("slowfast")) + 1
    with pytest.raises(StoreError, match=f"num_input={missing}"):
        split_windows(fx.root, fx.splits("slowfast")[0], bank, num_input=missing, num_future=int(fx.spec["z"]),
                      num_seen=missing, convention="plus_one")
