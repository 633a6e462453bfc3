"""Training loop for forecasting heads on cached features (reference recipe by default, §3.6).

Adam, lr 1e-4, weight decay 1e-4 (0 on norm parameters), linear warm-up then half-cosine per
iteration, loss = sum over the Z positions of CE(verb) + CE(noun) (2Z terms) plus the weighted
recognition loss on the observed segments; batch 64. An autoregressive decoder reads the true future
as its inputs (teacher forcing: `model(inputs, future=...)`, which other decoders ignore). Options:
AdamW, label smoothing, bf16 AMP on CUDA. After every epoch: val ED@Z with the seeded `val_generator`; best checkpoint by val action
(or verb) ED; early stopping; `last.pt` holds everything needed to resume bit-exactly on the CPU.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from features.devices import resolve_device
from features.interrupt import Interrupted, StopFlag, current, stop_on_signals
from features.optim import cosine_warmup_factor, weight_decay_groups
from train_heads.data import DeviceWindows, FeatureBank, SplitWindows, iterate_batches
from train_heads.evaluate import Abandoned, autocast, forecast_split, score_sequences
from train_heads.generators import create_generator
from train_heads.model import ModelConfig, build_model
from train_heads.pair_prior import fit_pair_prior
from train_heads.resume import check_resume_config, flatten_config, prepare_run_dir
from train_heads.run import (CONFIG_FILE, _plain, checkpoint_path, load_checkpoint, read_metrics, save_run,
                             update_metrics)

log = logging.getLogger(__name__)


from train_heads.schemas import VIEW_DRAWS, TrainConfig  # noqa: E402,F401 - torch-free schema, re-exported


def _norm_layer_params(model: nn.Module) -> Callable[[str, nn.Parameter], bool]:
    """The parameters of LayerNorm / BatchNorm layers."""
    ids = {id(p) for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)) for p in m.parameters(recurse=False)}
    return lambda _name, p: id(p) in ids


def _bn_named_params(model: nn.Module) -> Callable[[str, nn.Parameter], bool]:
    """The parameters whose names contain "bn": the reference's rule (ego4d_forecasting/optimizers/optimizer.py
    construct_optimizer), which on a forecasting head exempts nothing (its LayerNorms are named `norm*`)."""
    return lambda name, _p: "bn" in name


NO_DECAY = {"norm": _norm_layer_params, "bn_name": _bn_named_params}  # TrainConfig.no_decay


def param_groups(model: nn.Module, weight_decay: float, no_decay: str = "norm") -> list[dict]:
    """Two groups (features.optim.weight_decay_groups, shared with finetune-backbone): the parameters picked by the
    `no_decay` rule get weight decay 0, all others `weight_decay`."""
    if no_decay not in NO_DECAY:
        raise ValueError(f"unknown no_decay rule {no_decay!r}; available: {sorted(NO_DECAY)}")
    return weight_decay_groups(model.named_parameters(), NO_DECAY[no_decay](model), weight_decay=weight_decay)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.999))
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; available: ['adam', 'adamw']")


def effective_warmup(warmup_steps: int, total_steps: int) -> int:
    """The warm-up a run uses: `warmup_steps`, unless the run would end before reaching half of its peak lr
    (`warmup_steps >= 2 * total_steps`: the reference's 1000 on a 16-step run ends at 1.6% of it): then a tenth
    of the run (at least 1 step). `train` logs a warning when it cuts one, and when a warm-up longer than the run
    is kept (the run then ends below its peak lr)."""
    return warmup_steps if warmup_steps < 2 * total_steps else max(1, total_steps // 10)


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


def validate(model: nn.Module, val: DeviceWindows, bank: FeatureBank, cfg: TrainConfig, *,
             stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Val ED@Z metrics of the val generator (seeded by `seed`, the same draws every epoch); `stop`: see forecast_split."""
    gen = create_generator(cfg.val_generator)
    fc = forecast_split(model, val, bank, generators={cfg.val_generator: gen}, k=cfg.num_sequences, seed=cfg.seed,
                        batch_size=cfg.eval_batch_size, amp=cfg.amp, stop=stop, progress=False)
    verb, noun = fc.sequences[cfg.val_generator]
    return score_sequences(f"model.{cfg.val_generator}", verb, noun, val.windows.future_verb, val.windows.future_noun,
                           num_nouns=model.num_nouns)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, batch: Any, cfg: TrainConfig,
               device: torch.device) -> torch.Tensor:
    """One optimisation step on `batch` (forward, loss, backward, optimizer and scheduler step); the detached loss.

    No host-device synchronisation: the loss stays on the device (the loop reads it every `log_every` steps).
    """
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
    if scheduler is not None:
        scheduler.step()
    return loss.detach()


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


@contextlib.contextmanager
def log_to_file(path: Path):
    """Also write INFO log records to `path` (appended, so a resumed run keeps one log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def write_hparams(writer: Any, full_cfg: Any, metric_tag: str) -> None:
    """The flattened config as TensorBoard hparams (HPARAMS tab), with `metric_tag` as its metric."""
    from torch.utils.tensorboard.summary import hparams

    from train_heads.run import _plain

    flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flatten_config(_plain(full_cfg)).items()}
    for summary in hparams(flat, {metric_tag: 0.0}):
        writer.file_writer.add_summary(summary)


def _format_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def view_draw_flip_prob(cfg: TrainConfig, bank: FeatureBank) -> float | None:
    """`window_flip_prob` of `iterate_batches` for `cfg.view_draw` (None: per-segment views); logs what a window
    draw cannot follow because a store holds no flipped (or no unflipped) views."""
    if cfg.view_draw not in VIEW_DRAWS:
        raise ValueError(f"unknown train.view_draw {cfg.view_draw!r}; available: {list(VIEW_DRAWS)}")
    if cfg.view_draw == "segment":
        return None
    for m in bank.modalities:
        flags = bank.view_flips(m)
        if cfg.flip_prob > 0 and not flags.any():
            log.warning("train.view_draw=window, flip_prob=%g: %s (%s) holds no flipped views, so no window is "
                        "flipped (extract with flip_views=true for the reference's flips)", cfg.flip_prob, m,
                        bank.cache_keys.get(m, "?"))
        if cfg.flip_prob < 1 and flags.all():
            log.warning("train.view_draw=window: %s holds only flipped views", m)
    return float(cfg.flip_prob)


def train(model_cfg: ModelConfig, cfg: TrainConfig, *, train_windows: SplitWindows, val_windows: SplitWindows,
          bank: FeatureBank, run_dir: str | Path, full_cfg: Any, resume: bool = False, overwrite: bool = False,
          stop: StopFlag | None = None) -> dict[str, Any]:
    """Train a head, writing checkpoints, metrics, `train.log` and TensorBoard logs to `run_dir`.

    Args:
        model_cfg: the head (in_dim, num_verbs, ... already filled in).
        full_cfg: the resolved command config saved in the run dir (its `head` equals `model_cfg`).
        resume: continue from `run_dir/checkpoints/last.pt` (same config, else RunDirError naming the keys).
        overwrite: replace a run already in `run_dir` (without it, and without `resume`, that is a RunDirError).
        stop: the `features.interrupt` flag to poll; default: the active one, else one installed for this call.
            On SIGINT / SIGTERM the current step finishes (a validation in progress is abandoned), `last.pt`
            records what completed, even mid-epoch, then `Interrupted` (exit 75) is raised naming the resume
            command; a resume continues bit-exactly.

    Returns:
        The metrics dict also written to `metrics.json` (history, best epoch, best val metrics, `finished`).
    """
    with contextlib.ExitStack() as stack:
        stop = stop or current()
        if stop is None:
            stop = stack.enter_context(stop_on_signals("train-heads", message="finishing the current step, then "
                                                                             "saving a resumable checkpoint"))
        run_dir = Path(run_dir)
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
        stack.enter_context(log_to_file(run_dir / "train.log"))
        return _train(model_cfg, cfg, train_windows=train_windows, val_windows=val_windows, bank=bank, run_dir=run_dir,
                      full_cfg=full_cfg, resume=resume, stop=stop)


def _train(model_cfg: ModelConfig, cfg: TrainConfig, *, train_windows: SplitWindows, val_windows: SplitWindows,
           bank: FeatureBank, run_dir: Path, full_cfg: Any, resume: bool, stop: StopFlag) -> dict[str, Any]:
    """The epoch loop: train an epoch, validate, keep the best, until the epochs or the patience run out or a
    stop signal arrives (then `last.pt` records what completed and `Interrupted` is raised)."""
    run = _set_up(model_cfg, cfg, train_windows, val_windows, bank, run_dir, full_cfg)
    resuming = resume and checkpoint_path(run_dir, "last").is_file()
    if resuming:
        _resume(run)
    run.window_flip_prob = view_draw_flip_prob(cfg, run.bank)
    log.info("training %s: %d train / %d val windows, %d steps/epoch, %d epochs, %.2fM parameters, device %s",
             run_dir.name, len(run.train_data), len(run.val_data), run.steps_per_epoch, cfg.epochs,
             sum(p.numel() for p in run.model.parameters()) / 1e6, run.device)
    interrupted = None
    with _Reporter(run, resuming=resuming) as report:
        while run.state["epoch"] < cfg.epochs and not run.out_of_patience():
            if stop.requested:  # between epochs: last.pt (if any) already describes exactly this state
                interrupted = stop.signal_name
                break
            epoch_rng = run.data_rng.get_state()
            _train_epoch(run, report, stop)
            val = None if stop.requested else _validate(run, stop)
            if val is None:  # a signal: keep what the epoch completed (mid-epoch, or all steps but no validation)
                interrupted = stop.signal_name
                _save_stopped_epoch(run, epoch_rng, interrupted)
                break
            improved = _record_epoch(run, val[0])
            report.epoch(*val)
            _save_epoch(run, val[0], improved)
    _finish(run, interrupted)
    return read_metrics(run_dir)


@dataclasses.dataclass
class _Run:
    """What one training call works on: the model, optimiser and data on the device, and the loop's state."""

    cfg: TrainConfig
    run_dir: Path
    full_cfg: Any
    saved_cfg: dict  # full_cfg as plain containers, what config.yaml and the checkpoints hold (converted once)
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    bank: FeatureBank
    train_data: DeviceWindows
    val_data: DeviceWindows
    data_rng: torch.Generator  # the batch order and view draws
    steps_per_epoch: int
    # epoch, global_step, step_in_epoch, best, best_epoch, bad_epochs, history (what last.pt's train_state holds);
    # step_in_epoch > 0: last.pt was written mid-epoch (a signal); its rng_data is then the epoch's starting state
    state: dict
    epoch_loss: torch.Tensor  # summed over the current epoch's steps, on the device
    epoch_train_sec: float = 0.0
    window_flip_prob: float | None = None

    @property
    def select(self) -> str:
        """The val metric that picks the best checkpoint."""
        return f"model.{self.cfg.val_generator}.{self.cfg.select_metric}"

    def out_of_patience(self) -> bool:
        return self.state["bad_epochs"] >= (self.cfg.patience or math.inf)

    def metrics(self) -> dict:
        """What metrics.json (and the checkpoints' `metrics`) say about the run so far."""
        return {"select_metric": self.select, "best_epoch": self.state["best_epoch"], "best": self.state["best"],
                "finished": False, "history": self.state["history"], "num_train_windows": len(self.train_data),
                "num_val_windows": len(self.val_data)}

    def save_last(self, rng_data: torch.Tensor, metrics: dict, **more: Any) -> None:
        """`last.pt`: the model plus everything a bit-exact resume needs (optimiser, scheduler, RNG states)."""
        extra = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng_torch": torch.get_rng_state(), "rng_data": rng_data, "train_state": dict(self.state),
                 "metrics": metrics, **more}
        if self.device.type == "cuda":
            extra["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        save_run(self.run_dir, self.model, self.saved_cfg, self.bank.cache_keys, metrics=None, checkpoint="last",
                 extra_state=extra)


def _set_up(model_cfg: ModelConfig, cfg: TrainConfig, train_windows: SplitWindows, val_windows: SplitWindows,
            bank: FeatureBank, run_dir: Path, full_cfg: Any) -> _Run:
    """A fresh run on the device: seeds, the (capped) training windows, the model with its fitted input norms and
    pair prior, the optimiser and the schedule."""
    device = torch.device(resolve_device(cfg.device, key="train.device"))
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
    fit_pair_prior(model, train_windows)  # likewise (head.pair_prior)
    model = model.to(device)
    bank = bank.to(device)
    train_data, val_data = DeviceWindows(train_windows, device), DeviceWindows(val_windows, device)
    # drop_last (the reference's train loader): only full batches, floor(n / batch) steps per epoch
    steps_per_epoch = (len(train_data) // cfg.batch_size if cfg.drop_last and len(train_data) >= cfg.batch_size
                       else math.ceil(len(train_data) / cfg.batch_size))
    optimizer = make_optimizer(model, cfg)
    state = {"epoch": 0, "global_step": 0, "step_in_epoch": 0, "best": math.inf, "best_epoch": -1, "bad_epochs": 0,
             "history": []}
    return _Run(cfg=cfg, run_dir=run_dir, full_cfg=full_cfg, saved_cfg=_plain(full_cfg), device=device, model=model,
                optimizer=optimizer, scheduler=make_scheduler(optimizer, cfg, steps_per_epoch), bank=bank,
                train_data=train_data, val_data=val_data, data_rng=data_rng, steps_per_epoch=steps_per_epoch,
                state=state, epoch_loss=torch.zeros((), device=device))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    """The per-step warm-up + half-cosine (features.optim) over `cfg.epochs * steps_per_epoch` steps, with the
    warm-up `effective_warmup` picks (a warning when it differs from `train.warmup_steps` or outlasts the run)."""
    total_steps = cfg.epochs * steps_per_epoch
    warmup = effective_warmup(cfg.warmup_steps, total_steps)
    if warmup != cfg.warmup_steps:
        log.warning("train.warmup_steps=%d is at least twice this run's %d steps (%d epochs x %d): warming up over "
                    "%d step(s) instead, so the run reaches train.lr=%g", cfg.warmup_steps, total_steps, cfg.epochs,
                    steps_per_epoch, warmup, cfg.lr)
    elif warmup > total_steps:
        log.warning("train.warmup_steps=%d is longer than this run's %d steps (%d epochs x %d): the run ends at "
                    "%.0f%% of train.lr=%g", warmup, total_steps, cfg.epochs, steps_per_epoch,
                    100 * total_steps / warmup, cfg.lr)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_warmup_factor(step, warmup_steps=warmup, total_steps=total_steps))


def _resume(run: _Run) -> None:
    """Load `last.pt` into `run` (the config must be the run's): weights, optimiser, schedule, RNG streams and
    the loop's state; a checkpoint written mid-epoch also restores the epoch's loss sum and time."""
    check_resume_config(run.run_dir, run.full_cfg)
    ckpt = load_checkpoint(run.run_dir, "last", map_location=str(run.device))
    run.model.load_state_dict(ckpt["model"], strict=True)
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng_torch"])
    run.data_rng.set_state(ckpt["rng_data"])
    if run.device.type == "cuda" and "rng_cuda" in ckpt:
        torch.cuda.set_rng_state(ckpt["rng_cuda"], run.device)
    state = run.state
    state.update(ckpt["train_state"])
    if state["step_in_epoch"]:
        run.epoch_loss, run.epoch_train_sec = ckpt["epoch_loss"].to(run.device), float(ckpt["epoch_train_sec"])
    log.info("resumed from %s at epoch %d, step %d (%d of the epoch's %d steps done)",
             checkpoint_path(run.run_dir, "last"), state["epoch"], state["global_step"], state["step_in_epoch"],
             run.steps_per_epoch)


def _train_epoch(run: _Run, report: _Reporter, stop: StopFlag) -> None:
    """The optimisation steps of the current epoch, until its end or a stop signal. A run resumed mid-epoch
    replays the epoch's batch draws up to where it stopped, so it continues bit-exactly."""
    cfg, state = run.cfg, run.state
    run.model.train()
    done_before = state["step_in_epoch"]
    t0 = time.perf_counter()
    report.start_epoch()
    batches = iterate_batches(run.train_data, run.bank, batch_size=cfg.batch_size, train=True, rng=run.data_rng,
                              drop_last=cfg.drop_last, window_flip_prob=run.window_flip_prob)
    for i, batch in enumerate(batches):
        if i < done_before:
            continue
        if stop.requested:
            break
        loss = train_step(run.model, run.optimizer, run.scheduler, batch, cfg, run.device)
        state["global_step"] += 1
        state["step_in_epoch"] += 1
        run.epoch_loss += loss
        report.step(loss)
    report.end_steps()
    run.epoch_train_sec += time.perf_counter() - t0


def _validate(run: _Run, stop: StopFlag) -> tuple[dict[str, Any], float] | None:
    """(val metrics, seconds), or None when a stop signal abandoned the validation."""
    t0 = time.perf_counter()
    try:
        val = validate(run.model, run.val_data, run.bank, run.cfg, stop=lambda: stop.requested)
    except Abandoned:
        return None
    return val, time.perf_counter() - t0


def _record_epoch(run: _Run, val: dict[str, Any]) -> bool:
    """Close the epoch in the loop's state: the best so far (by `run.select`), the epochs without improvement
    (early stopping), the history row of metrics.json. Whether the epoch improved on the best."""
    state = run.state
    train_loss = run.epoch_loss.item() / max(1, state["step_in_epoch"])
    state["epoch"] += 1
    state["step_in_epoch"] = 0
    score = val[run.select]
    improved = score < state["best"]
    if improved:
        state["best"], state["best_epoch"], state["bad_epochs"] = score, state["epoch"], 0
    else:
        state["bad_epochs"] += 1
    state["history"].append({"epoch": state["epoch"], "step": state["global_step"], "train_loss": train_loss,
                             "lr": run.scheduler.get_last_lr()[0], "train_sec": round(run.epoch_train_sec, 3),
                             "windows_per_sec": round(len(run.train_data) / max(run.epoch_train_sec, 1e-9), 1),
                             **_summary(val)})
    return improved


def _summary(val: dict[str, Any]) -> dict[str, Any]:
    """The val metrics without the per-position ED curves."""
    return {k: v for k, v in val.items() if not k.endswith("_curve")}


def _save_epoch(run: _Run, val: dict[str, Any], improved: bool) -> None:
    """After a validated epoch: `best.pt` when it improved, `last.pt` and metrics.json always."""
    metrics = run.metrics()
    if improved:
        metrics["best_val"] = val
        save_run(run.run_dir, run.model, run.saved_cfg, run.bank.cache_keys, metrics=metrics, checkpoint="best",
                 extra_state={"epoch": run.state["epoch"]})
    run.save_last(run.data_rng.get_state(), metrics)
    update_metrics(run.run_dir, metrics)
    run.epoch_loss, run.epoch_train_sec = torch.zeros((), device=run.device), 0.0


def _save_stopped_epoch(run: _Run, epoch_rng: torch.Tensor, signal_name: str | None) -> None:
    """`last.pt` of an epoch a signal stopped: the epoch's starting data RNG, its steps done, its loss and time
    so far (a resume replays the draws and continues)."""
    state = run.state
    run.save_last(epoch_rng, run.metrics(), epoch_loss=run.epoch_loss, epoch_train_sec=run.epoch_train_sec)
    log.warning("%s: stopped at epoch %d, step %d (%d of %d steps of the epoch done); wrote %s", signal_name,
                state["epoch"] + 1, state["global_step"], state["step_in_epoch"], run.steps_per_epoch,
                checkpoint_path(run.run_dir, "last"))


def _finish(run: _Run, interrupted: str | None) -> None:
    """Mark metrics.json finished (all epochs, or early stopping), or raise `Interrupted` naming the resume command."""
    state = run.state
    if interrupted is None:
        if run.out_of_patience():
            log.info("early stop after epoch %d: no val improvement for %d epochs", state["epoch"], run.cfg.patience)
        update_metrics(run.run_dir, {"finished": True})
        return
    hint = f"lta train-heads config={run.run_dir / CONFIG_FILE} resume=true"
    where = (f"after epoch {state['epoch']}" if not state["step_in_epoch"] else
             f"in epoch {state['epoch'] + 1} at step {state['global_step']} ({state['step_in_epoch']} of its "
             f"{run.steps_per_epoch} steps done)")
    saved = "progress saved" if checkpoint_path(run.run_dir, "last").is_file() else "nothing to save yet"
    raise Interrupted(f"train-heads stopped by {interrupted} {where}, {saved}; resume with: {hint}",
                      signal_name=interrupted)


class _Reporter:
    """Where the loop reports: tqdm bars (epochs and steps; off when stderr is no terminal, the log then goes on
    as it is), a log line every `train.log_every` steps and one per epoch (with an ETA), and TensorBoard
    (`run_dir/tensorboard`, every scalar against the global step)."""

    def __init__(self, run: _Run, *, resuming: bool):
        self.run, self.resuming = run, resuming
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _Reporter:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        run = self.run
        # purge_step drops the events a killed run logged after its checkpoint
        self.writer = SummaryWriter(str(run.run_dir / "tensorboard"),
                                    purge_step=run.state["global_step"] + 1 if self.resuming else None)
        self._stack.callback(self.writer.close)
        if not self.resuming:
            write_hparams(self.writer, run.full_cfg, f"val/{run.select}")
        self._tqdm, self._t0, self._epochs = tqdm, time.perf_counter(), 0  # epochs done by this call (the ETA)
        self.epoch_bar = self._stack.enter_context(tqdm(total=run.cfg.epochs, initial=run.state["epoch"],
                                                        unit="epoch", desc=run.run_dir.name, disable=None,
                                                        dynamic_ncols=True))
        if not self.epoch_bar.disable:
            self._stack.enter_context(logging_redirect_tqdm())
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def start_epoch(self) -> None:
        state = self.run.state
        self._log_sum, self._log_n, self._t_log = torch.zeros((), device=self.run.device), 0, time.perf_counter()
        self.step_bar = self._tqdm(total=self.run.steps_per_epoch, initial=state["step_in_epoch"], unit="step",
                                   desc=f"epoch {state['epoch'] + 1}", leave=False, disable=None, dynamic_ncols=True)

    def step(self, loss: torch.Tensor) -> None:
        """After an optimisation step; every `train.log_every` steps the mean loss (one device sync) is logged."""
        self._log_sum += loss
        self._log_n += 1
        self.step_bar.update()
        state, scheduler = self.run.state, self.run.scheduler
        if state["global_step"] % self.run.cfg.log_every:
            return
        mean_loss = self._log_sum.item() / self._log_n
        ms = (time.perf_counter() - self._t_log) * 1000 / self._log_n
        lr = scheduler.get_last_lr()[0]
        log.info("step %d | epoch %d | loss %.3f | lr %.2e | %.1f ms/step", state["global_step"], state["epoch"] + 1,
                 mean_loss, lr, ms)
        self.step_bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.1e}", refresh=False)
        self.writer.add_scalar("train/loss", mean_loss, state["global_step"])
        self.writer.add_scalar("train/lr", lr, state["global_step"])
        self._log_sum, self._log_n, self._t_log = torch.zeros((), device=self.run.device), 0, time.perf_counter()

    def end_steps(self) -> None:
        self.step_bar.close()

    def epoch(self, val: dict[str, Any], val_sec: float) -> None:
        """After a validated epoch (its history row written): TensorBoard scalars and curves, the epoch line."""
        run, writer = self.run, self.writer
        state, cfg, step, row = run.state, run.cfg, run.state["global_step"], run.state["history"][-1]
        writer.add_scalar("train/epoch_loss", row["train_loss"], step)
        for name, value in _summary(val).items():
            writer.add_scalar(f"val/{name}", value, step)
        g = f"model.{cfg.val_generator}"
        for what in ("verb", "noun", "action"):
            for z, v in enumerate(val[f"{g}.{what}_ed_curve"], start=1):
                writer.add_scalar(f"val_ed_curve/{what}_ed@{z}", v, step)
        writer.flush()
        self._epochs += 1
        self.epoch_bar.update()
        eta = (time.perf_counter() - self._t0) / self._epochs * (cfg.epochs - state["epoch"])
        log.info("epoch %d/%d | train loss %.4f | lr %.2e | val ED@Z verb %.4f noun %.4f action %.4f | best %s %.4f "
                 "(epoch %d) | %.1f s train + %.1f s val | ETA %s", state["epoch"], cfg.epochs, row["train_loss"],
                 row["lr"], val[f"{g}.verb_ed"], val[f"{g}.noun_ed"], val[f"{g}.action_ed"], cfg.select_metric,
                 state["best"], state["best_epoch"], run.epoch_train_sec, val_sec, _format_eta(eta))
