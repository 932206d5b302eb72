"""The wheel `supervisor bootstrap` sends: this source tree's, built from a copy of it.

A copy, so that the shared tree gets no build/ or egg-info; with pip's build isolation,
so that the build backend pyproject.toml asks for is used (fetched once from the index).
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

DIST = "mlx-supervisor"
BUILD_TIMEOUT = 300.0  # s for `pip wheel` here
PINNED = ("mlx", "mlx-lm")


class WheelError(Exception):
    """No wheel could be made here: one line saying why."""


def local_version() -> str:
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        raise WheelError(f"{DIST} is not installed here: nothing to copy") from None


def pins() -> list[str]:
    """``mlx==X``, ``mlx-lm==Y`` as installed here: the doctor requires every host to run
    the same mlx and mlx-lm (ranks of one group exchange their tensors)."""
    found = []
    for dist in PINNED:
        try:
            found.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass  # not installed here: the wheel's own requirement decides
    return found


def project_root() -> Path:
    """The source tree this CLI runs from (bootstrap sends what runs here)."""
    root = Path(__file__).resolve().parents[3]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        raise WheelError(
            f"bootstrap builds its wheel from the source tree, and {root} has no pyproject.toml: "
            "run it from a git checkout of mlx-supervisor"
        )
    return root


def build_wheel(out: Path, progress: Callable[[str], None]) -> Path:
    """This tree's wheel, built from a copy (the shared tree gets no build/ or egg-info)."""
    root = project_root()
    src = out / "src"
    _copy_sources(root, src)
    progress(f"building the wheel of {root}")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise WheelError(f"building the wheel took over {BUILD_TIMEOUT:g} s") from None
    wheels = sorted(out.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        lines = [x for x in (done.stderr + done.stdout).splitlines() if x.strip()]
        raise WheelError(f"building the wheel failed: {lines[-1] if lines else 'no output'}")
    return wheels[0]


def _copy_sources(root: Path, dst: Path) -> None:
    """pyproject.toml, the files it names and the packages it includes; nothing else."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    find = config.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
    include = find.get("include", ["*"])
    dst.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "setup.cfg"):
        if (root / name).is_file():
            shutil.copy2(root / name, dst / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".*")
    for entry in sorted(root.iterdir()):
        package = entry.is_dir() and (entry / "__init__.py").is_file()
        if package and any(fnmatch.fnmatch(entry.name, pattern) for pattern in include):
            shutil.copytree(entry, dst / entry.name, ignore=ignore)
