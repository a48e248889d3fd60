"""Reading a checkpoint file safely: owner and permission checks, a restricted unpickler that
builds plain data only, and a check of every field's shape before the state is used."""
from __future__ import annotations

import io
import os
import pickle
import stat
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

FORMAT_VERSION = 1

_PLAIN_LEAVES = (type(None), bool, int, float, str, bytes)
_PLAIN_CONTAINERS = (list, tuple, set, frozenset, dict)
# What a corrupt pickle stream may raise while being read (besides our own CheckpointError).
_CORRUPT = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, OverflowError, ImportError, MemoryError, RecursionError)
_INT_FIELDS = ("start", "watermark", "output_offset", "errors_offset", "ok", "failed")
_FIELDS = ("version", "name", *_INT_FIELDS, "sparse", "input_position", "elapsed", "saved_at", "meta")
# Added later, so optional on load (older checkpoints lack them): lines the files held at the
# offsets, and keys done without a line (blank input lines). None: not known.
_COUNT_FIELDS = ("output_lines", "errors_lines", "marks")


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain data only: any global other than set/frozenset is refused, never imported."""

    # Protocols < 3 name the Python 2 module; super().find_class maps it to builtins.
    _ALLOWED = {(module, name) for module in ("builtins", "__builtin__") for name in ("set", "frozenset")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise CheckpointError(f"checkpoint refers to {module}.{name}, which is not plain data")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_plain(value: Any, where: str = "meta") -> None:
    """Refuse, at save time, anything the restricted unpickler would refuse at load time."""
    if isinstance(value, _PLAIN_LEAVES):
        return
    if not isinstance(value, _PLAIN_CONTAINERS):
        raise CheckpointError(f"{where} holds a {type(value).__name__}; only plain data may be saved")
    items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
    for key, item in items:
        check_plain(key, where)
        check_plain(item, where)


def _check_file_safe(st: os.stat_result, path: Path) -> None:
    """Refuse a checkpoint that someone else could have planted or edited."""
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    if st.st_uid != os.getuid():
        raise CheckpointError(f"checkpoint {path} is owned by uid {st.st_uid}, not by you "
                              f"(uid {os.getuid()}); refusing to load it")
    if st.st_mode & 0o022:
        raise CheckpointError(f"checkpoint {path} is writable by group or others "
                              f"(mode {stat.S_IMODE(st.st_mode):o}); refusing to load it")


def read_state(path: Path) -> dict:
    """Read and validate one checkpoint file; FileNotFoundError when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except OSError as err:
        raise CheckpointError(f"cannot open checkpoint {path}: {err}") from err
    with os.fdopen(fd, "rb") as fh:
        _check_file_safe(os.fstat(fh.fileno()), path)
        try:
            raw = _SafeUnpickler(io.BytesIO(fh.read())).load()
        except _CORRUPT as err:
            raise CheckpointError(f"checkpoint {path} is corrupt: {err!r}") from err
    return _validate(raw, path)


def _validate(raw: Any, path: Path) -> dict:
    """Check the version and shape of unpickled state; return it with normalised field types."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(raw).__name__}, not a dict")
    if raw.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {raw.get('version')!r}, "
                              f"this mpdistill reads version {FORMAT_VERSION}")
    missing = [name for name in _FIELDS if name not in raw]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks field(s) {', '.join(missing)}")
    state = dict(raw)
    state["sparse"] = set(_check_ints(raw["sparse"], "sparse", path))
    state["offsets"] = _check_offsets(raw.get("offsets", {}), path)
    state["input_position"] = _check_position(raw["input_position"], path)
    for name in _INT_FIELDS:
        if not _is_int(raw[name]):
            raise CheckpointError(f"checkpoint {path}: {name} is not an int")
    for name in _COUNT_FIELDS:
        state[name] = raw.get(name)
        if state[name] is not None and not _is_int(state[name]):
            raise CheckpointError(f"checkpoint {path}: {name} is not an int")
    if raw["watermark"] < raw["start"] or any(key < raw["start"] for key in state["sparse"]):
        raise CheckpointError(f"checkpoint {path}: done keys below start {raw['start']}")
    if not isinstance(raw["elapsed"], (int, float)) or not isinstance(raw["meta"], dict):
        raise CheckpointError(f"checkpoint {path}: elapsed or meta has the wrong type")
    if raw["saved_at"] is not None and not isinstance(raw["saved_at"], (int, float)):
        raise CheckpointError(f"checkpoint {path}: saved_at has the wrong type")
    return state


def _check_ints(value: Any, name: str, path: Path) -> list[int]:
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(_is_int(v) for v in value):
        raise CheckpointError(f"checkpoint {path}: {name} is not a collection of ints")
    return list(value)


def _check_offsets(value: Any, path: Path) -> dict[int, int]:
    if not isinstance(value, dict) or not all(_is_int(k) and _is_int(v) for k, v in value.items()):
        raise CheckpointError(f"checkpoint {path}: offsets is not a dict of ints")
    return dict(value)


def _check_position(value: Any, path: Path) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        return (value[0], value[1])
    raise CheckpointError(f"checkpoint {path}: input_position is not (next_key, byte_offset)")
