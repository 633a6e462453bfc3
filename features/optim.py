"""The optimiser rules both trainers share, torch-free: the LR schedule and the weight-decay parameter groups.

`lta finetune-backbone` (extract/finetune) and `lta train-heads` (train_heads) use the same per-iteration schedule,
a linear warm-up from 0 then a half-cosine to 0 (../shared/reference/ego4d_lta.md §3.6), and the same split of the
trainable parameters into a decayed group and an exempt one; each trainer only says which parameters are exempt
(BatchNorm layers for fine-tuning, `train.no_decay` for the heads) and what decay the exempt group gets.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional, Sequence


def cosine_warmup_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier at optimiser step `step`: linear 0 -> 1 over `warmup_steps`, then half-cosine to 0 at
    `total_steps` (and 0 after it)."""
    if step < warmup_steps:
        return step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def weight_decay_groups(named_params: Iterable[tuple[str, Any]], exempt: Callable[[str, Any], bool], *,
                        weight_decay: float, exempt_weight_decay: float = 0.0,
                        names: Optional[Sequence[str]] = None) -> list[dict]:
    """Two optimiser groups of the trainable parameters among `named_params` (`model.named_parameters()`), in
    their order: those `exempt(name, param)` rejects get `weight_decay`, the exempt ones `exempt_weight_decay`.
    `names` (two strings) adds a "name" to each group."""
    decay, no_decay = [], []
    for name, param in named_params:
        if param.requires_grad:
            (no_decay if exempt(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": exempt_weight_decay}]
    if names is not None:
        for group, name in zip(groups, names):
            group["name"] = name
    return groups
