"""Turn image references (URLs, data URLs, local files) into OpenAI `image_url` content parts.

Local files are checked with pillow, optionally downscaled, and sent as base64 data URLs.
"""
from __future__ import annotations

import base64
import io
import re
import struct
from pathlib import Path

from PIL import Image

from ..errors import ImageError

_MIME = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "GIF": "gif"}
_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,[A-Za-z0-9+/]+={0,2}")
_IMAGE_TYPES = ("image_url", "image")
# Pillow reports broken files through many exception types; these are the ones it raises in practice.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


def encode_image(ref: str, base_dir: Path | None = None, max_side: int | None = None) -> str:
    """The URL to send for `ref`: URLs pass through, local files become `data:image/...;base64,...`."""
    if not isinstance(ref, str) or not ref.strip():
        raise ImageError(f"image reference must be a non-empty string, got {ref!r:.80}")
    lowered = ref[:8].lower()
    if lowered.startswith(("http://", "https://")):
        return ref
    if lowered.startswith("data:"):
        if not _DATA_URL.fullmatch(ref):
            raise ImageError(f"invalid data URL (want data:image/<fmt>;base64,<payload>): {ref:.60}…")
        return ref
    return _encode_file(_resolve(ref, base_dir), max_side)


def build_messages(messages: list[dict], base_dir: Path | None = None,
                   max_side: int | None = None) -> list[dict]:
    """Messages with every image part encoded; messages without image parts are reused as they are."""
    return [_encode_message(m, base_dir, max_side) for m in messages]


def image_parts(refs: list[str]) -> list[dict]:
    """Unencoded OpenAI image parts for `refs`, to append to a prompt's content."""
    return [{"type": "image_url", "image_url": {"url": ref}} for ref in refs]


def _encode_message(message: dict, base_dir: Path | None, max_side: int | None) -> dict:
    """`message` itself when it has no image part, else a copy with encoded parts."""
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list) or not any(_is_image(p) for p in content):
        return message
    parts = [_encode_part(p, base_dir, max_side) if _is_image(p) else p for p in content]
    return {**message, "content": parts}


def _is_image(part: object) -> bool:
    return isinstance(part, dict) and part.get("type") in _IMAGE_TYPES


def _encode_part(part: dict, base_dir: Path | None, max_side: int | None) -> dict:
    """One image part in the OpenAI form `{"type": "image_url", "image_url": {"url": ...}}`."""
    value = part.get("image_url") if part.get("type") == "image_url" else part.get("image")
    extra = {}
    if isinstance(value, dict):
        extra = {k: v for k, v in value.items() if k != "url"}   # keep e.g. "detail"
        value = value.get("url")
    if not isinstance(value, str):
        raise ImageError(f"image part without a url: {str(part):.80}")
    return {"type": "image_url", "image_url": {"url": encode_image(value, base_dir, max_side), **extra}}


def _resolve(ref: str, base_dir: Path | None) -> Path:
    """The local path `ref` names; relative paths are taken from the input file's folder."""
    if ref.startswith("file://"):
        ref = ref[len("file://"):]
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def _encode_file(path: Path, max_side: int | None) -> str:
    """Check, maybe downscale, and base64-encode one local image file."""
    data = _read(path)
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
        # verify() leaves the image unusable, so reopen for the format, size and pixels.
        with Image.open(io.BytesIO(data)) as img:
            fmt = _check_format(img, path)
            if max_side and max(img.size) > max_side:
                data, fmt = _downscale(img, max_side)
    except Image.UnidentifiedImageError as err:
        raise ImageError(f"not an image (format not recognised): {path}") from err
    except _PIL_ERRORS as err:
        raise ImageError(f"corrupt or unreadable image: {path} ({err})") from err
    return f"data:image/{_MIME[fmt]};base64,{base64.b64encode(data).decode('ascii')}"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise ImageError(f"image not found: {path}") from err
    except OSError as err:
        raise ImageError(f"cannot read image: {path} ({err.strerror or err})") from err


def _check_format(img: Image.Image, path: Path) -> str:
    if img.format not in _MIME:
        raise ImageError(f"unsupported image format {img.format or 'unknown'}: {path} "
                         f"(supported: {', '.join(_MIME)})")
    return img.format


def _downscale(img: Image.Image, max_side: int) -> tuple[bytes, str]:
    """Shrink to fit `max_side` keeping the aspect ratio; PNG stays PNG, all else becomes JPEG."""
    fmt = "PNG" if img.format == "PNG" else "JPEG"
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if fmt == "PNG":
        img.save(out, format="PNG")
    else:
        img.convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue(), fmt
