"""What every result records about where it came from: versions, git SHA, device."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

__all__ = ["environment", "git_sha", "versions", "default_device"]


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device | None = None) -> str:
    device = device or default_device()
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


@functools.cache
def git_sha() -> str:
    """The git commit of the source tree fisherscope runs from, or ``"unknown"``."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    sha = out.stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=here, capture_output=True, text=True, timeout=5,
    )
    return sha + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


@functools.cache
def versions() -> dict[str, str]:
    """Versions of Python and the packages results depend on."""
    import matplotlib
    import numpy
    import scipy
    import sklearn

    from .. import __version__

    return {
        "fisherscope": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "matplotlib": matplotlib.__version__,
    }


def environment() -> dict[str, Any]:
    """Everything ``fisherscope env`` prints and a run stores."""
    return {
        "versions": versions(),
        "git_sha": git_sha(),
        "platform": platform.platform(),
        "device": device_name(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
    }
