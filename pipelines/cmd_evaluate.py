"""`lta evaluate`: ED@Z of a run per generation strategy and of the no-training baselines, side by side."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from pipelines.common import UsageError, run_command
from pipelines.config import opt

log = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    run: str = opt("runs/head", "run dir (from train-heads or import-checkpoint)")
    split: str = opt("val", "labelled split to score")
    checkpoint: str = opt("best", "checkpoint name in <run>/checkpoints")
    generators: list[str] = opt(["sample", "greedy+sample", "mbr", "mbr_set"], "generation strategies to score")
    temperature: Optional[float] = opt(None, "sampling temperature of every generator; unset = each one's own (1.0 for sample, greedy+sample, mbr, mbr_set, beam_search: the reference's; 0.4 for pair_sample)")
    mbr_samples: int = opt(64, "draws per window for the mbr generators")
    baselines: list[str] = opt(["frequency_prior", "markov", "knn_retrieval"],
                               "no-training baselines to score (markov also gives markov_knn and markov_oracle)")
    data: str = opt("", "dataset root (default: the run's)")
    store: str = opt("", "feature store root (default: the run's)")
    device: str = opt("auto", "device for the model: auto (cuda if available), cpu, cuda, cuda:N")
    seed: int = opt(0, "seed of the sampled sequences")
    amp: Optional[bool] = opt(None, "bf16 autocast on CUDA; unset = the run's train.amp (false, fp32, for reference runs)")
    out: str = opt("", "metrics file to write (default <run>/metrics_<split>.json; its ED@z plot goes beside it)")


def _run(cfg: EvaluateConfig) -> int:
    if cfg.split == "test":  # the challenge's test annotations carry no labels (fho_lta_test_unannotated.json)
        raise UsageError("split=test: the test split has no labels to score; evaluate a labelled split (split=val), "
                         "write the challenge file with `lta predict split=test`")
    from train_heads.baselines import TrainingSet
    from pipelines.checks import check_choices
    from train_heads.evaluate import (evaluate_split, evaluation_baselines, merge_evaluations, plot_ed_curves,
                                      select_generator)
    from train_heads.generators import create_generators, list_generators
    from train_heads.inputs import load_bank, split_windows
    from train_heads.fingerprint import evaluation_fingerprint
    from train_heads.protocol import extra_key_sets, key_set_label, reference_generator, run_amp
    from train_heads.run import checkpoint_path, load_run

    check_choices("generators", cfg.generators, list_generators(), "generator")
    if cfg.baselines:
        check_choices("baselines", cfg.baselines, evaluation_baselines(), "baseline")
    check_run_generators(cfg.run, "generators", cfg.generators)
    cfg.device, data, store = check_inputs(cfg.run, cfg.checkpoint, cfg.split, cfg.device, cfg.data, cfg.store)
    run = load_run(cfg.run, checkpoint=cfg.checkpoint, device=cfg.device)
    # what these numbers depend on (checkpoint and annotation hashes, settings): `lta report` reuses them only on a match
    fingerprint = evaluation_fingerprint(checkpoint_file=checkpoint_path(run.run_dir, cfg.checkpoint), data=data,
                                         split=cfg.split, cache_keys=run.cache_keys, generators=cfg.generators,
                                         baselines=cfg.baselines, seed=cfg.seed, temperature=cfg.temperature,
                                         mbr_samples=cfg.mbr_samples, num_sequences=run.num_sequences)
    head = run.cfg["head"]
    bank = load_bank(store, run.cache_keys, splits=["train", cfg.split])
    train_ann, train_win = split_windows(data, "train", bank, num_input=head["num_input"], num_future=head["num_future"],
                                         num_seen=None, convention="plus_one")
    ann, win = split_windows(data, cfg.split, bank, num_input=head["num_input"], num_future=head["num_future"],
                             num_seen=run.num_seen, convention=run.convention)
    if not win.labelled:
        raise ValueError(f"split {cfg.split!r} has no labels ({ann.path}); evaluate needs a labelled split, use `lta predict`")
    train_set = TrainingSet(train_ann, train_win, bank, train_ann.taxonomy.num_verbs, train_ann.taxonomy.num_nouns)
    generators = create_generators(cfg.generators, temperature=cfg.temperature, mbr_samples=cfg.mbr_samples)
    amp, amp_why = run_amp(run.cfg, cfg.amp)
    log.info("precision: amp=%s (%s)", str(amp).lower(), amp_why)
    metrics = evaluate_split(run.model, train_set=train_set, windows=win, bank=bank, generators=generators,
                             baselines=cfg.baselines, k=run.num_sequences, seed=cfg.seed,
                             device=cfg.device, amp=amp)
    key_sets = {"": (run.num_seen, len(win))}
    for label, num_seen in extra_key_sets(run.cfg, run.num_seen).items():  # the project's default set, labelled
        _, other = split_windows(data, cfg.split, bank, num_input=head["num_input"], num_future=head["num_future"],
                                 num_seen=num_seen, convention=run.convention)
        if len(other):
            scored = evaluate_split(run.model, train_set=train_set, windows=other, bank=bank, generators=generators,
                                    baselines=[], k=run.num_sequences, seed=cfg.seed, device=cfg.device, amp=amp)
            metrics.update({f"{label}.{name}": value for name, value in scored.items() if name.startswith("model.")})
        metrics[f"{label}.num_windows"] = len(other)
        key_sets[label] = (num_seen, len(other))
    metrics["key_sets"] = {label or "main": key_set_label(run.cfg, n, head["num_input"], run.convention)
                           for label, (n, _) in key_sets.items()}
    metrics.update({"amp": amp, "amp_reason": amp_why})
    metrics.update({"run": str(run.run_dir), "split": cfg.split, "checkpoint": cfg.checkpoint,
                    "cache_keys": run.cache_keys, "fingerprint": fingerprint})
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / f"metrics_{cfg.split}.json"
    # merged with the file's results for this checkpoint and settings: a partial evaluate adds, never forgets
    previous = read_json(out)
    if previous and previous.get("amp", amp) != amp:  # precision is a setting too (the fingerprint predates it)
        print(f"replacing {out}: it scored with amp={str(previous.get('amp')).lower()}")
        previous = {}
    metrics, kept = merge_evaluations(previous, metrics)
    if kept:
        print(f"kept the earlier results of {', '.join(kept)} in {out} (same checkpoint sha256 and settings)")
    elif (previous.get("fingerprint") or {}) and previous["fingerprint"].get("id") != metrics["fingerprint"]["id"]:
        differ = [k for k, v in metrics["fingerprint"].items()
                  if k not in ("id", "generators", "baselines") and previous["fingerprint"].get(k) != v]
        if differ:
            print(f"replacing {out}: it scored {'another checkpoint' if 'checkpoint_sha256' in differ else 'other inputs'} "
                  f"({', '.join(differ)} differ)")
    # `lta predict` uses, by default, a reference run's reference generator, else the lowest val action ED
    reference = reference_generator(run.cfg)
    if reference is not None:
        metrics["selected_generator"], metrics["selected_generator_reason"] = reference
    else:
        metrics["selected_generator"] = select_generator(metrics)  # over everything scored for this checkpoint
        metrics["selected_generator_reason"] = "lowest val action ED" if cfg.split == "val" else \
            f"lowest {cfg.split} action ED"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # atomic: an interrupted evaluate never leaves a partial file
    tmp.write_text(json.dumps(metrics, indent=1) + "\n")
    os.replace(tmp, out)
    plot = out.with_suffix(".png") if cfg.out else Path(cfg.run) / f"ed_curve_{cfg.split}.png"
    plot_ed_curves(metrics, str(plot), title=f"{run.run_dir.name} on {cfg.split}")
    labels = [label for label in key_sets if label]
    print(f"keys: {metrics['key_sets']['main']}")
    print_table(metrics, f"{cfg.split}, {len(win)} windows", key_set_labels=labels)
    for label in labels:  # the same model on another key set, side by side with the rows above
        print(f"keys [{label}]: {metrics['key_sets'][label]}, {key_sets[label][1]} windows")
        for g in cfg.generators if key_sets[label][1] else []:
            print(table_row("model." + g, metrics, f"{label}.model.{g}"))  # printed as model.<g> under its key-set line
    print(f"predict default: generator {metrics['selected_generator']} ({metrics['selected_generator_reason']}); "
          f"amp={str(amp).lower()} ({amp_why})")
    print(f"wrote {out}")
    return 0


def table_row(label: str, metrics: dict, name: str) -> str:
    """One row of the table: verb / noun / action ED@Z and action AUED of method `name`, shown as `label`."""
    return (f"{label:<36} {metrics[name + '.verb_ed']:>8.4f} {metrics[name + '.noun_ed']:>8.4f} "
            f"{metrics[name + '.action_ed']:>9.4f} {metrics.get(name + '.action_aued', float('nan')):>11.4f}")


def print_table(metrics: dict, what: str, key_set_labels: Sequence[str] = ()) -> None:
    """ED@Z (verb, noun, action) and action AUED per method, lowest action ED first; the oracle methods (they read
    the split's true labels: upper bounds, not comparable) last, marked. Methods scored on another key set
    (`<label>.model.<g>`) are left out."""
    from train_heads.evaluate import scored_methods

    oracles = set(metrics.get("oracle_methods", []))
    methods = [m for m in scored_methods(metrics) if m.split(".", 1)[0] not in key_set_labels]
    rows = sorted((name in oracles, metrics[f"{name}.action_ed"], name) for name in methods)
    print(f"{'method':<36} {'verb ED':>8} {'noun ED':>8} {'action ED':>9} {'action AUED':>11}  ({what})")
    for oracle, _, name in rows:
        print(table_row(f"{name} (oracle: true labels)" if oracle else name, metrics, name))


def check_run_generators(run: str, key: str, generators: Sequence[str]) -> None:
    """The generators fit the run's decoder (beam_search needs an autoregressive one), from its config.yaml,
    before the model is loaded (UsageError, one line)."""
    from pipelines.checks import check_generators_fit, check_run_dir
    from train_heads.run import read_run_config

    check_generators_fit(key, generators, read_run_config(check_run_dir("run", run, None))["head"]["decoder"])


def read_json(path: Path) -> dict:
    """A stored evaluation, {} when there is none or it is unreadable (then it is replaced)."""
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as err:
        log.warning("%s: unreadable (%s); replacing it", path, err)
        return {}


def check_inputs(run: str, checkpoint: str, split: str, device: str, data: str = "", store: str = "",
                 splits: Sequence[str] = ("train",)) -> tuple[str, str, str]:
    """The run dir, checkpoint, split, device and the run's data / store roots, checked before anything
    is loaded (UsageError, one line naming every missing root); prints the roots used and where each came
    from. Returns (device to use with `auto` resolved, dataset root, store root)."""
    from pipelines.checks import check_device, check_run_dir, check_run_roots, check_split, resolve_device
    from train_heads.run import read_run_config

    check_split("split", split)
    run_dir = check_run_dir("run", run, checkpoint)
    device = check_device("device", device)
    data_root, store_root = check_run_roots(run_dir, read_run_config(run_dir), data=data, store=store,
                                            splits=[*splits, split])
    return resolve_device(device), data_root.path, store_root.path


def main(argv: Sequence[str]) -> int:
    return run_command("evaluate", EvaluateConfig, argv, _run, "ED@20 of a run and the no-training baselines")
