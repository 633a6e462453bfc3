"""A synthetic, learnable Ego4D LTA dataset: taxonomy, task grammar and annotation records.

What makes it learnable:
- appearance: noun = object shape + colour (every noun has its own hue, so colour alone tells
  nouns apart), verb = the object's motion (translate, rotate, grow, bounce, ...);
- order: each clip performs one "task", a cyclic recipe of 5-9 distinct actions drawn from a
  few tasks per seed. The clip walks its recipe with noise (skip a step, repeat one, or an
  action drawn uniformly), so the next actions follow from the observed ones.

This module is pure numpy/json and imports nothing above `features/`: it plans the sample
(`plan_sample`), writes the Ego4D annotation files (`write_annotations`) and summarises a plan
(`sample_summary`). Frames and mp4s are made in `extract.render`, whose `write_sample(plan, out)`
writes a whole sample; `lta sample` (pipelines/cmd_sample.py) composes the two.
"""
from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from features.annotations import ANNOTATION_DIR, SPLIT_FILES, TAXONOMY_FILE
from features.errors import UsageError
from features.files import atomic_write_json

FPS = 30
SAMPLE_INFO_FILE = "synthetic_sample.json"  # generator settings, tasks, appearance, test labels
SCHEMA_VERSION = "v2"
RELEASE_DATE = "2022-02-09"  # fixed so that files are byte-identical across runs

_VERB_NAMES = (
    "take_(pick,_grab,_get)", "put_(place,_leave,_drop)", "cut_(trim,_slice,_chop)", "open_(unscrew,_unlock,_unwrap)",
    "close_(shut,_lock)", "wash_(clean,_rinse,_scrub)", "pour_(spill,_drain)", "turn_(spin,_rotate,_flip)",
    "move_(transfer,_pass,_shift)", "stir_(mix,_whisk)", "hold_(support,_grip,_grasp)", "throw_(toss,_discard)",
    "screw_(tighten)", "wipe_(dust,_brush)", "fold_(bend,_crease)", "squeeze_(knead,_press)",
)
_NOUN_NAMES = (
    "knife", "bowl", "cup_(mug,_glass)", "tap_(faucet)", "spoon", "onion", "plate_(dish)", "pot_(saucepan)",
    "bottle_(flask)", "lid_(cap,_cover)", "tomato", "cloth_(towel,_rag)", "pan_(skillet)",
    "board_(chopping_board,_cutting_board)", "container_(box,_tupperware)", "dough", "sponge", "fork",
)
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "bar")
MOTIONS = ("static", "right", "left", "vertical", "rotate", "grow", "shrink", "bounce", "orbit", "shake")


@dataclass(frozen=True)
class Appearance:
    """How a noun looks: a shape and an RGB colour."""

    shape: str
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Motion:
    """How a verb moves its object; `speed` scales the motion for taxonomies with many verbs."""

    name: str
    speed: float


@dataclass
class ClipPlan:
    """One clip: its identity, parent-video offset, segments (frame ranges, labels) and render parameters."""

    clip_uid: str
    video_uid: str
    clip_id: int
    split: str
    task: int
    parent_start_frame: int
    num_frames: int
    render_seed: int
    start_frame: np.ndarray  # (S,) int64, clip-relative, inclusive
    end_frame: np.ndarray  # (S,) int64, exclusive
    verb: np.ndarray  # (S,) int64
    noun: np.ndarray  # (S,) int64
    centre: np.ndarray  # (S, 2) float, object centre (x, y) as fractions of width/height
    size: np.ndarray  # (S,) float, object radius as a fraction of the short side
    phase: np.ndarray  # (S,) float in [0, 1), offsets periodic motions

    @property
    def num_segments(self) -> int:
        return len(self.start_frame)


@dataclass
class SamplePlan:
    """Everything needed to write the annotations and render the clips, deterministic in `seed`."""

    seed: int
    fps: int
    width: int
    height: int
    verbs: tuple[str, ...]
    nouns: tuple[str, ...]
    looks: list[Appearance]  # per noun
    motions: list[Motion]  # per verb
    tasks: list[list[tuple[int, int]]]  # cyclic recipes of (verb, noun)
    clips: list[ClipPlan] = field(default_factory=list)
    noise: dict = field(default_factory=dict)  # the walk's noise probabilities


def taxonomy_names(num_verbs: int, num_nouns: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Unique Ego4D-style class names (`take_(pick,_grab,_get)`), padded with generated ones for large counts."""
    if num_verbs < 1 or num_nouns < 1:
        raise ValueError(f"need at least one verb and one noun, got {num_verbs} and {num_nouns}")
    verbs = list(_VERB_NAMES[:num_verbs]) + [f"verb{i:03d}_(act{i:03d})" for i in range(len(_VERB_NAMES), num_verbs)]
    nouns = list(_NOUN_NAMES[:num_nouns]) + [f"noun{i:03d}_(thing{i:03d})" for i in range(len(_NOUN_NAMES), num_nouns)]
    return tuple(verbs), tuple(nouns)


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def noun_appearance(num_nouns: int) -> list[Appearance]:
    """Noun i: shape SHAPES[i % 7] and its own saturated hue (evenly spaced; brightness alternates)."""
    looks = []
    for i in range(num_nouns):
        hue = i / num_nouns if num_nouns <= 24 else (i * 0.6180339887) % 1.0
        value = 1.0 if i % 2 == 0 else 0.7
        looks.append(Appearance(SHAPES[i % len(SHAPES)], _hsv_to_rgb(hue, 0.85, value)))
    return looks


def verb_motion(num_verbs: int) -> list[Motion]:
    """Verb i: motion MOTIONS[i % 10], faster by 50% for every further round of 10 verbs."""
    return [Motion(MOTIONS[i % len(MOTIONS)], 1.0 + 0.5 * (i // len(MOTIONS))) for i in range(num_verbs)]


def make_tasks(
    rng: np.random.Generator, *, num_tasks: int, num_verbs: int, num_nouns: int, min_len: int = 5, max_len: int = 9
) -> list[list[tuple[int, int]]]:
    """`num_tasks` cyclic recipes of distinct (verb, noun) actions, 5-9 steps each.

    Consecutive steps differ in verb and noun when the taxonomy allows it, so the position in a
    recipe is visible from either attribute.
    """
    tasks = []
    for _ in range(num_tasks):
        length = int(rng.integers(min_len, max_len + 1))
        recipe: list[tuple[int, int]] = []
        for _attempt in range(1000):
            if len(recipe) == length:
                break
            v, n = int(rng.integers(num_verbs)), int(rng.integers(num_nouns))
            if (v, n) in recipe:
                continue
            if recipe and ((num_verbs > 1 and v == recipe[-1][0]) or (num_nouns > 1 and n == recipe[-1][1])):
                continue
            recipe.append((v, n))
        tasks.append(recipe)
    return tasks


def walk_task(
    rng: np.random.Generator,
    recipe: list[tuple[int, int]],
    num_segments: int,
    *,
    num_verbs: int,
    num_nouns: int,
    p_skip: float = 0.10,
    p_repeat: float = 0.05,
    p_random: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Walk a cyclic recipe from a random step: (verb, noun) arrays of length `num_segments`.

    Per step: with p_skip jump two steps ahead, with p_repeat stay on the step, with p_random
    emit a uniformly drawn action (the walk then continues), otherwise advance one step.
    """
    verbs = np.empty(num_segments, dtype=np.int64)
    nouns = np.empty(num_segments, dtype=np.int64)
    pos = int(rng.integers(len(recipe)))
    for s in range(num_segments):
        u = rng.random()
        if s > 0 and u < p_random:
            verbs[s], nouns[s] = rng.integers(num_verbs), rng.integers(num_nouns)
            pos = (pos + 1) % len(recipe)
            continue
        verbs[s], nouns[s] = recipe[pos]
        u = rng.random()
        pos = (pos + (2 if u < p_skip else 0 if u < p_skip + p_repeat else 1)) % len(recipe)
    return verbs, nouns


def _uuid4(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _split_counts(clips: int, train_fraction: float, val_fraction: float) -> dict[str, int]:
    if not (0 < train_fraction and 0 <= val_fraction and train_fraction + val_fraction <= 1):
        raise ValueError(f"need 0 < train_fraction, 0 <= val_fraction, sum <= 1; got {train_fraction}, {val_fraction}")
    n_train = max(1, int(round(clips * train_fraction)))
    n_val = int(round(clips * val_fraction))
    if val_fraction > 0 and clips >= 3:
        n_val = max(1, n_val)
    n_train = min(n_train, clips - n_val)
    n_test = clips - n_train - n_val
    if train_fraction + val_fraction < 1 and clips >= 3 and n_test == 0:
        n_train -= 1
        n_test = 1
    return {"train": n_train, "val": n_val, "test": n_test}


def plan_sample(
    *,
    clips: int = 12,
    seed: int = 0,
    verbs: int = 10,
    nouns: int = 14,
    num_tasks: int = 4,
    segments_per_clip: int | tuple[int, int] = (36, 44),
    segment_sec: tuple[float, float] = (2.2, 3.2),
    width: int = 480,
    height: int = 360,
    fps: int = FPS,
    train_fraction: float = 0.67,
    val_fraction: float = 0.17,
    p_skip: float = 0.10,
    p_repeat: float = 0.05,
    p_random: float = 0.05,
) -> SamplePlan:
    """Plan a synthetic sample (no I/O). Same arguments -> identical plan.

    Segments last `segment_sec` (uniform), with gaps of up to 0.4 s or overlaps of up to 0.27 s
    between neighbours; `action_idx` follows start time and is contiguous from 0.
    """
    if clips < 1:
        raise UsageError(f"clips must be >= 1, got {clips}")
    lo, hi = (segments_per_clip, segments_per_clip) if isinstance(segments_per_clip, int) else segments_per_clip
    if not 1 <= lo <= hi:
        raise UsageError(f"segments_per_clip (lta sample: min_segments, max_segments) must be a positive count or (min, max) "
                         f"with min <= max, got {segments_per_clip}")
    if not 0 < segment_sec[0] <= segment_sec[1]:
        raise UsageError(f"segment_sec must be (min, max) with 0 < min <= max, got {segment_sec}")
    if width % 2 or height % 2 or min(width, height) < 32:
        raise UsageError(f"width and height must be even and >= 32, got {width}x{height}")
    verb_names, noun_names = taxonomy_names(verbs, nouns)
    root = np.random.SeedSequence(seed)
    task_seed, id_seed, *clip_seeds = root.spawn(2 + clips)
    tasks = make_tasks(np.random.default_rng(task_seed), num_tasks=num_tasks, num_verbs=verbs, num_nouns=nouns)
    id_rng = np.random.default_rng(id_seed)
    clip_ids = id_rng.choice(np.arange(100, 10000), size=clips, replace=False)
    counts = _split_counts(clips, train_fraction, val_fraction)
    splits = [s for s in ("train", "val", "test") for _ in range(counts[s])]
    task_offset = {s: int(id_rng.integers(num_tasks)) for s in ("train", "val", "test")}
    plan = SamplePlan(
        seed=seed, fps=fps, width=width, height=height, verbs=verb_names, nouns=noun_names,
        looks=noun_appearance(nouns), motions=verb_motion(verbs), tasks=tasks,
        noise={"p_skip": p_skip, "p_repeat": p_repeat, "p_random": p_random},
    )
    position_in_split = {"train": 0, "val": 0, "test": 0}
    for c in range(clips):
        rng = np.random.default_rng(clip_seeds[c])
        split = splits[c]
        task = (position_in_split[split] + task_offset[split]) % num_tasks
        position_in_split[split] += 1
        num_segments = int(rng.integers(lo, hi + 1))
        verb, noun = walk_task(
            rng, tasks[task], num_segments, num_verbs=verbs, num_nouns=nouns,
            p_skip=p_skip, p_repeat=p_repeat, p_random=p_random,
        )
        durations = np.round(rng.uniform(*segment_sec, size=num_segments) * fps).astype(np.int64)
        shifts = rng.integers(-8, 13, size=num_segments)  # gap (+) or overlap (-) before each segment, frames
        shifts[0] = rng.integers(10, 40)
        start = np.empty(num_segments, dtype=np.int64)
        t = 0
        for s in range(num_segments):
            start[s] = max(t + shifts[s], start[s - 1] + 1 if s else 0)
            t = start[s] + durations[s]
        end = start + durations
        num_frames = int(end.max() + rng.integers(10, 40))
        plan.clips.append(ClipPlan(
            clip_uid=_uuid4(rng),
            video_uid=_uuid4(rng),
            clip_id=int(clip_ids[c]),
            split=split,
            task=task,
            parent_start_frame=int(rng.integers(0, 40 * 60 * fps)),
            num_frames=num_frames,
            render_seed=int(rng.integers(2**31)),
            start_frame=start,
            end_frame=end,
            verb=verb,
            noun=noun,
            centre=rng.uniform(0.35, 0.65, size=(num_segments, 2)),
            size=rng.uniform(0.14, 0.2, size=num_segments),
            phase=rng.random(num_segments),
        ))
    return plan


def _sec(frame: int, fps: int) -> float:
    return round(frame / fps, 6)


def segment_records(plan: SamplePlan, clip: ClipPlan, *, labelled: bool) -> list[dict]:
    """The clip's segments as Ego4D LTA records (all schema fields; no labels when `labelled` is False)."""
    fps = plan.fps
    parent0 = clip.parent_start_frame
    records = []
    for s in range(clip.num_segments):
        a, b = int(clip.start_frame[s]), int(clip.end_frame[s])
        rec = {
            "video_uid": clip.video_uid,
            "clip_id": clip.clip_id,
            "clip_uid": clip.clip_uid,
            "action_idx": s,
            "clip_parent_start_sec": _sec(parent0, fps),
            "clip_parent_end_sec": _sec(parent0 + clip.num_frames, fps),
            "clip_parent_start_frame": parent0,
            "clip_parent_end_frame": parent0 + clip.num_frames,
            "interval_start_sec": _sec(parent0 + a, fps),
            "interval_end_sec": _sec(parent0 + b, fps),
            "interval_start_frame": parent0 + a,
            "interval_end_frame": parent0 + b,
            "action_clip_start_sec": _sec(a, fps),
            "action_clip_end_sec": _sec(b, fps),
            "action_clip_start_frame": a,
            "action_clip_end_frame": b,
        }
        if labelled:
            v, n = int(clip.verb[s]), int(clip.noun[s])
            rec.update({"verb": plan.verbs[v], "noun": plan.nouns[n], "verb_label": v, "noun_label": n})
        records.append(rec)
    return records


def annotation_documents(plan: SamplePlan) -> dict[str, dict]:
    """File name -> JSON document for the three split files and the taxonomy."""
    docs: dict[str, dict] = {TAXONOMY_FILE: {"verbs": list(plan.verbs), "nouns": list(plan.nouns)}}
    for split, filename in SPLIT_FILES.items():
        labelled = split != "test"
        records = [r for c in plan.clips if c.split == split for r in segment_records(plan, c, labelled=labelled)]
        docs[filename] = {
            "version": SCHEMA_VERSION,
            "date": RELEASE_DATE,
            "description": f"Synthetic Ego4D LTA sample (seed {plan.seed}): {split} split"
            + ("" if labelled else ", labels withheld"),
            "split": split,
            "clips": records,
        }
    return docs


def sample_info(plan: SamplePlan) -> dict:
    """Generator settings, the hidden grammar, the appearance table and the withheld test labels."""
    return {
        "seed": plan.seed,
        "fps": plan.fps,
        "width": plan.width,
        "height": plan.height,
        "noise": plan.noise,
        "tasks": [[list(a) for a in t] for t in plan.tasks],
        "noun_appearance": [asdict(a) for a in plan.looks],
        "verb_motion": [asdict(m) for m in plan.motions],
        "clips": [
            {"clip_uid": c.clip_uid, "split": c.split, "task": c.task, "num_frames": c.num_frames,
             "verb_label": c.verb.tolist(), "noun_label": c.noun.tolist()}
            for c in plan.clips
        ],
    }


def fill_withheld_labels(ann, data_dir: Path | str):
    """`ann` (an unlabelled split of a synthetic sample) with the labels withheld in `synthetic_sample.json`.

    Lets `lta score` grade test-split predictions of the synthetic sample, as the challenge server does
    for Ego4D. Raises ValueError when the file is missing or does not describe `ann`'s clips.
    """
    from dataclasses import replace

    path = Path(data_dir) / SAMPLE_INFO_FILE
    if not path.is_file():
        raise ValueError(f"{path}: not found; withheld labels exist only for a synthetic sample (`lta sample`)")
    clips = {c["clip_uid"]: c for c in json.loads(path.read_text())["clips"]}
    verb, noun = ann.verb.copy(), ann.noun.copy()
    for uid, rows in ann.clip_slices.items():
        info = clips.get(uid)
        if info is None:
            raise ValueError(f"{path}: no withheld labels for clip_uid {uid} of {ann.path}")
        idx = ann.action_idx[rows]
        if idx.size and (idx.min() < 0 or idx.max() >= len(info["verb_label"])):
            raise ValueError(f"{path}: clip_uid {uid} has {len(info['verb_label'])} labelled segments, "
                             f"{ann.path} asks for action_idx up to {int(idx.max())}")
        verb[rows] = np.asarray(info["verb_label"], dtype=np.int64)[idx]
        noun[rows] = np.asarray(info["noun_label"], dtype=np.int64)[idx]
    return replace(ann, verb=verb, noun=noun)


def write_annotations(plan: SamplePlan, out_dir: Path | str) -> list[Path]:
    """Write `<out>/annotations/*.json` and `<out>/synthetic_sample.json`; returns the paths."""
    ann_dir = Path(out_dir) / ANNOTATION_DIR
    ann_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for filename, doc in annotation_documents(plan).items():
        atomic_write_json(ann_dir / filename, doc, indent=1, ensure_ascii=True)
        paths.append(ann_dir / filename)
    atomic_write_json(Path(out_dir) / SAMPLE_INFO_FILE, sample_info(plan), indent=1, ensure_ascii=True)
    return paths + [Path(out_dir) / SAMPLE_INFO_FILE]


def sample_summary(plan: SamplePlan) -> dict:
    """Clips and segments per split, clip uids, taxonomy size, frame count, duration, size and fps of `plan`."""
    per_split = {s: [c for c in plan.clips if c.split == s] for s in SPLIT_FILES}
    return {
        "seed": plan.seed,
        "clips": {s: len(cs) for s, cs in per_split.items()},
        "segments": {s: int(sum(c.num_segments for c in cs)) for s, cs in per_split.items()},
        "clip_uids": {s: [c.clip_uid for c in cs] for s, cs in per_split.items()},
        "num_verbs": len(plan.verbs),
        "num_nouns": len(plan.nouns),
        "frames": int(sum(c.num_frames for c in plan.clips)),
        "video_sec": round(sum(c.num_frames for c in plan.clips) / plan.fps, 3),
        "width": plan.width,
        "height": plan.height,
        "fps": plan.fps,
    }
