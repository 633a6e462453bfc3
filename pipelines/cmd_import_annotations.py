"""`lta import-annotations format=epic-kitchens-100 src=DIR out=DIR ...`: another dataset's annotations -> the Ego4D LTA layout.

Formats are a registry (`IMPORTERS`); `epic-kitchens-100` reads the public EK100 CSVs
(features/epic_kitchens.py) and writes `<out>/annotations/` (+ `<out>/clips_hq/` links to the videos
when `videos=` is given), so `lta resize`, `lta extract`, `lta train-heads`, `lta evaluate` and
`lta predict` run on it unchanged. A malformed row is one error line naming the file, the line and the
field (exit 2); nothing is written then.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from pipelines.common import UsageError, run_command
from pipelines.config import opt

log = logging.getLogger(__name__)


@dataclass
class ImportAnnotationsConfig:
    format: str = opt("epic-kitchens-100", "source format; available: epic-kitchens-100")
    src: str = opt("data/epic_kitchens_100_annotations", "folder of the source files (relative file names below are read from it)")
    out: str = opt("data/epic_kitchens_100", "dataset root to write (annotations/, clips_hq/)")
    train: list[str] = opt(["EPIC_100_train.csv"], "segment CSVs of the train split")
    val: list[str] = opt(["EPIC_100_validation.csv"], "segment CSVs of the val split")
    test: list[str] = opt(["EPIC_100_test_timestamps.csv"], "segment CSVs of the test split (labels not needed, dropped)")
    verb_classes: str = opt("EPIC_100_verb_classes.csv", "verb taxonomy CSV (id,key,...)")
    noun_classes: str = opt("EPIC_100_noun_classes.csv", "noun taxonomy CSV (id,key,...)")
    videos: str = opt("", "EK100 video root (<root>/<participant>/videos/<video_id>.MP4) to link as clips_hq/; empty = no links")
    link: str = opt("hard", "how videos become clips_hq/: hard (same filesystem) or copy (symlinks would leave the data root)")
    overwrite: bool = opt(False, "replace an existing <out>/annotations (and clips_hq links)")


def _import_epic_kitchens_100(cfg: ImportAnnotationsConfig) -> dict:
    from features import epic_kitchens as ek

    src = Path(cfg.src)
    resolve = lambda name: Path(name) if Path(name).is_absolute() else src / name  # noqa: E731
    files = {"train": [resolve(p) for p in cfg.train], "val": [resolve(p) for p in cfg.val],
             "test": [resolve(p) for p in cfg.test]}
    docs = ek.convert(files, resolve(cfg.verb_classes), resolve(cfg.noun_classes))
    links, missing = ({}, [])
    if cfg.videos:
        links, missing = ek.video_links(docs, cfg.videos)
        if missing:
            log.warning("%d of %d videos not found under %s (no clips_hq link), e.g. %s", len(missing),
                        len(missing) + len(links), cfg.videos, missing[:3])
    ek.write_dataset(cfg.out, docs, links=links, link_mode=cfg.link, overwrite=cfg.overwrite)
    out = ek.summary(docs)
    out.update({"out": cfg.out, "linked_videos": len(links), "missing_videos": len(missing)})
    return out


IMPORTERS: dict[str, Callable[[ImportAnnotationsConfig], dict]] = {"epic-kitchens-100": _import_epic_kitchens_100}


def _run(cfg: ImportAnnotationsConfig) -> int:
    from features.annotations import AnnotationError

    if cfg.format not in IMPORTERS:
        raise UsageError(f"unknown format {cfg.format!r}; available: {sorted(IMPORTERS)}")
    try:
        result = IMPORTERS[cfg.format](cfg)
    except (AnnotationError, OSError, ValueError) as err:
        raise UsageError(str(err)) from err
    print(json.dumps(result, indent=1))
    return 0


def main(argv: Sequence[str]) -> int:
    return run_command("import-annotations", ImportAnnotationsConfig, argv, _run,
                       "convert another dataset's annotations (EPIC-KITCHENS-100) to the Ego4D LTA layout")
