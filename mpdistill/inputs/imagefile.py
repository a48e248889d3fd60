"""Read a row's local image file safely: confined to allowed folders, regular files only, size-capped.

A row names its images, so a hostile row must not make the run upload any file of the machine
(`/etc/…`, `../../`, `~`, `file://`, a symlink pointing out), block a worker on a FIFO or read
`/dev/zero` until memory runs out. Errors name the path and the rule broken, never the file's bytes.
"""
from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import CallTimeoutError, ImageError

DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImagePolicy:
    """Where local images may come from and how much of one may be read; fixed for a run."""

    base_dir: str | None = None      # relative paths start here (the input file's folder); None: cwd
    roots: tuple[str, ...] = ()      # --image-root: more folders images may come from
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_side: int | None = None      # --image-max-side: downscale to fit

    def allowed(self) -> list[Path]:
        """The folders local images must resolve into, links resolved."""
        base = self.base_dir if self.base_dir is not None else os.getcwd()
        return [Path(os.path.realpath(d)) for d in (base, *self.roots)]


def local_path(ref: str, policy: ImagePolicy) -> Path:
    """The real path (links resolved) of a local image reference, or ImageError if it leaves the roots."""
    named = _path_of(ref)
    if not named.is_absolute():
        base = policy.base_dir if policy.base_dir is not None else os.getcwd()
        named = Path(base) / named
    real = Path(os.path.realpath(named))
    roots = policy.allowed()
    if not any(real == root or root in real.parents for root in roots):
        where = " or ".join(str(r) for r in roots)
        raise ImageError(f"image {ref!r} is outside the allowed folders: it resolves to {real}, "
                         f"not under {where} (local images must be in the input file's folder; "
                         f"widen with --image-root DIR)")
    return real


def read_image_file(path: Path, max_bytes: int, deadline: float | None = None) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; FIFOs, devices and folders are refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as err:
        raise ImageError(f"image not found: {path}") from err
    except OSError as err:
        raise ImageError(f"cannot read image: {path} ({err.strerror or type(err).__name__})") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"image {path} is not a regular file ({_kind(info.st_mode)}): only regular "
                             f"files are read")
        if info.st_size > max_bytes:
            raise ImageError(_too_big(path, max_bytes))
        return _read_capped(fd, path, max_bytes, deadline)
    finally:
        os.close(fd)


def _read_capped(fd: int, path: Path, max_bytes: int, deadline: float | None) -> bytes:
    """Read in chunks, never past `max_bytes` (a file may grow while read), checking the deadline."""
    chunks, total = [], 0
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise CallTimeoutError(f"reading image {path} used up the call's deadline (--timeout)")
        try:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
        except OSError as err:
            raise ImageError(f"cannot read image: {path} ({err.strerror or type(err).__name__})") from err
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise ImageError(_too_big(path, max_bytes))


def _path_of(ref: str) -> Path:
    """`file://` URLs are local paths under the same rules; `~` is expanded, then confined."""
    if ref[:5].lower() == "file:":
        parts = urlsplit(ref)
        if parts.netloc not in ("", "localhost"):
            raise ImageError(f"image {ref!r}: a file:// URL with a host ({parts.netloc}) is not a local file")
        return Path(unquote(parts.path)).expanduser()
    return Path(ref).expanduser()


def _too_big(path: Path, max_bytes: int) -> str:
    return f"image {path} is larger than --max-image-bytes ({max_bytes} bytes)"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"
