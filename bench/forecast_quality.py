"""Benchmark: forecast quality on real EPIC-KITCHENS-100 action sequences, with a simulated recogniser.

The EK100 CSVs are imported with `features.epic_kitchens` (the code of `lta import-annotations`) into a
temporary Ego4D-layout dataset. EK100 video features are not available here, so every segment gets the
feature of a *simulated recogniser*, written through `features.store.FeatureStore`: the recognised verb
(noun) is the true one with probability p_verb (p_noun), else a draw from the training class
frequencies; the feature is one-hot(recognised verb) ++ one-hot(recognised noun) + N(0, noise^2).
Settings: `oracle` (p = 1) and `realistic` (p_verb 0.35, p_noun 0.30).

Per setting it trains the head configs (`train_heads.train.train`, the code of `lta train-heads`; the
config's first modality becomes the single `recogniser` modality), scores val ED@20 (verb / noun /
action, K = 5) of every generator of each head, and the no-training baselines (frequency prior, Markov
from the head's recognition, Markov-kNN, Markov-oracle, kNN retrieval) on the same val windows (the
`num_seen=8` key set), each with its wall time. It ends each setting with
`margin <setting>: action <best head - best baseline> verb <...> noun <...>` (negative = the head wins):
the head is the best (config, generator) by action ED; for each metric the baseline is the best one on it,
among the baselines that see what the head sees (Markov-oracle reads the true observed labels, so it gets
its own line, `margin vs markov_oracle <setting>: ...`).

    .venv/bin/python bench/forecast_quality.py [--train A.csv B.csv] [--val C.csv] [--settings oracle realistic]
    .venv/bin/python bench/forecast_quality.py --holdout 6   # the tuning split: held-out training videos as val
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# run as `python bench/forecast_quality.py`: this file's folder would shadow the `train_heads` package
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "epic_kitchens_100"
SETTINGS = {"oracle": (1.0, 1.0), "realistic": (0.35, 0.30)}  # name -> (p_verb, p_noun)
DEFAULT_CONFIGS = [str(REPO / "pipelines/configs/ek100_multihead.yaml"), str(REPO / "pipelines/configs/ek100_best.yaml")]
BASELINE_NUM_INPUT = 8  # observed segments the kNN baselines pool (the Markov ones read the last)
NUM_SEEN = 8  # the val key set (challenge: 8)
MODALITY = "recogniser"
# baselines that read the true labels of the observed segments (no method has them at test time): printed, and
# compared in their own margin line, but not the bar of the `margin` line (as in `lta report`)
ORACLES = ("markov_oracle",)

log = logging.getLogger("forecast_quality")


def import_dataset(train: list[str], val: list[str], classes_dir: Path, out: Path) -> dict:
    from features import epic_kitchens as ek

    docs = ek.convert({"train": train, "val": val, "test": []}, classes_dir / "EPIC_100_verb_classes.csv",
                      classes_dir / "EPIC_100_noun_classes.csv")
    ek.write_dataset(out, docs, overwrite=True)
    return ek.summary(docs)


def holdout_split(train: list[str], every: int, out: Path) -> tuple[list[str], list[str]]:
    """Split the videos of the `train` CSVs: every `every`-th video id (sorted) -> val, the rest -> train.

    The tuning split: choices of configs and generator defaults are made on it, so the benchmark's val split
    (`--val`) is only ever used to report."""
    import csv

    rows, header = [], None
    for path in train:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            head = next(reader)
            if header is not None and head != header:
                raise SystemExit(f"{path}: columns differ from {train[0]}'s")
            header = head
            rows += list(reader)
    vid = header.index("video_id")
    held = set(sorted({r[vid] for r in rows})[::every])
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, keep in (("holdout_train.csv", False), ("holdout_val.csv", True)):
        with open(out / name, "w", newline="") as f:
            csv.writer(f).writerows([header, *(r for r in rows if (r[vid] in held) == keep)])
        files.append([str(out / name)])
    return files[0], files[1]


def write_recogniser_store(data_dir: Path, root: Path, *, p_verb: float, p_noun: float, noise: float, seed: int,
                           views: int = 1) -> str:
    """One store of simulated-recogniser features for every train and val segment; returns its cache key.

    With `views` > 1, views 1.. are further independent recognitions of each segment (as other crops / window
    positions would give; training draws one per segment and step, val reads view 0, which is the same as with
    `views` = 1)."""
    from features.annotations import load_split
    from features.store import FeatureStore, RowTable, cache_key, store_path

    anns = [load_split(data_dir, s) for s in ("train", "val")]
    tax = anns[0].taxonomy
    rows = RowTable.from_annotations(anns)
    verb, noun = np.concatenate([a.verb for a in anns]), np.concatenate([a.noun for a in anns])
    rng = np.random.default_rng(seed)
    vf = np.bincount(anns[0].verb, minlength=tax.num_verbs) / len(anns[0].verb)
    nf = np.bincount(anns[0].noun, minlength=tax.num_nouns) / len(anns[0].noun)
    rec_v = np.where(rng.random(len(rows)) < p_verb, verb, rng.choice(tax.num_verbs, size=len(rows), p=vf))
    rec_n = np.where(rng.random(len(rows)) < p_noun, noun, rng.choice(tax.num_nouns, size=len(rows), p=nf))
    dim = tax.num_verbs + tax.num_nouns
    feats = rng.normal(0.0, noise, size=(len(rows), 1, dim)).astype(np.float32)
    feats[np.arange(len(rows)), 0, rec_v] += 1.0
    feats[np.arange(len(rows)), 0, tax.num_verbs + rec_n] += 1.0
    extra = []
    for _ in range(views - 1):
        ev = np.where(rng.random(len(rows)) < p_verb, verb, rng.choice(tax.num_verbs, size=len(rows), p=vf))
        en = np.where(rng.random(len(rows)) < p_noun, noun, rng.choice(tax.num_nouns, size=len(rows), p=nf))
        f = rng.normal(0.0, noise, size=(len(rows), 1, dim)).astype(np.float32)
        f[np.arange(len(rows)), 0, ev] += 1.0
        f[np.arange(len(rows)), 0, tax.num_verbs + en] += 1.0
        extra.append(f)
    feats = np.concatenate([feats, *extra], axis=1) if extra else feats
    name = "simulated_recogniser"
    spec = {"simulated": True, "p_verb": p_verb, "p_noun": p_noun, "noise": noise, "seed": seed, "data": str(data_dir)}
    if views > 1:
        spec["num_views"] = views
    key = cache_key(name, spec)
    store = FeatureStore.create(store_path(root, key), name=name, spec=spec, rows=rows, view_shape=(dim,),
                                num_views=views, chunk_rows=4096, fsync=False)
    windows = np.stack([rows.start_sec, rows.end_sec], axis=1)[:, None, :].repeat(views, 1)
    store.write(0, feats, windows)
    store.close()
    log.info("recogniser store %s: %d rows, verb acc %.3f, noun acc %.3f", key, len(rows), (rec_v == verb).mean(),
             (rec_n == noun).mean())
    return key


def load_head_config(path: str):
    """(TrainHeadsConfig) of a config file, with its first modality renamed to the recogniser modality."""
    from pipelines.cmd_train_heads import TrainHeadsConfig
    from pipelines.config import parse_config

    cfg = parse_config(TrainHeadsConfig, [f"config={path}"])
    first = cfg.head.modalities[0]
    first.name = MODALITY
    cfg.head.modalities = [first]
    return cfg


@dataclass
class Row:
    method: str
    generator: str
    verb: float
    noun: float
    action: float
    seconds: float
    kind: str  # "head" or "baseline"


def score(prefix, verb, noun, win, num_nouns) -> tuple[float, float, float]:
    from train_heads.evaluate import score_sequences

    m = score_sequences(prefix, verb, noun, win.future_verb, win.future_noun, num_nouns=num_nouns)
    return m[f"{prefix}.verb_ed"], m[f"{prefix}.noun_ed"], m[f"{prefix}.action_ed"]


def run_baselines(train_ann, bank, data_dir, *, k: int, seed: int, skip: bool = False) -> tuple[list[Row], object]:
    from train_heads.baselines import KNNRecognizer, TrainingSet, create_baseline
    from train_heads.inputs import split_windows

    _, train_win = split_windows(data_dir, "train", bank, num_input=BASELINE_NUM_INPUT, num_future=20, num_seen=None,
                                 convention="plus_one")
    _, val_win = split_windows(data_dir, "val", bank, num_input=BASELINE_NUM_INPUT, num_future=20, num_seen=NUM_SEEN,
                               convention="plus_one")
    tax = train_ann.taxonomy
    ts = TrainingSet(train_ann, train_win, bank, tax.num_verbs, tax.num_nouns)
    rows = []
    if skip:
        return rows, (ts, val_win)
    t = time.perf_counter()
    knn = KNNRecognizer(seed=seed).fit(ts)
    knn_rec = knn.predict(val_win, bank)
    knn_sec = time.perf_counter() - t
    variants = {"frequency_prior": ("frequency_prior", None, 0.0), "markov_knn": ("markov", knn_rec, knn_sec),
                "markov_oracle": ("markov", (val_win.observed_verb, val_win.observed_noun), 0.0),
                "knn_retrieval": ("knn_retrieval", None, 0.0)}
    for name, (baseline, recognised, extra) in variants.items():
        t = time.perf_counter()
        b = create_baseline(baseline).fit(ts)
        verb, noun = b.predict(val_win, bank, k=k, rng=torch.Generator().manual_seed(seed), recognised=recognised)
        sec = time.perf_counter() - t + extra
        rows.append(Row(name, "-", *score(name, verb, noun, val_win, tax.num_nouns), sec, "baseline"))
        log.info("%s: verb %.4f noun %.4f action %.4f (%.1f s)", name, rows[-1].verb, rows[-1].noun, rows[-1].action, sec)
    return rows, (ts, val_win)


def run_head(cfg_path: str, bank, data_dir: Path, run_dir: Path, ts_markov, *, epochs: int | None,
             max_train_windows: int, generators: list[str], mbr_samples: int, k: int, seed: int) -> list[Row]:
    from train_heads.baselines import create_baseline
    from train_heads.data import DeviceWindows
    from train_heads.evaluate import forecast_split
    from train_heads.generators import create_generators
    from train_heads.inputs import fill_model_dims, split_windows, subset_windows
    from train_heads.run import load_run
    from train_heads.train import train

    cfg = load_head_config(cfg_path)
    name = Path(cfg_path).stem
    h, tc = cfg.head, cfg.train
    if epochs:
        tc.epochs = epochs
    if max_train_windows:
        tc.max_train_windows = max_train_windows
    tc.device, tc.seed, tc.num_sequences, tc.patience = "cpu", seed, k, 0
    train_ann, train_win = split_windows(data_dir, "train", bank, num_input=h.num_input, num_future=h.num_future,
                                         num_seen=None, convention="plus_one")
    _, val_win = split_windows(data_dir, "val", bank, num_input=h.num_input, num_future=h.num_future,
                               num_seen=max(NUM_SEEN, h.num_input), convention="plus_one")
    tax = train_ann.taxonomy
    fill_model_dims(h, bank, num_verbs=tax.num_verbs, num_nouns=tax.num_nouns)
    cfg.data, cfg.out = str(data_dir), str(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run every time
    t = time.perf_counter()
    # per-epoch val (logging only) on a subset; the benchmark scores the last epoch's weights, so the val
    # split does not choose the checkpoint
    train(h, tc, train_windows=train_win, val_windows=subset_windows(val_win, 256, seed), bank=bank, run_dir=run_dir,
          full_cfg=cfg)
    train_sec = time.perf_counter() - t
    model = load_run(run_dir, checkpoint="last").model
    log.info("%s: trained in %.1f s (%d windows, %d epochs)", name, train_sec, min(len(train_win), tc.max_train_windows or len(train_win)), tc.epochs)
    gens = {}
    for spec in generators:  # "name" (its own default temperature) or "name@temperature"
        g, _, temp = spec.partition("@")
        gen = create_generators([g], temperature=float(temp) if temp else None, mbr_samples=mbr_samples)[g]
        if model.autoregressive or not getattr(gen, "requires_autoregressive", False):
            gens[spec] = gen
    rows = []
    data = DeviceWindows(val_win, "cpu")
    rec = None
    for g, gen in gens.items():
        t = time.perf_counter()
        fc = forecast_split(model, data, bank, generators={g: gen}, k=k, seed=seed)
        sec = time.perf_counter() - t
        rows.append(Row(name, g, *score(f"{name}.{g}", *fc.sequences[g], val_win, tax.num_nouns), sec, "head"))
        log.info("%s / %s: verb %.4f noun %.4f action %.4f (%.1f s)", name, g, rows[-1].verb, rows[-1].noun,
                 rows[-1].action, sec)
        rec = (fc.observed_verb, fc.observed_noun)
    for r in rows:
        r.method = f"{name} (train {train_sec:.0f} s)"
    if rec is not None and rec[0] is not None:  # Markov started from this head's recognition of the last segment
        t = time.perf_counter()
        b = create_baseline("markov").fit(ts_markov)
        verb, noun = b.predict(val_win, bank, k=k, rng=torch.Generator().manual_seed(seed), recognised=rec)
        rows.append(Row(f"markov ({name} recognition)", "-", *score("m", verb, noun, val_win, tax.num_nouns),
                        time.perf_counter() - t, "baseline"))
    return rows


def print_table(setting: str, p: tuple[float, float], rows: list[Row], num_windows: int) -> None:
    print(f"\n### {setting}: real EK100 action sequences, simulated recogniser (p_verb {p[0]}, p_noun {p[1]}); "
          f"val ED@20, K=5, {num_windows} windows\n")
    print("| method | generator | verb ED | noun ED | action ED | time (s) |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r.action):
        print(f"| {r.method} | {r.generator} | {r.verb:.4f} | {r.noun:.4f} | {r.action:.4f} | {r.seconds:.1f} |")


def margin(rows: list[Row]) -> dict[str, float]:
    heads = [r for r in rows if r.kind == "head"]
    base = [r for r in rows if r.kind == "baseline"]
    best = min(heads, key=lambda r: (r.action, r.verb))
    return {m: getattr(best, m) - min(getattr(b, m) for b in base) for m in ("action", "verb", "noun")} | {
        "head": f"{best.method} / {best.generator}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", nargs="+", default=[str(SHARED / "EPIC_100_validation.csv"), str(SHARED / "EPIC_100_uda_source_train.csv")])
    ap.add_argument("--val", nargs="+", default=[str(SHARED / "EPIC_100_uda_source_val.csv")])
    ap.add_argument("--classes-dir", default="", help="folder of EPIC_100_{verb,noun}_classes.csv (default: the --val file's)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="head config YAMLs to train")
    ap.add_argument("--epochs", type=int, default=0, help="override every config's epochs (0 = the config's)")
    ap.add_argument("--max-train-windows", type=int, default=0, help="random subset of training windows (0 = all)")
    ap.add_argument("--generators", nargs="+", default=["sample", "greedy+sample", "greedy+sample@0.5", "mbr", "mbr_set", "pair_sample"],
                    help="generators to score per head: name or name@temperature")
    ap.add_argument("--holdout", type=int, default=0, metavar="N",
                    help="tuning split: every N-th video of the --train files (sorted ids) becomes val, --val is unused")
    ap.add_argument("--skip-baselines", action="store_true", help="heads only (exploration; no margin line)")
    ap.add_argument("--mbr-samples", type=int, default=64)
    ap.add_argument("--noise", type=float, default=0.1, help="std of the Gaussian noise on the one-hot features")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="", help="folder for the dataset, stores and runs (default: a temp dir)")
    ap.add_argument("--json", default="", help="also write the rows and margins to this JSON file")
    ap.add_argument("--views", type=int, nargs="+", default=[1],
                    help="cached views per segment (independent recognitions); one store and head run per value")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("train_heads.train", "train_heads.data", "train_heads.inputs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    classes_dir = Path(args.classes_dir) if args.classes_dir else Path((args.train if args.holdout else args.val)[0]).parent
    val_what = f"every {args.holdout}th video of train (--holdout)" if args.holdout else args.val
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU; train {args.train}; val {val_what}")
    tmp = tempfile.TemporaryDirectory() if not args.work else None
    work = Path(args.work or tmp.name)
    from features.annotations import load_split
    from train_heads.inputs import load_bank

    data_dir = work / "data"
    train_csv, val_csv = (holdout_split(args.train, args.holdout, work / "holdout") if args.holdout
                          else (args.train, args.val))
    info = import_dataset(train_csv, val_csv, classes_dir, data_dir)
    print(f"imported: train {info['train']}, val {info['val']}, {info['num_verbs']} verbs, {info['num_nouns']} nouns")
    train_ann = load_split(data_dir, "train")
    results = {}
    for setting in args.settings:
        p = SETTINGS[setting]
        t0 = time.perf_counter()
        rows = []
        for views in args.views:
            key = write_recogniser_store(data_dir, work / "stores", p_verb=p[0], p_noun=p[1], noise=args.noise,
                                         seed=args.seed, views=views)
            bank = load_bank(work / "stores", {MODALITY: key}, splits=["train", "val"]).to("cpu")
            if views == args.views[0]:  # the baselines read view 0, the same in every store
                rows, (ts, val_win) = run_baselines(train_ann, bank, data_dir, k=5, seed=args.seed,
                                                    skip=args.skip_baselines)
            for cfg_path in args.configs:
                head_rows = run_head(cfg_path, bank, data_dir, work / "runs" / setting / f"{Path(cfg_path).stem}_v{views}",
                                     ts, epochs=args.epochs, max_train_windows=args.max_train_windows,
                                     generators=args.generators, mbr_samples=args.mbr_samples, k=5, seed=args.seed)
                for r in head_rows if len(args.views) > 1 else []:
                    r.method = f"{r.method}, {views} view{'s' if views > 1 else ''}"
                rows += head_rows
        print_table(setting, p, rows, len(val_win))
        if args.skip_baselines:
            continue
        m = margin([r for r in rows if r.method not in ORACLES])
        mo = margin([r for r in rows if r.kind == "head" or r.method in ORACLES])
        print(f"\nbest head: {m['head']}; setting total {time.perf_counter() - t0:.0f} s")
        print(f"margin vs {'/'.join(ORACLES)} {setting}: action {mo['action']:+.4f} verb {mo['verb']:+.4f} noun {mo['noun']:+.4f}")
        print(f"margin {setting}: action {m['action']:+.4f} verb {m['verb']:+.4f} noun {m['noun']:+.4f}")
        results[setting] = {"rows": [r.__dict__ for r in rows], "margin": m, "margin_vs_oracle": mo,
                            "num_windows": len(val_win)}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
