"""`lta finetune-backbone`: end-to-end verb/noun recognition fine-tuning of a video backbone.

One process per device (torchrun / SLURM set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT; a
single process needs none). DDP across processes, bf16 autocast on CUDA, gradient accumulation.
`batch_size` is the *effective* batch (the reference's 64): each process takes
`batch_size / (world_size * accum_steps)` samples per micro-step, so the LR recipe does not depend
on the number of devices.

Recipe defaults (../shared/reference/ego4d_lta.md §3.6, "Recognition" rows): SGD momentum 0.9,
nesterov, dampening 0; weight decay 1e-4, 0 on BatchNorm parameters; per-iteration cosine with a
linear warm-up from 0 (1000 steps); LR 1e-4 (SlowFast) / 1e-2 (MViT); 30 / 40 epochs; batch 64.

BatchNorm: every parameter is trained here, so BatchNorm runs in train mode (batch statistics), as
in the reference recognition training (`bn_mode=train`). Quirk of the reference, documented, not
copied: its LTA stage "freezes" the backbone via `requires_grad=False` but leaves the module in
train mode, so BN keeps using batch statistics and updating its running stats; features extracted
from our checkpoint always use eval-mode BN (the running stats written here). `bn_mode=frozen`
keeps BN in eval mode while the rest trains, for per-device batches too small for batch statistics.
The reference's precise-BN pass (200 batches) is not implemented.

Run directory: checkpoints/last.pt (model, optimiser, scheduler, step; resumed with resume=true) and
checkpoints/rng_rank<r>.pt (every RNG stream as tensors/ints; all files load with `weights_only=True`;
extract/finetune/checkpoint.py),
backbone.pt + backbone.json + heads.pt (the export `lta extract` loads, see extract/finetune/model.py),
metrics.jsonl (one line per validation), tensorboard/ (TensorBoard, as train-heads), failures.jsonl (bad clips, see below).

Bad input: before training every clip of the train and val splits is probed (`extract.finetune.data.probe_split`);
bad clips go to failures.jsonl (stage "finetune-probe": clip_uid, path, rows dropped, reason) and their
segments are dropped; more than `max_failed_frac` of the segments dropped raises `TooManyFailures`
before anything but failures.jsonl is written. A decode error during training (stage "finetune-decode":
clip_uid, action_idx, window_sec, epoch, reason) is appended by the main process and training goes on
with a deterministic replacement sample.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from features.devices import resolve_device
from features.errors import RunFailure, check_failed_fraction
from extract.finetune.checkpoint import TrainState, load_checkpoint, save_checkpoint
from extract.finetune.data import EpochBatchSampler, ProbeReport, RecognitionDataset, make_loader, probe_split
from extract.finetune.model import (
    RECIPES,
    BackboneSpec,
    build_recognition_model,
    cosine_warmup_factor,
    export_backbone,
    init_backbone,
    make_spec,
    param_groups,
    recognition_loss,
)
from extract.finetune.options import CHECKPOINT, FAILURES, TrainOptions  # finetune's arguments (the CLI schema inherits them)

log = logging.getLogger(__name__)


class TooManyFailures(RunFailure):
    """The probe dropped more than `max_failed_frac` of the segments; raised before training starts (exit 1)."""


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: Any

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistInfo:
    """Process-group init from the torchrun / SLURM environment when WORLD_SIZE > 1 (NCCL on CUDA, else gloo)."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(resolve_device(device))
    if world == 1:
        return DistInfo(0, 1, 0, dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    return DistInfo(rank, world, local, dev)


def _set_train_mode(model, bn_mode: str) -> None:
    from torch import nn

    model.train()
    if bn_mode == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    elif bn_mode != "train":
        raise ValueError(f"unknown bn_mode {bn_mode!r}; expected train or frozen")


def _autocast(device, precision: str):
    import torch

    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}; expected auto, bf16 or fp32")


def _to_device(inputs, device):
    if isinstance(inputs, (list, tuple)):
        return [x.to(device, non_blocking=True) for x in inputs]
    return inputs.to(device, non_blocking=True)


@dataclass
class Plan:
    """Resolved recipe: effective batch, per-process micro-batch, steps."""

    lr: float
    epochs: int
    batch_size: int
    micro_batch: int
    steps_per_epoch: int
    total_steps: int


def make_plan(opts: TrainOptions, num_train: int, world_size: int) -> Plan:
    recipe = RECIPES[opts.backbone]
    batch = opts.batch_size or recipe["batch_size"]
    per_step = world_size * opts.accum_steps
    if batch % per_step:
        raise ValueError(f"batch_size={batch} must be divisible by world_size*accum_steps={per_step}")
    micro = batch // per_step
    steps_per_epoch = (num_train // world_size // micro) // opts.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"{num_train} training segments are fewer than one effective batch of {batch}")
    epochs = opts.epochs or recipe["epochs"]
    return Plan(opts.lr or recipe["lr"], epochs, batch, micro, steps_per_epoch, epochs * steps_per_epoch)


def finetune(opts: TrainOptions) -> dict:
    """Train (or resume) a recognition run in `opts.out`; returns the last validation metrics and throughput.

    Two phases, each callable on its own: `prepare` (probe the clips, record and drop the bad ones, build the
    datasets and the plan) and `train_prepared` (the model, optimiser, resume and the step loop).

    The returned dict has `step`, `val` ({verb_top1, verb_top5, noun_top1, noun_top5, loss} or {}),
    `samples_per_sec`, `data_wait_share` (time blocked on the DataLoader / train-loop time),
    `dropped` (segments dropped by the probe), `decode_failures` (decode errors met in training and
    validation by this process), `spec` and `model` (the trained RecognitionModel, unwrapped from DDP).

    Raises:
        TooManyFailures: more than `opts.max_failed_frac` of the train + val segments were dropped.
    """
    return train_prepared(prepare(opts))


@dataclass
class Prepared:
    """A run ready to train: the clips probed (bad ones recorded in failures.jsonl and left out), the datasets
    and the resolved recipe. Nothing but failures.jsonl is written yet and no frame is decoded."""

    opts: TrainOptions
    dist: DistInfo
    spec: BackboneSpec
    taxonomy: Any
    probes: list[ProbeReport]  # train, then val
    train_ds: RecognitionDataset
    val_ds: RecognitionDataset | None
    plan: Plan

    @property
    def out(self) -> Path:
        return Path(self.opts.out)


def prepare(opts: TrainOptions) -> Prepared:
    """Set up the process group, load the splits, probe their clips and build the datasets and the plan.

    Raises:
        TooManyFailures: more than `opts.max_failed_frac` of the train + val segments were dropped.
    """
    from features.annotations import load_split

    dist = setup_distributed(opts.device)
    spec = make_spec(opts.backbone, width_per_group=opts.width_per_group, crop_size=opts.crop_size, num_frames=opts.num_frames)
    train_ann = load_split(opts.data, opts.train_split)
    val_ann = load_split(opts.data, opts.val_split, train_ann.taxonomy) if opts.val_split else None
    probes = _probe(opts, spec, train_ann, val_ann, Path(opts.out) / FAILURES if dist.is_main else None)
    train_ds = RecognitionDataset(opts.data, train_ann, spec, train=True, seed=opts.seed, flip_prob=opts.flip_prob,
                                  resized=opts.resized, probe=probes[0])
    val_ds = (RecognitionDataset(opts.data, val_ann, spec, train=False, resized=opts.resized, probe=probes[1])
              if val_ann is not None else None)
    return Prepared(opts=opts, dist=dist, spec=spec, taxonomy=train_ann.taxonomy, probes=probes, train_ds=train_ds,
                    val_ds=val_ds, plan=make_plan(opts, len(train_ds), dist.world_size))


def train_prepared(prepared: Prepared) -> dict:
    """Train (or resume) a prepared run up to `max_steps` or the plan's last step; see `finetune`. A stop signal
    ends it after the current step with a checkpoint (`Interrupted`)."""
    trainer = _Trainer(prepared)
    while trainer.state.step < trainer.stop_step:
        trainer.run_epoch()
    return trainer.result()


class _Trainer:
    """One training call on a prepared run: the model (and its DDP wrapper), optimiser, schedule, the step state
    that checkpoints hold, the TensorBoard writer (main process) and this call's throughput counters."""

    def __init__(self, p: Prepared):
        import torch

        self.p, opts, dist = p, p.opts, p.dist
        random.seed(opts.seed)
        np.random.seed(opts.seed)
        torch.manual_seed(opts.seed)
        model = build_recognition_model(p.spec, num_verbs=p.taxonomy.num_verbs, num_nouns=p.taxonomy.num_nouns,
                                        dropout=opts.dropout)
        resuming = opts.resume and (p.out / CHECKPOINT).is_file()
        if not resuming:
            log.info("init: %s", init_backbone(model.backbone, p.spec, opts.init))
        model.to(dist.device)
        self.model = model
        self.optimizer = torch.optim.SGD(
            param_groups(model, weight_decay=opts.weight_decay, bn_weight_decay=opts.bn_weight_decay), lr=p.plan.lr,
            momentum=opts.momentum, nesterov=opts.nesterov, dampening=0.0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: cosine_warmup_factor(
            s, warmup_steps=opts.warmup_steps, total_steps=p.plan.total_steps))
        self.state = TrainState()
        if resuming:
            self.state = load_checkpoint(p.out / CHECKPOINT, model, self.optimizer, self.scheduler, p.spec, dist)
            log.info("resumed %s at step %d", p.out / CHECKPOINT, self.state.step)
        self.ddp_model = _wrap_ddp(model, dist)
        self.writer = _open_writer(p)
        self.stop_step = min(p.plan.total_steps, opts.max_steps) if opts.max_steps else p.plan.total_steps
        self.val_metrics: dict = {}
        self.loop_start, self.loop_data, self.loop_samples = time.perf_counter(), 0.0, 0
        self.epoch_losses: list[float] = []  # this process's step losses since the last validation
        self.decode_failures = 0

    def run_epoch(self) -> None:
        """The rest of the current epoch (all of it, or from a resumed step), then its end (`end_epoch`).
        SIGTERM / SIGINT / submitit's USR2 mid-epoch: stop after this step with a checkpoint, which a resume
        continues exactly (the sampler restarts at the step); at an epoch's end `end_epoch` runs first."""
        p, opts, dist = self.p, self.p.opts, self.p.dist
        epoch, step_in_epoch = divmod(self.state.step, p.plan.steps_per_epoch)
        p.train_ds.set_epoch(epoch)
        sampler = EpochBatchSampler(len(p.train_ds), p.plan.micro_batch, shuffle=True, seed=opts.seed, epoch=epoch,
                                    rank=dist.rank, world_size=dist.world_size, start_batch=step_in_epoch * opts.accum_steps)
        loader = make_loader(p.train_ds, sampler, num_workers=opts.num_workers, pin_memory=dist.device.type == "cuda")
        batches = iter(loader)
        _set_train_mode(self.model, opts.bn_mode)
        for _ in range(step_in_epoch, p.plan.steps_per_epoch):
            self.step(batches, epoch)
            if self.state.step >= self.stop_step:
                break
            if self.state.step % p.plan.steps_per_epoch and _stop_agreed(dist):
                self.checkpoint()
                _stop(self.writer, self.state.step, self.stop_step, p.out)
        del batches, loader
        self.end_epoch(epoch)

    def step(self, batches, epoch: int) -> None:
        """One optimiser step of `accum_steps` micro-batches (DDP syncs the gradients on the last one only)."""
        p, opts, state = self.p, self.p.opts, self.state
        t_step = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for micro in range(opts.accum_steps):
            loss_sum += self.micro_step(batches, sync=micro == opts.accum_steps - 1 or p.dist.world_size == 1)
        self.optimizer.step()
        self.scheduler.step()
        state.step += 1
        self.epoch_losses.append(loss_sum)
        state.step_sec += time.perf_counter() - t_step
        if self.writer is not None:
            self.log_step(loss_sum, epoch)
        if opts.ckpt_every and state.step % opts.ckpt_every == 0:
            self.checkpoint()

    def micro_step(self, batches, *, sync: bool) -> float:
        """Forward and backward of the next micro-batch (decode failures recorded); its share of the step loss."""
        p, dist, state = self.p, self.p.dist, self.state
        t_data = time.perf_counter()
        inputs, verb, noun, _idx, failed = next(batches)
        if failed:
            self.decode_failures += _record_failures(p.out / FAILURES, failed, step=state.step, rank=dist.rank)
        wait = time.perf_counter() - t_data
        state.data_sec += wait
        self.loop_data += wait
        inputs, verb, noun = _to_device(inputs, dist.device), verb.to(dist.device), noun.to(dist.device)
        with (contextlib.nullcontext() if sync else self.ddp_model.no_sync()):
            with _autocast(dist.device, p.opts.precision):
                logits = self.ddp_model(inputs)
            loss = recognition_loss(logits, verb, noun) / p.opts.accum_steps
            loss.backward()
        state.samples += len(verb) * dist.world_size
        self.loop_samples += len(verb) * dist.world_size
        return float(loss.detach())

    def log_step(self, loss: float, epoch: int) -> None:
        """TensorBoard loss and lr every step; a log line every `log_every` steps (and after the first)."""
        step, lr = self.state.step, self.optimizer.param_groups[0]["lr"]
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)
        if step % self.p.opts.log_every == 0 or step == 1:
            elapsed = time.perf_counter() - self.loop_start
            log.info("step %d/%d | epoch %d | loss %.4f | lr %.3g | %.0f ms/step | %.1f samples/s | data wait %.0f%%",
                     step, self.stop_step, epoch, loss, lr, 1000 * elapsed / max(1, step), self.loop_samples / elapsed,
                     100 * self.loop_data / elapsed)

    def end_epoch(self, epoch: int) -> None:
        """After the epoch's steps (or the last step of the call): validate when it is due, export the backbone
        (main process), write the checkpoint, and stop here if a signal arrived."""
        p, opts, dist, state = self.p, self.p.opts, self.p.dist, self.state
        epoch_done = state.step % p.plan.steps_per_epoch == 0
        if epoch_done and p.val_ds is not None and ((epoch + 1) % opts.val_every == 0 or state.step == p.plan.total_steps):
            self.validate(epoch)
        if dist.is_main and (epoch_done or state.step >= self.stop_step):
            export_backbone(self.model, p.spec, p.out, extra={"init": opts.init, "step": state.step,
                                                              "epoch": epoch + epoch_done, "val": self.val_metrics,
                                                              "num_verbs": p.taxonomy.num_verbs,
                                                              "num_nouns": p.taxonomy.num_nouns})
        self.checkpoint()
        if state.step < self.stop_step and _stop_agreed(dist):
            _stop(self.writer, state.step, self.stop_step, p.out)

    def validate(self, epoch: int) -> None:
        p = self.p
        self.val_metrics = evaluate(self.model, p.val_ds, batch_size=p.plan.micro_batch, num_workers=p.opts.num_workers,
                                    dist=p.dist, precision=p.opts.precision, failures_path=p.out / FAILURES,
                                    step=self.state.step)
        self.decode_failures += self.val_metrics.pop("decode_failures")
        self.val_metrics["train_loss"] = float(np.mean(self.epoch_losses)) if self.epoch_losses else float("nan")
        self.epoch_losses = []
        if p.dist.is_main:
            _log_val(p.out, self.writer, epoch, self.state.step, self.val_metrics)

    def checkpoint(self) -> None:
        p = self.p
        save_checkpoint(p.out / CHECKPOINT, self.model, self.optimizer, self.scheduler, p.spec, self.state, p.dist,
                         p.opts)

    def result(self) -> dict:
        """What `finetune` returns (and closes the writer)."""
        elapsed = time.perf_counter() - self.loop_start
        if self.writer is not None:
            self.writer.close()
        return {"step": self.state.step, "val": self.val_metrics,
                "samples_per_sec": self.loop_samples / elapsed if elapsed else 0.0,
                "data_wait_share": self.loop_data / elapsed if elapsed else 0.0,
                "dropped": sum(pr.num_dropped for pr in self.p.probes), "decode_failures": self.decode_failures,
                "spec": self.p.spec, "model": self.model}


def _wrap_ddp(model, dist: DistInfo):
    """`model` in DistributedDataParallel over several processes (itself in one); cuDNN autotuning on CUDA."""
    import torch

    ddp_model = model
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)
    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return ddp_model


def _open_writer(p: Prepared):
    """The main process's TensorBoard writer (`out/tensorboard`) after a line describing the run; None elsewhere."""
    if not p.dist.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    p.out.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(p.out / "tensorboard"))
    plan = p.plan
    log.info("%s: %d train / %d val segments, %d verbs, %d nouns; batch %d = %d proc x %d accum x %d, "
             "%d steps/epoch, %d epochs, lr %g", p.spec.name, len(p.train_ds), len(p.val_ds or []), p.taxonomy.num_verbs,
             p.taxonomy.num_nouns, plan.batch_size, p.dist.world_size, p.opts.accum_steps, plan.micro_batch,
             plan.steps_per_epoch, plan.epochs, plan.lr)
    return writer


def _stop_agreed(dist: DistInfo) -> bool:
    """Whether a stop signal arrived (features.interrupt) on this process or, under DDP, on any rank (one all-reduce)."""
    from features.interrupt import stop_requested

    flag = stop_requested()
    if dist.world_size > 1:
        import torch
        import torch.distributed as torch_dist

        t = torch.tensor([float(flag)], device=dist.device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        flag = bool(t.item())
    return flag


def _stop(writer, step: int, stop_step: int, out: Path) -> None:
    """Raise `Interrupted` after the checkpoint of `step` is written."""
    from features import interrupt

    if writer is not None:
        writer.close()
    flag = interrupt.current()
    name = flag.signal_name if flag is not None and flag.requested else "a stop signal on another rank"
    raise interrupt.Interrupted(f"finetune-backbone interrupted by {name} after step {step} of {stop_step} "
                                f"(checkpoint {out / CHECKPOINT}); everything written is valid, re-run the same "
                                "command (resume=true) to continue", signal_name=name)


def _probe(opts: TrainOptions, spec: BackboneSpec, train_ann, val_ann, failures_path: Path | None) -> list[ProbeReport]:
    """Probe the clips of both splits, record the bad ones, drop their segments; raise past `max_failed_frac`."""
    from extract.failures import append_failures

    t0 = time.perf_counter()
    probes = [probe_split(opts.data, train_ann, spec, train=True, resized=opts.resized)]
    if val_ann is not None:
        probes.append(probe_split(opts.data, val_ann, spec, train=False, resized=opts.resized))
    failures = [rec for p in probes for rec in p.failures]
    dropped, total = sum(p.num_dropped for p in probes), sum(p.num_segments for p in probes)
    clips = sum(len(a.clip_uids) for a in (train_ann, val_ann) if a is not None)
    log.info("probed %d clips in %.1f s: %d bad, %d of %d segments dropped%s", clips, time.perf_counter() - t0,
             len(failures), dropped, total, f"; reasons in {failures_path}" if failures and failures_path else "")
    for rec in failures[:20]:
        log.warning("dropped %d %s segment(s) of clip %s: %s", rec["rows"], rec["split"], rec["clip_uid"], rec["reason"])
    if failures_path is not None:
        append_failures(failures_path, failures)
    check_failed_fraction(dropped, total, opts.max_failed_frac, what="segments dropped by the clip probe",
                          where=failures_path or FAILURES, outcome="nothing was trained", error=TooManyFailures)
    for p in probes:
        if not len(p.rows):
            raise TooManyFailures(f"split {p.split!r}: every segment was dropped; reasons in {failures_path or FAILURES}")
    return probes


def _record_failures(path: Path | None, records: list[dict], *, step: int, rank: int) -> int:
    """Append decode failures met by the loader to `path` (the workers cannot share the file) and log them;
    returns their count. Ranks append whole lines, so they can share one file."""
    from extract.failures import append_failures

    for rec in records:
        log.warning("decode failed (%s, rank %d, step %d): %s%s", rec["split"], rank, step, rec["reason"],
                    f"; replaced by sample {rec['replaced_by']}" if "replaced_by" in rec else "; left out")
    if path is not None:
        append_failures(path, [dict(rec, step=step, rank=rank) for rec in records])
    return len(records)


def evaluate(model, dataset: RecognitionDataset, *, batch_size: int, num_workers: int, dist: DistInfo,
             precision: str = "auto", failures_path: Path | None = None, step: int = -1) -> dict:
    """Verb / noun top-1 and top-5 accuracy and mean loss over every segment of `dataset` (summed across ranks).

    Segments whose decode fails are left out (`num_samples` counts those evaluated); their records are
    appended to `failures_path` (logged only without one) and counted in `decode_failures` (this rank's).
    """
    import torch

    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=False, rank=dist.rank, world_size=dist.world_size)
    loader = make_loader(dataset, sampler, num_workers=num_workers, pin_memory=dist.device.type == "cuda")
    was_training = model.training
    model.eval()
    # counts: verb top1, verb top5, noun top1, noun top5, loss sum, n
    totals = torch.zeros(6, dtype=torch.float64, device=dist.device)
    decode_failures = 0
    with torch.no_grad():
        for inputs, verb, noun, _idx, failed in loader:
            if failed:
                decode_failures += _record_failures(failures_path, failed, step=step, rank=dist.rank)
            if inputs is None:
                continue
            inputs, verb, noun = _to_device(inputs, dist.device), verb.to(dist.device), noun.to(dist.device)
            with _autocast(dist.device, precision):
                logits = model(inputs)
            totals[4] += float(recognition_loss(logits, verb, noun)) * len(verb)
            totals[5] += len(verb)
            for slot, (name, target) in enumerate((("verb", verb), ("noun", noun))):
                top = logits[name].float().topk(min(5, logits[name].shape[1]), dim=1).indices  # (B, 5)
                hit = top == target[:, None]
                totals[2 * slot] += hit[:, 0].sum()
                totals[2 * slot + 1] += hit.any(dim=1).sum()
    if dist.world_size > 1:
        import torch.distributed as tdist

        tdist.all_reduce(totals)
    model.train(was_training)
    n = max(1.0, float(totals[5]))
    keys = ("verb_top1", "verb_top5", "noun_top1", "noun_top5", "loss")
    return {k: float(totals[i]) / n for i, k in enumerate(keys)} | {"num_samples": int(totals[5]),
                                                                    "decode_failures": decode_failures}


def _log_val(out: Path, writer, epoch: int, step: int, metrics: dict) -> None:
    log.info("val epoch %d | step %d | verb top1 %.3f top5 %.3f | noun top1 %.3f top5 %.3f | loss %.4f | train loss %.4f",
             epoch, step, metrics["verb_top1"], metrics["verb_top5"], metrics["noun_top1"], metrics["noun_top5"],
             metrics["loss"], metrics["train_loss"])
    for k, v in metrics.items():
        writer.add_scalar(f"val/{k}", v, step)
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": epoch, "step": step, **metrics}) + "\n")
