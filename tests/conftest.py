"""Shared fixtures: a tiny synthetic Ego4D LTA sample (with and without videos)."""
from __future__ import annotations

from pathlib import Path

import pytest

from extract.render import write_sample
from features.synthetic import plan_sample

# 5 clips (3 train / 1 val / 1 test) of 28-30 segments of 1.0-1.6 s at 160x120: every clip has
# windows for 8 observed + 20 future segments, and rendering takes a few seconds.
TINY_SAMPLE = dict(clips=5, seed=123, segments_per_clip=(28, 30), segment_sec=(1.0, 1.6), width=160, height=120)


@pytest.fixture(scope="session")
def tiny_sample(tmp_path_factory) -> Path:
    """Root of a tiny sample with annotations and clips_hq/*.mp4, written once per session."""
    root = tmp_path_factory.mktemp("tiny_sample")
    write_sample(plan_sample(**TINY_SAMPLE), root)
    return root


@pytest.fixture(scope="session")
def sample_annotations(tmp_path_factory) -> Path:
    """Root of a 6-clip sample with annotations only (no videos), default clip lengths."""
    root = tmp_path_factory.mktemp("sample_annotations")
    write_sample(plan_sample(clips=6, seed=7), root, videos=False)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module's tests, restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(session, config, items):
    """The demo test first, then the other tests marked `slow` (stable otherwise). Under pytest-xdist (`make test`,
    whole files per worker, handed out in this order) the demo file, the longest by far, starts at once on one
    worker while the others take the remaining long files, and the many short ones fill in around them, instead of
    the demo starting late and running alone at the end."""
    items.sort(key=lambda item: (item.get_closest_marker("demo") is None, item.get_closest_marker("slow") is None))
