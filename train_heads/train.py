"""Training loop for forecasting heads on cached features (reference recipe by default, §3.6).

Adam, lr 1e-4, weight decay 1e-4 (0 on norm parameters), linear warm-up then half-cosine per
iteration, loss = sum over the Z positions of CE(verb) + CE(noun) (2Z terms) plus the weighted
recognition loss on the observed segments; batch 64. An autoregressive decoder reads the true future
as its inputs (teacher forcing: `model(inputs, future=...)`, which other decoders ignore). Options:
AdamW, label smoothing, bf16 AMP on CUDA. After every epoch: val ED@Z with the seeded `val_generator`; best checkpoint by val action
(or verb) ED; early stopping; `last.pt` holds everything needed to resume bit-exactly on the CPU.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train_heads.data import DeviceWindows, FeatureBank, SplitWindows, iterate_batches
from train_heads.evaluate import autocast, forecast_split, score_sequences
from train_heads.generators import create_generator
from train_heads.model import ModelConfig, build_model
from train_heads.run import checkpoint_path, load_checkpoint, save_run

log = logging.getLogger(__name__)


from train_heads.schemas import TrainConfig  # noqa: E402,F401 - torch-free schema, re-exported


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available else cpu; an explicit cuda device that is missing is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name} requested but CUDA is not available (use device=cpu or auto)")
    return dev


def _norm_layer_params(model: nn.Module) -> set[int]:
    """ids of the parameters of LayerNorm / BatchNorm layers."""
    return {id(p) for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)) for p in m.parameters(recurse=False)}


def _bn_named_params(model: nn.Module) -> set[int]:
    """ids of the parameters whose names contain "bn": the reference's rule (ego4d_forecasting/optimizers/optimizer.py
    construct_optimizer), which on a forecasting head exempts nothing (its LayerNorms are named `norm*`)."""
    return {id(p) for name, p in model.named_parameters() if "bn" in name}


NO_DECAY = {"norm": _norm_layer_params, "bn_name": _bn_named_params}  # TrainConfig.no_decay


def param_groups(model: nn.Module, weight_decay: float, no_decay: str = "norm") -> list[dict]:
    """Two groups: the parameters picked by the `no_decay` rule get weight decay 0, all others `weight_decay`."""
    if no_decay not in NO_DECAY:
        raise ValueError(f"unknown no_decay rule {no_decay!r}; available: {sorted(NO_DECAY)}")
    exempt = NO_DECAY[no_decay](model)
    decay = [p for p in model.parameters() if p.requires_grad and id(p) not in exempt]
    no_wd = [p for p in model.parameters() if p.requires_grad and id(p) in exempt]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_wd, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.999))
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; available: ['adam', 'adamw']")


def warmup_cosine(warmup_steps: int, total_steps: int):
    """lr factor per iteration: linear 0 -> 1 over `warmup_steps`, then half-cosine to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def forecast_loss(out: dict[str, torch.Tensor], future_verb: torch.Tensor, future_noun: torch.Tensor, *,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Sum over the Z positions of mean CE(verb) + mean CE(noun); -1 labels are ignored."""
    z = future_verb.shape[1]
    ce = lambda logits, y: F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),  # noqa: E731
                                           ignore_index=-1, label_smoothing=label_smoothing)
    return z * (ce(out["verb"], future_verb) + ce(out["noun"], future_noun))


def recognition_loss(out: dict[str, torch.Tensor], observed_verb: torch.Tensor, observed_noun: torch.Tensor, *,
                     label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean CE(verb) + CE(noun) over the observed segments."""
    ce = lambda logits, y: F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),  # noqa: E731
                                           ignore_index=-1, label_smoothing=label_smoothing)
    return ce(out["obs_verb"], observed_verb) + ce(out["obs_noun"], observed_noun)


def validate(model: nn.Module, val: DeviceWindows, bank: FeatureBank, cfg: TrainConfig, *, epoch: int) -> dict[str, Any]:
    """Val ED@Z metrics of the val generator (seeded by `seed`, the same draws every epoch)."""
    gen = create_generator(cfg.val_generator)
    fc = forecast_split(model, val, bank, generators={cfg.val_generator: gen}, k=cfg.num_sequences, seed=cfg.seed,
                        batch_size=cfg.eval_batch_size, amp=cfg.amp)
    verb, noun = fc.sequences[cfg.val_generator]
    return score_sequences(f"model.{cfg.val_generator}", verb, noun, val.windows.future_verb, val.windows.future_noun,
                           num_nouns=model.num_nouns)


def fit_input_norms(model: nn.Module, bank: FeatureBank, windows: SplitWindows, *, chunk_rows: int = 4096) -> None:
    """Fit each `standardize` input norm on the features (all views) of the training windows' observed rows.

    Rows are read `chunk_rows` at a time, so a 150k-row bank needs no float64 copy of itself.
    """
    norms = getattr(model, "norms", {})
    if not len(norms):
        return
    rows = torch.from_numpy(np.unique(windows.observed_rows))
    for name, norm in norms.items():
        a = bank.arrays[name]
        a = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
        idx = rows.to(a.device)
        norm.fit(a.index_select(0, idx[i:i + chunk_rows]) for i in range(0, len(idx), chunk_rows))
        log.info("input norm %s (%s) fitted on %d training rows", name, norm.mode, len(rows))


def train(model_cfg: ModelConfig, cfg: TrainConfig, *, train_windows: SplitWindows, val_windows: SplitWindows,
          bank: FeatureBank, run_dir: str | Path, full_cfg: Any, resume: bool = False,
          stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Train a head, writing checkpoints, metrics and TensorBoard logs to `run_dir`.

    Args:
        model_cfg: the head (in_dim, num_verbs, ... already filled in).
        full_cfg: the resolved command config saved in the run dir (its `head` equals `model_cfg`).
        resume: continue from `run_dir/checkpoints/last.pt` (same config).
        stop_after_epochs: stop after this many epochs in this call (tests simulate an interruption).

    Returns:
        The metrics dict also written to `metrics.json` (history, best epoch, best val metrics).
    """
    from torch.utils.tensorboard import SummaryWriter

    device = resolve_device(cfg.device)
    run_dir = Path(run_dir)
    for stale in sorted((run_dir / "checkpoints").glob("*.pt.tmp")):  # left by a process killed mid-write
        log.warning("removing %s, a partial checkpoint of an interrupted run", stale)
        stale.unlink()
    torch.manual_seed(cfg.seed)
    data_rng = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    if cfg.max_train_windows and len(train_windows) > cfg.max_train_windows:
        sub = torch.randperm(len(train_windows), generator=torch.Generator().manual_seed(cfg.seed + 2))
        train_windows = train_windows.subset(sub[: cfg.max_train_windows].sort().values.numpy())
    if len(train_windows) == 0 or len(val_windows) == 0:
        raise ValueError(f"need training and val windows, got {len(train_windows)} and {len(val_windows)}")
    model = build_model(model_cfg)
    fit_input_norms(model, bank, train_windows)  # overwritten by the checkpoint on resume
    model = model.to(device)
    bank = bank.to(device)
    train_data, val_data = DeviceWindows(train_windows, device), DeviceWindows(val_windows, device)
    # drop_last (the reference's train loader): only full batches, floor(n / batch) steps per epoch
    steps_per_epoch = (len(train_data) // cfg.batch_size if cfg.drop_last and len(train_data) >= cfg.batch_size
                       else math.ceil(len(train_data) / cfg.batch_size))
    total_steps = cfg.epochs * steps_per_epoch
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, total_steps))
    select = f"model.{cfg.val_generator}.{cfg.select_metric}"
    state = {"epoch": 0, "global_step": 0, "best": math.inf, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if resume and checkpoint_path(run_dir, "last").is_file():
        ckpt = load_checkpoint(run_dir, "last", map_location=str(device))
        model.load_state_dict(ckpt["model"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng_torch"])
        data_rng.set_state(ckpt["rng_data"])
        if device.type == "cuda" and "rng_cuda" in ckpt:
            torch.cuda.set_rng_state(ckpt["rng_cuda"], device)
        state = dict(ckpt["train_state"])
        log.info("resumed from %s at epoch %d (step %d)", checkpoint_path(run_dir, "last"), state["epoch"], state["global_step"])
    log.info("training %s: %d train / %d val windows, %d steps/epoch, %d epochs, %.2fM parameters, device %s",
             run_dir.name, len(train_data), len(val_data), steps_per_epoch, cfg.epochs,
             sum(p.numel() for p in model.parameters()) / 1e6, device)
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    epochs_this_call = 0
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < (cfg.patience or math.inf):
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            break
        model.train()
        t0, t_log, loss_sum, loss_n = time.perf_counter(), time.perf_counter(), torch.zeros((), device=device), 0
        for batch in iterate_batches(train_data, bank, batch_size=cfg.batch_size, train=True, rng=data_rng,
                                    drop_last=cfg.drop_last):
            with autocast(device, cfg.amp):
                # autoregressive decoders read the true future (teacher forcing); the others ignore it
                out = model(batch.inputs, future={"verb": batch.future_verb, "noun": batch.future_noun})
                loss = forecast_loss(out, batch.future_verb, batch.future_noun, label_smoothing=cfg.label_smoothing)
                if "obs_verb" in out and cfg.recognition_weight:
                    loss = loss + cfg.recognition_weight * recognition_loss(
                        out, batch.observed_verb, batch.observed_noun, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            state["global_step"] += 1
            loss_sum += loss.detach()
            loss_n += 1
            if state["global_step"] % cfg.log_every == 0:
                mean_loss = loss_sum.item() / loss_n
                ms = (time.perf_counter() - t_log) * 1000 / loss_n
                log.info("step %d | epoch %d | loss %.3f | lr %.2e | %.1f ms/step", state["global_step"], state["epoch"],
                         mean_loss, scheduler.get_last_lr()[0], ms)
                writer.add_scalar("train/loss", mean_loss, state["global_step"])
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], state["global_step"])
                loss_sum, loss_n, t_log = torch.zeros((), device=device), 0, time.perf_counter()
        train_sec = time.perf_counter() - t0
        val = validate(model, val_data, bank, cfg, epoch=state["epoch"])
        state["epoch"] += 1
        score = val[select]
        improved = score < state["best"]
        if improved:
            state["best"], state["best_epoch"], state["bad_epochs"] = score, state["epoch"], 0
        else:
            state["bad_epochs"] += 1
        summary = {k: v for k, v in val.items() if not k.endswith("_curve")}
        state["history"].append({"epoch": state["epoch"], "step": state["global_step"], "train_sec": round(train_sec, 3),
                                 "windows_per_sec": round(len(train_data) / max(train_sec, 1e-9), 1), **summary})
        for name, value in summary.items():
            writer.add_scalar(f"val/{name}", value, state["epoch"])
        for what in ("verb", "noun", "action"):
            for z, v in enumerate(val[f"model.{cfg.val_generator}.{what}_ed_curve"], start=1):
                writer.add_scalar(f"val_ed_curve/{what}_ed@{z}", v, state["epoch"])
        log.info("epoch %d | val verb ED@Z %.4f | noun %.4f | action %.4f | best %s %.4f (epoch %d) | %.1f s",
                 state["epoch"], val[f"model.{cfg.val_generator}.verb_ed"], val[f"model.{cfg.val_generator}.noun_ed"],
                 val[f"model.{cfg.val_generator}.action_ed"], cfg.select_metric, state["best"], state["best_epoch"], train_sec)
        metrics = {"select_metric": select, "best_epoch": state["best_epoch"], "best": state["best"],
                   "history": state["history"], "num_train_windows": len(train_data), "num_val_windows": len(val_data)}
        if improved:
            metrics["best_val"] = val
            save_run(run_dir, model, full_cfg, bank.cache_keys, metrics=metrics, checkpoint="best",
                     extra_state={"epoch": state["epoch"]})
        extra = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng_torch": torch.get_rng_state(), "rng_data": data_rng.get_state(), "train_state": dict(state)}
        if device.type == "cuda":
            extra["rng_cuda"] = torch.cuda.get_rng_state(device)
        save_run(run_dir, model, full_cfg, bank.cache_keys, metrics=metrics, checkpoint="last", extra_state=extra)
        epochs_this_call += 1
    writer.close()
    if state["bad_epochs"] >= (cfg.patience or math.inf):
        log.info("early stop after epoch %d: no val improvement for %d epochs", state["epoch"], cfg.patience)
    from train_heads.run import read_metrics

    return read_metrics(run_dir)
