"""Writing files: what went wrong, in words a user can act on."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from .exceptions import WriteError

__all__ = ["WriteError", "describe_write_error"]


def _existing_parent(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def describe_write_error(path: str | os.PathLike[str], exc: BaseException, *, what: str = "file",
                         fix: str = "") -> str:
    """One sentence for a failed write of ``path``: no space / read-only / not a directory / other.

    ``torch.save`` reports a full disk as ``RuntimeError: ... unexpected pos ...``; that
    and ``OSError`` s with ``ENOSPC``, ``EROFS``, ``EACCES``, ``EPERM``, ``ENOTDIR``,
    ``EEXIST`` (a folder that is a file) are named by their cause.
    """
    path = Path(path)
    code = getattr(exc, "errno", None)
    parent = _existing_parent(path.parent)
    if code == errno.ENOSPC or (isinstance(exc, RuntimeError) and "unexpected pos" in str(exc)):
        try:
            free = shutil.disk_usage(parent).free
            cause = f"no space left on the device ({free / 2**20:.1f} MiB free under {parent})"
        except OSError:
            cause = "no space left on the device"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        cause = f"{parent} is read-only or not writable by this user"
    elif code in (errno.ENOTDIR, errno.EEXIST) or (parent.exists() and not parent.is_dir()):
        cause = f"{parent} is a file, not a directory"
    else:
        cause = f"{type(exc).__name__}: {exc}"
    msg = f"could not write the {what} {path}: {cause}."
    return f"{msg} {fix}".strip()
