"""`lta sample out=DIR clips=N seed=S`: write a synthetic, learnable Ego4D LTA dataset.

Writes `DIR/annotations/fho_lta_{train,val,test_unannotated}.json`, `fho_lta_taxonomy.json`,
`DIR/clips_hq/<clip_uid>.mp4` (H.264, 30 fps) and `DIR/synthetic_sample.json` (the hidden task
grammar, appearance table and withheld test labels). `lta resize` makes `DIR/clips/` later.
The plan (labels, recipes, segments) comes from `features.synthetic.plan_sample` (pure numpy), the
files from `extract.render.write_sample` (annotations + rendered mp4s).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from extract.render import write_sample
from features.synthetic import plan_sample
from pipelines.common import run_command
from pipelines.config import opt, to_yaml

log = logging.getLogger(__name__)


@dataclass
class SampleConfig:
    out: str = opt("data/synthetic_lta", "dataset root to write (annotations/, clips_hq/)")
    clips: int = opt(12, "number of clips over all splits")
    seed: int = opt(0, "random seed; the same seed gives identical files")
    verbs: int = opt(10, "verb classes in the taxonomy")
    nouns: int = opt(14, "noun classes in the taxonomy")
    tasks: int = opt(4, "hidden tasks (cyclic recipes of 5-9 actions)")
    min_segments: int = opt(36, "fewest action segments per clip (8 observed + 20 future need >= 28)")
    max_segments: int = opt(44, "most action segments per clip")
    min_segment_sec: float = opt(2.2, "shortest segment, seconds")
    max_segment_sec: float = opt(3.2, "longest segment, seconds")
    width: int = opt(480, "raw clip width (even)")
    height: int = opt(360, "raw clip height (divisible by 4)")
    train_fraction: float = opt(0.67, "share of clips in train")
    val_fraction: float = opt(0.17, "share of clips in val (the rest is test)")
    p_skip: float = opt(0.10, "grammar noise: probability to skip a recipe step")
    p_repeat: float = opt(0.05, "grammar noise: probability to repeat a step")
    p_random: float = opt(0.05, "grammar noise: probability of a uniformly random action")
    videos: bool = opt(True, "render clips_hq/*.mp4 (false: annotations only)")


def _run(cfg: SampleConfig) -> int:
    out = Path(cfg.out)
    plan = plan_sample(
        clips=cfg.clips,
        seed=cfg.seed,
        verbs=cfg.verbs,
        nouns=cfg.nouns,
        num_tasks=cfg.tasks,
        segments_per_clip=(cfg.min_segments, cfg.max_segments),
        segment_sec=(cfg.min_segment_sec, cfg.max_segment_sec),
        width=cfg.width,
        height=cfg.height,
        train_fraction=cfg.train_fraction,
        val_fraction=cfg.val_fraction,
        p_skip=cfg.p_skip,
        p_repeat=cfg.p_repeat,
        p_random=cfg.p_random,
    )
    summary = write_sample(plan, out, videos=cfg.videos)
    (out / "sample_config.yaml").write_text(to_yaml(cfg))
    brief = {k: v for k, v in summary.items() if k != "clip_uids"}
    print(json.dumps(brief, indent=1))
    log.info("wrote %s: %s clips, %s segments, %.1f s of video, rendered in %.1f s",
             out, summary["clips"], summary["segments"], summary["video_sec"], summary["render_sec"])
    return 0


def main(argv: Sequence[str]) -> int:
    return run_command("sample", SampleConfig, argv, _run, "write a synthetic, learnable Ego4D-format LTA dataset")
