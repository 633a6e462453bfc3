"""Which procedure a run follows after training: the reference's, or the project's (torch-free).

A config that sets `reference: <what it reproduces>` (the five reference configs in pipelines/configs/) makes a
*reference run*; every command that uses its checkpoint then follows the reference by default:

- generation: K independent draws per position from softmax(logits) at temperature 1 (the `sample` generator),
  as `ForecastingEncoderDecoder.generate(k=5)` in EGO4D/forecasting@38d1931
  ego4d_forecasting/models/lta_models.py:286-298, called from tasks/long_term_anticipation.py for val and test.
  Our own configs use the generator `lta evaluate` found best on val.
- key set: every window with N_in observed segments (`num_seen: N_in` in the reference configs; the windows of
  ego4d_forecasting/datasets/ptv_dataset_helper.py:449-451); `lta evaluate` reports the project's default set
  (`num_seen=8`, the challenge's) beside it, labelled.
- precision: the run's `train.amp` (false, fp32, for reference runs) for every command that uses its
  checkpoint, not a command-wide default.

A user's explicit setting (`generator=`, `amp=`, `num_seen=`) always wins; the choice and its reason are printed
and recorded.
"""
from __future__ import annotations

from typing import Optional

REFERENCE_GENERATOR = "sample"  # lta_models.py:286-298: Categorical(logits).sample() K times, no temperature
REFERENCE_GENERATION = ("K independent draws per position from softmax(logits) at T=1, as generate(k=5) in "
                        "EGO4D/forecasting ego4d_forecasting/models/lta_models.py:286-298")
PROJECT_NUM_SEEN = 8  # the project's default val/test key set (TrainHeadsConfig.num_seen): the challenge's


def reference_of(cfg: dict) -> str:
    """What a run's resolved config says it reproduces ("" for the project's own configs)."""
    return str(cfg.get("reference") or "")


def reference_generator(cfg: dict) -> Optional[tuple[str, str]]:
    """(generator, why) a reference run generates with by default; None for the project's own configs."""
    ref = reference_of(cfg)
    if not ref:
        return None
    return REFERENCE_GENERATOR, (f"reference config ({ref}): {REFERENCE_GENERATION}; pass generator=NAME for "
                                 f"another")


def run_amp(cfg: dict, given: Optional[bool] = None) -> tuple[bool, str]:
    """(amp, why): bf16 autocast on CUDA or not, for a command using this run's checkpoint.

    `given` (the command's `amp=`) wins; else the run's own training precision `train.amp` (a run whose config
    records none: fp32 for a reference run, else the schema default, true)."""
    if given is not None:
        return bool(given), f"given as amp={str(bool(given)).lower()}"
    amp = bool((cfg.get("train") or {}).get("amp", not reference_of(cfg)))
    return amp, f"the run's train.amp={str(amp).lower()} ({'bf16 autocast on CUDA' if amp else 'fp32'})"


def extra_key_sets(cfg: dict, num_seen: int) -> dict[str, int]:
    """Other key sets `lta evaluate` scores beside the run's own (label -> num_seen): for a reference run whose
    key set (every N_in window) differs from the project's default (`num_seen=8`), that default, labelled."""
    if not reference_of(cfg) or num_seen == PROJECT_NUM_SEEN:
        return {}
    return {f"keyset_num_seen{PROJECT_NUM_SEEN}": PROJECT_NUM_SEEN}


def key_set_label(cfg: dict, num_seen: int, num_input: int, convention: str) -> str:
    """A one-line description of a key set, for the printed tables and the recorded metrics."""
    what = ("the reference's: every window with N_in observed segments, ptv_dataset_helper.py:449"
            if num_seen == num_input else
            "the challenge's: 8 observed segments" if num_seen == PROJECT_NUM_SEEN else f"{num_seen} observed segments")
    return f"num_seen={num_seen}, convention={convention} ({what})"
