"""Das & Ryoo's CLIP inputs (`clip_vit_b32_dasryoo.openai`) equal the tensors their `encode_clips` passed to
CLIP's `encode_image` in the reference environment (`inputs_crop224.pt` `clip_image`, fixture README
"Das & Ryoo CLIP inputs"), within 1e-6, from the fixture's mp4 bytes through the project's decoder.

The fixture folder is read from LTA_REFERENCE_E2E (default: the project's copy). Nothing about its clips,
windows or counts is assumed: every stored window of every pipeline is checked.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from e2e_helpers import DEFAULT_E2E, E2E_ENV, e2e_dir

E2E = Path(os.environ.get(E2E_ENV) or DEFAULT_E2E)
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fixture():
    e2e_dir()  # a missing fixture folder fails, never skips
    windows = json.loads((E2E / "windows.json").read_text())
    inputs = torch.load(E2E / "inputs_crop224.pt", weights_only=True)
    return windows, inputs


@pytest.fixture(scope="module")
def extractor():
    from extract.extractors import create_extractor

    torch.set_num_threads(1)
    return create_extractor("clip_vit_b32_dasryoo.openai", weights="random", device="cpu")


def _stored_windows(fixture):
    windows, inputs = fixture
    for pipeline, by_key in inputs.items():
        p = windows["pipelines"][pipeline]
        listed = {w["key"]: w for w in p["windows"]}
        for key, tensors in by_key.items():
            if "clip_image" in tensors:
                yield pipeline, p["num_input_clips"], listed[key], tensors


def test_dasryoo_clip_inputs_match_the_reference(fixture, extractor):
    from extract.decode import decode_frames, probe_clip, window_frame_indices

    checked = 0
    for pipeline, n_in, window, tensors in _stored_windows(fixture):
        extractor.configure_sampling(n_in)
        path = E2E / "clips" / f"{window['clip_uid']}.mp4"
        info = probe_clip(path)
        for j, clip in enumerate(window["clips"]):
            where = f"{pipeline} {window['key']} clip {j}"
            fast = window_frame_indices(clip["segment_start_sec"], clip["segment_end_sec"], num_frames=32,
                                        sampling_rate=2, info=info, num_input_clips=n_in,
                                        linspace=extractor.spec.linspace)
            assert fast.tolist() == clip["fast_frames"], where
            slot = extractor.spec.slots.index((n_in, j))
            slow = fast[list(extractor.spec.slow_positions[slot])]
            assert slow.tolist() == clip["slow_frames"], where  # their frames are the slow pathway's
            frames = dict(decode_frames(path, sorted(set(fast.tolist())), info=info))
            batch = torch.from_numpy(np.stack([frames[int(i)] for i in fast]))[None]  # (1, 32, H, W, 3)
            with torch.inference_mode():
                got = extractor.clip_inputs(extractor.preprocess(batch), slot)
            want = tensors["clip_image"][j]
            assert got.shape == want.shape, where
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=lambda m: f"{where}: {m}")
            checked += 1
    assert checked, "the fixture stores no Das & Ryoo CLIP inputs"


def test_dasryoo_embeddings_are_clip_of_those_inputs(fixture, extractor):
    """The stored view is (8, D): CLIP's image tower on each of the 8 inputs, in time order, per slot."""
    pipeline, n_in, window, tensors = next(_stored_windows(fixture))
    extractor.configure_sampling(n_in)
    x = tensors["slow"][0][None]  # (1, 3, 8, S, S) slow pathway; pad to a 32-frame fast pathway
    fast = torch.zeros(1, 3, 32, *x.shape[-2:])
    slot = extractor.spec.slots.index((n_in, 0))
    fast[:, :, list(extractor.spec.slow_positions[slot])] = x
    with torch.inference_mode():
        out = extractor.forward_slot(fast, slot)
        want = extractor.model(tensors["clip_image"][0])
    assert out.shape == (1, 8, extractor.spec.view_shape[-1]) == (1, *extractor.spec.view_shape)
    torch.testing.assert_close(out[0], want, rtol=1e-5, atol=1e-5)


def test_open_clip_variant_is_a_different_input_path(extractor):
    """`clip_vit_b32.openai` keeps open_clip's preprocessing (bicubic resize to 224, CLIP mean/std) under its own
    name; the Das & Ryoo variant has the SlowFast transform (bilinear short side 256, mean 0.45, std 0.225)."""
    from extract.extractors import create_extractor

    ours = create_extractor("clip_vit_b32.openai", weights="random", device="cpu").spec
    theirs = extractor.spec
    assert (theirs.short_side, theirs.crop_size, theirs.interpolation) == (256, 224, "bilinear")
    assert theirs.mean == (0.45,) * 3 and theirs.std == (0.225,) * 3
    assert (ours.short_side, ours.interpolation) == (224, "bicubic") and ours.mean != theirs.mean
    assert ours.num_frames == 8 and theirs.num_frames == 32 and theirs.view_shape == ours.view_shape


@pytest.mark.slow
def test_call_slots_embeds_shared_frames_once_with_the_same_values():
    """Every (N_in, slot) variant from `call_slots` (what `lta extract` stores) equals that slot's own forward.
    At a 64 px crop: which frames each slot embeds does not depend on the crop, and the 150 ViT-B/32 forwards take
    a few seconds instead of ~40 at 224."""
    from extract.extractors import create_extractor

    torch.set_num_threads(1)
    extractor = create_extractor("clip_vit_b32_dasryoo.openai", weights="random", device="cpu", crop_size=64)
    extractor.configure_sampling([2, 4])
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 40, 48, 3), dtype=np.uint8)
    got = extractor.call_slots(frames)
    assert got.shape == (2, len(extractor.spec.slots), *extractor.spec.view_shape)
    for slot in range(len(extractor.spec.slots)):
        torch.testing.assert_close(got[:, slot], extractor(frames, slot=slot), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got[:, 0], got[:, 1])  # slots see other frames
