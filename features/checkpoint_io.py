"""Safe loading of the released Ego4D checkpoints (PyTorch-Lightning 1.5 files and PySlowFast files).

The Lightning files pickle the reference config as an fvcore/yacs `CfgNode`, so a plain
`torch.load(weights_only=True)` refuses them, and `weights_only=False` would run any pickled code.
`load_lightning_checkpoint` unpickles through a restricted unpickler instead: `CfgNode` becomes a
plain-dict stand-in, a small allow-list of containers and torch tensor-rebuild helpers is resolved,
and every other global raises `UnsafeCheckpointError` before anything is called.

torch is imported lazily, so `features/` stays importable without it.
"""
from __future__ import annotations

import io
import os
import pickle
import types
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "LoadedCheckpoint",
    "load_lightning_checkpoint",
    "describe",
    "cfg_get",
]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read: truncated, not a torch file, or missing its weights."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle needs a global outside the allow-list; nothing was executed."""


class _CfgNodeStandIn(dict):
    """Stands in for `fvcore.common.config.CfgNode` / `yacs.config.CfgNode` while unpickling.

    The pickle builds a CfgNode as NEWOBJ (a dict subclass), SETITEMS (the entries) and BUILD with
    the yacs bookkeeping attributes; this class accepts exactly that and holds no behaviour.
    """

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise UnsafeCheckpointError(f"CfgNode state must be a dict, got {type(state).__name__}")
        self.__dict__.update(state)


_CFG_NODE_CLASSES = {
    ("fvcore.common.config", "CfgNode"),
    ("yacs.config", "CfgNode"),
}

# (module, name) pairs that are pure containers / value constructors. The torch ones are resolved
# lazily (torch imported at load time) and checked by name, never by prefix.
_SAFE_BUILTINS = {
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
}
_SAFE_TORCH = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
}


def _resolve_safe_global(module: str, name: str) -> Any:
    """The object for an allow-listed global, or UnsafeCheckpointError naming it."""
    if (module, name) in _CFG_NODE_CLASSES:
        return _CfgNodeStandIn
    if (module, name) in _SAFE_BUILTINS:
        import builtins
        import collections

        return getattr(collections if module == "collections" else builtins, name)
    import torch

    if (module, name) in _SAFE_TORCH:
        return getattr(torch._utils if module == "torch._utils" else torch, name)
    if module == "torch" and name.endswith("Storage") and isinstance(getattr(torch, name, None), type):
        return getattr(torch, name)  # typed storages (torch.FloatStorage ...), legacy format
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    raise UnsafeCheckpointError(
        f"checkpoint needs the pickled global '{module}.{name}', which is not on the allow-list "
        "(only tensors, plain containers and the fvcore/yacs CfgNode config are accepted); refusing to load it"
    )


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle hook
        return _resolve_safe_global(module, name)


def _restricted_pickle_module() -> types.ModuleType:
    """A stand-in for the `pickle` module that `torch.load(pickle_module=...)` accepts."""
    module = types.ModuleType("lta_restricted_pickle")
    module.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
    module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]

    def load(file: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()

    def loads(data: bytes, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(io.BytesIO(data), **kwargs).load()

    module.load = load  # type: ignore[attr-defined]
    module.loads = loads  # type: ignore[attr-defined]
    return module


@dataclass
class LoadedCheckpoint:
    """The parts of a checkpoint that inference needs.

    Attributes:
        state_dict: parameter/buffer name -> tensor, names exactly as stored (e.g. `model.s1...`).
        cfg: the reference config as nested plain dicts ({} when the file carries none).
        meta: format ("lightning" | "pyslowfast" | "state_dict"), path, epoch, global_step, versions.
    """

    state_dict: dict
    cfg: dict
    meta: dict = field(default_factory=dict)


def _to_plain(value: Any) -> Any:
    """CfgNode stand-ins -> dict, sets -> sorted lists, recursively; everything else unchanged."""
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_plain(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return value


def _check_not_torchscript(path: Path) -> None:
    # torch.load hands TorchScript archives to torch.jit.load, bypassing the pickle module.
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint archive ({err}); is the file truncated?") from None
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        raise UnsafeCheckpointError(f"{path}: is a TorchScript archive, not a checkpoint; refusing to load it")


def _parse_cfg(raw: Any, path: Path) -> dict:
    if raw is None:
        return {}
    if isinstance(raw, str):  # PySlowFast stores `cfg.dump()`, a YAML string
        import yaml

        try:
            parsed = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise CheckpointError(f"{path}: the stored cfg is not valid YAML ({err})") from None
        return _to_plain(parsed) if isinstance(parsed, dict) else {}
    if isinstance(raw, dict):
        return _to_plain(raw)
    raise CheckpointError(f"{path}: unexpected cfg type {type(raw).__name__}")


def load_lightning_checkpoint(path: str | os.PathLike) -> LoadedCheckpoint:
    """Load an Ego4D Lightning (or PySlowFast `model_state`) checkpoint without executing pickled code.

    Args:
        path: a `.ckpt`/`.pyth` file written by `torch.save`.

    Returns:
        LoadedCheckpoint with the state dict on CPU, the config as plain nested dicts and metadata.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle needs a global outside the allow-list (named in the message).
        CheckpointError: truncated/corrupt file, or no `state_dict` / `model_state` inside.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    _check_not_torchscript(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module())
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(f"{path}: {err}") from None
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: cannot read checkpoint, the file is truncated or corrupt ({first})") from None

    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(obj).__name__}")
    meta: dict[str, Any] = {"path": str(path), "size_bytes": path.stat().st_size}
    if "state_dict" in obj:
        state_dict = obj["state_dict"]
        hparams = obj.get("hyper_parameters") or {}
        raw_cfg = hparams.get("cfg") if isinstance(hparams, dict) else None
        meta.update(
            format="lightning",
            epoch=obj.get("epoch"),
            global_step=obj.get("global_step"),
            lightning_version=obj.get("pytorch-lightning_version"),
        )
    elif "model_state" in obj:
        state_dict = obj["model_state"]
        raw_cfg = obj.get("cfg")
        meta.update(format="pyslowfast", epoch=obj.get("epoch"))
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state_dict, raw_cfg = obj, None
        meta.update(format="state_dict")
    else:
        raise CheckpointError(f"{path}: no 'state_dict' or 'model_state' entry (keys: {sorted(map(str, obj))[:10]})")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: the state dict is a {type(state_dict).__name__}, not a dict")
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state dict entries that are not tensors: {bad[:5]}")
    return LoadedCheckpoint(state_dict=dict(state_dict), cfg=_parse_cfg(raw_cfg, path), meta=meta)


def cfg_get(cfg: dict, dotted: str, default: Any = None) -> Any:
    """`cfg_get(cfg, "RESNET.DEPTH")` on nested dicts; `default` when any level is missing."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


_DESCRIBED = {
    "arch": "MODEL.ARCH",
    "model_name": "MODEL.MODEL_NAME",
    "num_classes": "MODEL.NUM_CLASSES",
    "head_act": "MODEL.HEAD_ACT",
    "multi_input_features": "MODEL.MULTI_INPUT_FEATURES",
    "transformer_layers": "MODEL.TRANSFORMER_ENCODER_LAYERS",
    "transformer_heads": "MODEL.TRANSFORMER_ENCODER_HEADS",
    "depth": "RESNET.DEPTH",
    "width_per_group": "RESNET.WIDTH_PER_GROUP",
    "alpha": "SLOWFAST.ALPHA",
    "beta_inv": "SLOWFAST.BETA_INV",
    "fusion_conv_channel_ratio": "SLOWFAST.FUSION_CONV_CHANNEL_RATIO",
    "fusion_kernel_size": "SLOWFAST.FUSION_KERNEL_SZ",
    "mvit_embed_dim": "MVIT.EMBED_DIM",
    "mvit_depth": "MVIT.DEPTH",
    "num_frames": "DATA.NUM_FRAMES",
    "sampling_rate": "DATA.SAMPLING_RATE",
    "crop_size": "DATA.CROP_SIZE",
    "train_crop_size": "DATA.TRAIN_CROP_SIZE",
    "test_crop_size": "DATA.TEST_CROP_SIZE",
    "aggregator": "FORECASTING.AGGREGATOR",
    "decoder": "FORECASTING.DECODER",
    "num_input_clips": "FORECASTING.NUM_INPUT_CLIPS",
    "num_actions_to_predict": "FORECASTING.NUM_ACTIONS_TO_PREDICT",
    "test_no_act": "TEST.NO_ACT",
}


def describe(ckpt: LoadedCheckpoint) -> dict[str, Any]:
    """The config values that define the architecture, plus tensor counts, as a flat dict.

    Missing config entries are reported as None (the reference default then applies).
    """
    out: dict[str, Any] = {"format": ckpt.meta.get("format"), "path": ckpt.meta.get("path")}
    out.update({name: cfg_get(ckpt.cfg, key) for name, key in _DESCRIBED.items()})
    out["num_tensors"] = len(ckpt.state_dict)
    out["num_elements"] = int(sum(t.numel() for t in ckpt.state_dict.values()))
    for key in ("epoch", "global_step", "lightning_version"):
        if ckpt.meta.get(key) is not None:
            out[key] = ckpt.meta[key]
    return out
