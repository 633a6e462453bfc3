"""`lta report`: a self-contained HTML page, parsed strictly and checked against independently computed values.

A short training run on synthetic features of the tiny sample (whose clips are real H.264 files), then
the report on val (coloured), on test (uncoloured) and with the videos missing (placeholders).
The slow test renders the page in headless Chromium when one is installed.
"""
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
from importlib import metadata
from io import BytesIO
from pathlib import Path

import editdistance
import html5lib
import numpy as np
import pytest
import torch
from conftest import TINY_SAMPLE
from PIL import Image

from features.annotations import load_split
from features.submission import read_predictions
from features.synthetic import plan_sample
from pipelines import cmd_evaluate, cmd_predict, cmd_report, cmd_train_heads
from train_heads.report import ReportHeader, feature_provenance, render_report
from train_heads.run import load_checkpoint, save_checkpoint
from synthetic_store import write_synthetic_stores

torch.set_num_threads(1)
N_IN = 2
MATCH_CLASS = {2: "hit", 1: "half", 0: "miss"}  # the colours the report promises, restated here
SVG = "{http://www.w3.org/2000/svg}"  # html5lib puts inline SVG elements in the SVG namespace
REPORT_METRICS = "{run}/report_cache/metrics_val.json"  # where the report keeps the evaluations it ran


def _report_metrics(run_dir) -> dict:
    return json.loads(Path(REPORT_METRICS.format(run=run_dir)).read_text())


@pytest.fixture(scope="module")
def run(tiny_sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    plan = plan_sample(**TINY_SAMPLE)  # the plan tiny_sample was rendered from
    write_synthetic_stores(tiny_sample, root / "store", plan, num_views=1, noise=1.0,
                           modalities={"slowfast": ("slowfast_r101_8x8.synthetic", (32,))})
    argv = [f"data={tiny_sample}", f"store={root / 'store'}", f"out={root / 'run'}", "num_seen=4",
            "head.modalities=[{name: slowfast, proj_dim: 32}]", f"head.num_input={N_IN}", "head.aggregator=concat",
            "train.epochs=4", "train.lr=2e-3", "train.warmup_steps=2", "train.batch_size=16", "train.log_every=50"]
    assert cmd_train_heads.main(argv) == 0
    return {"root": root, "run": root / "run", "data": tiny_sample, "store": root / "store"}


def _parse(page: str):
    """Strict HTML5 parse (raises on any parse error); elements without the XHTML namespace prefix."""
    return html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(page)


def _no_external(page: str) -> None:
    assert not re.search(r"(?i)(https?|ftp):", page)
    assert not re.search(r"(?i)<(script|link|iframe)\b", page)
    assert not re.search(r"(?i)(src|href)=\"(?!data:image/jpeg;base64,)", page)
    assert "url(" not in page


def _windows(doc) -> list:
    return [s for s in doc.iter("section") if s.get("class") == "window"]


def _cells(section, row_class: str) -> list[list]:
    """Per row of `row_class`, its z = 1..Z cells (the ones naming an action in their title)."""
    return [[td for td in tr.iter("td") if td.get("title")] for tr in section.iter("tr")
            if row_class in (tr.get("class") or "").split()]


@pytest.fixture(scope="module")
def val_report(run):
    out = run["root"] / "val.html"
    (run["run"] / "metrics_val.json").unlink(missing_ok=True)  # the report must run `lta evaluate` itself
    assert cmd_report.main([f"run={run['run']}", "split=val", f"out={out}", "windows=4", "seed=1"]) == 0
    assert Path(REPORT_METRICS.format(run=run["run"])).is_file()
    assert not (run["run"] / "metrics_val.json").exists()  # evaluate's own file (predict reads it) is left alone
    return out


def test_val_report_structure_and_curves(val_report, run):
    page = val_report.read_text()
    doc = _parse(page)
    _no_external(page)
    metrics = _report_metrics(run["run"])  # written by the evaluate the report ran
    windows = _windows(doc)
    assert len(windows) == 4
    imgs = [i for i in doc.iter("img")]
    assert len(imgs) == 4 * N_IN and all(i.get("src").startswith("data:image/jpeg;base64,") for i in imgs)
    for img in imgs:  # real JPEGs of the requested width, not blank frames
        pic = Image.open(BytesIO(base64.b64decode(img.get("src").split(",", 1)[1])))
        assert pic.format == "JPEG" and pic.size == (160, 120) and np.asarray(pic).std() > 5
    assert doc.find(".//div[@id='synthetic-banner']") is not None and doc.find(".//div[@id='random-weights-banner']") is None
    # ED table: one row per scored method, values as in the metrics file
    methods = sorted(k[: -len(".action_ed")] for k in metrics if k.endswith(".action_ed"))
    assert len(methods) == 9 and "model.sample" in methods and "frequency_prior" in methods
    rows = {tr.get("data-method"): tr for table in ("metrics-table", "oracle-table")
            for tr in doc.find(f".//table[@id='{table}']").iter("tr") if tr.get("data-method")}
    assert sorted(rows) == methods
    for m in methods:
        values = [td.text for td in rows[m].iter("td")][1:4]
        assert values == [f"{metrics[f'{m}.{w}_ed']:.4f}" for w in ("verb", "noun", "action")]
    # action ED@z chart: one 20-point polyline per method, y = top + (1 - ED@z) * height of the plot frame
    svg = doc.find(f".//{SVG}svg[@id='ed-curve-action']")
    frame = svg.find(f"{SVG}rect")
    top, height = float(frame.get("y")), float(frame.get("height"))
    lines = {p.get("data-method"): p for p in svg.iter(f"{SVG}polyline")}
    assert sorted(lines) == methods
    for m, line in lines.items():
        pts = np.array([[float(v) for v in p.split(",")] for p in line.get("points").split()])
        assert pts.shape == (20, 2) and np.all(np.diff(pts[:, 0]) > 0)
        np.testing.assert_allclose(pts[:, 1], top + (1 - np.array(metrics[f"{m}.action_ed_curve"])) * height, atol=0.06)
    assert len(list(doc.iter(f"{SVG}svg"))) == 3


def test_val_colours_and_edit_distances_match_predict(val_report, run, tmp_path):
    doc = _parse(val_report.read_text())
    # the shown sequences are those `lta predict` writes (generator sample, same seed): an independent source
    pred_path = tmp_path / "val_outputs.json"
    assert cmd_predict.main([f"run={run['run']}", "split=val", f"out={pred_path}", "seed=1"]) == 0
    preds = read_predictions(pred_path)
    ann = load_split(run["data"], "val")
    row_of = {f"{c}_{a}": r for r, (c, a) in enumerate(zip(ann.clip_uid, ann.action_idx))}
    checked = 0
    for section in _windows(doc):
        key = section.get("data-key")
        last = row_of[key]
        truth_v, truth_n = ann.verb[last + 1:last + 21], ann.noun[last + 1:last + 21]
        pv, pn = np.array(preds[key]["verb"]), np.array(preds[key]["noun"])  # (K, Z)
        assert pv.shape == (5, 20)
        (truth_cells,) = _cells(section, "truth")
        assert [td.get("title") for td in truth_cells] == [f"{ann.taxonomy.verbs[v]} / {ann.taxonomy.nouns[n]}"
                                                           for v, n in zip(truth_v, truth_n)]
        pred_rows = _cells(section, "pred")
        assert len(pred_rows) == 5
        eds = [float(td.text) for tr in section.iter("tr") for td in tr.iter("td") if td.get("class") == "ed"]
        for j, cells in enumerate(pred_rows):
            assert [td.get("title") for td in cells] == [f"{ann.taxonomy.verbs[v]} / {ann.taxonomy.nouns[n]}"
                                                         for v, n in zip(pv[j], pn[j])]
            expect = [MATCH_CLASS[int(a == b) + int(c == d)] for a, b, c, d in zip(pv[j], truth_v, pn[j], truth_n)]
            assert [td.get("class") for td in cells] == expect
            tokens = lambda v, n: [f"{a}:{b}" for a, b in zip(v, n)]  # noqa: E731
            assert eds[j] == pytest.approx(editdistance.eval(tokens(pv[j], pn[j]), tokens(truth_v, truth_n)) / 20, abs=0.005)
        best = [tr for tr in section.iter("tr") if "best" in (tr.get("class") or "").split()]
        assert len(best) == 1 and int(best[0].get("data-seq")) == int(np.argmin(eds))
        # thumbnails: the observed segments are the N_IN segments ending at the key, captioned with their labels
        captions = ["".join(f.find("figcaption").itertext()) for f in section.iter("figure")]
        assert len(captions) == N_IN
        for s, r in enumerate(range(last - N_IN + 1, last + 1)):
            assert captions[s].startswith(f"#{ann.action_idx[r]} ")
            assert ann.taxonomy.verbs[ann.verb[r]].split("_(")[0].replace("_", " ") in captions[s]
        checked += 1
    assert checked == 4


def test_test_split_uncoloured_and_missing_video_placeholders(run, tmp_path):
    out = tmp_path / "test.html"
    assert cmd_report.main([f"run={run['run']}", "split=test", f"out={out}", "windows=3"]) == 0
    page = out.read_text()
    doc = _parse(page)
    _no_external(page)
    assert doc.find(".//*[@id='no-metrics']") is not None and doc.find(f".//{SVG}svg") is None
    sections = _windows(doc)
    assert len(sections) == 3 and all(not _cells(s, "truth") for s in sections)
    classes = {td.get("class") for s in sections for row in _cells(s, "pred") for td in row}
    assert classes == {"unscored"}
    assert len([i for i in doc.iter("img")]) == 3 * N_IN
    # the same run with a dataset root that has the annotations but no videos: placeholders, no crash
    bare = tmp_path / "bare"
    shutil.copytree(run["data"] / "annotations", bare / "annotations")
    out = tmp_path / "missing.html"
    ann = load_split(bare, "val")
    keys = [f"{ann.clip_uid[0]}_{ann.action_idx[r]}" for r in (6, 3)]  # windows picked by key, in the given order
    assert cmd_report.main([f"run={run['run']}", "split=val", f"out={out}", f"keys=[{keys[0]},{keys[1]}]",
                            f"data={bare}"]) == 0
    page = out.read_text()
    doc = _parse(page)
    assert [s.get("data-key") for s in _windows(doc)] == keys
    assert not list(doc.iter("img"))
    missing = [d for d in doc.iter("div") if d.get("class") == "thumb missing"]
    assert len(missing) == 2 * N_IN and "clips_hq/" in missing[0].get("title")
    assert page.count("video missing") == 2


def test_random_weight_banner_and_escaping():
    assert feature_provenance({"extractor": {"name": "clip_vit_b32.openai", "weights": "random"}})[0] == "random"
    assert feature_provenance({"extractor": {"name": "x", "weights": "/ckpt.pt"}})[0] == "pretrained"
    assert feature_provenance({"synthetic": True})[0] == "synthetic"

    class Tax:
        verbs, nouns = ("take_(<b>)",), ("nut",)

    header = ReportHeader(run_name="<script>alert(1)</script>", split="test", checkpoint="best", generator="sample",
                          seed=0, num_split_windows=0, random_weight_keys=["clip_vit_b32.openai-0123456789"])
    page = render_report(header, None, [], Tax())
    doc = _parse(page)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "RANDOM-WEIGHT" in "".join(doc.find(".//div[@id='random-weights-banner']").itertext())


@pytest.mark.slow
def test_chromium_renders_report(request, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        if os.environ.get("LTA_REQUIRE_CHROMIUM", "") not in ("", "0"):  # set by .ci/run once it installed one
            pytest.fail("LTA_REQUIRE_CHROMIUM is set but no chromium / chromium-browser / google-chrome is on PATH")
        pytest.skip("no chromium binary on PATH (apt-get install chromium); the strict HTML parse still ran")
    val_report = request.getfixturevalue("val_report")

    png = tmp_path / "report.png"
    width, height = 1280, 2400
    res = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={width},{height}",
                          f"--screenshot={png}", val_report.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and png.is_file(), res.stderr[-2000:]
    img = np.asarray(Image.open(png).convert("RGB")).astype(np.int64)
    assert img.shape == (height, width, 3) and img.std() > 20
    # the correctness colours and the thumbnails were painted (not just a white page with text)
    for rgb in ((0xa5, 0xd6, 0xa7), (0xef, 0x9a, 0x9a)):
        assert (np.abs(img - np.array(rgb)).sum(-1) <= 6).sum() > 200, rgb


# -- the report tells oracles apart, shows the ED table of the checkpoint it shows, has legends and a version --
REPO = Path(__file__).resolve().parents[1]
ED_COLUMNS = ("verb_ed", "noun_ed", "action_ed", "action_aued")


def _table_rows(doc, table_id: str) -> dict:
    table = doc.find(f".//table[@id='{table_id}']")
    return {} if table is None else {tr.get("data-method"): tr for tr in table.iter("tr") if tr.get("data-method")}


def _ed_rows(doc) -> dict[str, list[str]]:
    """method -> its four shown ED values, from the main table and the oracle table."""
    return {m: [td.text for td in tr.iter("td")][1:5] for t in ("metrics-table", "oracle-table")
            for m, tr in _table_rows(doc, t).items()}


def test_oracle_baselines_apart_and_never_best(val_report, run):
    doc = _parse(val_report.read_text())
    metrics = _report_metrics(run["run"])
    oracles = metrics["oracle_methods"]
    assert "markov_oracle" in oracles  # the Markov chain fed with the true observed labels
    main, apart = _table_rows(doc, "metrics-table"), _table_rows(doc, "oracle-table")
    assert sorted(apart) == sorted(oracles) and main and not set(main) & set(oracles)
    assert doc.find(".//*[@id='oracle-note']") is not None
    assert not [td for tr in apart.values() for td in tr.iter("td") if td.get("class") == "best"]
    for j, col in enumerate(ED_COLUMNS):  # best: the lowest value among the rows that see no labels
        lowest = min(metrics[f"{m}.{col}"] for m in main)
        marked = [m for m, tr in main.items() if list(tr.iter("td"))[1 + j].get("class") == "best"]
        assert marked and all(metrics[f"{m}.{col}"] == lowest for m in marked), col


def test_an_oracle_better_than_every_method_is_not_marked_best():
    metrics = {"num_windows": 2, "oracle_methods": ["markov_oracle"]}
    for m, v in (("model.sample", 0.8), ("markov", 0.9), ("markov_oracle", 0.1)):
        metrics.update({f"{m}.{c}": v for c in ED_COLUMNS})
        metrics.update({f"{m}.{w}_ed_curve": [v, v, v] for w in ("verb", "noun", "action")})
    header = ReportHeader(run_name="r", split="val", checkpoint="best", generator="sample", seed=0, num_split_windows=2)
    doc = _parse(render_report(header, metrics, [], None))
    best = [tr.get("data-method") for tr in doc.iter("tr") for td in tr.iter("td") if td.get("class") == "best"]
    assert best == ["model.sample"] * len(ED_COLUMNS)
    assert list(_table_rows(doc, "oracle-table")) == ["markov_oracle"]


def test_every_ed_chart_has_a_legend_entry_per_curve(val_report, run):
    doc = _parse(val_report.read_text())
    metrics = _report_metrics(run["run"])
    oracles = set(metrics.get("oracle_methods", []))
    swatch = {m: re.search(r"background:(#[0-9a-f]{6})", "".join(
        s.get("style") for s in tr.iter("span"))).group(1) for t in ("metrics-table", "oracle-table")
        for m, tr in _table_rows(doc, t).items()}
    svgs = list(doc.iter(f"{SVG}svg"))
    assert len(svgs) == 3
    for svg in svgs:
        curves = {p.get("data-method"): p for p in svg.iter(f"{SVG}polyline")}
        legend = {g.get("data-method"): g for g in svg.iter(f"{SVG}g") if g.get("class") == "legend-entry"}
        assert curves and sorted(legend) == sorted(curves)
        frame = svg.find(f"{SVG}rect")
        styles = set()
        for m, g in legend.items():
            (line,) = g.iter(f"{SVG}line")
            assert line.get("stroke") == curves[m].get("stroke") == swatch[m]
            assert line.get("stroke-dasharray") == curves[m].get("stroke-dasharray")
            assert "".join(g.itertext()) == (f"{m} (oracle)" if m in oracles else m)
            (text,) = g.iter(f"{SVG}text")  # drawn below the plot frame, inside the picture
            assert float(frame.get("y")) + float(frame.get("height")) < float(text.get("y")) <= float(svg.get("height"))
            styles.add((line.get("stroke"), line.get("stroke-dasharray")))
        assert len(styles) == len(legend)  # every curve can be told apart


@pytest.fixture
def run_copy(run, val_report, tmp_path):
    """A copy of the trained run dir, with the evaluation the val report ran (seed 1) in its report cache."""
    shutil.copytree(run["run"], tmp_path / "run_copy")
    return tmp_path / "run_copy"


def test_ed_table_is_computed_for_the_checkpoint_shown(run_copy, tmp_path):
    old = _report_metrics(run_copy)
    state = load_checkpoint(run_copy, "best")  # "retrain": same checkpoint name, other weights
    gen = torch.Generator().manual_seed(0)
    state["model"] = {k: v + torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    save_checkpoint(run_copy, "best", state)
    digest = hashlib.sha256((run_copy / "checkpoints" / "best.pt").read_bytes()).hexdigest()
    out = tmp_path / "val.html"
    assert cmd_report.main([f"run={run_copy}", "split=val", f"out={out}", "windows=1", "seed=1"]) == 0
    doc = _parse(out.read_text())
    assert doc.find(".//*[@id='metrics-fingerprint']").get("data-checkpoint-sha256") == digest
    shown = _ed_rows(doc)
    # the numbers are those a plain `lta evaluate` (default settings) gives for the new weights, not the old ones
    assert cmd_evaluate.main([f"run={run_copy}", "split=val", "seed=1"]) == 0
    expect = json.loads((run_copy / "metrics_val.json").read_text())
    assert sorted(shown) == sorted(k[: -len(".action_ed")] for k in expect if k.endswith(".action_ed"))
    assert all(shown[m] == [f"{expect[f'{m}.{c}']:.4f}" for c in ED_COLUMNS] for m in shown)
    models = [m for m in shown if m.startswith("model.")]
    assert models and any(shown[m] != [f"{old[f'{m}.{c}']:.4f}" for c in ED_COLUMNS] for m in models)
    # that evaluate's file has the report's fingerprint: the next report shows it without evaluating again
    shutil.rmtree(run_copy / "report_cache")
    assert cmd_report.main([f"run={run_copy}", "split=val", f"out={tmp_path / 'again.html'}", "windows=1", "seed=1"]) == 0
    assert not (run_copy / "report_cache").exists()
    assert _ed_rows(_parse((tmp_path / "again.html").read_text())) == shown


def test_a_partial_or_damaged_evaluate_is_not_shown(run_copy, tmp_path):
    from pipelines.cmd_evaluate import EvaluateConfig

    assert cmd_evaluate.main([f"run={run_copy}", "split=val", "seed=1", "generators=[sample]",
                              "baselines=[frequency_prior]"]) == 0
    user_file = (run_copy / "metrics_val.json").read_bytes()
    partial = [k for k in json.loads(user_file) if k.endswith(".action_ed")]
    Path(REPORT_METRICS.format(run=run_copy)).write_text('{"model.sample.action_ed": 0.1, ')  # cut off mid-write
    out = tmp_path / "val.html"
    assert cmd_report.main([f"run={run_copy}", "split=val", f"out={out}", "windows=1", "seed=1"]) == 0
    shown = _ed_rows(_parse(out.read_text()))
    defaults = EvaluateConfig()
    assert {f"model.{g}" for g in defaults.generators} | set(defaults.baselines) <= set(shown)
    assert len(shown) > len(partial)
    full = _report_metrics(run_copy)  # evaluated again, completely
    assert sorted(shown) == sorted(k[: -len(".action_ed")] for k in full if k.endswith(".action_ed"))
    assert all(shown[m] == [f"{full[f'{m}.{c}']:.4f}" for c in ED_COLUMNS] for m in shown)
    assert (run_copy / "metrics_val.json").read_bytes() == user_file  # the user's partial evaluate is kept
    # asked for that evaluate's settings, the report shows exactly its rows, without evaluating again
    cache_mtime = Path(REPORT_METRICS.format(run=run_copy)).stat().st_mtime_ns
    assert cmd_report.main([f"run={run_copy}", "split=val", f"out={out}", "windows=1", "seed=1", "generators=[sample]",
                            "baselines=[frequency_prior]", "overwrite=true"]) == 0
    assert sorted(_ed_rows(_parse(out.read_text()))) == sorted(k[: -len(".action_ed")] for k in partial)
    assert Path(REPORT_METRICS.format(run=run_copy)).stat().st_mtime_ns == cache_mtime


def _git_version() -> str:
    res = subprocess.run(["git", "-C", str(REPO), "describe", "--tags", "--always", "--dirty"], capture_output=True, text=True)
    return f"git {res.stdout.strip()}" if res.returncode == 0 and res.stdout.strip() else "git unknown (not a git checkout)"


def test_footer_names_the_code_version(run, tmp_path):
    name = re.search(r'(?m)^name = "([^"]+)"', (REPO / "pyproject.toml").read_text())[1]  # the distribution
    before = _git_version()  # read on both sides: a commit may land while the report runs
    out = tmp_path / "test.html"
    assert cmd_report.main([f"run={run['run']}", "split=test", f"out={out}", "windows=1"]) == 0
    after = _git_version()
    footer = _parse(out.read_text()).find(".//footer")
    (span,) = [s for s in footer.iter("span") if s.get("id") == "code-version"]
    assert span.text in {f"{name} {metadata.version(name)}, {v}" for v in (before, after)}


def test_shown_generator_defaults_to_the_runs_val_selection(run_copy, tmp_path):
    """Without generator=, the report shows the sequences `lta predict` writes by default: the generator
    `lta evaluate split=val` selected for this checkpoint."""
    assert cmd_evaluate.main([f"run={run_copy}", "split=val", "seed=1", "generators=[greedy+sample]",
                              "baselines=[frequency_prior]", "device=cpu"]) == 0
    out = tmp_path / "val.html"
    assert cmd_report.main([f"run={run_copy}", "split=val", f"out={out}", "windows=1", "seed=1"]) == 0
    assert "generator greedy+sample, seed 1" in out.read_text()
    explicit = tmp_path / "sample.html"
    assert cmd_report.main([f"run={run_copy}", "split=val", f"out={explicit}", "windows=1", "seed=1",
                            "generator=sample"]) == 0
    assert "generator sample, seed 1" in explicit.read_text()
