"""Helpers for the end-to-end reference fixtures (video -> model inputs -> features -> logits).

The fixture folder is `$LTA_REFERENCE_E2E`, default the project's copy `tests/fixtures/ego4d_reference_e2e`
(its README.md says what every file holds; TRIMMED.md what the copy lacks). Nothing here knows the
fixture's clips, segments or counts: everything is read from windows.json, MANIFEST.json and the files.

    fx = load_fixture()
    for pipeline in fx.pipelines("slowfast"):                     # "slowfast_nin2", "slowfast_nin4", ...
        for window in fx.windows(pipeline): ...                   # windows.json records
    run = extract_fixture(fx, tmp_path / "store", "slowfast_ckpt.ego4d", fx.checkpoint("lta_tiny_trf.ckpt"),
                          num_input_clips=fx.num_input_clips("slowfast"))
    run.feature(clip_uid, action_idx, n_in=2, slot=1)             # stored feature of one segment, float32
    run.model_inputs(clip_uid, action_idx, n_in=2, slot=1)        # what the backbone received for it

`extract_fixture` runs the real `lta extract` command (pipelines.cmd_extract.main) on the fixture's mp4
files into a float32 store; while it runs, every backbone forward is recorded (a forward hook on the
extractor's model, which changes nothing), so the exact tensors the model received can be compared
with the reference's inputs. By default only the segments that windows observe are extracted
(`window_inputs_data`: same mp4 bytes, annotations restricted to those segments).
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
E2E_ENV = "LTA_REFERENCE_E2E"
DEFAULT_E2E = REPO_ROOT / "tests" / "fixtures" / "ego4d_reference_e2e"


def e2e_dir() -> Path:
    """`$LTA_REFERENCE_E2E`, else the project's copy; a missing folder fails (never skips)."""
    root = Path(os.environ.get(E2E_ENV) or DEFAULT_E2E)
    if not (root / "windows.json").is_file():
        raise FileNotFoundError(f"end-to-end reference fixtures not found at {root} (set {E2E_ENV})")
    return root


@dataclass
class E2EFixture:
    """One fixture set: windows.json, MANIFEST.json and lazily loaded tensors."""

    root: Path
    spec: dict  # windows.json
    manifest: dict  # MANIFEST.json

    def pipelines(self, kind: str = "") -> list[str]:
        """Pipeline names of windows.json starting with `kind` ("slowfast", "mvit"; "" = all)."""
        return [p for p in self.spec["pipelines"] if p.startswith(kind)]

    def pipeline(self, name: str) -> dict:
        return self.spec["pipelines"][name]

    def windows(self, pipeline: str) -> list[dict]:
        return self.spec["pipelines"][pipeline]["windows"]

    def num_input_clips(self, kind: str) -> list[int]:
        """The N_in values of the pipelines of `kind`."""
        return sorted({int(self.pipeline(p)["num_input_clips"]) for p in self.pipelines(kind)})

    def splits(self, kind: str = "") -> list[str]:
        """Splits whose windows the pipelines of `kind` list (the reference test loader reads val or test)."""
        return sorted({w["split"] for p in self.pipelines(kind) for w in self.windows(p)})

    def checkpoint(self, name: str) -> Path:
        """Path of checkpoint `name` as MANIFEST.json gives it (relative to the fixture folder)."""
        entry = self.manifest["checkpoints"][name]
        path = (self.root / entry["path"]).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{name}: {path} (MANIFEST.json checkpoints) not found")
        return path

    def clip_path(self, clip_uid: str) -> Path:
        return self.root / "clips" / f"{clip_uid}.mp4"

    @cached_property
    def inputs_crop64(self) -> dict:
        return torch.load(self.root / "inputs_crop64.pt", map_location="cpu", weights_only=True)

    @cached_property
    def inputs_crop224(self) -> dict:
        path = self.root / "inputs_crop224.pt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else {}

    @cached_property
    def outputs_tiny(self) -> dict:
        return torch.load(self.root / "outputs_tiny.pt", map_location="cpu", weights_only=True)

    def reference_slow(self, inputs: dict, pipeline: str, key: str) -> list[torch.Tensor]:
        """The reference slow pathway of each clip of a window: `slow` where stored, else `fast[j][:, P_j]`
        (a trimmed copy drops `slow`, which the fixture README says equals that bit for bit)."""
        entry = inputs[pipeline][key]
        if "slow" in entry:
            return list(entry["slow"])
        positions = self.pipeline(pipeline)["slow_positions_in_fast"]
        return [fast[:, positions[j]] for j, fast in enumerate(entry["fast"])]


def load_fixture(root: Path | str | None = None) -> E2EFixture:
    """The fixture set at `root` (default `e2e_dir()`)."""
    root = Path(root) if root else e2e_dir()
    return E2EFixture(root=root, spec=json.loads((root / "windows.json").read_text()),
                      manifest=json.loads((root / "MANIFEST.json").read_text()))


@dataclass
class Recorded:
    """One backbone forward of the run: the exact model input and output (float32, CPU)."""

    inputs: Any  # SlowFast: [slow (B, 3, T/4, S, S), fast (B, 3, T, S, S)]; MViT: (B, 3, T, S, S)
    output: torch.Tensor  # (B, D)


@contextlib.contextmanager
def record_backbone_forwards() -> Iterator[list[Recorded]]:
    """Record every forward of every extractor model built inside the block (a forward hook; values untouched)."""
    from extract import extractors

    recorded: list[Recorded] = []
    original = extractors.Extractor.__init__

    def hook(module: Any, args: tuple, output: torch.Tensor) -> None:
        x = args[0]
        inputs = [t.detach().float().cpu().clone() for t in x] if isinstance(x, (list, tuple)) else x.detach().float().cpu().clone()
        recorded.append(Recorded(inputs, output.detach().float().cpu().clone()))

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.model.register_forward_hook(hook)

    extractors.Extractor.__init__ = init
    try:
        yield recorded
    finally:
        extractors.Extractor.__init__ = original


@dataclass
class ExtractRun:
    """A finished `lta extract` of the fixture: the store and the recorded backbone forwards."""

    store_path: Path
    recorded: list[Recorded]
    rc: int
    _index: dict = field(default_factory=dict, repr=False)

    @cached_property
    def store(self) -> Any:
        from features.store import FeatureStore

        return FeatureStore.open(self.store_path)

    def row(self, clip_uid: str, action_idx: int) -> int:
        row = int(self.store.rows.lookup(np.array([clip_uid]), np.array([action_idx]))[0])
        if row < 0:
            raise KeyError(f"{clip_uid}_{action_idx} is not a row of {self.store_path}")
        return row

    def view_index(self, n_in: int, slot: int, view: int = 0) -> int:
        """View-axis index of (temporal view, N_in, slot): `features.store.slot_views`, the head's rule."""
        from features.store import slot_views

        return int(slot_views(self.store.slots, self.store.num_views, n_in)[view, slot])

    def feature(self, clip_uid: str, action_idx: int, *, n_in: int, slot: int, view: int = 0) -> torch.Tensor:
        """The stored feature (float32) of one segment as input clip `slot` of an N_in window."""
        feats = self.store.read(np.array([self.row(clip_uid, action_idx)]))[0]  # (V*S, *view_shape)
        return torch.from_numpy(np.asarray(feats[self.view_index(n_in, slot, view)], dtype=np.float32))

    def model_inputs(self, clip_uid: str, action_idx: int, *, n_in: int, slot: int) -> Any:
        """The exact backbone input behind that stored feature: the recorded forward whose output row
        equals it bit for bit (the store is float32), sliced to that row."""
        want = self.feature(clip_uid, action_idx, n_in=n_in, slot=slot)
        hits = []
        for rec in self.recorded:
            match = torch.nonzero((rec.output == want).all(dim=1)).flatten().tolist()
            hits += [(rec, i) for i in match]
        if not hits:
            raise LookupError(f"no recorded forward produced the stored feature of {clip_uid}_{action_idx} "
                              f"(N_in={n_in}, slot {slot})")
        rec, i = hits[0]
        return [t[i] for t in rec.inputs] if isinstance(rec.inputs, list) else rec.inputs[i]


def window_inputs_data(fx: E2EFixture, out: Path) -> Path:
    """A data root with the fixture's clips (copied, byte for byte) and annotations holding only the
    segments that some window of windows.json observes (features are per segment, so extracting them
    gives the same values as extracting every segment, in a fraction of the time)."""
    wanted = {(w["clip_uid"], int(a)) for p in fx.pipelines() for w in fx.windows(p) for a in w["input_action_idx"]}
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "clips").mkdir(exist_ok=True)
    for path in (fx.root / "annotations").glob("*.json"):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "clips" in data:
            data["clips"] = [r for r in data["clips"] if (r["clip_uid"], int(r["action_idx"])) in wanted]
        (out / "annotations" / path.name).write_text(json.dumps(data))
    for uid in {u for u, _ in wanted}:
        (out / "clips" / f"{uid}.mp4").write_bytes(fx.clip_path(uid).read_bytes())
    return out


def extract_fixture(fx: E2EFixture, store_root: Path, extractor: str, weights: Path | str, *,
                    num_input_clips: Sequence[int], splits: Sequence[str] | None = None,
                    extra: Sequence[str] = (), all_segments: bool = False) -> ExtractRun:
    """`lta extract` of the fixture clips with `extractor` / `weights` into a float32 store under `store_root`.

    Args:
        num_input_clips: the N_in values to reproduce (e.g. `fx.num_input_clips("slowfast")`).
        splits: annotation splits to extract (default: those windows.json lists).
        extra: more `key=value` arguments for `lta extract` (e.g. "linspace=torch").
        all_segments: extract every annotated segment from the fixture folder itself; default: only the
            segments windows observe (`window_inputs_data`, written next to `store_root`), which is all
            that the windows' features need.

    Returns:
        The run; `rc` is the command's return code (0 expected).
    """
    from features.store import FeatureStore, store_paths
    from pipelines import cmd_extract

    splits = list(splits or fx.splits())
    data = fx.root if all_segments else window_inputs_data(fx, Path(store_root).parent / (Path(store_root).name + "_data"))
    argv = [f"data={data}", f"store={store_root}", f"extractors=[{extractor}]", f"weights={weights}",
            f"splits=[{','.join(splits)}]", f"num_input_clips=[{','.join(map(str, num_input_clips))}]",
            "device=cpu", "dtype=float32", "batch_size=4", "decode_workers=1", "progress=false", "precision=fp32",
            "max_failed_frac=1.0", *extra]
    with record_backbone_forwards() as recorded:
        rc = cmd_extract.main(argv)
    paths = [p for p in store_paths(store_root) if FeatureStore.open(p).name == extractor]
    if len(paths) != 1:
        raise RuntimeError(f"lta extract {' '.join(argv)}: rc={rc}, stores for {extractor}: {paths}")
    return ExtractRun(store_path=paths[0], recorded=recorded, rc=rc)
