"""Run directories: everything a trained (or imported) head needs to be evaluated, resumed or reproduced.

    <run>/config.yaml         resolved config (the command's schema; `head` rebuilds the model)
    <run>/cache_keys.json     {"modalities": {modality: cache key}} the features the head was trained on
    <run>/checkpoints/best.pt {"model", "head", "cache_keys", "epoch", "metrics", ...}
    <run>/checkpoints/last.pt the same plus optimizer, scheduler and RNG states (resume)
    <run>/metrics.json        training metrics (val per epoch, best); metrics_<split>.json from `lta evaluate`
    <run>/tensorboard/        TensorBoard event files

Checkpoints hold only tensors and plain containers, so they load with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from features.files import atomic_write
from features.run_dir import RunLayout

CONFIG_FILE = "config.yaml"
CACHE_KEYS_FILE = "cache_keys.json"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"


def _plain(cfg: Any) -> dict:
    from omegaconf import OmegaConf

    if dataclasses.is_dataclass(cfg):
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
    if not isinstance(cfg, dict):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return json.loads(json.dumps(cfg, default=lambda o: _plain(o)))


def checkpoint_path(run_dir: str | Path, name: str = "best") -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"{name}.pt"


def describe_run(run_dir: Path) -> str:
    """`finished run (30/30 epochs, ...)` or `unfinished run (...)` from metrics.json."""
    m = read_metrics(run_dir)
    epochs = len(m.get("history", []))
    best = f", best {m['select_metric']} {m['best']:.4f} at epoch {m['best_epoch']}" if m.get("history") else ""
    return f"{'finished' if m.get('finished') else 'unfinished'} run ({epochs} epochs done{best})"


def _resume_hint(run_dir: Path) -> str:
    return " with more train.epochs to train it longer" if read_metrics(run_dir).get("finished") else " to continue it"


# the run-dir policy of train-heads (features.run_dir.prepare_run_dir): `checkpoints/last.pt` or `metrics.json`
# mark a run; overwrite=true removes what train-heads writes (plus `lta evaluate` outputs of the model)
RUN_LAYOUT = RunLayout(marks=(f"{CHECKPOINT_DIR}/last.pt", METRICS_FILE),
                       outputs=(CHECKPOINT_DIR, "tensorboard", METRICS_FILE, "train.log", "metrics_*.json", "ed_curve_*.png"),
                       describe=describe_run, resume_hint=_resume_hint)


def holds_run(run_dir: str | Path) -> bool:
    """True when `run_dir` holds (part of) a trained run; train-heads refuses to write into it without
    resume=true or overwrite=true."""
    return RUN_LAYOUT.holds_run(run_dir)


def save_checkpoint(run_dir: str | Path, name: str, state: dict) -> Path:
    """Atomically write `checkpoints/<name>.pt` (serialise in memory, temp file, fsync, rename).

    Raises:
        OSError: the file could not be written (full disk, quota, size limit), naming it; the previous
            `<name>.pt` is left as it was and no temp file remains.
    """
    import io

    import torch

    path = checkpoint_path(run_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)  # in memory: torch's zip writer reports a failed disk write only as an opaque RuntimeError
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(err.errno, f"{path}: cannot write the checkpoint: {err.strerror or err}; the previous "
                                 f"{path.name} is intact, free space and re-run with resume=true") from None
    finally:
        tmp.unlink(missing_ok=True)  # only left when the write failed
    return path


def save_run(run_dir: str | Path, model: Any, cfg: Any, cache_keys: dict[str, str] | Sequence[str], *,
             metrics: dict | None = None, checkpoint: str = "best", extra_state: dict | None = None) -> Path:
    """Write (or update) a run dir: config, cache keys, metrics and a model checkpoint.

    Args:
        model: a `ForecastModel` (its `modality_names` order pairs with a list of cache keys).
        cfg: the full resolved config (dataclass or dict); its `head` section must rebuild `model`.
        cache_keys: modality -> cache key, or a list in the model's modality order.
        metrics: merged into `metrics.json`.
        checkpoint: checkpoint name ("best", "last", ...).
        extra_state: added to the checkpoint (optimizer, scheduler, RNG states, epoch...).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_dict = _plain(cfg)
    if "head" not in cfg_dict:
        raise ValueError("save_run: cfg has no 'head' section (the model config)")
    if not isinstance(cache_keys, dict):
        names = list(getattr(model, "modality_names", []))
        if len(names) != len(cache_keys):
            raise ValueError(f"save_run: {len(cache_keys)} cache keys for modalities {names}")
        cache_keys = dict(zip(names, cache_keys))
    from omegaconf import OmegaConf

    # the checkpoint first: a crash (or full disk) in between leaves metrics.json behind the checkpoints,
    # never describing an epoch whose weights are not on disk
    state = {"model": model.state_dict(), "head": cfg_dict["head"], "cache_keys": dict(cache_keys),
             "metrics": metrics or {}}
    state.update(extra_state or {})
    path = save_checkpoint(run_dir, checkpoint, state)
    atomic_write(run_dir / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(cfg_dict)), skip_unchanged=True)
    atomic_write(run_dir / CACHE_KEYS_FILE, json.dumps({"modalities": dict(cache_keys)}, indent=1) + "\n",
                 skip_unchanged=True)
    if metrics is not None:
        merged = read_metrics(run_dir)
        merged.update(metrics)
        atomic_write(run_dir / METRICS_FILE, json.dumps(merged, indent=1) + "\n")
    return path


def read_metrics(run_dir: str | Path, name: str = METRICS_FILE) -> dict:
    path = Path(run_dir) / name
    return json.loads(path.read_text()) if path.is_file() else {}


def update_metrics(run_dir: str | Path, values: dict) -> None:
    """Merge `values` into `metrics.json` (atomically), without touching the checkpoints."""
    merged = read_metrics(run_dir)
    merged.update(values)
    atomic_write(Path(run_dir) / METRICS_FILE, json.dumps(merged, indent=1) + "\n")


@dataclass
class Run:
    run_dir: Path
    cfg: dict  # resolved config
    cache_keys: dict[str, str]  # modality -> cache key
    model: Any  # ForecastModel in eval mode
    checkpoint: dict  # the loaded checkpoint (weights removed)
    metrics: dict

    @property
    def num_seen(self) -> int:
        """Observed segments defining the val/test key set (at least the model's N_in)."""
        return max(int(self.cfg.get("num_seen", 0)), int(self.cfg["head"]["num_input"]))

    @property
    def convention(self) -> str:
        return self.cfg.get("convention", "plus_one")

    @property
    def num_sequences(self) -> int:
        """K, the candidate sequences per window."""
        return int(self.cfg.get("train", {}).get("num_sequences", 5))


def resolve_run_path(run_dir: str | Path, value: str) -> str:
    """The absolute form of a path recorded in a run's config: an absolute one as it is; a relative one
    relative to the run dir when it exists there, else relative to the current directory (runs written
    before paths were recorded absolute, from the directory they were trained in)."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    beside = Path(run_dir) / p
    return str(beside.resolve() if beside.exists() or not p.exists() else p.resolve())


ARGUMENT, RUN_DIR_RELATIVE, RECORDED = "argument", "run dir relative", "recorded"


@dataclass(frozen=True)
class RunRoot:
    """Where a run's dataset or store root is, and where that came from: the command line (`argument`), the
    recorded path taken relative to the run dir's current place (`run dir relative`: a run dir copied or moved
    together with its data and store), or the path as recorded (`recorded`)."""

    key: str  # "data" or "store"
    path: str
    source: str  # ARGUMENT | RUN_DIR_RELATIVE | RECORDED
    config: str  # the run's config.yaml

    def describe(self) -> str:
        """`data /p (argument)` / `data /p (run dir relative)` / `data /p (recorded in <run>/config.yaml)`."""
        where = f"recorded in {self.config}" if self.source == RECORDED else self.source
        return f"{self.key} {self.path} ({where})"


def locate_root(run_dir: str | Path, cfg: dict, key: str, given: str = "") -> RunRoot:
    """The `key` root ("data" or "store") of a run: `given` when not empty, else the recorded one resolved
    relative to the run dir first (an absolute recorded path is taken relative to the run dir it was recorded
    in, `out` in the config, so a run dir copied together with its data and store reads the copies), then as
    recorded.

    Raises:
        UsageError: the run records none (e.g. imported without data=), naming the run and the key to pass.
    """
    import os

    from features.errors import UsageError

    config = str(Path(run_dir) / CONFIG_FILE)
    if given:
        return RunRoot(key, str(Path(given).expanduser()), ARGUMENT, config)
    value = str(cfg.get(key) or "")
    if not value:
        what = {"data": "dataset root", "store": "feature store root"}.get(key, key)
        raise UsageError(f"run {run_dir} records no {what} ({config}); pass {key}=DIR")
    recorded = Path(value).expanduser()
    written_in = str(cfg.get("out") or "")
    if not recorded.is_absolute():
        relative: str | None = str(recorded)
    elif written_in and Path(written_in).is_absolute():
        relative = os.path.relpath(recorded, written_in)
    else:
        relative = None  # a run that does not record where it was written
    if relative is not None:
        beside = Path(run_dir) / relative
        if beside.exists() and (not recorded.is_absolute() or beside.resolve() != recorded.resolve()):
            return RunRoot(key, str(beside.resolve()), RUN_DIR_RELATIVE, config)
    return RunRoot(key, resolve_run_path(run_dir, value), RECORDED, config)


def locate_roots(run_dir: str | Path, cfg: dict, *, data: str = "", store: str = "") -> tuple[RunRoot, RunRoot]:
    """(dataset root, store root) of a run, see `locate_root`."""
    return locate_root(run_dir, cfg, "data", data), locate_root(run_dir, cfg, "store", store)


def recorded_roots(run_dir: str | Path, cfg: dict, *, data: str = "", store: str = "") -> tuple[str, str]:
    """(dataset root, store root) paths of a run: the given ones, else the recorded ones (see `locate_root`)."""
    d, s = locate_roots(run_dir, cfg, data=data, store=store)
    return d.path, s.path


def read_run_config(run_dir: str | Path) -> dict:
    """`<run>/config.yaml` as a plain dict (no torch needed)."""
    from omegaconf import OmegaConf

    cfg_path = Path(run_dir) / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: not a run dir (no {CONFIG_FILE})")
    return OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=True)  # type: ignore[return-value]


def run_roots(run: Run, *, data: str = "", store: str = "") -> tuple[str, str]:
    """(dataset root, store root) of a loaded run; see `recorded_roots`."""
    return recorded_roots(run.run_dir, run.cfg, data=data, store=store)


def load_checkpoint(run_dir: str | Path, name: str = "best", *, map_location: str = "cpu") -> dict:
    import torch

    path = checkpoint_path(run_dir, name)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint '{name}' in run dir {run_dir}")
    return torch.load(path, map_location=map_location, weights_only=True)


def load_run(run_dir: str | Path, *, checkpoint: str = "best", device: str = "cpu") -> Run:
    """Rebuild the model of a run dir from its config and load the checkpoint strictly."""
    from omegaconf import OmegaConf

    from train_heads.model import build_model

    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: not a run dir (no {CONFIG_FILE})")
    cfg = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=True)
    ckpt = load_checkpoint(run_dir, checkpoint, map_location=device)
    model = build_model(ckpt["head"])
    model.load_state_dict(ckpt.pop("model"), strict=True)
    model.to(device).eval()
    keys_path = run_dir / CACHE_KEYS_FILE
    cache_keys = json.loads(keys_path.read_text())["modalities"] if keys_path.is_file() else dict(ckpt["cache_keys"])
    return Run(run_dir=run_dir, cfg=cfg, cache_keys=cache_keys, model=model, checkpoint=ckpt, metrics=read_metrics(run_dir))
