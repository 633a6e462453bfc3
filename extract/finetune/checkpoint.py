"""The training checkpoint of `lta finetune-backbone`: what a resume needs, written atomically, read back safely.

    out/checkpoints/last.pt          model, optimiser, scheduler, `TrainState`, spec, options, world size (rank 0)
    out/checkpoints/rng_rank<r>.pt   every RNG stream of rank r (dropout masks differ per rank)

Only tensors, plain containers, numbers and strings, so both load with `torch.load(weights_only=True)`: a run dir
from elsewhere cannot run code on resume. `dist` below is the process's `extract.finetune.train.DistInfo` (rank,
world_size, is_main).
"""
from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from extract.finetune.model import BackboneSpec, atomic_torch_save
from extract.finetune.options import TrainOptions

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """The step counter and this run's throughput totals (the `state` of last.pt)."""

    step: int = 0
    samples: int = 0
    data_sec: float = 0.0
    step_sec: float = 0.0


def rng_state() -> dict:
    """Every RNG stream as tensors and plain Python values, so the file loads with `weights_only=True`."""
    import torch

    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {"python": random.getstate(),  # (version, tuple of 625 ints, gauss_next)
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model, optimizer, scheduler, spec: BackboneSpec, state: TrainState, dist: Any,
                    opts: TrainOptions) -> None:
    """Write `path` (rank 0) and this rank's RNG file beside it; under DDP every rank waits for the others."""
    # every rank keeps its own RNG stream (dropout masks differ per rank); rank 0 writes the shared state
    atomic_torch_save(rng_state(), path.with_name(f"rng_rank{dist.rank}.pt"))
    if dist.is_main:
        atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "state": asdict(state), "spec": spec.to_json(),
                           "options": asdict(opts), "world_size": dist.world_size}, path)
    if dist.world_size > 1:
        import torch.distributed as tdist

        tdist.barrier()


def load_checkpoint(path: Path, model, optimizer, scheduler, spec: BackboneSpec, dist: Any) -> TrainState:
    """Load `path` into the model, optimiser and scheduler (and this rank's RNG streams); the saved state.

    Raises:
        ValueError: the checkpoint's backbone spec is not this run's.
        RuntimeError: the file holds more than tensors and plain values (refused unread).
    """
    ckpt = _load_own(path)
    if ckpt["spec"] != spec.to_json():
        raise ValueError(f"{path}: saved backbone spec differs from this run's; use a new out= or resume=false\n"
                         f"saved: {ckpt['spec']}\nnow:   {spec.to_json()}")
    if ckpt["world_size"] != dist.world_size:
        log.warning("%s was written with world_size %d, resuming with %d: data order changes", path, ckpt["world_size"], dist.world_size)
    model.load_state_dict(ckpt["model"], strict=True)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    rng_path = path.with_name(f"rng_rank{dist.rank}.pt")
    if rng_path.is_file():
        set_rng_state(_load_own(rng_path))
    return TrainState(**ckpt["state"])


def _load_own(path: Path) -> dict:
    """A checkpoint this module wrote (tensors, plain containers, numbers, strings): `weights_only=True`, so
    even a run dir from elsewhere cannot run code on resume."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).splitlines()[0]
        raise RuntimeError(f"{path}: refusing to resume from it, it holds more than tensors and plain values ({first}); "
                           "a file from an older version or another tool: start over with resume=false or a new out=") from None
