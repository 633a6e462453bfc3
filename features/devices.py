"""Which torch device a command runs on: the one rule for `device=` / `train.device=` in every command.

`auto` is CUDA when torch sees a GPU, else the CPU; `cpu`, `cuda` and `cuda:N` are taken as given, and a CUDA
device that this machine lacks is a usage error (exit 2), never a silent fall-back to the CPU. torch is imported
only inside `check_device` / `resolve_device` when a CUDA name needs checking, so this module stays torch-free.
"""
from __future__ import annotations

from features.errors import UsageError, did_you_mean


def check_device(key: str, device: str, *, allow_auto: bool = True) -> str:
    """`device` checked (`cpu`, `cuda`, `cuda:N` with that GPU present, or `auto`) and returned unchanged."""
    name = str(device)
    if allow_auto and name == "auto":
        return name
    kind, _, index = name.partition(":")
    valid = (["auto"] if allow_auto else []) + ["cpu", "cuda", "cuda:N"]
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise UsageError(f"{key}={name}: unknown device{did_you_mean(name, valid)}; valid: {valid}")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"{key}={name}: CUDA is not available on this machine; use {key}=cpu"
                             + (f" or {key}=auto" if allow_auto else ""))
        if index and int(index) >= torch.cuda.device_count():
            raise UsageError(f"{key}={name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


def resolve_device(device: str, key: str = "device") -> str:
    """The device name to run on: `check_device`, then `auto` -> `cuda` when CUDA is available, else `cpu`."""
    name = check_device(key, device)
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
