"""Weight files for the video backbones: where they come from, how they are hashed, how they load.

One module that both the extractors (extract/extractors.py) and backbone fine-tuning
(extract/finetune/) import, so neither imports the other for these:

    KINETICS_URLS[name]           pytorchvideo model-zoo Kinetics-400 checkpoint of a registry arch name
    fetch_url(url)                download once into torch's hub cache; one clear error when offline
    load_kinetics_state_dict(p)   state dict of a model-zoo / plain state-dict file, no pickled code run
    load_state_dict_strictly(m, sd, source)   strict load whose error names the first mismatching keys

torch is imported inside the functions, so importing this module is instant.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from features.checkpoint_io import CheckpointError

if TYPE_CHECKING:
    from torch import nn

KINETICS_ROOT = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics"
# registry-style arch name -> pytorchvideo model-zoo Kinetics-400 weights (create_slowfast / MViT naming, `model_state`)
KINETICS_URLS = {
    "slowfast_r101_8x8": f"{KINETICS_ROOT}/SLOWFAST_8x8_R101.pyth",
    "slowfast_r50_8x8": f"{KINETICS_ROOT}/SLOWFAST_8x8_R50.pyth",
    "mvit_b_16x4": f"{KINETICS_ROOT}/MVIT_B_16x4.pyth",
}


class BackboneMismatchError(CheckpointError):
    """Weights that do not fit the model: names the first missing/unexpected/mis-shaped keys."""


def fetch_url(url: str, *, offline_hint: str = "pass weights=PATH to a local copy, or weights=random for tests") -> Path:
    """Download `url` into torch's hub cache (once); RuntimeError naming the URL (and `offline_hint`) when offline."""
    import torch

    dst = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(dst), progress=True)
        except Exception as err:
            raise RuntimeError(f"cannot download {url} ({type(err).__name__}: {err}); on an offline machine "
                               f"{offline_hint}") from None
    return dst


def load_kinetics_state_dict(path: Path | str) -> dict:
    """The state dict of a pytorchvideo model-zoo checkpoint (`{"model_state", "optimizer_state", "epoch", "cfg"}`)
    or of a plain state-dict file, read without executing pickled code.

    Raises:
        features.checkpoint_io.UnsafeCheckpointError: the pickle needs a global outside the allow-list
            (a crafted file); the message names the file and the global, nothing was run.
        features.checkpoint_io.CheckpointError: truncated file or no weights inside.
    """
    from features.checkpoint_io import load_lightning_checkpoint

    return load_lightning_checkpoint(path).state_dict


def load_state_dict_strictly(model: "nn.Module", sd: Mapping[str, Any], source: str = "checkpoint") -> None:
    """`model.load_state_dict(sd, strict=True)` after a check whose error names the first mismatching keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k}: checkpoint {list(sd[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, first: {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, first: {unexpected[:5]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches, first: {shapes[:5]}")
        raise BackboneMismatchError(f"{source} does not fit the {type(model).__name__} model: " + "; ".join(parts))
    model.load_state_dict(dict(sd), strict=True)
