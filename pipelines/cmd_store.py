"""`lta store <ls|verify|export|merge|import-ego4d> key=value ...`: feature store tools."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

from features.errors import check_failed_fraction
from pipelines.common import RunFailure, UsageError, run_command
from pipelines.config import opt

log = logging.getLogger(__name__)


@dataclass
class LsConfig:
    store: str = opt("cache/features", "feature store root holding <key>.zarr / <key>.h5")
    RENAMED_KEYS: ClassVar[dict] = {"root": "store"}  # before the one-name-per-knob rename


@dataclass
class VerifyConfig:
    store: str = opt("cache/features", "feature store root")
    key: str = opt("", "only this cache key (default: every store under the root)")
    RENAMED_KEYS: ClassVar[dict] = {"root": "store"}


@dataclass
class ExportConfig:
    src: str = opt("", "source store, e.g. cache/features/<key>.zarr")
    dst: str = opt("", "destination: a folder (writes <key>.h5 there) or a <key>.h5 / <key>.zarr path")


@dataclass
class MergeConfig:
    dst: str = opt("", "merged store <root>/<key>.h5; its shards are read from <root>/<key>.shards/*.h5")


@dataclass
class ImportEgo4dConfig:
    data: str = opt("data/long_term_anticipation", "dataset root (annotations/ with clip_parent_start_sec)")
    features_dir: str = opt("", "folder of official per-video features, <video_uid>.pt")
    name: str = opt("slowfast8x8_r101_k400", "feature set name as the Ego4D CLI calls it")
    window_frames: int = opt(32, "frames per feature window (slowfast8x8_r101_k400: 32)")
    stride_frames: int = opt(16, "frames between window starts (slowfast: 16, omnivore: 6)")
    fps: float = opt(30.0, "frame rate the features were computed at")
    views: int = opt(3, "windows per segment: view 0 centred, the others spread over the segment")
    splits: list = opt(["train", "val", "test"], "annotation splits whose segments become rows")
    store: str = opt("cache/features", "store root; writes <root>/<key>.zarr")
    dtype: str = opt("float16", "float16 | float32")
    max_failed_frac: float = opt(1.0, "exit 1 when more than this fraction of segments have no features")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _ls(cfg: LsConfig) -> int:
    from features.store import FeatureStore, disk_size, store_paths

    header = ["key", "extractor", "filled/total", "dtype", "shape", "size", "created", "code"]
    table = []
    from pipelines.checks import check_store_root

    for path in store_paths(check_store_root("store", cfg.store)):  # a store, its parent, an empty folder: exit 2
        try:
            s = FeatureStore.open(path)
        except Exception as err:  # one bad store must not hide the others
            table.append([path.name, f"ERROR: {err}", "", "", "", _human_bytes(disk_size(path)), "", ""])
            continue
        table.append([path.name, s.name, f"{int(s.filled().sum())}/{s.num_rows}", s.dtype,
                      "x".join(map(str, s.feature_shape)), _human_bytes(s.disk_bytes()),
                      s.attrs.get("created", ""), s.attrs.get("code_version", "")])
        s.close()
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _verify(cfg: VerifyConfig) -> int:
    from features.store import FeatureStore, store_paths

    from pipelines.checks import check_store_root, did_you_mean

    every = store_paths(check_store_root("store", cfg.store))  # a store, its parent, an empty folder: exit 2
    paths = [p for p in every if not cfg.key or p.stem == cfg.key]
    if cfg.key and not paths:
        raise UsageError(f"key={cfg.key}: no such store under {cfg.store}{did_you_mean(cfg.key, [p.stem for p in every])}; "
                         f"stores there: {[p.stem for p in every]}")
    failed = 0
    for path in paths:
        try:
            with FeatureStore.open(path) as s:
                report = s.verify()
        except Exception as err:
            print(f"FAIL {path}: {err}")
            failed += 1
            continue
        ok = not report["bad_rows"] and not report["errors"]
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {path.name}: {report['filled']}/{report['total']} rows filled, "
              f"{len(report['bad_rows'])} bad" + (f", {report['temp_files']} leftover temp files (harmless)" if report["temp_files"] else ""))
        for msg in report["errors"][:5]:
            print(f"     {msg}")
        if report["bad_rows"]:
            print(f"     bad rows (first 10): {report['bad_rows'][:10]}")
    if failed:
        raise RunFailure(f"{failed} of {len(paths)} stores failed verification (see the FAIL lines above)")
    return 0


def _export(cfg: ExportConfig) -> int:
    from features.store import FeatureStore, merge_stores

    if not cfg.src or not cfg.dst:
        raise UsageError("export: src= and dst= are required")
    if not Path(cfg.src).exists():
        raise UsageError(f"src={cfg.src}: no such store (a <key>.zarr folder or <key>.h5 file; `lta store ls` lists them)")
    with FeatureStore.open(cfg.src) as src:
        key, filled, total = src.key, int(src.filled().sum()), src.num_rows
    dst = Path(cfg.dst)
    if dst.suffix not in (".h5", ".zarr"):
        dst = dst / f"{key}.h5"
    with merge_stores([cfg.src], dst) as out:
        print(f"exported {filled}/{total} rows of {key} -> {out.path} ({_human_bytes(out.disk_bytes())})")
    return 0


def _merge(cfg: MergeConfig) -> int:
    from features.store import merge_stores

    dst = Path(cfg.dst)
    shards = sorted((dst.parent / f"{dst.stem}.shards").glob("*.h5"))
    if not shards:
        raise UsageError(f"merge: no shard files in {dst.parent / (dst.stem + '.shards')}")
    with merge_stores(shards, dst) as out:
        print(f"merged {len(shards)} shards -> {out.path}: {int(out.filled().sum())}/{out.num_rows} rows filled")
    return 0


def _import_ego4d(cfg: ImportEgo4dConfig) -> int:
    from features.ego4d_features import ImportParams, import_ego4d_features

    params = ImportParams(name=cfg.name, window_frames=cfg.window_frames, stride_frames=cfg.stride_frames,
                          fps=cfg.fps, num_views=cfg.views)
    summary = import_ego4d_features(cfg.data, cfg.features_dir, cfg.store, params=params, splits=list(cfg.splits),
                                    dtype=cfg.dtype)
    print(summary.text())
    check_failed_fraction(summary.failed, summary.rows, cfg.max_failed_frac, what="segments failed to import",
                          where=summary.failures_path, outcome="the segments imported are kept")
    return 0


SUBCOMMANDS: dict[str, tuple[type, Callable, str]] = {
    "ls": (LsConfig, _ls, "list the stores under a root: key, extractor, rows filled/total, dtype, size, created, code"),
    "verify": (VerifyConfig, _verify, "read every filled row; exit 1 on unreadable or non-finite rows"),
    "export": (ExportConfig, _export, "copy a store to another backend (e.g. .zarr -> .h5)"),
    "merge": (MergeConfig, _merge, "merge per-shard HDF5 files <key>.shards/*.h5 into <key>.h5"),
    "import-ego4d": (ImportEgo4dConfig, _import_ego4d, "turn official Ego4D per-video features into a store"),
}


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: lta store <subcommand> [key=value ...]\n\nsubcommands:")
        for name, (_, _, summary) in SUBCOMMANDS.items():
            print(f"  {name:<14} {summary}")
        if argv and argv[0] not in ("-h", "--help"):
            raise UsageError(f"unknown subcommand {argv[0]!r}; available: {sorted(SUBCOMMANDS)}")
        return 0
    schema, body, summary = SUBCOMMANDS[argv[0]]
    return run_command(f"store {argv[0]}", schema, argv[1:], body, summary)
