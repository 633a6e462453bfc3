"""Names -> extractors: the table's rows (by builder kind), any `clip_<arch>.<tag>`, fine-tuned runs, and
builders registered from outside with `register_extractor`."""
from __future__ import annotations

from typing import Any, Callable

from extract.extractors.base import Extractor
from extract.extractors.clip import ClipExtractor, DasRyooClipExtractor
from extract.extractors.table import ENTRIES, PRECISIONS, ExtractorEntry
from extract.extractors.video import (FINETUNE_ARCHS, CheckpointMViTExtractor, CheckpointSlowFastExtractor, MViTExtractor,
                                      RandomMViTExtractor, SlowFastExtractor, build_finetuned)
from features.devices import check_device

# the table's `kind` -> the builder of that row: fn(entry, *, weights, device, crop_size, **entry.builder_kwargs)
BUILDERS: dict[str, Callable[..., Extractor]] = {
    "slowfast": SlowFastExtractor.build,
    "slowfast_ckpt": CheckpointSlowFastExtractor.build,
    "mvit": MViTExtractor.build,
    "mvit_ckpt": CheckpointMViTExtractor.build,
    "mvit_random": RandomMViTExtractor.build,
    "clip": ClipExtractor.build,
    "clip_dasryoo": DasRyooClipExtractor.build,
}
_EXTRA: dict[str, Callable[..., Extractor]] = {}  # names registered by `register_extractor` (extensions)


def register_extractor(name: str) -> Callable[[Callable[..., Extractor]], Callable[..., Extractor]]:
    """Decorator: register a builder `fn(*, weights, device, crop_size) -> Extractor` under `name` (an extension
    outside the table; a table row is the usual way to add a variant of a known model)."""

    def wrap(fn: Callable[..., Extractor]) -> Callable[..., Extractor]:
        if name in ENTRIES or name in _EXTRA:
            raise ValueError(f"extractor {name!r} registered twice")
        _EXTRA[name] = fn
        return fn

    return wrap


def list_extractors() -> list[str]:
    """Registered names (any `clip_<open_clip arch>.<tag>` works too)."""
    return sorted([*ENTRIES, *_EXTRA])


def _builder(entry: ExtractorEntry) -> Callable[..., Extractor]:
    build = BUILDERS[entry.kind]
    return lambda **kw: build(entry, **entry.kwargs(), **kw)


def create_extractor(name: str, *, weights: str = "default", device: str = "cpu", crop_size: int | None = None,
                     num_input_clips: Any = 1, slow_pathway: str = "per_slot", linspace: str = "torch19",
                     precision: str = "fp32") -> Extractor:
    """Build extractor `name` on `device` (heavy imports happen here).

    Args:
        weights: "default" (the name's pretrain source), "random", a checkpoint path, or a
            `lta finetune-backbone` run dir (or its backbone.pt) for `<video arch>.<run name>`.
        crop_size: override of the spec's crop (CPU-sized runs); short side scales with it. A
            fine-tuned run fixes its own crop, so only None or that crop is accepted there.
        num_input_clips, slow_pathway, linspace: test-time sampling (`Extractor.configure_sampling`).
        precision: "fp32" (the reference) | "bf16" (autocast on the device; about 1e-3 relative error).

    Raises:
        ValueError: unknown name (lists the available ones) or weights the name cannot use
            (e.g. a fine-tuned MViT run for a SlowFast name).
        FileNotFoundError: a weights path that does not exist.
        UsageError: device "cuda" without a GPU. RuntimeError: default weights that cannot be downloaded.
        features.checkpoint_io.UnsafeCheckpointError: a checkpoint whose pickle would run code.
    """
    from extract.finetune.model import is_finetuned_run

    if weights not in ("default", "random") and is_finetuned_run(weights):
        builder = lambda **kw: build_finetuned(name, **kw)  # noqa: E731
    elif name in ENTRIES:
        builder = _builder(ENTRIES[name])
    elif name in _EXTRA:
        builder = _EXTRA[name]
    elif name.startswith("clip_") and "." in name:
        builder = lambda **kw: ClipExtractor.build(name, **kw)  # noqa: E731
    else:
        raise ValueError(f"unknown extractor {name!r}; available: {list_extractors()}, clip_<open_clip arch>.<tag>, "
                         f"or <{'|'.join(FINETUNE_ARCHS)}>.<run name> with weights=RUN_DIR of `lta finetune-backbone`")
    check_device("device", device, allow_auto=False)  # never a silent fall-back to the CPU
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    ext = builder(weights=weights, device=device, crop_size=crop_size)
    ext.precision = precision
    ext.configure_sampling(num_input_clips, slow_pathway=slow_pathway, linspace=linspace)
    return ext
