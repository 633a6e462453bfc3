"""Replayable randomised fault tests: every one draws from `fault_rng(name)`, which prints its seed.

    rng = fault_rng("SIGKILL lta extract")   # prints "fault seed SIGKILL lta extract: 123 (replay: LTA_FAULT_SEED=123)"

Without `LTA_FAULT_SEED` each run draws a fresh seed (or `default`, for tests whose randomness is
fixed on purpose); with it, every randomised fault test uses that seed, so a failure seen once
(its seed is in the captured output pytest shows for a failed test) is replayed with
`LTA_FAULT_SEED=<seed> pytest tests/test_...py -k ...`.
"""
from __future__ import annotations

import os
import secrets

import numpy as np

SEED_ENV = "LTA_FAULT_SEED"


def fault_seed(name: str, default: int | None = None) -> int:
    """The seed of fault test `name`: $LTA_FAULT_SEED, else `default`, else a fresh random one; printed."""
    text = os.environ.get(SEED_ENV, "").strip()
    seed = int(text) if text else (default if default is not None else secrets.randbits(32))
    print(f"fault seed {name}: {seed} (replay: {SEED_ENV}={seed})", flush=True)
    return seed


def fault_rng(name: str, default: int | None = None) -> np.random.Generator:
    """`np.random.default_rng(fault_seed(name, default))`."""
    return np.random.default_rng(fault_seed(name, default))
