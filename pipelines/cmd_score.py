"""`lta score data=DIR split=val predictions=FILE`: ED@Z of a challenge outputs.json.

Ground truth: the split's windows for `num_seen` observed segments and `convention` (their keys
are the expected keys, see features/submission.py); a file may also hold any other key of the
split that has Z future segments (accepted, not scored).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from features.annotations import AnnotationError, load_split
from features.metric import lta_metrics
from features.submission import PredictionError, read_predictions, validate_predictions
from features.windows import CONVENTIONS, build_windows
from pipelines.common import RunFailure, UsageError, run_command
from pipelines.config import opt


@dataclass
class ScoreConfig:
    data: str = opt("data/long_term_anticipation", "dataset root (holds annotations/)")
    split: str = opt("val", "split whose annotations are the ground truth (train/val)")
    predictions: str = opt("outputs.json", "challenge-format predictions file")
    allow_missing: bool = opt(False, "score the keys present instead of failing on missing keys")
    out: str = opt("", "write the scores as JSON here (default: print only)")
    transpositions: bool = opt(False, "count adjacent swaps as one edit (Damerau / OSA)")
    num_seen: int = opt(8, "observed segments before each forecast; defines the expected keys")
    convention: str = opt("plus_one", f"window range convention, one of {list(CONVENTIONS)}")
    num_future: int = opt(20, "Z: forecast length")
    num_sequences: int = opt(5, "K: candidate sequences per key")
    withheld_labels: bool = opt(False, "score an unlabelled split against <data>/synthetic_sample.json (synthetic sample only)")


def score_file(cfg: ScoreConfig) -> dict:
    """Validate `cfg.predictions` against `cfg.split` and return the metrics dict."""
    ann = load_split(cfg.data, cfg.split)
    if cfg.withheld_labels and not ann.has_labels:
        from features.synthetic import fill_withheld_labels

        ann = fill_withheld_labels(ann, cfg.data)
    if not ann.has_labels:
        from features.synthetic import SAMPLE_INFO_FILE

        hint = (f"; this is a synthetic sample that withholds them in {Path(cfg.data) / SAMPLE_INFO_FILE}: pass "
                "withheld_labels=true" if (Path(cfg.data) / SAMPLE_INFO_FILE).is_file() and not cfg.withheld_labels
                else "; the challenge's test labels are not public (the eval.ai server scores outputs.json)")
        raise UsageError(f"{ann.path}: split {cfg.split!r} has no labels to score against{hint}")
    windows = build_windows(ann, num_input=cfg.num_seen, num_future=cfg.num_future, num_seen=cfg.num_seen,
                            convention=cfg.convention)
    forecastable = build_windows(ann, num_input=1, num_future=cfg.num_future, num_seen=1, convention="plus_one")
    obj = read_predictions(cfg.predictions)
    keys, verb, noun = validate_predictions(
        obj, ann.taxonomy, windows.keys, K=cfg.num_sequences, Z=cfg.num_future,
        allowed_keys=forecastable.keys, allow_missing=cfg.allow_missing, source=str(cfg.predictions),
    )
    if not keys:
        raise PredictionError(f"{cfg.predictions}: none of the {len(windows)} expected keys is present")
    row_of = {k: i for i, k in enumerate(windows.keys)}
    future = windows.future[[row_of[k] for k in keys]]  # (W, Z) rows
    metrics = lta_metrics(verb, noun, ann.verb[future], ann.noun[future], num_nouns=ann.taxonomy.num_nouns,
                          transpositions=cfg.transpositions)
    expected = set(windows.keys)
    return {
        "split": cfg.split,
        "predictions": str(cfg.predictions),
        "num_keys_scored": len(keys),
        "num_keys_expected": len(windows),
        "num_keys_missing": len(windows) - len(keys),
        "num_keys_extra": sum(1 for k in obj if k not in expected),
        "num_seen": cfg.num_seen,
        "convention": cfg.convention,
        "transpositions": cfg.transpositions,
        **metrics,
    }


def _run(cfg: ScoreConfig) -> int:
    from pipelines.checks import check_choice, check_data_root, check_file

    check_data_root("data", cfg.data, [cfg.split] if cfg.split in ("train", "val", "test") else [])
    check_choice("convention", cfg.convention, list(CONVENTIONS), "convention")
    check_file("predictions", cfg.predictions, "predictions file")
    try:
        result = score_file(cfg)
    except UsageError:
        raise  # exit 2
    except (PredictionError, AnnotationError, ValueError) as err:
        raise RunFailure(str(err)) from err
    z = cfg.num_future
    print(f"{cfg.split}: {result['num_keys_scored']} keys | ED@{z} verb {result['verb_ed']:.4f} "
          f"noun {result['noun_ed']:.4f} action {result['action_ed']:.4f} | AUED verb {result['verb_aued']:.4f} "
          f"noun {result['noun_aued']:.4f} action {result['action_aued']:.4f}")
    if cfg.out:
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def main(argv: Sequence[str]) -> int:
    return run_command("score", ScoreConfig, argv, _run, "score a challenge outputs.json against a split's annotations")
