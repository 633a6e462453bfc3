"""Safe loading end to end: crafted checkpoints through the CLI, unsafe YAML configs, paths kept inside their roots.

A crafted pickle whose `__reduce__` runs `os.system("touch MARKER")` (what a plain `torch.load`
would execute) is fed to `lta import-checkpoint` and to `lta extract weights=` of every backbone
family; each must be refused and the marker must never appear. YAML configs with python tags run
nothing and are a ConfigError naming the file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from features.checkpoint_io import UnsafeCheckpointError
from pipelines import cli, cmd_extract, cmd_import_checkpoint
from pipelines.config import ConfigError, load_yaml
from test_faults_video import record_fault

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickles to `os.system("touch MARKER")`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_evil(path: Path, marker: Path, *, where: str = "cfg", legacy: bool = False) -> Path:
    """A Lightning-style checkpoint with the payload in its config, its state dict or next to it."""
    state = {"model.s1.pathway0_stem.conv.weight": torch.zeros(2, 3, 1, 1, 1)}
    ckpt = {"state_dict": state, "hyper_parameters": {"cfg": {"MODEL": {"ARCH": "slowfast"}}}, "epoch": 1}
    if where == "cfg":
        ckpt["hyper_parameters"]["cfg"] = _Payload(marker)
    elif where == "tensor":
        ckpt["state_dict"]["model.head.projection.weight"] = _Payload(marker)
    else:
        ckpt["callbacks"] = {"x": _Payload(marker)}
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    return path


def write_torchscript(path: Path) -> Path:
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    return path


@pytest.mark.parametrize("where,legacy", [("cfg", False), ("tensor", False), ("callbacks", True)])
def test_import_checkpoint_refuses_crafted_pickle(tmp_path, where, legacy):
    marker = tmp_path / "pwned"
    evil = write_evil(tmp_path / "lta_slowfast_trf.ckpt", marker, where=where, legacy=legacy)
    out = tmp_path / "run"
    with pytest.raises(UnsafeCheckpointError, match=r"os\.system|posix\.system|not on the allow-list"):
        cmd_import_checkpoint.main([f"ckpt={evil}", f"out={out}", f"store={tmp_path / 'store'}", "require_features=false"])
    assert not marker.exists()
    assert not (out / "checkpoints").exists()


def test_import_checkpoint_cli_process_refuses_torchscript_and_payload(tmp_path):
    """The real `lta` process: exits non-zero with a message naming the refusal, runs nothing."""
    marker = tmp_path / "pwned"
    results = []
    for ckpt in (write_evil(tmp_path / "evil.ckpt", marker), write_torchscript(tmp_path / "scripted.ckpt")):
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "import-checkpoint", f"ckpt={ckpt}",
                               f"out={tmp_path / 'run'}", "require_features=false"], cwd=REPO, capture_output=True,
                              text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
        refused = proc.returncode != 0 and "UnsafeCheckpointError" in proc.stderr and not marker.exists()
        results.append(refused)
        assert refused, proc.stderr[-2000:]
    record_fault("security: crafted checkpoint via lta import-checkpoint", 2, sum(results), 0)


EXTRACTORS = ["slowfast_r101_8x8.ego4d", "slowfast_r50_8x8.kinetics", "mvit_b_16x4.kinetics", "clip_vit_b32.openai"]


@pytest.mark.slow
def test_extract_weights_refuse_crafted_pickle(tmp_path, sample_annotations):
    """`lta extract weights=EVIL` for each backbone family: refused before any store or frame, nothing runs."""
    marker = tmp_path / "pwned"
    refused = []
    for name in EXTRACTORS:
        evil = write_evil(tmp_path / f"{name}.ckpt", marker, where="tensor" if "kinetics" in name else "cfg")
        store = tmp_path / f"store_{name}"
        argv = [f"data={sample_annotations}", f"store={store}", f"extractors=[{name}]", f"weights={evil}", "device=cpu",
                "crop_size=32", "splits=[val]", "progress=false"]
        with pytest.raises(Exception) as err:
            cmd_extract.main(argv)
        text = f"{type(err.value).__name__}: {err.value}"
        ok = (not marker.exists() and not list(store.glob("*.zarr"))
              and any(s in text for s in ("UnsafeCheckpointError", "Weights only load failed", "not on the allow-list")))
        refused.append(ok)
        assert ok, (name, text[:1500])
    record_fault("security: crafted checkpoint via lta extract weights=", len(EXTRACTORS), sum(refused), 0)


YAML_ATTACKS = {
    "apply": "extractors: !!python/object/apply:os.system ['touch {marker}']\n",
    "new": "views: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n",
    "name": "device: !!python/name:os.system\n",
    "module": "device: !!python/module:os\n",
    "bomb": "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
            "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
            "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
            "h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\ni: [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n",
}


@pytest.mark.parametrize("attack", sorted(YAML_ATTACKS))
def test_yaml_config_is_loaded_safely(tmp_path, attack, capsys):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(YAML_ATTACKS[attack].format(marker=marker))
    with pytest.raises(ConfigError, match=r"evil\.yaml: "):
        load_yaml(cfg)
    rc = cli.main(["extract", f"config={cfg}", f"data={tmp_path}", f"store={tmp_path / 'store'}"])  # the boundary
    err = capsys.readouterr().err
    assert rc == 2 and "evil.yaml" in err and ("python" in err or "alias" in err), err
    assert not marker.exists() and not (tmp_path / "store").exists()


def test_yaml_campaign_record(tmp_path):
    marker = tmp_path / "pwned"
    refused = 0
    for attack, text in YAML_ATTACKS.items():
        cfg = tmp_path / f"{attack}.yaml"
        cfg.write_text(text.format(marker=marker))
        try:
            load_yaml(cfg)
        except ConfigError:
            refused += not marker.exists()
    record_fault("security: config=FILE with python tags / alias bomb", len(YAML_ATTACKS), refused, 0)
    assert refused == len(YAML_ATTACKS)
    ok = tmp_path / "ok.yaml"
    ok.write_text("views: 2\nextractors: [clip_vit_b32.openai]\n")
    assert load_yaml(ok).views == 2  # plain configs still load


def test_run_dir_config_with_python_tag_runs_nothing(tmp_path):
    """`lta evaluate/predict run=DIR` read DIR/config.yaml with OmegaConf's safe loader: a tag fails, runs nothing."""
    import yaml

    from train_heads.run import load_run

    marker = tmp_path / "pwned"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(f"head: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(yaml.YAMLError):
        load_run(tmp_path / "run")
    assert not marker.exists()


def test_store_paths_stay_in_the_store_root(tmp_path):
    from features.store import FeatureStore, RowTable, StoreError, cache_key, store_path

    for name in ("../escape", "a/b", "..\\x", ".hidden", "", "a b"):
        with pytest.raises(StoreError, match="must be non-empty"):
            cache_key(name, {})
    rows = RowTable(clip_uid=np.array(["c"]), action_idx=np.array([0]), split=np.array(["train"]),
                    start_sec=np.array([0.0]), end_sec=np.array([1.0]))
    key = cache_key("ok", {"x": 1})
    assert store_path(tmp_path, key).parent == tmp_path
    with pytest.raises(StoreError, match="file name does not match"):  # a path that is not <root>/<key>.zarr
        FeatureStore.create(tmp_path / "other.zarr", name="ok", spec={"x": 1}, rows=rows, view_shape=(2,), num_views=1)


def test_clip_link_leading_out_of_the_data_root_is_a_clip_failure(tmp_path):
    """A clips/<uid>.mp4 symlink to a file outside the data root is refused for that clip; the run goes on."""
    from test_faults_video import write_annotations

    from test_decode import write_video

    data = tmp_path / "data"
    write_video(data / "clips" / "good.mp4", 45, width=48, height=40)
    write_video(tmp_path / "outside.mp4", 45, width=48, height=40)
    (data / "clips" / "linked.mp4").symlink_to(tmp_path / "outside.mp4")
    write_annotations(data, [{"clip_uid": u, "action_idx": 0, "action_clip_start_sec": 0.0, "action_clip_end_sec": 1.0,
                              "verb_label": 0, "noun_label": 0} for u in ("good", "linked")])
    store = tmp_path / "store"
    rc = cmd_extract.main([f"data={data}", f"store={store}", "extractors=[slowfast_r50_8x8.kinetics]", "weights=random",
                           "device=cpu", "crop_size=32", "splits=[train]", "progress=false", "max_failed_frac=0.6"])
    failures = [json.loads(x) for x in (store / "failures.jsonl").read_text().splitlines()]
    assert rc == 0 and [f["clip_uid"] for f in failures] == ["linked"] and "escapes its root" in failures[0]["reason"]
    from features.store import open_root

    (s,) = open_root(store)
    assert s.filled().tolist() == [True, False]  # rows sorted by clip_uid: good, linked
    record_fault("security: clip symlink escaping the data root", 1, 1, 0)
