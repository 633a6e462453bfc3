"""Benchmark: the per-step overhead of `lta train-heads` and the speed of `lta evaluate` per generator, on this CPU.

1. "train-heads steady-state step / bare model step, same head and batch", measured side by side in one run:
   - bare: `train_heads.train.train_step` (forward, loss, backward, optimizer step) on one batch gathered once;
   - train-heads: `train_heads.train.train` itself on a synthetic feature bank (gathers, scheduler, loss
     bookkeeping, progress, logging); its seconds per step are the training seconds of the second epoch
     (validation and checkpoints excluded) over that epoch's steps. Bare is timed before and after, the mean is used.
   For a compact head (pipelines/configs/demo/ar_transformer.yaml) and the reference head
   (pipelines/configs/slowfast_transformer.yaml), Ego4D v2 taxonomy (117 verbs, 521 nouns), batch 64.
2. `forecast_split` + ED@20 windows/s per generator (what `lta evaluate` runs per generator) for the compact
   autoregressive head, K=5, mbr with `--mbr-samples` draws.

    .venv/bin/python bench/train_steps.py [--steps 12] [--eval-windows 512] [--threads 1]
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path[:1] = [str(Path(__file__).resolve().parents[1])]

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
V, N, Z = 117, 521, 20
HEADS = {"compact (demo/ar_transformer)": "pipelines/configs/demo/ar_transformer.yaml",
         "reference (slowfast_transformer)": "pipelines/configs/slowfast_transformer.yaml"}
VIEW_SHAPES = {"slowfast": (2304,), "clip": (8, 512)}


class _RowIdentity:
    def lookup(self, clip_uid, action_idx):
        return np.asarray(action_idx, dtype=np.int64)


def load_head(path: str, batch: int):
    from omegaconf import OmegaConf

    from train_heads.schemas import ModelConfig, TrainConfig

    raw = OmegaConf.to_container(OmegaConf.load(REPO / path), resolve=True)
    head = dict(raw["head"])
    mods = []
    for m in head.pop("modalities"):
        shape = VIEW_SHAPES[m["name"]]
        mods.append(dict(m, in_dim=shape[-1], frames=shape[0] if len(shape) == 2 else 0))
    head.update(modalities=mods, num_verbs=V, num_nouns=N)
    model_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), head))
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), raw.get("train", {})))
    cfg.batch_size, cfg.device, cfg.log_every, cfg.patience = batch, "cpu", 10**9, 0
    return model_cfg, cfg


def synthetic(model_cfg, num_windows: int, seed: int):
    from train_heads.data import FeatureBank, SplitWindows

    rng = np.random.default_rng(seed)
    n_in = model_cfg.num_input
    rows = num_windows + n_in
    arrays = {m.name: rng.standard_normal((rows, 2, *VIEW_SHAPES[m.name]), dtype=np.float32).astype(np.float16)
              for m in model_cfg.modalities}
    bank = FeatureBank(arrays, np.ones(rows, bool), _RowIdentity(), cache_keys={m: f"{m}.synthetic" for m in arrays})
    last = rng.integers(n_in - 1, rows, size=num_windows)
    obs = last[:, None] + np.arange(-n_in + 1, 1)[None]
    lab = lambda c, s: rng.integers(0, c, size=s)  # noqa: E731
    win = SplitWindows("train", [f"c_{i}" for i in range(num_windows)], obs, lab(V, obs.shape), lab(N, obs.shape),
                       lab(V, (num_windows, Z)), lab(N, (num_windows, Z)))
    return bank, win


def bare_sec_per_step(model_cfg, cfg, bank, win, steps: int) -> float:
    from train_heads.data import DeviceWindows, iterate_batches
    from train_heads.model import build_model
    from train_heads.train import make_optimizer, train_step

    torch.manual_seed(0)
    model = build_model(model_cfg).train()
    optimizer = make_optimizer(model, cfg)
    batch = next(iterate_batches(DeviceWindows(win, "cpu"), bank.to("cpu"), batch_size=cfg.batch_size, train=True,
                                 rng=torch.Generator().manual_seed(0)))
    dev = torch.device("cpu")
    for _ in range(1):  # warm-up
        train_step(model, optimizer, None, batch, cfg, dev)
    t = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, None, batch, cfg, dev)
    return (time.perf_counter() - t) / steps


def loop_sec_per_step(model_cfg, cfg, bank, win, val, steps: int) -> float:
    from train_heads.train import train

    cfg.epochs, cfg.warmup_steps = 2, 1
    train_win = win.subset(np.arange(steps * cfg.batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        m = train(model_cfg, cfg, train_windows=train_win, val_windows=val, bank=bank, run_dir=Path(tmp) / "run",
                  full_cfg={"head": model_cfg, "train": cfg})
    return m["history"][1]["train_sec"] / steps


def bench_steps(args) -> list[tuple[str, float, float]]:
    rows = []
    for label, path in HEADS.items():
        ref = label.startswith("reference")
        batch, steps = (args.ref_batch, args.ref_steps) if ref else (args.batch, args.steps)
        model_cfg, cfg = load_head(path, batch)
        bank, win = synthetic(model_cfg, steps * batch + 64, seed=0)
        val = win.subset(np.arange(len(win) - 64, len(win)))
        before = bare_sec_per_step(model_cfg, cfg, bank, win, steps)
        loop = loop_sec_per_step(model_cfg, cfg, bank, win, val, steps)
        after = bare_sec_per_step(model_cfg, cfg, bank, win, steps)
        bare = (before + after) / 2
        from train_heads.model import build_model

        params = sum(p.numel() for p in build_model(model_cfg).parameters()) / 1e6
        rows.append((f"{label}, {params:.1f}M params, batch {batch}", loop, bare))
        print(f"  {label}: train-heads {loop * 1000:.0f} ms/step, bare {before * 1000:.0f} / {after * 1000:.0f} ms/step", flush=True)
    return rows


def bench_evaluate(args) -> list[tuple[str, float]]:
    from train_heads.data import DeviceWindows
    from train_heads.evaluate import forecast_split, score_sequences
    from train_heads.generators import create_generators, list_generators
    from train_heads.model import build_model

    model_cfg, cfg = load_head(HEADS["compact (demo/ar_transformer)"], args.batch)
    bank, win = synthetic(model_cfg, args.eval_windows, seed=1)
    torch.manual_seed(0)
    model = build_model(model_cfg).eval()
    data = DeviceWindows(win, "cpu")
    out = []
    for name in list_generators():
        gens = create_generators([name], mbr_samples=args.mbr_samples)
        t = time.perf_counter()
        try:
            fc = forecast_split(model, data, bank.to("cpu"), generators=gens, k=5, seed=0, progress=False)
        except ValueError as err:  # a generator for per-position logits only
            print(f"  evaluate {name}: not for this head ({err})", flush=True)
            continue
        score_sequences(f"model.{name}", *fc.sequences[name], win.future_verb, win.future_noun, num_nouns=N)
        rate = len(win) / (time.perf_counter() - t)
        out.append((name, rate))
        print(f"  evaluate {name}: {rate:.1f} windows/s", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="steps per epoch of the timed loop (and bare steps timed)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--eval-windows", type=int, default=512)
    ap.add_argument("--mbr-samples", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ref-batch", type=int, default=16, help="batch of the reference head (a 182M-parameter step at 64 "
                    "takes ~10 s on a shared 2-core CPU)")
    ap.add_argument("--ref-steps", type=int, default=3)
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--skip-steps", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")
    steps = [] if args.skip_steps else bench_steps(args)
    evals = [] if args.skip_eval else bench_evaluate(args)
    print()
    print("| head | train-heads steady-state step | bare model step | ratio |")
    print("|---|---|---|---|")
    for label, loop, bare in steps:
        print(f"| {label} | {loop * 1000:.0f} ms | {bare * 1000:.0f} ms | {loop / bare:.2f}x |")
    if evals:
        print()
        print(f"| generator (compact autoregressive head, K=5, mbr {args.mbr_samples} draws) | val windows/s |")
        print("|---|---|")
        for name, rate in evals:
            print(f"| {name} | {rate:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
