"""Every command error goes through the one boundary, `pipelines.common.error_boundary` (issue 24, item 4).

A command raises `UsageError` (exit 2), `RunFailure` (exit 1) or `Interrupted` (exit 75), each with an
optional `exit_code=`; the boundary, which `lta` (`pipelines.cli.main`) runs every command in, prints the
one line `lta <command>: <message>` on stderr and returns the status. So a command module writes nothing
to stderr itself, puts no `lta <command>:` prefix into an error's message (the boundary adds it), and
does not catch `Interrupted` to return 75 on its own.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pipelines import cli

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
OWN_PREFIX = re.compile(r"lta [a-z][a-z-]*( [a-z][a-z-]*)?: ")  # `lta extract: `, `lta store merge: `


def _is_stderr(node: ast.AST) -> bool:
    """`sys.stderr`, or a bare `stderr` (from `from sys import stderr`)."""
    return ((isinstance(node, ast.Attribute) and node.attr == "stderr" and isinstance(node.value, ast.Name)
             and node.value.id == "sys") or (isinstance(node, ast.Name) and node.id == "stderr"))


def _leading_text(node: ast.AST) -> str:
    """The literal start of a string or f-string expression ("" when it does not start with literal text)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return ""


def _names(node: ast.AST | None) -> set[str]:
    """The exception class names an `except` clause catches (`Interrupted`, `interrupt.Interrupted`, tuples)."""
    if node is None:
        return set()
    if isinstance(node, ast.Tuple):
        return set().union(*(_names(e) for e in node.elts))
    if isinstance(node, ast.Attribute):
        return {node.attr}
    return {node.id} if isinstance(node, ast.Name) else set()


def own_error_handling(source: str, filename: str = "<source>") -> list[str]:
    """What in a command module's source bypasses the boundary, as `file:line: what` strings (by line)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "print" and any(
                    kw.arg == "file" and _is_stderr(kw.value) for kw in node.keywords):
                found.append(f"{where}: prints to stderr (raise UsageError / RunFailure; the boundary prints)")
            if isinstance(func, ast.Attribute) and func.attr in ("write", "writelines") and _is_stderr(func.value):
                found.append(f"{where}: writes to stderr (raise UsageError / RunFailure; the boundary prints)")
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
            if OWN_PREFIX.match(_leading_text(node.exc.args[0])):
                found.append(f"{where}: an error message starting with 'lta ...' (the boundary adds `lta <command>: `)")
        if isinstance(node, ast.ExceptHandler) and "Interrupted" in _names(node.type):
            if any(isinstance(n, ast.Return) for stmt in node.body for n in ast.walk(stmt)):
                found.append(f"{where}: catches Interrupted and returns (let it reach the boundary: exit 75)")
    return sorted(found, key=lambda f: int(f.split(":")[1]))


def test_the_scan_finds_each_way_around_the_boundary():
    """The check below can fail: each pattern it forbids is found in a snippet, and clean code passes."""
    bad = '''
import sys
def a(cfg):
    print(f"lta x: {cfg} is wrong", file=sys.stderr)
    return 2
def b():
    sys.stderr.write("lta x: broken\\n")
def c(name):
    raise RuntimeError(f"lta x: stage {name} failed")
def d():
    try:
        run()
    except (ValueError, interrupt.Interrupted) as err:
        return err.exit_code
'''
    found = own_error_handling(bad)
    assert [f.split(": ", 1)[0] for f in found] == ["<source>:4", "<source>:7", "<source>:9", "<source>:13"], found
    clean = '''
import sys
def a(cfg):
    print(f"lta x: nothing to do: {cfg}")  # informational, on stdout
    if cfg.bad:
        raise UsageError(f"key={cfg.bad}: no such thing")
    raise RuntimeError(f"lta evaluate {cfg} failed")  # names a command line, not the boundary's prefix
def d():
    try:
        run()
    except Interrupted as err:
        if not hasattr(err, "summary"):
            raise
        keep = err
    raise keep
'''
    assert own_error_handling(clean) == []


def test_no_command_module_reports_its_own_errors():
    modules = sorted(PIPELINES.glob("cmd_*.py"))
    assert {"cmd_extract.py", "cmd_resize.py", "cmd_store.py", "cmd_score.py"} <= {p.name for p in modules}
    found = [f for p in modules
             for f in own_error_handling(p.read_text(), str(p.relative_to(PIPELINES.parent)))]
    assert not found, "\n".join(found)


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("LTA_DEBUG", raising=False)  # LTA_DEBUG=1 would show tracebacks instead of the line


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_store_errors_are_the_boundarys_one_line(tmp_path, capsys):
    assert cli.main(["store", "export", f"src={tmp_path}"]) == 2
    assert _one_line(capsys) == "lta store: export: src= and dst= are required"
    assert cli.main(["store", "merge", f"dst={tmp_path / 'k.h5'}"]) == 2
    assert _one_line(capsys) == f"lta store: merge: no shard files in {tmp_path / 'k.shards'}"
    assert cli.main(["store", "verify", "nope=1"]) == 2  # a config error: the boundary too, naming the help
    line = _one_line(capsys)
    assert line.startswith("lta store: unknown key 'nope'") and "`lta store verify --help` lists the keys" in line


def test_import_checkpoint_without_ckpt_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["import-checkpoint", f"out={tmp_path / 'run'}"]) == 2
    assert _one_line(capsys) == "lta import-checkpoint: ckpt=PATH is required"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arg,line", [
    ("shard=5/2", "lta extract: shard must be i/n with 0 <= i < n, got '5/2'"),
    ("launcher=slurn", "lta extract: launcher=slurn: unknown launcher (did you mean 'slurm'?); "
                       "valid: ['none', 'local', 'slurm']"),
])
def test_extract_argument_errors_are_one_line_and_exit_2(sample_annotations, tmp_path, capsys, arg, line):
    store = tmp_path / "store"
    argv = ["extract", f"data={sample_annotations}", f"store={store}", "device=cpu", "splits=[val]", arg]
    assert cli.main(argv) == 2
    assert _one_line(capsys) == line
    assert not store.exists() or not any(store.glob("*.zarr"))
