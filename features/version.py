"""The code version a result was produced with: the package version plus, in a git checkout, `git describe`.

Standard library only (features/ imports nothing above it). Shown in the footer of `lta report`.
"""
from __future__ import annotations

import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

DIST_NAME = "ego4d-lta-cache"
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the checkout this module was imported from


def package_version() -> str:
    """The installed distribution's version, or "unknown" when the code runs without being installed."""
    try:
        return metadata.version(DIST_NAME)
    except metadata.PackageNotFoundError:
        return "unknown"


def git_describe(root: Path = SOURCE_ROOT) -> str | None:
    """`git describe --tags --always --dirty` of the checkout holding `root`, or None (no git, not a checkout)."""
    try:
        res = subprocess.run(["git", "-C", str(root), "describe", "--tags", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    out = res.stdout.strip()
    return out if res.returncode == 0 and out else None


@lru_cache(maxsize=None)
def code_version() -> str:
    """E.g. `ego4d-lta-cache 0.1.0, git 8310cfb-dirty`; `..., git unknown (not a git checkout)` otherwise."""
    described = git_describe()
    git = f"git {described}" if described else "git unknown (not a git checkout)"
    return f"{DIST_NAME} {package_version()}, {git}"
