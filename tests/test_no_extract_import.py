"""train_heads never imports extract/ or the video stack: import every module with them blocked."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(f"train_heads.{p.stem}" for p in (ROOT / "train_heads").glob("*.py") if p.stem != "__init__")

SCRIPT = textwrap.dedent("""
    import importlib, sys
    BLOCKED = ("extract", "av", "open_clip", "pytorchvideo")
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked import of {name!r} from train_heads")
            return None
    sys.meta_path.insert(0, Blocker())
    for mod in sys.argv[1:]:
        importlib.import_module(mod)
    import train_heads.model as m
    net = m.build_model(m.ModelConfig(modalities=[m.ModalityConfig("slowfast", in_dim=8)], num_verbs=3, num_nouns=4))
    loaded = sorted(n for n in sys.modules if n.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("ok", len(sys.argv) - 1)
""")


@pytest.mark.timeout(120)
def test_train_heads_imports_without_video_stack():
    assert "train_heads.model" in MODULES and "train_heads.train" in MODULES
    res = subprocess.run([sys.executable, "-c", SCRIPT, *MODULES], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == f"ok {len(MODULES)}"


def test_blocker_really_blocks():
    res = subprocess.run([sys.executable, "-c", SCRIPT, "pytorchvideo"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "blocked import of 'pytorchvideo'" in res.stderr
