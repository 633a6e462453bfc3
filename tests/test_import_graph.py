"""The import graph of the project's four packages has no circle, and each package imports only the layers below it.

Read from the source with `ast` (nothing is imported): every `import` / `from ... import` at module level and
inside functions, classes and `if` blocks counts. Layers: `features` is the ground floor (imports only itself),
`extract` and `train_heads` stand side by side on it and never import each other, `pipelines` sits on top.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("features", "extract", "train_heads", "pipelines")
# package -> the project packages its modules may import
ALLOWED = {
    "features": {"features"},
    "extract": {"features", "extract"},
    "train_heads": {"features", "train_heads"},
    "pipelines": set(PACKAGES),
}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of the four packages (packages as their __init__)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every dotted name an import statement anywhere in `tree` refers to (relative imports resolved)."""
    package = module if is_package else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def project_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports. `import a.b.c` also runs a/__init__ and a/b/__init__.

    One exception: a module of package a.b that imports a sibling (`from a.b.c import x` in a/b/d.py) passes
    through its own package a.b, which Python has already started initialising before a/b/d.py runs, so that
    is no edge to a.b (a circle through a.b's __init__ needs `from a.b import name` itself, which still is)."""
    edges = {}
    for name, path in modules.items():
        targets = set()
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for imported in imported_names(ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py"):
            parts = imported.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in own_packages and ".".join(parts[:i + 1]) in modules:
                    continue  # on the way to a sibling module
                if candidate in modules and candidate != name:
                    targets.add(candidate)
        edges[name] = targets
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(edges):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(edges[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return None


def test_no_import_cycle():
    modules = module_files()
    assert {"features.synthetic", "extract.extractors", "extract.finetune.model", "pipelines.cli"} <= set(modules)
    cycle = find_cycle(project_edges(modules))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_packages_import_only_lower_layers():
    modules = module_files()
    bad = sorted(f"{src} imports {dst}" for src, targets in project_edges(modules).items() for dst in targets
                 if dst.split(".")[0] not in ALLOWED[src.split(".")[0]])
    assert not bad, bad


def test_graph_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: a circle made only of function-level / relative imports and a layer breach are found."""
    (tmp_path / "features").mkdir()
    (tmp_path / "extract" / "sub").mkdir(parents=True)
    for pkg in ("features", "extract", "extract/sub", "train_heads", "pipelines"):
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "features" / "low.py").write_text("def f():\n    from extract.sub import high\n")
    (tmp_path / "extract" / "sub" / "high.py").write_text("if True:\n    from ...features import low\n")
    (tmp_path / "extract" / "flat.py").write_text("import numpy\n")
    modules = module_files(tmp_path)
    edges = project_edges(modules)
    assert edges["features.low"] == {"extract", "extract.sub", "extract.sub.high"}
    assert edges["extract.sub.high"] == {"features", "features.low"}
    assert edges["extract.flat"] == set()
    cycle = find_cycle(edges)
    assert cycle is not None and cycle[0] == cycle[-1] and {"features.low", "extract.sub.high"} <= set(cycle)
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_sibling_imports_inside_a_re_exporting_package(tmp_path):
    """The checker: a package __init__ that re-exports its modules, whose modules import each other by their full
    path, has no circle (Python runs the __init__ first); a module that imports a name from its own package's
    __init__, which imports that module, is one."""
    (tmp_path / "extract" / "pkg").mkdir(parents=True)
    for pkg in ("features", "train_heads", "pipelines"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "extract" / "__init__.py").write_text("")
    (tmp_path / "extract" / "pkg" / "__init__.py").write_text("from extract.pkg.a import f\nfrom extract.pkg.b import g\n")
    (tmp_path / "extract" / "pkg" / "a.py").write_text("from extract.pkg.b import g\ndef f():\n    return g()\n")
    (tmp_path / "extract" / "pkg" / "b.py").write_text("def g():\n    return 1\n")
    edges = project_edges(module_files(tmp_path))
    assert edges["extract.pkg.a"] == {"extract.pkg.b"}  # extract and extract.pkg are already initialising
    assert find_cycle(edges) is None
    (tmp_path / "extract" / "pkg" / "b.py").write_text("from extract.pkg import f\ndef g():\n    return 1\n")
    cycle = find_cycle(project_edges(module_files(tmp_path)))
    assert cycle is not None and "extract.pkg" in cycle
