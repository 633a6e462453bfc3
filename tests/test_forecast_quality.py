"""bench/forecast_quality.py on a small slice of real EK100 action sequences (tests/fixtures/ek100_slice).

The slice is made by tests/fixtures/make_ek100_slice.py; `LTA_EK100_FIXTURES` points the tests at another
slice made the same way. Nothing here depends on the slice's contents beyond its format.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLICE = Path(os.environ.get("LTA_EK100_FIXTURES", REPO / "tests" / "fixtures" / "ek100_slice"))
BASELINES = ("frequency_prior", "markov_knn", "markov_oracle", "knn_retrieval")
NUM = r"(\d+\.\d{4})"


def load_bench():
    spec = importlib.util.spec_from_file_location("forecast_quality", REPO / "bench" / "forecast_quality.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["forecast_quality"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def parse_tables(text: str) -> dict[str, dict]:
    """setting -> {"rows": [(method, generator, verb, noun, action, sec)], "margin": {...}} from the printed output."""
    out: dict[str, dict] = {}
    setting = None
    for line in text.splitlines():
        m = re.match(r"^### (\w+): real EK100 action sequences, simulated recogniser", line)
        if m:
            setting = m.group(1)
            out[setting] = {"rows": [], "margin": None, "header": False}
            continue
        if setting and line.startswith("| method | generator | verb ED | noun ED | action ED | time (s) |"):
            out[setting]["header"] = True
            continue
        m = re.match(rf"^\| (.+?) \| (.+?) \| {NUM} \| {NUM} \| {NUM} \| (\d+\.\d) \|$", line)
        if setting and m:
            out[setting]["rows"].append((m.group(1), m.group(2), *map(float, m.groups()[2:])))
            continue
        m = re.match(r"^margin (\w+): action ([+-]\d+\.\d{4}) verb ([+-]\d+\.\d{4}) noun ([+-]\d+\.\d{4})$", line)
        if m:
            out[m.group(1)]["margin"] = dict(zip(("action", "verb", "noun"), map(float, m.groups()[1:])))
    return out


@pytest.fixture(scope="module")
def slice_files():
    files = {"train": SLICE / "train.csv", "val": SLICE / "val.csv"}
    for f in files.values():
        assert f.is_file(), f"{f} missing: run tests/fixtures/make_ek100_slice.py"
    return files


@pytest.mark.slow
def test_tables_markov_beats_prior_and_head_margin(slice_files, tmp_path, capsys, one_torch_thread):
    """One run on the slice, both settings: table structure, Markov-oracle < frequency prior, and the margin of the
    best config (pipelines/configs/ek100_best.yaml, pair_sample) over the best baseline that sees what the head sees.
    """
    bench = load_bench()
    code = bench.main(["--train", str(slice_files["train"]), "--val", str(slice_files["val"]),
                       "--configs", str(REPO / "pipelines/configs/ek100_best.yaml"),
                       "--generators", "sample", "pair_sample", "--work", str(tmp_path / "work")])
    assert code == 0
    tables = parse_tables(capsys.readouterr().out)
    assert set(tables) == {"oracle", "realistic"}
    head_prefix = "ek100_best (train "
    for setting, t in tables.items():
        assert t["header"], setting
        methods = [r[0] for r in t["rows"]]
        for b in BASELINES:
            assert methods.count(b) == 1, (setting, b, methods)
        heads = [r for r in t["rows"] if r[0].startswith(head_prefix)]
        assert sorted(r[1] for r in heads) == ["pair_sample", "sample"], t["rows"]
        actions = [r[4] for r in t["rows"]]
        assert actions == sorted(actions), "rows are sorted by action ED"
        for r in t["rows"]:
            assert all(0.0 <= x <= 1.0 for x in r[2:5]), r
        assert t["margin"] is not None, setting
        best_head = min(heads, key=lambda r: (r[4], r[2]))
        fair = [r for r in t["rows"] if not r[0].startswith(head_prefix) and r[0] not in bench.ORACLES]
        for i, what in ((4, "action"), (2, "verb"), (3, "noun")):
            assert t["margin"][what] == pytest.approx(best_head[i] - min(r[i] for r in fair), abs=2e-4)
        # the head: clearly better verbs, nouns not worse, actions within 0.01 even on this small slice
        # (the full benchmark, README, shows the action margin; 3k training windows are too few for it)
        assert t["margin"]["verb"] <= -0.02, (setting, t["margin"])
        assert t["margin"]["noun"] <= 0.0, (setting, t["margin"])
        assert t["margin"]["action"] < 0.01, (setting, t["margin"])
    # real action sequences have structure: with the true last action, a transition model forecasts better
    # than the class frequencies
    oracle = {r[0]: r for r in tables["oracle"]["rows"]}
    assert oracle["markov_oracle"][4] < oracle["frequency_prior"][4]
    assert oracle["markov_oracle"][2] < oracle["frequency_prior"][2]
