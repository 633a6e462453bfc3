"""`lta demo out=DIR`: the whole pipeline on a synthetic Ego4D-format sample, on the CPU, in minutes.

sample -> resize -> extract (SlowFast R50 + CLIP ViT-B/32, random weights, CPU-sized crop) -> train-heads
(pipelines/configs/demo/*.yaml) -> evaluate against the no-training baselines -> predict + score the test
split (against the labels the sample withholds) -> HTML report. Every stage is the real command
(`<stage>.main(argv)`), so the demo exercises exactly what users run; each is resumable, so a second run
reuses the sample, the resized clips and the feature cache (stage one is skipped, and says so).

The extractors have random weights: the numbers say nothing about SlowFast or CLIP. They are still
meaningful for the pipeline, because the sample's pixels carry the labels (noun = shape + colour,
verb = motion) and the clip's task orders the actions, so trained heads must beat the frequency prior;
`demo_summary.json` records whether they did and the demo test asserts it.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

from pipelines.common import RunFailure, run_command
from pipelines.config import opt

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
EXTRACTORS = ["slowfast_r50_8x8.kinetics", "clip_vit_b32.openai"]  # built with weights=random
BASELINES = ["frequency_prior", "markov", "knn_retrieval"]
SUMMARY_FILE = "demo_summary.json"


@dataclass
class DemoConfig:
    out: str = opt("demo_out", "output folder (data/, cache/, runs/, report.html, demo_summary.json)")
    clips: int = opt(12, "synthetic clips over all splits (12: ~475 segments, 22 min of video)")
    seed: int = opt(0, "sample seed")
    crop_size: int = opt(64, "extractor crop (CPU-sized; the released models use 224)")
    configs: list[str] = opt(["demo/slowfast_concat", "demo/video_clip", "demo/ar_transformer"], "head configs: names under pipelines/configs/ or YAML paths")
    epochs: int = opt(0, "override every config's epochs (0: the configs' own)")
    generators: list[str] = opt(["sample", "greedy+sample", "mbr"], "generation strategies to score")
    jobs: int = opt(2, "parallel ffmpeg resize jobs")
    preset: str = opt("veryfast", "libx264 preset of the resize (the reference uses medium)")
    batch_size: int = opt(16, "extraction windows per model forward")
    slow_pathway: str = opt("per_slot", "SlowFast slow frames: per_slot (the reference's, 6 variants per segment) | "
                            "slot_independent (one, ~4x less SlowFast time; the demo test uses it)")
    report: bool = opt(True, "write report.html for the best run")
    verbose: bool = opt(False, "show every stage's INFO log lines")


def config_path(name: str) -> Path:
    """A head config by name (`demo/video_clip`) or path; FileNotFoundError lists the bundled ones."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    bundled = CONFIG_DIR / f"{name}.yaml"
    if bundled.is_file():
        return bundled
    names = sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.rglob("*.yaml"))
    raise FileNotFoundError(f"head config {name!r} not found; bundled: {names}")


class Stages:
    """Numbered stage lines with wall times; the stage's own output goes between them."""

    def __init__(self, total: int):
        self.total, self.n, self.times = total, 0, {}

    def run(self, name: str, what: str, fn):
        self.n += 1
        print(f"\n[{self.n}/{self.total}] {name}: {what}", flush=True)
        t0 = time.perf_counter()
        result = fn()
        self.times[name] = round(time.perf_counter() - t0, 1)
        print(f"[{self.n}/{self.total}] {name} done in {self.times[name]:.1f} s", flush=True)
        return result


def _check(rc: int, stage: str) -> None:
    if rc != 0:
        raise RunFailure(f"stage {stage!r} failed (exit {rc}); see the messages above", exit_code=rc)


def _stage_sample(cfg: DemoConfig, data: Path) -> str:
    from pipelines import cmd_sample

    wanted = {"clips": cfg.clips, "seed": cfg.seed}
    done = data / "sample_config.yaml"
    if done.is_file() and (data / "annotations").is_dir():
        have = yaml.safe_load(done.read_text()) or {}
        if all(have.get(k) == v for k, v in wanted.items()):
            return f"reused {data} (same clips={cfg.clips}, seed={cfg.seed})"
    _check(cmd_sample.main([f"out={data}", f"clips={cfg.clips}", f"seed={cfg.seed}"]), "sample")
    return f"wrote {data}"


def _stage_extract(cfg: DemoConfig, data: Path, store: Path) -> dict:
    from pipelines import cmd_extract

    argv = [f"data={data}", f"store={store}", f"extractors=[{','.join(EXTRACTORS)}]", "weights=random", "device=cpu",
            f"crop_size={cfg.crop_size}", f"batch_size={cfg.batch_size}", "splits=[train,val,test]",
            f"slow_pathway={cfg.slow_pathway}"]
    _check(cmd_extract.main(argv), "extract")
    summary = json.loads((store / "extract_summary.json").read_text())[0]
    summary["cache_hit"] = summary["rows_done"] == 0 and summary["rows_skipped"] == summary["rows_total"]
    if summary["cache_hit"]:
        print(f"stage one skipped: all {summary['rows_total']} rows already cached in {store} "
              f"(keys {', '.join(summary['store_keys'])})")
    return summary


def _stage_train(cfg: DemoConfig, data: Path, store: Path, runs: Path) -> dict[str, Path]:
    from tqdm import tqdm

    from pipelines import cmd_train_heads

    out = {}
    for name in tqdm(cfg.configs, desc="train-heads", unit="config", disable=None):  # None: not into a pipe
        path = config_path(name)
        run = runs / path.stem
        argv = [f"config={path}", f"data={data}", f"store={store}", f"out={run}", "resume=true", "train.device=cpu"]
        if cfg.epochs:
            argv.append(f"train.epochs={cfg.epochs}")
        # resume=true: a finished run (same config) has nothing left to do, so a second demo reuses it
        _check(cmd_train_heads.main(argv), f"train-heads {name}")
        out[path.stem] = run
    return out


def _stage_evaluate(cfg: DemoConfig, runs: dict[str, Path]) -> dict[str, dict]:
    from pipelines import cmd_evaluate

    metrics = {}
    for name, run in runs.items():
        _check(cmd_evaluate.main([f"run={run}", "split=val", f"generators=[{','.join(cfg.generators)}]",
                                  f"baselines=[{','.join(BASELINES)}]", "mbr_samples=64"]), f"evaluate {name}")
        metrics[name] = json.loads((run / "metrics_val.json").read_text())
    return metrics


def results_table(metrics: dict[str, dict], generators: Sequence[str]) -> list[dict]:
    """Rows (method, verb/noun/action ED@20) of every run x generator and the first run's baselines."""
    rows = []
    for name, m in metrics.items():
        for g in generators:
            if f"model.{g}.action_ed" in m:
                rows.append({"method": f"{name} ({g})", "kind": "trained head", "run": name, "generator": g,
                             **{w: m[f"model.{g}.{w}_ed"] for w in ("verb", "noun", "action")}})
    first_name, first = next(iter(metrics.items()))
    for b in BASELINES:
        if f"{b}.action_ed" in first:
            label = b if b == "frequency_prior" else f"{b} (features/recognition of {first_name})"
            rows.append({"method": label, "kind": "no-training baseline", "run": first_name, "generator": b,
                         **{w: first[f"{b}.{w}_ed"] for w in ("verb", "noun", "action")}})
    return rows


def retrieval_note(rows: list[dict], best: dict) -> str | None:
    """One sentence under the demo's table when kNN retrieval beats the best trained head (it does on the sample)."""
    retrieval = [r for r in rows if r["generator"] == "knn_retrieval" and r["action"] < best["action"]]
    if not retrieval:
        return None
    return (f"why kNN retrieval ({retrieval[0]['action']:.4f} action ED) beats the best head ({best['action']:.4f}) "
            "here: every clip of the synthetic sample walks one of a few shared cyclic recipes (features/synthetic.py), "
            "so the futures of the nearest training windows are close to the answer; that says the sample is "
            "repetitive, not that retrieval beats a trained head on Ego4D")


def _print_table(rows: list[dict], num_windows: int) -> None:
    print(f"\nval ED@20 (lower is better; {num_windows} windows of the synthetic sample, random-weight extractors)")
    print(f"  {'method':<58} {'verb':>7} {'noun':>7} {'action':>7}")
    for r in rows:
        print(f"  {r['method']:<58} {r['verb']:>7.4f} {r['noun']:>7.4f} {r['action']:>7.4f}")


def _stage_predict(run: Path, generator: str, data: Path, out: Path) -> dict:
    from pipelines import cmd_predict, cmd_score

    outputs = run / "outputs.json"
    _check(cmd_predict.main([f"run={run}", "split=test", f"out={outputs}", f"generator={generator}",
                                  "overwrite=true"]), "predict")  # the demo re-runs every stage
    _check(cmd_score.main([f"data={data}", "split=test", f"predictions={outputs}", "withheld_labels=true",
                           f"out={out}"]), "score")
    return json.loads(out.read_text())


def _readme_status(summary: dict, path: Path) -> None:
    """Say whether the results block of docs/results.md is this run's (when the run has the block's settings)."""
    from pipelines import readme_results

    try:
        same = readme_results.matches(summary)
    except (OSError, ValueError):  # an installed copy without docs/results.md
        return
    if same is True:
        print("docs/results.md results table: up to date with this run")
    elif same is False:
        print(f"docs/results.md results table differs from this run: python -m pipelines.readme_results {path}")


def _run(cfg: DemoConfig) -> int:
    out = Path(cfg.out)
    data, store, runs_dir = out / "data", out / "cache", out / "runs"
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    for name in cfg.configs:
        config_path(name)  # fail before any work on a bad name
    print("lta demo: sample -> resize -> extract -> train-heads -> evaluate -> predict + score -> report, on the CPU")
    print(f"NOTE: the extractors ({', '.join(EXTRACTORS)}) run with RANDOM weights (weights=random), at crop "
          f"{cfg.crop_size}: the numbers test the pipeline, not SlowFast or CLIP. The sample's pixels carry the "
          "labels, so trained heads must still beat the frequency prior.")
    t0 = time.perf_counter()
    st = Stages(7 if cfg.report else 6)
    st.run("sample", f"synthetic Ego4D-format dataset ({cfg.clips} clips, seed {cfg.seed})",
           lambda: print(_stage_sample(cfg, data)))

    from pipelines import cmd_resize

    st.run("resize", "clips_hq -> clips, short side 320 (ffmpeg; done clips are checked and skipped)",
           lambda: _check(cmd_resize.main([f"data={data}", f"jobs={cfg.jobs}", f"preset={cfg.preset}"]), "resize"))
    extract = st.run("extract", f"stage one into {store} (decode once, both extractors per window)",
                     lambda: _stage_extract(cfg, data, store))
    runs = st.run("train-heads", f"stage two: {', '.join(cfg.configs)}", lambda: _stage_train(cfg, data, store, runs_dir))
    metrics = st.run("evaluate", "val ED@20 per generation strategy and no-training baseline",
                     lambda: _stage_evaluate(cfg, runs))
    rows = results_table(metrics, cfg.generators)
    heads = [r for r in rows if r["kind"] == "trained head"]
    best = min(heads, key=lambda r: r["action"])
    prior = next(r for r in rows if r["method"] == "frequency_prior")
    test = st.run("predict", f"test outputs.json of the best run ({best['method']}), scored against the withheld labels",
                  lambda: _stage_predict(runs[best["run"]], best["generator"], data, out / "test_scores.json"))
    report_path = out / "report.html"
    if cfg.report:
        from pipelines import cmd_report

        st.run("report", f"{report_path}", lambda: _check(cmd_report.main(
            [f"run={runs[best['run']]}", "split=val", f"out={report_path}", "overwrite=true", f"generator={best['generator']}",
             f"generators=[{','.join(cfg.generators)}]", f"baselines=[{','.join(BASELINES)}]", "mbr_samples=64"]),
            "report"))  # the evaluate settings above: the report reuses that metrics_val.json (same fingerprint)
    num_val = next(iter(metrics.values())).get("num_windows", 0)
    _print_table(rows, num_val)
    note = retrieval_note(rows, best)
    if note:
        print(note)
    beats = {r["method"]: r["action"] < prior["action"] and r["verb"] < prior["verb"] for r in heads}
    print(f"\ntest ED@20 of {best['method']}: verb {test['verb_ed']:.4f} noun {test['noun_ed']:.4f} "
          f"action {test['action_ed']:.4f} ({test['num_keys_scored']} keys; labels withheld by the sample)")
    verdict = "yes" if all(beats.values()) else "NO: " + ", ".join(m for m, ok in beats.items() if not ok)
    print(f"every trained head beats the frequency prior (verb and action ED): {verdict}")
    summary = {
        "extractors": EXTRACTORS, "weights": "random", "crop_size": cfg.crop_size, "cache_hit": extract["cache_hit"],
        "store_keys": extract["store_keys"], "rows": extract["rows_total"], "val_windows": num_val,
        "table": rows, "best": best, "test": {k: test[k] for k in ("verb_ed", "noun_ed", "action_ed", "num_keys_scored")},
        "beats_frequency_prior": beats, "stage_sec": st.times, "total_sec": round(time.perf_counter() - t0, 1),
        "settings": {"clips": cfg.clips, "seed": cfg.seed, "epochs": cfg.epochs, "crop_size": cfg.crop_size,
                     "configs": list(cfg.configs), "generators": list(cfg.generators), "slow_pathway": cfg.slow_pathway},
        "run_configs": {config_path(name).stem: name for name in cfg.configs},
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    _readme_status(summary, out / SUMMARY_FILE)
    best_run = runs[best["run"]]
    print(f"""
files:
  {data}/             synthetic dataset (annotations/, clips_hq/, clips/)
  {store}/            feature store: `lta store ls store={store}`
  {runs_dir}/<config>/  run dirs: config.yaml, checkpoints/, metrics_val.json, ed_curve_val.png, tensorboard/
  {best_run / 'outputs.json'}  challenge file (test split)
  {report_path if cfg.report else '(report skipped)'}  open in a browser
  {out / SUMMARY_FILE}  everything above as JSON
total {summary['total_sec']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in st.times.items())})

next, on real Ego4D data (README.md, "The real Ego4D workflow"):
  python -m ego4d.cli.cli --output_directory ~/ego4d --datasets annotations clips lta_models --benchmarks FHO
  ln -s ~/ego4d/v1/annotations data/long_term_anticipation/annotations; ln -s ~/ego4d/v1/clips data/long_term_anticipation/clips_hq
  make resize DATA=data/long_term_anticipation
  make extract DATA=data/long_term_anticipation STORE=cache/features ARGS="extractors=[slowfast_r101_8x8.ego4d,clip_vit_b32_dasryoo.openai] weights=slowfast_r101_8x8.ego4d:PATH/ego4d_slowfast8x8.ckpt,clip_vit_b32_dasryoo.openai:default"
  make train-heads CONFIG=pipelines/configs/video_clip.yaml RUN=runs/video_clip
  make evaluate RUN=runs/video_clip && make predict RUN=runs/video_clip""")
    return 0 if all(beats.values()) else 1


def main(argv: Sequence[str]) -> int:
    return run_command("demo", DemoConfig, argv, _run, "the whole pipeline on a synthetic sample, on the CPU")
