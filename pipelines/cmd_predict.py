"""`lta predict`: the challenge outputs.json of a run for every expected key of a split.

Keys come from `features.windows.build_windows` with the run's `num_seen` and convention. Windows
whose observed segments lack features get the documented fallback -- K draws from the training
frequency prior -- and are listed in `<out>.fallback.json` and the log, never dropped.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from pipelines.common import run_command
from pipelines.config import opt

log = logging.getLogger(__name__)


@dataclass
class PredictConfig:
    run: str = opt("runs/head", "run dir")
    split: str = opt("test", "split to predict (any split)")
    out: str = opt("", "challenge file to write; empty = <run>/outputs.json for split=test, <run>/outputs_<split>.json "
                       "otherwise (provenance in <out>.provenance.json)")
    overwrite: bool = opt(False, "replace an existing out file (without it that is an error)")
    checkpoint: str = opt("best", "checkpoint name in <run>/checkpoints")
    generator: str = opt("", "generation strategy; empty = a reference run's reference procedure (sample: K "
                             "independent draws at T=1), else the one the run selected on val (lowest action ED in "
                             "<run>/metrics_val.json from `lta evaluate`, else the run's train.val_generator)")
    temperature: Optional[float] = opt(None, "sampling temperature of every generator; unset = each one's own (1.0 for sample, greedy+sample, mbr, mbr_set, beam_search: the reference's; 0.4 for pair_sample)")
    mbr_samples: int = opt(64, "draws per window for the mbr generators")
    data: str = opt("", "dataset root (default: the run's)")
    store: str = opt("", "feature store root (default: the run's)")
    device: str = opt("auto", "device for the model: auto (cuda if available), cpu, cuda, cuda:N")
    seed: int = opt(0, "seed of the sampled sequences")
    amp: Optional[bool] = opt(None, "bf16 autocast on CUDA; unset = the run's train.amp (false, fp32, for reference runs)")


def _run(cfg: PredictConfig) -> int:
    import numpy as np
    import torch

    from features.annotations import load_split
    from features.submission import read_predictions, validate_predictions, write_predictions
    from features.windows import build_windows
    from train_heads.baselines import FrequencyPrior, TrainingSet
    from train_heads.data import DeviceWindows
    from train_heads.evaluate import forecast_split
    from train_heads.generators import create_generators
    from train_heads.inputs import load_bank, split_windows
    from train_heads.protocol import key_set_label, run_amp
    from train_heads.run import load_run

    from pipelines.checks import check_new_file, check_registry, check_run_dir, check_split
    from pipelines.cmd_evaluate import check_inputs, check_run_generators
    from train_heads.generators import GENERATORS

    check_split("split", cfg.split)
    check_run_dir("run", cfg.run, cfg.checkpoint)
    generator, why = (cfg.generator, f"given as generator={cfg.generator}") if cfg.generator else selected_generator(cfg.run, cfg.checkpoint)
    check_registry("generator", generator, GENERATORS)  # the choice is printed once, with the result
    check_run_generators(cfg.run, "generator", [generator])
    cfg.out = str(check_new_file("out", cfg.out or default_out(cfg.run, cfg.split), cfg.overwrite))
    cfg.device, data, store = check_inputs(cfg.run, cfg.checkpoint, cfg.split, cfg.device, cfg.data, cfg.store)
    run = load_run(cfg.run, checkpoint=cfg.checkpoint, device=cfg.device)
    amp, amp_why = run_amp(run.cfg, cfg.amp)
    head = run.cfg["head"]
    num_seen, convention = run.num_seen, run.convention
    k, z = run.num_sequences, head["num_future"]
    ann = load_split(data, cfg.split)
    expected = build_windows(ann, num_input=num_seen, num_future=z, num_seen=num_seen, convention=convention).keys
    bank = load_bank(store, run.cache_keys, splits=[cfg.split])
    _, win = split_windows(data, cfg.split, bank, num_input=head["num_input"], num_future=z, num_seen=num_seen,
                           convention=convention)
    fc = forecast_split(run.model, DeviceWindows(win, cfg.device), bank.to(cfg.device),
                        generators=create_generators([generator], temperature=cfg.temperature, mbr_samples=cfg.mbr_samples), k=k, seed=cfg.seed,
                        amp=amp)
    verb, noun = fc.sequences[generator]
    predicted = dict(zip(win.keys, range(len(win))))
    fallback = [key for key in expected if key not in predicted]
    train_ann = load_split(data, "train")
    prior = FrequencyPrior().fit(TrainingSet(train_ann, None, None, ann.taxonomy.num_verbs, ann.taxonomy.num_nouns))
    fb_verb, fb_noun = prior.predict_keys(len(fallback), z, k=k, rng=torch.Generator().manual_seed(cfg.seed))
    fb_index = {key: i for i, key in enumerate(fallback)}
    out_verb = np.stack([verb[predicted[key]] if key in predicted else fb_verb[fb_index[key]] for key in expected]) \
        if expected else np.zeros((0, k, z), np.int64)
    out_noun = np.stack([noun[predicted[key]] if key in predicted else fb_noun[fb_index[key]] for key in expected]) \
        if expected else np.zeros((0, k, z), np.int64)
    write_predictions(cfg.out, expected, out_verb, out_noun)
    validate_predictions(read_predictions(cfg.out), ann.taxonomy, expected, K=k, Z=z, source=cfg.out)
    if fallback:
        log.warning("%d of %d keys lack features; frequency-prior fallback, e.g. %s", len(fallback), len(expected), fallback[:3])
    Path(str(cfg.out) + ".fallback.json").write_text(json.dumps(
        {"fallback": "frequency_prior", "reason": "observed segments without cached features", "keys": fallback}, indent=1) + "\n")
    write_provenance(cfg, run, data, store, generator, why, num_keys=len(expected), num_fallback=len(fallback), amp=amp)
    print(f"wrote {cfg.out}: {len(expected)} keys ({len(expected) - len(fallback)} from the model, "
          f"{len(fallback)} frequency-prior fallback), generator {generator} ({why}); keys "
          f"{key_set_label(run.cfg, num_seen, head['num_input'], convention)}; amp={str(amp).lower()} ({amp_why})")
    return 0


def default_out(run: str, split: str) -> Path:
    """`<run>/outputs.json` for the test split (the challenge file), `<run>/outputs_<split>.json` for another."""
    return Path(run) / ("outputs.json" if split == "test" else f"outputs_{split}.json")


def write_provenance(cfg: PredictConfig, run, data: str, store: str, generator: str, why: str, *, num_keys: int,
                     num_fallback: int, amp: bool) -> Path:
    """`<out>.provenance.json`: which run, checkpoint (sha256), generator and code wrote `<out>`, and with what.

    A sidecar, not keys in outputs.json: the challenge file holds window keys only (reference doc, section 4.2)."""
    from features.version import code_version
    from train_heads.fingerprint import file_sha256
    from train_heads.run import checkpoint_path

    path = Path(str(cfg.out) + ".provenance.json")
    record = {"outputs": str(Path(cfg.out).resolve()), "run": str(Path(cfg.run).resolve()), "split": cfg.split,
              "checkpoint": cfg.checkpoint, "checkpoint_sha256": file_sha256(checkpoint_path(cfg.run, cfg.checkpoint)),
              "generator": generator, "generator_choice": why, "seed": cfg.seed, "temperature": cfg.temperature,
              "mbr_samples": cfg.mbr_samples, "amp": amp, "num_sequences": run.num_sequences, "cache_keys": dict(run.cache_keys),
              "data": data, "store": store, "num_keys": num_keys, "num_fallback_keys": num_fallback,
              "code_version": code_version()}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def selected_generator(run_dir: str, checkpoint: str) -> tuple[str, str]:
    """(generator, why) of a run: a reference run's is the reference's (`train_heads.protocol.reference_generator`);
    the project's own runs use the one selected on val: the lowest val action ED that `lta evaluate split=val`
    recorded for this checkpoint in `<run>/metrics_val.json`, else the generator training validated with.

    "This checkpoint" is its bytes: the sha256 in the evaluation's fingerprint must be the checkpoint file's, so a
    selection made before the run was retrained or resumed is not used."""
    from train_heads.fingerprint import file_sha256
    from train_heads.protocol import reference_generator
    from train_heads.run import checkpoint_path, read_run_config

    reference = reference_generator(read_run_config(run_dir))
    if reference is not None:
        return reference
    path = Path(run_dir) / "metrics_val.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    name = metrics.get("selected_generator")
    ckpt = checkpoint_path(run_dir, checkpoint)
    recorded = (metrics.get("fingerprint") or {}).get("checkpoint_sha256")
    stale = ""
    if name and metrics.get("checkpoint", checkpoint) == checkpoint:
        # an evaluation without a fingerprint (written before they existed) is matched by checkpoint name only
        if recorded is None or (ckpt.is_file() and recorded == file_sha256(ckpt)):
            return name, f"lowest val action ED {metrics.get(f'model.{name}.action_ed', float('nan')):.4f} in {path}"
        stale = f"{path} scored another {ckpt.name} (its sha256 differs: retrained or resumed since); "
    name = read_run_config(run_dir).get("train", {}).get("val_generator", "sample")
    return name, (f"{stale}the run's train.val_generator; `lta evaluate run={run_dir} split=val` selects the best "
                  f"of several generators for predict")


def main(argv: Sequence[str]) -> int:
    return run_command("predict", PredictConfig, argv, _run, "write the challenge outputs.json of a run")
