"""One prepared run that measures what only a GPU can show, inside a hard time budget (README "GPU figures").

    .venv/bin/python bench/gpu.py                    # on a CUDA node: budget 480 s, writes bench_out/gpu/gpu.{json,md}
    .venv/bin/python bench/gpu.py --dry-run          # CPU, tiny sizes, < 60 s: every code path (a test runs it)
    make bench-gpu                                   # the first line

Everything device-specific (device selection, bf16 autocast, torch.compile, synchronisation, memory) sits behind
one `Device` object built from `--device` (auto = cuda when available), so the script runs unchanged on CUDA.

Parts, each measured in this one process:
1. extraction: SlowFast R101 8x8 (`slowfast_r101_8x8.ego4d` structure) + CLIP ViT-B/16 with random weights on
   synthetic 320p clips written at the start: windows/s decode-only (one decode thread per core), model-only
   (frames in memory), the full `extract.pipeline.run_extraction`; pipeline / max(parts); peak memory; bf16 vs
   fp32 relative error of the R101 features on the same windows.
2. stage two at Ego4D v2 scale (120k train windows of synthetic features in device memory): the reference
   `slowfast_transformer` head and the autoregressive `ar_transformer` head, train steps/s in fp32 and bf16, with
   and without torch.compile (`train_heads.train.train_step`, the loop's own step), and the projected 50-epoch
   wall time including a per-epoch val ED@20 on 30k windows.
3. evaluation: val windows/s of forward + K=5 generation + ED@20 (`forecast_split` + `score_sequences`) per generator.

The budget is split between the parts; each measurement is sized from a short calibration (one warm-up call and
one timed call) to what is left of its share, and a measurement that does not fit is skipped and listed with the
reason. A window (extraction) is one annotated segment through both extractors.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

# run as `python bench/gpu.py`: this file's folder would shadow nothing, but the repo root must be importable
sys.path[:1] = [str(Path(__file__).resolve().parents[1])]

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
V, N, Z, D_SF = 117, 521, 20, 2304  # Ego4D v2 taxonomy, forecast length, SlowFast feature dim
EXTRACTORS = ("slowfast_r101_8x8.ego4d", "clip_vit_b16.openai")
HEADS = {"slowfast_transformer": "pipelines/configs/slowfast_transformer.yaml", "ar_transformer": "pipelines/configs/ar_transformer.yaml"}
HARD_GRACE_SEC = 15.0  # past the budget, a watchdog writes what was measured and exits
COMPILE_WARMUP_SEC = 60  # torch.compile (inductor) of a head's forward + backward on a GPU, roughly
SHARES = {"extraction": 0.45, "stage_two": 0.35, "evaluation": 0.20}  # of the budget left when the part starts


@dataclass
class Sizes:
    """Problem sizes: the real ones (GPU run) or tiny ones (--dry-run)."""

    clips: int = 12
    clip_sec: float = 20.0
    width: int = 426  # 320p, the resized Ego4D short side
    height: int = 320
    crop: int | None = None  # extractor crop override (None: the spec's 224)
    extract_batch: int = 32
    max_batches: int = 50  # timed model-only batches at most
    train_windows: int = 120_000
    val_windows: int = 30_000
    eval_windows: int = 4096  # evaluation rate measured on up to this many val windows
    batch: int = 64
    epochs: int = 50
    max_steps: int = 200  # timed train steps per variant at most
    mbr_samples: int = 64
    compile_backend: str = "inductor"
    head_overrides: dict = field(default_factory=dict)


DRY = Sizes(clips=2, clip_sec=6.0, crop=32, extract_batch=2, max_batches=2, train_windows=256, val_windows=128, eval_windows=64,
            batch=8, max_steps=3, mbr_samples=8, compile_backend="eager",
            head_overrides={"proj_dim": 64, "aggregator_kwargs": {"depth": 1, "heads": 2, "ff_dim": 64},
                            "decoder_kwargs": {"dim": 32, "depth": 1, "heads": 2, "ff_dim": 64}})


class Skip(Exception):
    """A measurement that does not fit in what is left of the budget."""


class Budget:
    def __init__(self, total_sec: float):
        self.total, self.t0 = total_sec, time.perf_counter()

    def left(self) -> float:
        return self.total - (time.perf_counter() - self.t0)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


class Device:
    """The one place that knows about the accelerator: placement, sync, autocast, compile, memory."""

    def __init__(self, name: str):
        import torch

        self.torch = torch
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(name)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"bench/gpu.py: --device {name} but CUDA is not available")
        self.is_cuda = self.device.type == "cuda"

    def describe(self) -> str:
        t = self.torch
        if self.is_cuda:
            p = t.cuda.get_device_properties(self.device)
            return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {t.version.cuda}, torch {t.__version__}"
        return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {t.get_num_threads()} torch threads), torch {t.__version__}"

    def sync(self) -> None:
        if self.is_cuda:
            self.torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.is_cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> tuple[float, str]:
        """Peak device memory since `reset_peak` (CUDA), or the process's peak RSS (CPU)."""
        if self.is_cuda:
            return self.torch.cuda.max_memory_allocated(self.device) / 2**30, "GiB allocated (CUDA peak)"
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "GiB process peak RSS (CPU)"

    def autocast(self, bf16: bool):
        return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16, enabled=bf16)

    def compile(self, model, backend: str):
        return self.torch.compile(model, backend=backend)


class Report:
    def __init__(self, device: Device, args: argparse.Namespace):
        self.rows: list[dict] = []
        self.skipped: list[dict] = []
        self.meta = {"device": device.describe(), "budget_sec": args.budget, "dry_run": args.dry_run,
                     "command": "python bench/gpu.py " + " ".join(sys.argv[1:])}

    def add(self, part: str, what: str, value: float, unit: str, note: str = "") -> None:
        self.rows.append({"part": part, "measurement": what, "value": float(value), "unit": unit, "note": note})
        print(f"  {part} | {what}: {value:.4g} {unit} {note}", flush=True)

    def skip(self, part: str, what: str, reason: str) -> None:
        self.skipped.append({"part": part, "measurement": what, "reason": reason})
        print(f"  {part} | {what}: SKIPPED ({reason})", flush=True)

    def markdown(self) -> str:
        lines = [f"GPU figures: {self.meta['device']}; `{self.meta['command']}`, budget {self.meta['budget_sec']:.0f} s, "
                 f"wall {self.meta.get('wall_sec', 0):.0f} s" + (" (DRY RUN: tiny sizes, numbers mean nothing)" if self.meta["dry_run"] else ""),
                 "", "| part | measurement | value | note |", "|---|---|---|---|"]
        lines += [f"| {r['part']} | {r['measurement']} | {r['value']:.4g} {r['unit']} | {r['note']} |" for r in self.rows]
        lines += [f"| {s['part']} | {s['measurement']} | skipped | {s['reason']} |" for s in self.skipped]
        return "\n".join(lines) + "\n"


def timed_rate(fn, seconds: float, *, sync, max_units: int, min_units: int = 1,
               warmup_extra: bool = False) -> tuple[float, int, float]:
    """(units/s, units timed, warm-up s) of `fn()` (one unit per call), sized to `seconds` from a calibration.

    `warmup_extra`: the first call (torch.compile) is not counted against `seconds` (the caller bounded it).
    """
    t = time.perf_counter()
    fn()
    sync()
    warm = time.perf_counter() - t  # compile, cudnn autotune, lazy init
    t = time.perf_counter()
    fn()
    sync()
    one = time.perf_counter() - t
    spent = one + (0.0 if warmup_extra else warm)
    if spent > seconds:
        raise Skip(f"calibration took {spent:.1f} s, {seconds:.1f} s allotted")
    n = int(max(min_units, min(max_units - 1, (seconds - spent) // max(one, 1e-6))))
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    total = one + time.perf_counter() - t
    return (n + 1) / total, n + 1, warm


# --- 1. extraction ---------------------------------------------------------------------------------------------
def write_clips(root: Path, sizes: Sizes) -> int:
    """`sizes.clips` H.264 clips at 320p (moving noise pattern, keyframe every 30 frames) and LTA annotations."""
    import av

    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / "fho_lta_taxonomy.json").write_text(json.dumps({"verbs": ["a"], "nouns": ["x"]}))
    recs = []
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (sizes.height, sizes.width * 2, 3), dtype=np.uint8)
    for c in range(sizes.clips):
        uid = f"clip{c}"
        path = root / "clips" / f"{uid}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=30, options={"crf": "23", "preset": "ultrafast", "g": "30"})
            stream.width, stream.height, stream.pix_fmt = sizes.width, sizes.height, "yuv420p"
            for i in range(int(sizes.clip_sec * 30)):
                shift = (i * 3 + c * 7) % sizes.width
                for packet in stream.encode(av.VideoFrame.from_ndarray(base[:, shift:shift + sizes.width].copy(), format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        for k in range(int((sizes.clip_sec - 3) // 2)):  # ~2.5 s segments every 2 s, as Ego4D's overlapping actions
            recs.append({"clip_uid": uid, "action_idx": k, "action_clip_start_sec": 0.5 + 2.0 * k,
                         "action_clip_end_sec": 3.0 + 2.0 * k, "verb_label": 0, "noun_label": 0})
    for split, name in [("train", "fho_lta_train.json"), ("val", "fho_lta_val.json"), ("test", "fho_lta_test_unannotated.json")]:
        (ann / name).write_text(json.dumps({"split": split, "clips": recs if split == "train" else []}))
    return len(recs)


def bench_extraction(dev: Device, sizes: Sizes, budget: Budget, report: Report, root: Path) -> None:
    import torch

    from extract import decode, pipeline
    from extract.extractors import create_extractor
    from features.annotations import load_split
    from features.store import RowTable

    part = "extraction"
    share = budget.left() * SHARES[part]
    t_part = time.perf_counter()
    left = lambda: share - (time.perf_counter() - t_part)  # noqa: E731
    t = time.perf_counter()
    num_rows = write_clips(root, sizes)
    print(f"  wrote {sizes.clips} clips of {sizes.clip_sec:.0f} s at {sizes.width}x{sizes.height}, {num_rows} segments "
          f"({time.perf_counter() - t:.1f} s)", flush=True)
    exts = {n: create_extractor(n, weights="random", device=str(dev.device), crop_size=sizes.crop) for n in EXTRACTORS}
    specs = {e.spec.name: e.spec for e in exts.values()}
    rows = RowTable.from_annotations([load_split(root, "train")])
    views = decode.make_views(1)
    cores = os.cpu_count() or 1
    uids = sorted(set(rows.clip_uid.tolist()))

    def decode_clip(uid: str) -> int:
        rs = np.flatnonzero(rows.clip_uid == uid)
        job = pipeline._ClipJob(uid, root / "clips" / f"{uid}.mp4", rs, {n: set(rs.tolist()) for n in specs})
        info = decode.probe_clip(job.path)
        reqs, _ = pipeline._requests(job, rows, specs, views, info)
        return sum(1 for _ in decode.decode_rows(job.path, reqs, info=info))

    # decode-only: every clip's windows for both extractors (decode-once union), one thread per core
    try:
        t = time.perf_counter()
        first = decode_clip(uids[0])
        one = time.perf_counter() - t
        n_clips = int(min(len(uids), max(1, left() * 0.2 * cores / max(one, 1e-6))))
        if one > left() * 0.2:
            raise Skip(f"one clip took {one:.1f} s")
        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=cores) as pool:
            done = sum(pool.map(decode_clip, uids[:n_clips]))
        decode_rate = done / (time.perf_counter() - t)
        report.add(part, f"decode-only ({cores} threads)", decode_rate, "windows/s", f"{done} windows of {n_clips} clips")
        del first
    except Skip as err:
        decode_rate = None
        report.skip(part, "decode-only", str(err))

    # model-only: frames already in memory, batches of extract_batch windows through both extractors (all slots)
    rng = np.random.default_rng(0)
    frames = {n: rng.integers(0, 256, (sizes.extract_batch, s.num_frames, sizes.height, sizes.width, 3), dtype=np.uint8)
              for n, s in specs.items()}
    dev.reset_peak()
    try:
        rate, n, warm = timed_rate(lambda: [e.call_slots(frames[n]) for n, e in exts.items()], left() * 0.3,
                                   sync=dev.sync, max_units=sizes.max_batches)
        model_rate = rate * sizes.extract_batch
        slots = {n: e.spec.num_slots for n, e in exts.items()}
        report.add(part, "model-only fp32", model_rate, "windows/s", f"batch {sizes.extract_batch}, {n} batches, slots {slots}")
        gib, what = dev.peak_gib()
        report.add(part, "memory, model-only fp32", gib, what)
    except Skip as err:
        model_rate = None
        report.skip(part, "model-only fp32", str(err))

    # bf16 vs fp32 on the same windows (R101)
    try:
        if left() < 5 * (sizes.extract_batch / model_rate if model_rate else 1e9):
            raise Skip("not enough budget left")
        sf = EXTRACTORS[0]
        bf = create_extractor(sf, weights="random", device=str(dev.device), crop_size=sizes.crop, precision="bf16")
        a = exts[sf].call_slots(frames[sf]).double()
        b = bf.call_slots(frames[sf]).double()
        rel = float((a - b).norm() / a.norm().clamp_min(1e-30))
        report.add(part, "R101 bf16 vs fp32 relative error", rel, "", f"||bf16 - fp32|| / ||fp32|| over {sizes.extract_batch} windows"
                   + ("" if dev.is_cuda else "; CPU bf16 autocast"))
        del bf
    except Skip as err:
        report.skip(part, "R101 bf16 vs fp32", str(err))

    # the full pipeline on a number of shards that fits what is left
    try:
        if not (decode_rate and model_rate):
            raise Skip("needs the decode-only and model-only rates")
        est = num_rows / min(decode_rate, model_rate)
        shards = max(1, math.ceil(est / max(left() * 0.8, 1e-6)))
        if shards > num_rows // 2:
            raise Skip(f"a full pass would take {est:.0f} s, {left():.0f} s left")
        for e in exts.values():
            del e
        torch.cuda.empty_cache() if dev.is_cuda else None
        s = pipeline.run_extraction(pipeline.ExtractOptions(
            data_dir=root, store_root=root / "store", extractors=list(EXTRACTORS), splits=["train"],
            device=str(dev.device), batch_size=sizes.extract_batch, weights={n: "random" for n in EXTRACTORS},
            crop_size=sizes.crop, decode_workers=cores, progress=False, shard=0, num_shards=shards, chunk_rows=8))
        pipe_rate = s.rows_done / max(s.loop_sec, 1e-9)
        report.add(part, "full pipeline", pipe_rate, "windows/s", f"{s.rows_done} windows, shard 1/{shards}, {cores} decode workers")
        ratio = (1 / pipe_rate) / max(1 / decode_rate, 1 / model_rate)
        report.add(part, "pipeline / max(decode-only, model-only) time per window", ratio, "x", "1.0 = perfect overlap")
    except Skip as err:
        report.skip(part, "full pipeline", str(err))


# --- 2. stage two ----------------------------------------------------------------------------------------------
def head_config(name: str, sizes: Sizes):
    from omegaconf import OmegaConf

    from train_heads.schemas import ModelConfig, TrainConfig

    raw = OmegaConf.to_container(OmegaConf.load(REPO / HEADS[name]), resolve=True)
    head = dict(raw["head"])
    mods = [dict(m, in_dim=D_SF) for m in head.pop("modalities")]
    if sizes.head_overrides:
        o = sizes.head_overrides
        mods = [dict(m, proj_dim=o["proj_dim"]) for m in mods]
        head["aggregator_kwargs"] = {**head.get("aggregator_kwargs", {}), **o["aggregator_kwargs"]}
        if head.get("decoder") == "autoregressive":
            head["decoder_kwargs"] = {**head.get("decoder_kwargs", {}), **o["decoder_kwargs"]}
    head.update(modalities=mods, num_verbs=V, num_nouns=N)
    model_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), head))
    train_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), raw.get("train", {})))
    train_cfg.batch_size = sizes.batch
    return model_cfg, train_cfg


class _RowIdentity:
    def lookup(self, clip_uid, action_idx):
        return np.asarray(action_idx, dtype=np.int64)


def synthetic_bank(num_windows: int, num_input: int, dev: Device, seed: int):
    """fp16 SlowFast-like features (2 views) and windows over them, moved to the device."""
    import torch

    from train_heads.data import DeviceWindows, FeatureBank, SplitWindows

    rng = np.random.default_rng(seed)
    num_rows = num_windows + num_input + Z
    g = torch.Generator(device="cpu").manual_seed(seed)
    feats = torch.randn((num_rows, 2, D_SF), generator=g, dtype=torch.float32).to(torch.float16)
    bank = FeatureBank({"slowfast": feats}, np.ones(num_rows, bool), _RowIdentity()).to(dev.device)
    last = rng.integers(num_input - 1, num_rows, size=num_windows)
    obs = last[:, None] + np.arange(-num_input + 1, 1)[None]
    lab = lambda c, s: rng.integers(0, c, size=s)  # noqa: E731
    win = SplitWindows("train", [str(i) for i in range(num_windows)], obs, lab(V, obs.shape), lab(N, obs.shape),
                       lab(V, (num_windows, Z)), lab(N, (num_windows, Z)))
    return bank, DeviceWindows(win, dev.device)


def bench_stage_two(dev: Device, sizes: Sizes, budget: Budget, report: Report, val_rates: dict) -> None:
    import torch

    from train_heads.data import iterate_batches
    from train_heads.model import build_model
    from train_heads.train import make_optimizer, train_step

    part = "stage two"
    share = budget.left() * SHARES["stage_two"] / (SHARES["stage_two"] + SHARES["evaluation"])
    t_part = time.perf_counter()
    # eager variants first (fast, capped at max_steps), so the torch.compile ones get the rest of the share
    variants = [(comp, name, bf16) for comp in (False, True) for name in HEADS for bf16 in (False, True)]
    t = time.perf_counter()
    bank, data = synthetic_bank(sizes.train_windows, head_config(next(iter(HEADS)), sizes)[0].num_input, dev, seed=0)
    gib = sum(a.numel() * a.element_size() for a in bank.arrays.values()) / 2**30
    report.add(part, "feature bank in device memory", gib, "GiB",
               f"{sizes.train_windows} train windows, 2 views x {D_SF} fp16 (built in {time.perf_counter() - t:.1f} s)")
    for i, (comp, name, bf16) in enumerate(variants):
        model_cfg, cfg = head_config(name, sizes)
        steps_per_epoch = sizes.train_windows // cfg.batch_size if cfg.drop_last else math.ceil(sizes.train_windows / cfg.batch_size)
        what = f"{name} train steps/s, {'bf16' if bf16 else 'fp32'}{', torch.compile' if comp else ''}"
        left = share - (time.perf_counter() - t_part)
        per_variant = left / (len(variants) - i)
        if comp and dev.is_cuda and left < COMPILE_WARMUP_SEC:
            report.skip(part, what, f"{left:.0f} s of the stage-two share left, torch.compile warm-up needs ~{COMPILE_WARMUP_SEC} s")
            continue
        if left <= 0:
            report.skip(part, what, "stage-two share of the budget used up")
            continue
        torch.manual_seed(0)
        model = build_model(model_cfg).to(dev.device).train()
        optimizer = make_optimizer(model, cfg)
        cfg.amp = bf16
        run_model = dev.compile(model, sizes.compile_backend) if comp else model
        gen = torch.Generator(device="cpu").manual_seed(1)
        batches = iterate_batches(data, bank, batch_size=cfg.batch_size, train=True, rng=gen)

        def step():
            nonlocal batches
            batch = next(batches, None)
            if batch is None:
                batches = iterate_batches(data, bank, batch_size=cfg.batch_size, train=True, rng=gen)
                batch = next(batches)
            with dev.autocast(bf16):
                train_step(run_model, optimizer, None, batch, cfg, dev.device)

        dev.reset_peak()
        try:
            rate, n, warm = timed_rate(step, per_variant, sync=dev.sync, max_units=sizes.max_steps, warmup_extra=comp)
        except Skip as err:
            report.skip(part, what, str(err))
            continue
        gib, unit = dev.peak_gib()
        report.add(part, what, rate, "steps/s", f"batch {cfg.batch_size}, {n} steps timed, warm-up {warm:.1f} s, "
                   f"peak {gib:.2f} {unit.split(' ')[0]}" + ("" if dev.is_cuda or not bf16 else "; CPU bf16 autocast"))
        if not bf16 and not comp:
            val_rate = val_rates.setdefault(name, {})
            val_rate["train_steps_per_sec"] = rate
            val_rate["steps_per_epoch"] = steps_per_epoch
        del run_model, model, optimizer


# --- 3. evaluation ---------------------------------------------------------------------------------------------
def bench_evaluation(dev: Device, sizes: Sizes, budget: Budget, report: Report, val_rates: dict) -> None:
    import torch

    from train_heads.evaluate import forecast_split, score_sequences
    from train_heads.generators import create_generators, list_generators
    from train_heads.model import build_model

    part = "evaluation"
    share = budget.left()
    t_part = time.perf_counter()
    for name in HEADS:
        model_cfg, cfg = head_config(name, sizes)
        torch.manual_seed(0)
        model = build_model(model_cfg).to(dev.device).eval()
        autoregressive = bool(getattr(model, "autoregressive", False))
        gens = [g for g in list_generators() if autoregressive or g != "beam_search"]
        bank, data = synthetic_bank(sizes.eval_windows, model_cfg.num_input, dev, seed=2)
        per_gen = share / (len(HEADS) * len(gens))
        for gname in gens:
            what = f"{name} val windows/s, {gname}"
            remaining = share - (time.perf_counter() - t_part)
            if remaining < per_gen * 0.3:
                report.skip(part, what, "evaluation share of the budget used up")
                continue
            generators = create_generators([gname], mbr_samples=sizes.mbr_samples)
            w = data.windows

            def evaluate(sub):
                fc = forecast_split(model, sub, bank, generators=generators, k=5, seed=0, batch_size=cfg.eval_batch_size,
                                    amp=True, progress=False)
                verb, noun = fc.sequences[gname]
                score_sequences(f"model.{gname}", verb, noun, sub.windows.future_verb, sub.windows.future_noun, num_nouns=N)

            try:  # calibrate on a slice, then time as many windows as fit (at most eval_windows)
                from train_heads.data import DeviceWindows

                k0 = min(len(w), max(8, sizes.eval_windows // 16))
                t = time.perf_counter()
                try:
                    evaluate(DeviceWindows(w.subset(np.arange(k0)), dev.device))
                except ValueError as err:  # a generator this kind of head cannot use
                    report.skip(part, what, f"not for this head: {str(err).splitlines()[0][:120]}")
                    continue
                dev.sync()
                c = (time.perf_counter() - t) / k0
                n = int(min(len(w), max(k0, min(per_gen, remaining) * 0.8 / max(c, 1e-9))))
                sub = DeviceWindows(w.subset(np.arange(n)), dev.device)
                t = time.perf_counter()
                evaluate(sub)
                dev.sync()
                rate = n / (time.perf_counter() - t)
            except Skip as err:
                report.skip(part, what, str(err))
                continue
            mbr = f", {sizes.mbr_samples} draws" if "mbr" in gname else ""
            report.add(part, what, rate, "windows/s", f"{n} windows, forward + K=5{mbr} + ED@20"
                       + (", bf16 autocast" if dev.is_cuda else ""))
            if gname == cfg.val_generator:
                val_rates.setdefault(name, {})["val_windows_per_sec"] = rate
        del model, bank, data


def projected_runs(sizes: Sizes, report: Report, val_rates: dict) -> None:
    for name, r in val_rates.items():
        what = f"{name}: projected {sizes.epochs}-epoch run, fp32, {sizes.train_windows} train / {sizes.val_windows} val windows"
        if "train_steps_per_sec" not in r or "val_windows_per_sec" not in r:
            report.skip("stage two", what, "needs its fp32 steps/s and its val generator's windows/s")
            continue
        epoch = r["steps_per_epoch"] / r["train_steps_per_sec"] + sizes.val_windows / r["val_windows_per_sec"]
        report.add("stage two", what, sizes.epochs * epoch / 60, "min",
                   f"PROJECTED from the rates above: {r['steps_per_epoch']} steps + val per epoch = {epoch:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cuda, cuda:1, cpu")
    ap.add_argument("--budget", type=float, default=480.0, help="hard wall-time budget in seconds for all parts")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: exercises every code path in < 60 s")
    ap.add_argument("--out", default="bench_out/gpu", help="folder for gpu.json and gpu.md")
    ap.add_argument("--parts", default="extraction,stage_two,evaluation", help="comma-separated subset of the parts")
    args = ap.parse_args(argv)
    import torch

    if args.dry_run:
        args.device = "cpu" if args.device == "auto" else args.device
        torch.set_num_threads(1)
    dev = Device(args.device)
    if not dev.is_cuda and not args.dry_run and args.device == "auto":
        print("bench/gpu.py: no CUDA device here; run it on a GPU node, or pass --dry-run (tiny, CPU) or --device cpu")
        return 0
    sizes = DRY if args.dry_run else Sizes()
    budget = Budget(args.budget)
    report = Report(dev, args)
    print(f"bench/gpu.py on {report.meta['device']}, budget {args.budget:.0f} s{' (dry run)' if args.dry_run else ''}", flush=True)
    parts = set(args.parts.split(","))
    watchdog = threading.Timer(args.budget + HARD_GRACE_SEC, _hard_stop, args=(report, Path(args.out), budget))
    watchdog.daemon = True
    watchdog.start()
    val_rates: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "extraction" in parts:
            print("1. extraction", flush=True)
            try:
                bench_extraction(dev, sizes, budget, report, Path(tmp) / "clips")
            except Skip as err:
                report.skip("extraction", "all", str(err))
    if "stage_two" in parts:
        print("2. stage two", flush=True)
        bench_stage_two(dev, sizes, budget, report, val_rates)
    if "evaluation" in parts:
        print("3. evaluation", flush=True)
        bench_evaluation(dev, sizes, budget, report, val_rates)
    projected_runs(sizes, report, val_rates)
    watchdog.cancel()
    write_outputs(report, Path(args.out), budget)
    return 0


def write_outputs(report: Report, out: Path, budget: Budget) -> None:
    report.meta["wall_sec"] = budget.elapsed()
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps({**report.meta, "rows": report.rows, "skipped": report.skipped}, indent=1) + "\n")
    table = report.markdown()
    (out / "gpu.md").write_text(table)
    print()
    print(table)
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'} ({budget.elapsed():.0f} s of {budget.total:.0f} s)", flush=True)


def _hard_stop(report: Report, out: Path, budget: Budget) -> None:
    """The budget ran out inside a measurement that could not be cut (a compile, a long call): report and leave."""
    report.skip("all", "the rest", f"hard budget of {budget.total:.0f} s (+{HARD_GRACE_SEC:.0f} s grace) reached; "
                "measurements not listed above were not run")
    write_outputs(report, out, budget)
    os._exit(0)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
