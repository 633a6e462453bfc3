"""`lta train-heads` under signals and reruns, driven through the real CLI in processes of
its own (tests/cli_proc.py).

- SIGTERM / SIGINT at a random step: a clean stop after the current step (exit 75, one line with the resume
  command, no traceback), a checkpoint of what completed, and a resume that ends bit-identical to an
  uninterrupted run (checkpoints and metrics). The kill point is drawn from `LTA_FAULT_SEED` (printed).
- A finished run is not overwritten without overwrite=true; a resume with a changed config names the keys.
- TensorBoard: one global-step axis for every scalar, monotonic across a resume; train.log, hparams,
  the epoch line (train loss, lr, val ED, ETA); tqdm bars on a TTY only.
"""
from __future__ import annotations

import json
import os
import pty
import random
import select
import signal
import subprocess
from pathlib import Path

import pytest
import torch

import cli_proc

from features.exitcodes import EXIT_INTERRUPTED
from synthetic_store import write_synthetic_dataset, write_synthetic_stores

pytestmark = pytest.mark.slow  # every test drives `lta train-heads` in processes of its own

REPO = Path(__file__).resolve().parents[1]
MODALITIES = {"slowfast": ("slowfast_r101_8x8.synthetic", (32,))}
EPOCHS = 4
TRAIN = ["head.modalities.0.proj_dim=32", "head.num_input=2", "head.aggregator=concat",
         f"train.epochs={EPOCHS}", "train.lr=2e-3", "train.warmup_steps=3", "train.batch_size=16", "train.log_every=1",
         "num_seen=4", "train.device=cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupt")
    plan = write_synthetic_dataset(root / "data", clips=14, seed=5)
    write_synthetic_stores(root / "data", root / "store", plan, modalities=MODALITIES, noise=2.0)
    return root


def argv(sample: Path, out: Path, *extra: str) -> list[str]:
    return [f"data={sample / 'data'}", f"store={sample / 'store'}", f"out={out}", *TRAIN, *extra]


def lta(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return cli_proc.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300, **kwargs)


def error_lines(stderr: str) -> list[str]:
    """stderr lines that are not log records (the CLI's own messages)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and " INFO " not in ln and " WARNING " not in ln]


def uninterrupted(sample: Path, out: Path) -> dict:
    from pipelines import cmd_train_heads

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cmd_train_heads.main(argv(sample, out)) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "metrics.json").read_text())


def strip_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in ("train_sec", "windows_per_sec")} for e in history]


def assert_same_run(a: Path, b: Path) -> None:
    for name in ("last", "best"):
        ca = torch.load(a / "checkpoints" / f"{name}.pt", weights_only=True)
        cb = torch.load(b / "checkpoints" / f"{name}.pt", weights_only=True)
        assert ca["model"].keys() == cb["model"].keys()
        for key in ca["model"]:
            assert torch.equal(ca["model"][key], cb["model"][key]), (name, key)
        if name == "last":
            assert ca["train_state"]["global_step"] == cb["train_state"]["global_step"]
            for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
                assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq"))
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert strip_timing(ma["history"]) == strip_timing(mb["history"])
    assert ma["best"] == mb["best"] and ma["best_epoch"] == mb["best_epoch"] and ma["finished"] and mb["finished"]


def scalars(run: Path) -> dict[str, list[int]]:
    """tag -> steps of the run's TensorBoard scalars, as TensorBoard shows them (purged events dropped)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_one_monotonic_step_axis(run: Path) -> None:
    history = json.loads((run / "metrics.json").read_text())["history"]
    epoch_steps = [e["step"] for e in history]
    tags = scalars(run)
    assert "train/loss" in tags and "val/model.sample.action_ed" in tags
    for tag, steps in tags.items():
        assert steps == sorted(set(steps)), (tag, steps)  # strictly increasing: no repeats, no restart
    assert tags["train/loss"] == list(range(1, epoch_steps[-1] + 1))  # log_every=1: every global step once
    for tag, steps in tags.items():
        if tag.startswith(("val/", "val_ed_curve/", "train/epoch_loss")):
            assert steps == epoch_steps, tag  # the global step at the end of each epoch, not the epoch number


def run_until_line(args: list[str], marker: str, sig: int) -> tuple[int, str]:
    """Start `lta train-heads`, send `sig` as soon as its log shows a line containing `marker`."""
    proc = cli_proc.popen(["train-heads", *args], cwd=REPO, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True)
    seen = []
    sent = False
    for line in proc.stderr:
        seen.append(line)
        if not sent and marker in line:
            proc.send_signal(sig)
            sent = True
    rc = proc.wait(timeout=120)
    seen.append(proc.stdout.read())
    assert sent, "the run ended before the chosen log line:\n" + "".join(seen)
    return rc, "".join(seen)


@pytest.fixture(scope="module")
def reference_run(sample, tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted run (dir, metrics) that every signal test compares with."""
    ref = tmp_path_factory.mktemp("interrupt_ref") / "ref"
    return ref, uninterrupted(sample, ref)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_at_a_random_step_then_resume_equals_uninterrupted(sample, reference_run, tmp_path, sig):
    seed = int(os.environ.get("LTA_FAULT_SEED", random.SystemRandom().randrange(2**31)))
    print(f"LTA_FAULT_SEED={seed}")
    rng = random.Random(seed + sig)
    ref, metrics = reference_run
    total = metrics["history"][-1]["step"]
    per_epoch = metrics["history"][0]["step"]
    # the signal goes out when the log shows a step line (it lands in that step or the next ones, or in the
    # validation after an epoch's last step) or an epoch line (it lands in the next epoch's first steps). The
    # trigger is a log line, not a delay: steps take milliseconds here, so a delay in seconds could land after
    # the run has ended. The last steps are left out for the same reason (the signal must reach a running run).
    events = [(f" step {s} |", s) for s in range(1, total - 2)]
    events += [(f" epoch {e}/{EPOCHS} |", e * per_epoch) for e in range(1, EPOCHS)]
    marker, step = rng.choice(events)
    print(f"signal on the log line with {marker.strip()!r}")
    run = tmp_path / "run"
    rc, log = run_until_line(argv(sample, run), marker, sig)
    assert rc == EXIT_INTERRUPTED, log
    assert "Traceback" not in log
    msg = error_lines(log)
    assert len(msg) == 1 and f"stopped by {signal.Signals(sig).name}" in msg[0], msg
    hint = msg[0].split("resume with: ", 1)[1].split()
    assert hint[:2] == ["lta", "train-heads"] and "resume=true" in hint
    # nothing reads as done but is not: metrics.json lists only finished epochs and says unfinished
    partial = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {"history": []}
    assert not partial.get("finished")
    done = torch.load(run / "checkpoints/last.pt", weights_only=True)["train_state"]
    assert len(partial["history"]) == done["epoch"] and done["global_step"] >= step
    resumed = lta(*hint[1:])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(ref, run)
    assert_one_monotonic_step_axis(run)
    text = (run / "train.log").read_text()
    assert "resumed from" in text and text.count(f"epoch {EPOCHS}/{EPOCHS} |") == 1


def test_finished_run_is_not_overwritten_and_changed_resume_names_the_keys(sample, tmp_path):
    run = tmp_path / "run"
    first = lta("train-heads", *argv(sample, run))
    assert first.returncode == 0, first.stderr
    before = (run / "checkpoints/last.pt").read_bytes()
    again = lta("train-heads", *argv(sample, run))
    assert again.returncode == 2 and "Traceback" not in again.stderr
    msg = error_lines(again.stderr)
    assert len(msg) == 1 and str(run) in msg[0] and "finished run" in msg[0] and "overwrite=true" in msg[0], msg
    assert (run / "checkpoints/last.pt").read_bytes() == before
    changed = lta("train-heads", *argv(sample, run, "resume=true", "train.lr=0.5", "head.aggregator=mean"))
    assert changed.returncode == 2 and "Traceback" not in changed.stderr and "size mismatch" not in changed.stderr
    msg = error_lines(changed.stderr)
    assert len(msg) == 1 and "train.lr (0.002 -> 0.5)" in msg[0] and "head.aggregator (concat -> mean)" in msg[0], msg
    assert (run / "checkpoints/last.pt").read_bytes() == before
    same = lta("train-heads", *argv(sample, run, "resume=true"))  # unchanged config: nothing left to do
    assert same.returncode == 0, same.stderr
    replaced = lta("train-heads", *argv(sample, run, "overwrite=true", "train.epochs=1"))
    assert replaced.returncode == 0, replaced.stderr
    assert len(json.loads((run / "metrics.json").read_text())["history"]) == 1


def test_epoch_line_train_log_and_hparams(sample, tmp_path):
    run = tmp_path / "run"
    res = lta("train-heads", *argv(sample, run, "train.epochs=2"))
    assert res.returncode == 0, res.stderr
    assert sum("| train loss " in ln for ln in res.stderr.splitlines()) == 2
    text = (run / "train.log").read_text()
    lines = [ln for ln in text.splitlines() if "| train loss " in ln]
    assert [ln.split("epoch ", 1)[1].split(" |")[0] for ln in lines] == ["1/2", "2/2"]
    for ln in lines:
        assert " | lr " in ln and "val ED@Z verb " in ln and " action " in ln and "| ETA " in ln, ln
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert all(e["train_loss"] > 0 and e["lr"] >= 0 for e in history)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    assert content, "no hparams in the TensorBoard log"
    from tensorboard.plugins.hparams import plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = data.session_start_info.hparams
    assert hp["train.lr"].number_value == pytest.approx(2e-3) and hp["head.aggregator"].string_value == "concat"


def test_resume_with_more_epochs_extends_a_finished_run(sample, tmp_path):
    """`resume=true train.epochs=N` with more epochs than the run's trains the extra epochs; fewer are refused as a
    config change; the same number on a finished run says it is done and how to extend it, and writes nothing."""
    run = tmp_path / "run"
    assert lta("train-heads", *argv(sample, run, "train.epochs=1")).returncode == 0
    res = lta("train-heads", *argv(sample, run, "train.epochs=2", "resume=true"))
    assert res.returncode == 0 and "extending the run from 1 to 2 epochs" in res.stderr, res.stderr[-2000:]
    assert [e["epoch"] for e in json.loads((run / "metrics.json").read_text())["history"]] == [1, 2]
    assert "epochs: 2" in (run / "config.yaml").read_text()
    last = (run / "checkpoints/last.pt").read_bytes()
    done = lta("train-heads", *argv(sample, run, "train.epochs=2", "resume=true"))
    assert done.returncode == 0 and "nothing to resume" in done.stdout and "resume=true train.epochs=4" in done.stdout, \
        done.stdout + done.stderr[-2000:]
    fewer = lta("train-heads", *argv(sample, run, "train.epochs=1", "resume=true"))
    assert fewer.returncode == 2 and "train.epochs (2 -> 1)" in fewer.stderr and "Traceback" not in fewer.stderr
    assert (run / "checkpoints/last.pt").read_bytes() == last


def _run_on_pty(args: list[str]) -> tuple[int, str]:
    """Run `lta *args` with stderr on a pseudo-terminal (what a user at a shell sees)."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    proc = cli_proc.popen(args, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    rc = proc.wait(timeout=120)
    os.close(master)
    return rc, b"".join(chunks).decode(errors="replace")


def test_progress_bars_on_a_tty_only(sample, tmp_path):
    run = tmp_path / "run"
    rc, tty = _run_on_pty(["train-heads", *argv(sample, run, "train.epochs=2")])
    assert rc == 0, tty
    assert "epoch/s" in tty or "s/epoch" in tty, tty[-2000:]  # the epochs bar
    assert "step/s" in tty or "s/step" in tty  # the steps-within-epoch bar
    piped = lta("predict", f"run={run}", "split=val", f"out={tmp_path / 'out.json'}")
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stderr and "batch/s" not in piped.stderr and "s/batch" not in piped.stderr
    rc, tty = _run_on_pty(["predict", f"run={run}", "split=val", f"out={tmp_path / 'out2.json'}"])
    assert rc == 0 and "forecast" in tty and ("batch/s" in tty or "s/batch" in tty), tty[-2000:]
    quiet = lta("train-heads", *argv(sample, tmp_path / "quiet", "train.epochs=1"))
    assert quiet.returncode == 0 and "\r" not in quiet.stderr and "step/s" not in quiet.stderr
