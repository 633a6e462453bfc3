"""`resume=true` on a run trained before keys were added to the schema (issue 23's `reference`, `proj_init`,
`query_init_std`, `view_draw`, `flip_prob`): those keys are absent from its config.yaml, and their defaults are what
the older code did, so the resume goes ahead; a value other than the default is a real change and is refused.
Through the real CLI, on a copy of one tiny trained run."""
from __future__ import annotations

import pytest
import yaml

from test_cli_usability import TRAIN, assert_one_line, lta
from test_first_day import copy_project, tiny  # noqa: F401 - the module's trained run (a fixture)

pytestmark = pytest.mark.slow  # subprocess CLI runs over a trained run

ADDED = [("reference",), ("head", "modalities", 0, "proj_init"), ("head", "modalities", 0, "query_init_std"),
         ("train", "view_draw"), ("train", "flip_prob")]


def as_older_run(run):
    """Delete the ADDED keys from the run's config.yaml, as a run trained before they existed has it."""
    path = run / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    for *parents, leaf in ADDED:
        node = cfg
        for p in parents:
            node = node[p]
        assert leaf in node, (parents, leaf)  # the key exists today (else this test tests nothing)
        del node[leaf]
    path.write_text(yaml.safe_dump(cfg))


def test_keys_added_since_at_their_defaults_do_not_block_a_resume(tiny, tmp_path):  # noqa: F811
    run = copy_project(tiny, tmp_path / "copy")
    as_older_run(run)
    res = lta("train-heads", f"data={tmp_path / 'copy' / 'data'}", f"store={tmp_path / 'copy' / 'store'}", f"out={run}",
              "resume=true", *TRAIN)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "differs from" not in res.stderr
    # more epochs: the run is extended, and the note names the keys taken at their defaults
    res = lta("train-heads", f"data={tmp_path / 'copy' / 'data'}", f"store={tmp_path / 'copy' / 'store'}", f"out={run}",
              "resume=true", *TRAIN, "train.epochs=3")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "train.view_draw" in res.stderr and "added to the schema since the run was trained" in res.stderr


def test_an_added_key_set_to_another_value_is_a_change(tiny, tmp_path):  # noqa: F811
    run = copy_project(tiny, tmp_path / "copy")
    as_older_run(run)
    assert_one_line(lta("train-heads", f"data={tmp_path / 'copy' / 'data'}", f"store={tmp_path / 'copy' / 'store'}",
                        f"out={run}", "resume=true", *TRAIN, "train.view_draw=window"),
                    2, "resume=true", "train.view_draw (<absent> -> window)")
