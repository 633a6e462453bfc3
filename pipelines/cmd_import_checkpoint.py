"""`lta import-checkpoint ckpt=PATH out=RUN_DIR`: a released Ego4D LTA checkpoint as a normal run dir.

The aggregator, decoder and backbone head projection of `lta_slowfast_trf.ckpt` (or _concat, or
`lta_mvit_concat.ckpt`) become a stage-two ForecastModel; `lta evaluate run=RUN_DIR` and
`lta predict run=RUN_DIR` then reproduce the released baseline on cached features, with no training.
The run records the cache key of the features it reads: those must come from the same checkpoint's
backbone trunk (`lta extract extractors=[slowfast_ckpt.ego4d] weights=<the same .ckpt>`), because the LTA
training kept updating the frozen backbone's BatchNorm statistics. A store whose weights checksum is another
file's (e.g. the recognition checkpoint ego4d_slowfast8x8.ckpt) is refused unless allow_foreign_features=true.
Like trained runs, the run records num_seen (8) and the window convention, so evaluate / predict score and
write the same key set for imported and trained heads.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from features.files import file_sha256
from pipelines.common import UsageError, run_command
from pipelines.config import opt

log = logging.getLogger(__name__)


@dataclass
class ImportCheckpointConfig:
    ckpt: str = opt("", "released LTA checkpoint: lta_slowfast_trf.ckpt, lta_slowfast_concat.ckpt, lta_mvit_concat.ckpt")
    out: str = opt("runs/imported", "run dir to write (config.yaml, cache_keys.json, checkpoints/best.pt)")
    store: str = opt("cache/features", "feature store root with the features extracted by this checkpoint's backbone")
    data: str = opt("", "dataset root (annotations/) recorded in the run, so evaluate / predict / report need no data=")
    cache_key: str = opt("", "cache key of those features (default: the one store under `store` that fits)")
    modality: str = opt("", "modality name fed to the projection (default from MODEL.ARCH: slowfast or mvit)")
    require_features: bool = opt(True, "fail when no fitting feature store exists (false: record an empty cache key)")
    allow_foreign_features: bool = opt(False, "accept a store extracted with other weights than this checkpoint's backbone")
    num_input: int = opt(0, "observed segments N_in of the head (0: the checkpoint's FORECASTING.NUM_INPUT_CLIPS; "
                            "the transformer head takes any, concat only its own)")
    num_seen: int = opt(0, "observed segments defining the val/test key set; 0 = N_in, the reference's (every window "
                           "with N_in observed segments, ptv_dataset_helper.py:449); 8 = the challenge's")
    convention: str = opt("plus_one", "val/test window range, as train-heads: plus_one (superset) or challenge")


def _find_cache_key(cfg: ImportCheckpointConfig, modality: str, feature_dim: int, ckpt_path: Path) -> str:
    """The cache key of the one store whose name starts with `modality` and whose features are `feature_dim` wide."""
    if cfg.cache_key:
        return cfg.cache_key
    root = Path(cfg.store)
    stores = []
    if root.is_dir():
        from features.store import open_root

        stores = [s for s in open_root(root) if s.name.startswith(modality) and s.feature_shape[-1] == feature_dim]
    if len(stores) > 1:  # prefer stores extracted with this checkpoint's own weights
        own = [s for s in stores if _weights_sha256(s.spec) == file_sha256(ckpt_path)]
        stores = own or stores
    if len(stores) == 1:
        return stores[0].key
    if not stores and not cfg.require_features:
        log.warning("no %s store with %d-d features under %s; the run records no cache key", modality, feature_dim, root)
        return ""
    found = [s.key for s in stores]
    raise LookupError(
        f"{'several' if found else 'no'} '{modality}' feature stores with {feature_dim}-d features "
        f"under {root}{': ' + str(found) if found else ''}; "
        + ("pass cache_key=KEY" if found else f"extract them first with weights={ckpt_path} or pass cache_key=KEY")
    )


def _weights_sha256(spec: dict) -> str:
    return str((spec.get("extractor") or {}).get("weights_sha256", ""))


def check_pairing(store_root: Path, cache_key: str, ckpt_path: Path, *, allow_foreign: bool) -> None:
    """Refuse (ValueError, one line) features of store `cache_key` extracted with weights other than `ckpt_path`:
    the reference trained the released heads on their own checkpoint's backbone in train mode, so its batch-norm
    statistics differ from every other checkpoint's. A store that does not exist (yet) is not checked."""
    path = store_root / f"{cache_key}.zarr"
    if not cache_key or not path.exists():
        if cache_key:
            log.warning("store %s not found: the pairing of its features with %s is not checked", path, ckpt_path.name)
        return
    from features.store import FeatureStore

    ext = FeatureStore.open(path).spec.get("extractor") or {}
    have, want = str(ext.get("weights_sha256", "")), file_sha256(ckpt_path)
    if have == want:
        return
    msg = (f"store {cache_key} was extracted with weights {ext.get('weights', '?')} (sha256 {have[:12] or 'none'}), "
           f"not with the backbone of {ckpt_path} (sha256 {want[:12]}); extract with weights={ckpt_path} (extractors="
           f"[slowfast_ckpt.ego4d] for SlowFast, [mvit_b_16x4.ego4d] for MViT), or pass allow_foreign_features=true")
    if not allow_foreign:
        raise ValueError(msg)
    log.warning("allow_foreign_features=true: %s", msg)


def _run(cfg: ImportCheckpointConfig) -> int:
    from features.checkpoint_io import describe, load_lightning_checkpoint
    from train_heads.import_ckpt import check_taxonomy, import_lta_checkpoint
    from train_heads.run import save_run

    if not cfg.ckpt:
        raise UsageError("ckpt=PATH is required")
    from pipelines.checks import check_file

    ckpt_path = check_file("ckpt", cfg.ckpt, "released LTA checkpoint")  # one line, exit 2, before loading anything
    ckpt = load_lightning_checkpoint(ckpt_path)
    model, info = import_lta_checkpoint(ckpt, modality=cfg.modality or None, num_input=cfg.num_input or None)
    if cfg.data:
        try:
            check_taxonomy(cfg.data, info.model_cfg)
        except ValueError as err:  # AnnotationError included
            raise UsageError(str(err)) from err
    try:
        cache_key = _find_cache_key(cfg, info.modality, info.feature_dim, ckpt_path)
        check_pairing(Path(cfg.store), cache_key, ckpt_path, allow_foreign=cfg.allow_foreign_features)
    except (LookupError, ValueError) as err:
        raise UsageError(str(err)) from err
    full_cfg = {
        "head": info.model_cfg,
        "imported_from": {"ckpt": str(ckpt_path.resolve()), "config": describe(ckpt)},
        "store": str(Path(cfg.store).resolve()),  # absolute: the run dir works from any directory
        "data": str(Path(cfg.data).resolve()) if cfg.data else "",  # "" (not given): evaluate / predict then need data=DIR
        "out": str(Path(cfg.out).resolve()),  # where data / store were recorded from (`train_heads.run.locate_root`)
        "num_seen": cfg.num_seen,  # Run.num_seen = max(num_seen, N_in): 0 -> the reference's N_in key set
        "convention": cfg.convention,
        # a released reference model: evaluate / predict / report follow the reference (train_heads/protocol.py)
        "reference": f"released EGO4D/forecasting checkpoint {ckpt_path.name}",
        "train": {"amp": False},  # the reference trains and tests in fp32 (scripts/run_lta.py sets no precision)
    }
    path = save_run(cfg.out, model, full_cfg, {info.modality: cache_key},
                    metrics={"imported_from": str(ckpt_path.resolve())}, extra_state={"epoch": ckpt.meta.get("epoch")})
    m = info.model_cfg
    print(f"imported {ckpt_path.name}: {m['aggregator']} aggregator + {m['decoder']} decoder (Z={m['num_future']}, "
          f"{m['num_verbs']} verbs, {m['num_nouns']} nouns, N_in={m['num_input']}), projection "
          f"{info.feature_dim}->{m['modalities'][0]['proj_dim']} on '{info.modality}' features "
          f"(cache key {cache_key or 'none'}) -> {path}")
    if not cfg.data:
        log.warning("no data= given: %s records no dataset root; pass data=DIR to evaluate / predict / report", cfg.out)
    return 0


def main(argv: Sequence[str]) -> int:
    return run_command("import-checkpoint", ImportCheckpointConfig, argv, _run,
                       "turn a released Ego4D LTA checkpoint into a run dir (no training)")
