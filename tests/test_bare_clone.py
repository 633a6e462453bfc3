"""The tests and the README's setup steps work from a bare clone: nothing outside the repository is read."""
from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"


def test_no_test_reads_outside_the_repository():
    """No test module or helper names ../shared (or any folder beside the repo root) as a default location.

    tests/fixtures/ is skipped: it holds the copied fixtures and the scripts that made them, which take the
    source folder as an argument."""
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.resolve() == Path(__file__).resolve() or (TESTS / "fixtures") in path.parents:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.\./shared|parent\s*/\s*[\"']shared|parents\[1\]\.parent|REPO(_ROOT)?\.parent\b", line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "tests read outside the repository:\n" + "\n".join(offenders)


def test_reference_fixture_defaults_are_inside_the_repository():
    """Each fixture environment variable's default folder is part of the repo and holds its README."""
    defaults = set()
    for path in sorted(TESTS.glob("*.py")):
        for m in re.finditer(r"os\.environ\.get\(\"(LTA_REFERENCE\w*)\"\)\s*or\s*\w+\s*/\s*\"([^\"]+)\"", path.read_text()):
            defaults.add((m[1], m[2]))
    assert defaults, "no test takes its fixtures from an LTA_REFERENCE* environment variable"
    for var, rel in sorted(defaults):
        folder = REPO / rel
        assert folder.is_dir() and folder.resolve().is_relative_to(REPO), f"{var} default {rel} is not a folder in the repo"
        assert (folder / "README.md").is_file(), f"{rel} has no README.md"
        assert any(p.suffix != ".md" for p in folder.iterdir()), f"{rel} holds only its README"


def _shell_blocks(text: str) -> list[list[str]]:
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S)
    return [block.replace("\\\n", " ").splitlines() for block in blocks]  # continuation lines joined


def test_readme_links_into_folders_it_creates_first():
    """Every `ln -s SRC DST` in a README code block links into a folder an earlier `mkdir -p` of that block made."""
    checked = 0
    for lines in _shell_blocks((REPO / "README.md").read_text()):
        made: set[PurePosixPath] = set()
        for line in lines:
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # not shell (an unbalanced quote in prose or a table)
                continue
            if words[:2] == ["mkdir", "-p"]:
                for d in words[2:]:
                    made |= {PurePosixPath(d), *PurePosixPath(d).parents}
            elif words[:2] == ["ln", "-s"] and len(words) == 4:
                parent = PurePosixPath(words[3]).parent
                checked += 1
                assert parent == PurePosixPath(".") or parent in made or (REPO / parent).is_dir(), (
                    f"README: `{line.strip()}` links into {parent}/, which no earlier `mkdir -p` creates")
    assert checked, "no `ln -s` found in the README"


def test_a_wheel_carries_every_bundled_data_file():
    """Every file beside the code under a package folder (the bundled YAML configs, configs/demo/ too) is listed
    by pyproject's [tool.setuptools] packages + package-data, so a non-editable install has it."""
    import fnmatch
    import subprocess
    import tomllib

    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages, data = tool["packages"], tool.get("package-data", {})
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True).stdout.split()
    if not tracked:  # not a git checkout: the files on disk
        tracked = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file()]

    def globbed(rel: PurePosixPath, pattern: str) -> bool:  # setuptools' glob: `*` stays inside one folder
        parts = PurePosixPath(pattern).parts
        return len(parts) == len(rel.parts) and all(fnmatch.fnmatch(a, b) for a, b in zip(rel.parts, parts))

    missing = []
    for rel in tracked:
        path = PurePosixPath(rel)
        if path.suffix == ".py" or path.parts[0] not in {p.split(".")[0] for p in packages}:
            continue
        owners = [p for p in packages if path.parent.parts[:len(p.split("."))] == tuple(p.split("."))]
        if not any(globbed(path.relative_to(*p.split(".")), pat) for p in owners for pat in data.get(p, [])):
            missing.append(rel)
    assert not missing, f"not in the wheel (add the folder to packages and a pattern to package-data): {missing}"
