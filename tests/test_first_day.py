"""A researcher's first day, second pass (issue 25), through the real `lta` CLI: run dirs that travel, evaluate
results merged per generator, no silent overwrites, usage errors before any data loads.

One tiny head trained in-process on a synthetic store (a few seconds) serves every test; tests that change a
run work on a copy of it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from features.store import RowTable  # noqa: F401 - features first (import order of the project)
from pipelines import cmd_train_heads
from test_cli_usability import MODALITIES, TRAIN, assert_one_line, lta

pytestmark = pytest.mark.slow  # CLI runs in processes of their own (tests/cli_proc.py) over a trained run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_torch_thread):
    from synthetic_store import write_synthetic_dataset, write_synthetic_stores

    root = tmp_path_factory.mktemp("first_day")
    plan = write_synthetic_dataset(root / "data", clips=16, seed=5)
    write_synthetic_stores(root / "data", root / "store", plan, modalities=MODALITIES, noise=1.0)
    assert cmd_train_heads.main([f"data={root / 'data'}", f"store={root / 'store'}", f"out={root / 'run'}", *TRAIN]) == 0
    return {"root": root, "data": root / "data", "store": root / "store", "run": root / "run"}


def fresh_code_version() -> str:
    """`code_version()` as a subprocess started now sees it (not this process's cached value: the checkout may
    have turned dirty since, e.g. when a developer edits files while the suite runs)."""
    from features.version import code_version

    return code_version.__wrapped__()


def copy_project(tiny, dest: Path, *, data: bool = True, store: bool = True) -> Path:
    """`dest` holding a copy of the run dir (and of the data and store beside it, as the demo lays them out)."""
    shutil.copytree(tiny["run"], dest / "run")
    if data:
        shutil.copytree(tiny["data"], dest / "data")
    if store:
        shutil.copytree(tiny["store"], dest / "store")
    return dest / "run"


def roots_line(stdout: str) -> str:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("run ")]
    assert len(lines) == 1, stdout
    return lines[0]


# --- item 1: run dirs that travel ---------------------------------------------------------------------

def test_a_copied_run_dir_reads_the_copies_and_says_so(tiny, tmp_path):
    run = copy_project(tiny, tmp_path / "copy")
    res = lta("predict", f"run={run}", "split=val", "device=cpu", f"out={tmp_path / 'a.json'}")
    assert res.returncode == 0, res.stderr[-2000:]
    line = roots_line(res.stdout)
    assert f"data {tmp_path / 'copy' / 'data'} (run dir relative)" in line, line
    assert f"store {tmp_path / 'copy' / 'store'} (run dir relative)" in line, line
    # without the copied data: the recorded (original) one, named as recorded
    shutil.rmtree(tmp_path / "copy" / "data")
    res = lta("predict", f"run={run}", "split=val", "device=cpu", f"store={tiny['store']}", f"out={tmp_path / 'b.json'}")
    assert res.returncode == 0, res.stderr[-2000:]
    line = roots_line(res.stdout)
    assert f"data {tiny['data']} (recorded in {run / 'config.yaml'})" in line, line
    assert f"store {tiny['store']} (argument)" in line, line


def test_every_missing_root_in_one_error_named_by_its_source(tiny, tmp_path):
    run = copy_project(tiny, tmp_path / "copy", data=False, store=False)
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace(f"data: {tiny['data']}", f"data: {tmp_path / 'gone_data'}")
                   .replace(f"store: {tiny['store']}", f"store: {tmp_path / 'gone_store'}"))
    for command in ("evaluate", "predict", "report"):
        line = assert_one_line(lta(command, f"run={run}", "split=val", "device=cpu"), 2,
                               f"data {tmp_path / 'gone_data'} (recorded in {cfg})",
                               f"store {tmp_path / 'gone_store'} (recorded in {cfg})", "pass data=DIR", "pass store=DIR")
        assert "data=/" not in line and "store=/" not in line, line
    # a root given on the command line is named as the argument, the other by its source
    line = assert_one_line(lta("evaluate", f"run={run}", f"data={tmp_path / 'typo'}", "device=cpu"), 2,
                           f"data={tmp_path / 'typo'}: dataset root does not exist",
                           f"store {tmp_path / 'gone_store'} (recorded in {cfg})")
    assert not list(run.glob("metrics_val*")) and not (run / "outputs.json").exists()


# --- item 2: a partial evaluate adds to the run's metrics, never changes predict's choice for the worse ---

def test_partial_evaluate_merges_per_generator_and_keeps_predicts_choice(tiny, tmp_path):
    run = copy_project(tiny, tmp_path / "copy")
    both = ["sample", "greedy+sample"]
    res = lta("evaluate", f"run={run}", f"generators=[{','.join(both)}]", "baselines=[frequency_prior,markov_oracle]",
              "device=cpu")
    assert res.returncode == 0, res.stderr[-2000:]
    first = json.loads((run / "metrics_val.json").read_text())
    # item 7: an action AUED column, the oracle last and marked, baseline progress lines, no tqdm bar into the pipe
    table = res.stdout.splitlines()
    header = next(i for i, ln in enumerate(table) if ln.startswith("method"))
    assert "action AUED" in table[header]
    rows = table[header + 1: header + 5]
    assert rows[-1].startswith("markov_oracle (oracle: true labels)"), rows
    assert f"{first['frequency_prior.action_aued']:.4f}" in next(r for r in rows if r.startswith("frequency_prior"))
    assert "baselines: 2/2 markov_oracle" in res.stderr and "\r" not in res.stderr and "it/s" not in res.stderr
    best = min(both, key=lambda g: (first[f"model.{g}.action_ed"], both.index(g)))
    worse = next(g for g in both if g != best)
    assert first["selected_generator"] == best
    res = lta("evaluate", f"run={run}", f"generators=[{worse}]", "baselines=[]", "device=cpu")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"kept the earlier results of model.{best}, frequency_prior, markov_oracle" in res.stdout, res.stdout
    merged = json.loads((run / "metrics_val.json").read_text())
    assert merged["selected_generator"] == best
    for method in (f"model.{best}", f"model.{worse}", "frequency_prior"):
        assert merged[f"{method}.action_ed"] == first[f"{method}.action_ed"], method
    assert set(merged["fingerprint"]["generators"]) == set(both)
    res = lta("predict", f"run={run}", "split=val", "device=cpu", f"out={tmp_path / 'o.json'}")
    assert res.returncode == 0 and f"generator {best} (lowest val action ED" in res.stdout, res.stdout + res.stderr[-2000:]
    # other settings (a seed): the file is replaced, and says so
    res = lta("evaluate", f"run={run}", "generators=[sample]", "baselines=[]", "seed=1", "device=cpu")
    assert res.returncode == 0 and "replacing" in res.stdout and "(seed differ)" in res.stdout, res.stdout
    assert json.loads((run / "metrics_val.json").read_text())["fingerprint"]["generators"] == ["sample"]


def test_merge_keeps_only_results_of_the_same_checkpoint_and_settings():
    from train_heads.evaluate import merge_evaluations, select_generator
    from train_heads.fingerprint import with_id

    def evaluation(sha: str, seed: int, **eds: float) -> dict:
        fp = with_id({"checkpoint_sha256": sha, "seed": seed, "generators": [g for g in eds if g != "markov"],
                      "baselines": ["markov"] if "markov" in eds else []})
        return {"fingerprint": fp, **{(k if k == "markov" else f"model.{k}") + ".action_ed": v for k, v in eds.items()}}

    old = evaluation("a", 0, sample=0.9, mbr=0.8, markov=0.95)
    merged, kept = merge_evaluations(old, evaluation("a", 0, sample=0.85))
    assert kept == ["model.mbr", "markov"] and select_generator(merged) == "mbr"
    assert merged["model.sample.action_ed"] == 0.85 and merged["fingerprint"]["generators"] == ["sample", "mbr"]
    assert merged["fingerprint"] == old["fingerprint"]  # a subset scored again: the same inputs, the same id
    for other in (evaluation("b", 0, sample=0.85), evaluation("a", 1, sample=0.85)):  # another checkpoint / seed
        replaced, kept = merge_evaluations(old, other)
        assert kept == [] and replaced == other and select_generator(replaced) == "sample"


# --- item 3: predict and report write into the run dir, never over an existing file ----------------------

def test_predict_and_report_default_into_the_run_dir_and_never_overwrite(tiny, tmp_path):
    import hashlib


    run = copy_project(tiny, tmp_path / "copy")
    res = lta("predict", f"run={run}", "split=test", "device=cpu")
    assert res.returncode == 0, res.stderr[-2000:]
    out = run / "outputs.json"
    written = out.read_bytes()
    assert f"wrote {out}" in res.stdout and set(json.loads(written)) and "generator" not in json.loads(written)
    assert (res.stdout + res.stderr).count("generator sample (") == 1, res.stdout + res.stderr  # said once
    prov = json.loads((run / "outputs.json.provenance.json").read_text())
    assert prov["run"] == str(run) and prov["split"] == "test" and prov["checkpoint"] == "best"
    assert prov["checkpoint_sha256"] == hashlib.sha256((run / "checkpoints" / "best.pt").read_bytes()).hexdigest()
    assert prov["generator"] == "sample" and prov["code_version"] == fresh_code_version()
    assert_one_line(lta("predict", f"run={run}", "split=test", "device=cpu"), 2,
                    f"out={out}: already exists", "overwrite=true")
    assert out.read_bytes() == written
    # report: refused before anything loads, the existing page kept
    (run / "report.html").write_text("my notes")
    assert_one_line(lta("report", f"run={run}", "device=cpu"), 2, f"out={run / 'report.html'}: already exists")
    assert (run / "report.html").read_text() == "my notes"
    res = lta("predict", f"run={run}", "split=test", "device=cpu", "overwrite=true")
    assert res.returncode == 0 and out.read_bytes() == written, res.stderr[-2000:]  # same run, seed: same file


# --- item 4: nonsense numbers and late errors are usage errors, before any data loads ------------------

def damaged_store(tiny, dest: Path) -> Path:
    """A copy of the run's store whose feature chunks are garbage: a command that loads features from it fails
    with exit 1, so an exit 2 with it proves the check ran before anything was loaded."""
    shutil.copytree(tiny["store"], dest)
    for chunk in [p for p in dest.glob("*.zarr/features/c/**/*") if p.is_file()]:
        chunk.write_bytes(b"garbage")
    return dest


def test_usage_errors_before_any_data_loads(tiny, tmp_path):
    data, run = tiny["data"], tiny["run"]
    store = damaged_store(tiny, tmp_path / "damaged")
    (zarr,) = store.glob("*.zarr")
    other = tmp_path / "other"
    shutil.copytree(zarr, other / "mvit_b_16x4.synthetic-0123456789.zarr")
    never = tmp_path / "never"
    th = ["train-heads", f"data={data}", f"store={store}", f"out={never}", *TRAIN]
    cases = [
        ([*th, "train.epochs=0"], ["train.epochs=0", ">= 1"]),
        ([*th, "train.batch_size=0"], ["train.batch_size=0", ">= 1"]),
        ([*th, "features=[slowfast_nope]"], ["features", "slowfast_nope", "not found"]),
        (["predict", f"run={run}", f"store={store}", "generator=beam_search", f"out={never / 'o.json'}"],
         ["generator=beam_search", "autoregressive decoder", "head.decoder=multihead"]),
        (["evaluate", f"run={run}", f"store={store}", "generators=[sample,beam_search]"], ["generators=beam_search"]),
        (["evaluate", f"run={run}", f"store={other}"], [f"store={other}", "no store of the run's features"]),
        (["evaluate", f"run={run}", "split=test"], ["split=test", "no labels", "lta predict split=test"]),
        (["evaluate", f"run={run}", f"store={zarr}"], [f"store={zarr}", "one feature store", f"pass store={store}"]),
        (["evaluate", f"run={run}", f"store={tmp_path}"], [f"store={tmp_path}", f"pass store={store}"]),
        (["store", "ls", f"store={zarr}"], ["one feature store", f"pass store={store}"]),
        (["store", "ls", f"store={tmp_path}"], [f"pass store={store}"]),
    ]
    for argv, needles in cases:
        line = assert_one_line(lta(*argv), 2, *needles)
        assert "Error:" not in line, line  # no exception class name
    assert not never.exists()


def test_resume_with_a_changed_config_is_refused_before_loading(tiny, tmp_path):
    run = copy_project(tiny, tmp_path / "copy", data=False, store=False)
    before = sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*"))
    store = damaged_store(tiny, tmp_path / "damaged")
    line = assert_one_line(lta("train-heads", f"data={tiny['data']}", f"store={store}", f"out={run}", "resume=true",
                               *TRAIN, "train.lr=1e-3"), 2, "resume=true", "train.lr (0.002 -> 0.001)")
    assert "Error:" not in line, line
    assert sorted((p.relative_to(run), p.stat().st_mtime_ns) for p in run.rglob("*")) == before


def test_config_file_mistakes_name_the_file_and_the_key(tmp_path):
    typo, wrong = tmp_path / "typo.yaml", tmp_path / "wrong.yaml"
    typo.write_text("train:\n  epoch: 3\n")
    wrong.write_text("train:\n  epochs: many\n")
    line = assert_one_line(lta("train-heads", f"config={typo}"), 2, str(typo), "train.epoch",
                           "did you mean 'train.epochs'", "`lta train-heads --help`")
    assert "lta ..." not in line
    assert_one_line(lta("train-heads", f"config={wrong}"), 2, str(wrong), "train.epochs", "many")


# --- item 5: a warm-up longer than the run is cut, with a warning -------------------------------------

def test_a_yaml_without_warmup_steps_still_reaches_its_lr(tiny, tmp_path):
    from train_heads.schemas import TrainConfig

    config = tmp_path / "short.yaml"  # no train.warmup_steps: the reference default, far more than this run's steps
    config.write_text("train:\n  epochs: 2\n  lr: 2.0e-3\n  batch_size: 32\n")
    run = tmp_path / "run"
    args = [a for a in TRAIN if not a.startswith(("train.warmup_steps", "train.epochs", "train.lr", "train.batch_size"))]
    res = lta("train-heads", f"config={config}", f"data={tiny['data']}", f"store={tiny['store']}", f"out={run}", *args)
    assert res.returncode == 0, res.stderr[-2000:]
    history = json.loads((run / "metrics.json").read_text())["history"]
    steps = history[-1]["step"]
    assert TrainConfig().warmup_steps >= 2 * steps  # the case: the default warm-up is at least twice the run
    assert f"train.warmup_steps={TrainConfig().warmup_steps} is at least twice this run's {steps} steps" in res.stderr
    # the end-of-epoch-1 lr: the cosine's value shortly after the peak, not a point on a 1000-step warm-up ramp
    assert history[0]["lr"] > 0.4 * 2e-3, history[0]["lr"]


# --- items 10 and 11: the demo's retrieval sentence, help, version, score and checkpoint hints ----------

def test_demo_explains_why_retrieval_wins_only_when_it_does():
    from pipelines.cmd_demo import retrieval_note

    head = {"method": "slowfast_concat (sample)", "generator": "sample", "action": 0.648}
    knn = {"method": "knn_retrieval (features of slowfast_concat)", "generator": "knn_retrieval", "action": 0.338}
    note = retrieval_note([head, knn], head)
    assert note and "0.3380" in note and "0.6480" in note and "shared cyclic recipes" in note and "\n" not in note
    assert retrieval_note([head, {**knn, "action": 0.7}], head) is None


def test_version_help_score_and_checkpoint_hints(tiny, tmp_path):

    res = lta("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"lta {fresh_code_version()}", res.stdout + res.stderr
    res = lta("--help")
    assert res.returncode == 0 and "merge" in next(ln for ln in res.stdout.splitlines() if ln.strip().startswith("store"))
    predictions = tmp_path / "p.json"
    predictions.write_text("{}")
    assert_one_line(lta("score", f"data={tiny['data']}", "split=test", f"predictions={predictions}"), 2,
                    "split 'test' has no labels", "withheld_labels=true")
    run = copy_project(tiny, tmp_path / "copy", data=False, store=False)
    (run / "checkpoints" / "best.pt").unlink()
    assert_one_line(lta("evaluate", f"run={run}"), 2, "checkpoint=best", "pass checkpoint=last")
