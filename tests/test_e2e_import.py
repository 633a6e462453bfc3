"""Released heads on their own backbone, end to end: the e2e fixture's mp4 bytes -> `lta extract` with the backbone
stored inside the fixture's tiny LTA checkpoint -> `lta import-checkpoint` -> the reference's features and
forecasting logits (`outputs_tiny.pt`, computed by the reference code in its pinned environment) within 1e-4.
A store extracted with another checkpoint's backbone (the tiny recognition SlowFast: same architecture,
other weights, as ego4d_slowfast8x8.ckpt is for lta_slowfast_trf.ckpt) is refused in one line.

The fixture folder is LTA_REFERENCE_E2E (default: the project's copy); its checkpoints are found through its
MANIFEST.json. Every window the fixture lists is checked; nothing about its clips or counts is assumed.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from e2e_helpers import DEFAULT_E2E, E2E_ENV, e2e_dir

E2E = Path(os.environ.get(E2E_ENV) or DEFAULT_E2E)
pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # the module fixture extracts the reference footage (about 85 s in all)
TOL = dict(rtol=1e-4, atol=1e-4)  # the fixture README's tolerance for features and logits


def _checkpoint(manifest: dict, pick) -> Path:
    names = [n for n in manifest["checkpoints"] if pick(n)]
    assert names, f"no such checkpoint in {E2E / 'MANIFEST.json'}: {sorted(manifest['checkpoints'])}"
    entry = manifest["checkpoints"][names[0]]
    path = (E2E / entry["path"]).resolve()
    from features.files import file_sha256

    assert file_sha256(path) == entry["sha256"], f"{path} is not the checkpoint MANIFEST.json lists"
    return path


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    e2e_dir()  # a missing fixture folder fails, never skips
    manifest = json.loads((E2E / "MANIFEST.json").read_text())
    outputs = torch.load(E2E / "outputs_tiny.pt", weights_only=True)
    windows = json.loads((E2E / "windows.json").read_text())
    lta = _checkpoint(manifest, lambda n: n.startswith("lta_"))
    other = _checkpoint(manifest, lambda n: "slowfast" in n and not n.startswith("lta_"))
    pipelines = outputs["lta_trf"]
    n_ins = sorted({windows["pipelines"][p]["num_input_clips"] for p in pipelines})
    splits = sorted({w["split"] for p in pipelines for w in windows["pipelines"][p]["windows"]})
    return dict(root=tmp_path_factory.mktemp("e2e_import"), manifest=manifest, outputs=pipelines, windows=windows,
                lta=lta, other=other, n_ins=n_ins, splits=splits)


def _extract(e2e, ckpt: Path, store: Path) -> None:
    from pipelines import cmd_extract

    torch.set_num_threads(1)
    argv = [f"data={E2E}", f"store={store}", "extractors=[slowfast_ckpt.ego4d]", f"weights={ckpt}", "device=cpu",
            f"splits=[{','.join(e2e['splits'])}]", f"num_input_clips=[{','.join(map(str, e2e['n_ins']))}]",
            "dtype=float32", "decode_workers=1", "batch_size=8", "progress=false"]
    assert cmd_extract.main(argv) == 0


@pytest.fixture(scope="module")
def own_store(e2e):
    store = e2e["root"] / "store"
    _extract(e2e, e2e["lta"], store)
    return store


def _bank(store: Path):
    from train_heads.inputs import load_bank, resolve_feature_keys

    keys = resolve_feature_keys(store, ["slowfast"])
    return load_bank(store, keys).to(torch.device("cpu")), keys["slowfast"]  # as train / evaluate use it


def _window_inputs(bank, window) -> dict:
    rows = bank.rows.lookup(np.array([window["clip_uid"]] * len(window["input_action_idx"])),
                       np.array(window["input_action_idx"]))
    assert (rows >= 0).all(), f"{window['key']}: input segments missing from the store"
    return bank.gather(torch.as_tensor(rows)[None], train=False)  # modality -> (1, N_in, D)


def _listed(e2e, pipeline):
    return {w["key"]: w for w in e2e["windows"]["pipelines"][pipeline]["windows"]}


def test_extracted_features_are_the_reference_backbone_features(e2e, own_store):
    bank, _ = _bank(own_store)
    checked = 0
    for pipeline, by_key in e2e["outputs"].items():
        listed = _listed(e2e, pipeline)
        for key, ref in by_key.items():
            got = _window_inputs(bank, listed[key])["slowfast"][0]
            torch.testing.assert_close(got, ref["pooled"].float(), **TOL, msg=lambda m: f"{pipeline} {key}: {m}")
            checked += 1
    assert checked


def test_imported_head_reproduces_the_reference_logits(e2e, own_store):
    from pipelines import cmd_import_checkpoint
    from train_heads.run import load_run

    bank, key = _bank(own_store)
    checked = 0
    for pipeline, by_key in e2e["outputs"].items():
        n_in = e2e["windows"]["pipelines"][pipeline]["num_input_clips"]
        out = e2e["root"] / f"run_{pipeline}"
        argv = [f"ckpt={e2e['lta']}", f"out={out}", f"store={own_store}", f"num_input={n_in}"]
        assert cmd_import_checkpoint.main(argv) == 0
        run = load_run(out)
        assert run.cache_keys == {"slowfast": key}
        # the reference's key set: every window with N_in observed segments (ptv_dataset_helper.py:449-451)
        assert (run.num_seen, run.convention) == (n_in, "plus_one")
        assert run.cfg["reference"] and run.cfg["train"]["amp"] is False
        listed = _listed(e2e, pipeline)
        for wkey, ref in by_key.items():
            with torch.no_grad():
                logits = run.model(_window_inputs(bank, listed[wkey]))
            for what in ("verb", "noun"):
                torch.testing.assert_close(logits[what][0], ref[f"{what}_logits"].float(), **TOL,
                                           msg=lambda m: f"{pipeline} {wkey} {what}: {m}")
            checked += 1
    assert checked


def test_store_of_another_backbone_is_refused_in_one_line(e2e, tmp_path, capsys):
    from pipelines import cli, cmd_import_checkpoint

    store = tmp_path / "foreign"
    _extract(e2e, e2e["other"], store)
    capsys.readouterr()
    out = tmp_path / "run"
    argv = [f"ckpt={e2e['lta']}", f"out={out}", f"store={store}"]
    assert cli.main(["import-checkpoint", *argv]) == 2  # through the boundary, which prints the one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lta import-checkpoint: "), err
    assert e2e["lta"].name in err[0] and e2e["other"].name in err[0] and "allow_foreign_features" in err[0], err[0]
    assert not (out / "checkpoints").exists()
    assert cmd_import_checkpoint.main(argv + ["allow_foreign_features=true"]) == 0
