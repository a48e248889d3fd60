"""Before a run touches anything: can every folder it writes to be written, is every file slot free?

An output folder on a read-only mount, under `/sys`, or a checkpoint path that is a directory would
otherwise surface as a traceback in the middle of start-up. Here each is one ConfigError naming the
path (exit 2), raised before any file is created, moved or rewritten, so the state on disk is intact.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import ConfigError


def check_folder(folder: str | os.PathLike, what: str) -> None:
    """`folder` exists (or can be made) and a file can be created in it."""
    folder = Path(folder)
    if os.path.lexists(folder) and not folder.is_dir():
        raise ConfigError(f"the {what} folder {folder} is not a folder (a file is in its place)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mpdistill-probe-", dir=folder)
    except OSError as err:
        raise ConfigError(f"cannot write the {what} folder {folder}: {_why(err)}") from err
    os.close(fd)
    os.unlink(probe)


def check_file(path: str | os.PathLike, what: str) -> None:
    """`path` is free or an existing regular file that may be appended to (not a folder, not immutable)."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_dir() or (path.exists() and not path.is_file()):
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise ConfigError(f"the {what} path {path} is {kind}: move it away or choose another path")
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
    except OSError as err:
        raise ConfigError(f"cannot write the {what} file {path}: {_why(err)}") from err


def check_run_paths(outputs: list[Path], sidecars: list[Path], checkpoint_dir: str | os.PathLike) -> None:
    """Every folder and file a run will write: outputs (and their errors/summary files), checkpoints."""
    for folder in dict.fromkeys(p.parent for p in outputs):
        check_folder(folder, "output")
    check_folder(checkpoint_dir, "checkpoint")
    for path in outputs:
        check_file(path, "output")
    for path in sidecars:
        check_file(path, "output")


def _why(err: OSError) -> str:
    return err.strerror or type(err).__name__
