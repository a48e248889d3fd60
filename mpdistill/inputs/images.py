"""Turn image references (URLs, data URLs, local files) into OpenAI `image_url` content parts.

Local files are read under an `ImagePolicy` (see `imagefile`), decoded with pillow, optionally
downscaled, and re-encoded: what is sent is the decoded picture, never the file's raw bytes.
"""
from __future__ import annotations

import base64
import io
import re
import struct
from pathlib import Path

from PIL import Image, ImageOps

from ..errors import ImageError
from .imagefile import DEFAULT_MAX_IMAGE_BYTES, ImagePolicy, local_path, read_image_file

__all__ = ["DEFAULT_MAX_IMAGE_BYTES", "ImagePolicy", "build_messages", "encode_image", "image_parts"]

_MIME = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "GIF": "gif"}
# The format each accepted format is re-encoded to: GIF's first frame goes out as PNG.
_SEND_AS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WEBP", "GIF": "PNG"}
_DEFAULT = ImagePolicy()
_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,[A-Za-z0-9+/]+={0,2}")
_IMAGE_TYPES = ("image_url", "image")
# Pillow reports broken files through many exception types; these are the ones it raises in practice.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


def encode_image(ref: str, policy: ImagePolicy = _DEFAULT, deadline: float | None = None) -> str:
    """The URL to send for `ref`: URLs pass through, local files become `data:image/...;base64,...`."""
    if not isinstance(ref, str) or not ref.strip():
        raise ImageError(f"image reference must be a non-empty string, got {type(ref).__name__}")
    lowered = ref[:8].lower()
    if lowered.startswith(("http://", "https://")):
        return ref
    if lowered.startswith("data:"):
        if not _DATA_URL.fullmatch(ref):
            raise ImageError(f"invalid data URL (want data:image/<fmt>;base64,<payload>): "
                             f"{ref.split(',', 1)[0][:40]}…")
        return ref
    path = local_path(ref, policy)
    return _encode_file(read_image_file(path, policy.max_bytes, deadline), path, policy.max_side)


def build_messages(messages: list[dict], policy: ImagePolicy = _DEFAULT,
                   deadline: float | None = None) -> list[dict]:
    """Messages with every image part encoded; messages without image parts are reused as they are."""
    return [_encode_message(m, policy, deadline) for m in messages]


def image_parts(refs: list[str]) -> list[dict]:
    """Unencoded OpenAI image parts for `refs`, to append to a prompt's content."""
    return [{"type": "image_url", "image_url": {"url": ref}} for ref in refs]


def _encode_message(message: dict, policy: ImagePolicy, deadline: float | None) -> dict:
    """`message` itself when it has no image part, else a copy with encoded parts."""
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list) or not any(_is_image(p) for p in content):
        return message
    parts = [_encode_part(p, policy, deadline) if _is_image(p) else p for p in content]
    return {**message, "content": parts}


def _is_image(part: object) -> bool:
    return isinstance(part, dict) and part.get("type") in _IMAGE_TYPES


def _encode_part(part: dict, policy: ImagePolicy, deadline: float | None) -> dict:
    """One image part in the OpenAI form `{"type": "image_url", "image_url": {"url": ...}}`."""
    value = part.get("image_url") if part.get("type") == "image_url" else part.get("image")
    extra = {}
    if isinstance(value, dict):
        extra = {k: v for k, v in value.items() if k != "url"}   # keep e.g. "detail"
        value = value.get("url")
    if not isinstance(value, str):
        raise ImageError(f"image part without a url (keys: {', '.join(map(str, part))})")
    return {"type": "image_url", "image_url": {"url": encode_image(value, policy, deadline), **extra}}


def _encode_file(data: bytes, path: Path, max_side: int | None) -> str:
    """Check, maybe downscale, and re-encode one local image; the data URL of the re-encoded picture."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
        # verify() leaves the image unusable, so reopen for the format, size and pixels.
        with Image.open(io.BytesIO(data)) as img:
            fmt = _check_format(img, path)
            img.load()
            data, fmt = _reencode(ImageOps.exif_transpose(img), fmt, max_side)
    except Image.UnidentifiedImageError as err:
        raise ImageError(f"not an image (format not recognised): {path}") from err
    except _PIL_ERRORS as err:
        raise ImageError(f"corrupt or unreadable image: {path} ({type(err).__name__})") from err
    return f"data:image/{_MIME[fmt]};base64,{base64.b64encode(data).decode('ascii')}"


def _check_format(img: Image.Image, path: Path) -> str:
    if img.format not in _MIME:
        raise ImageError(f"unsupported image format {img.format or 'unknown'}: {path} "
                         f"(supported: {', '.join(_MIME)})")
    return img.format


def _reencode(img: Image.Image, fmt: str, max_side: int | None) -> tuple[bytes, str]:
    """The picture saved afresh (metadata and trailing bytes dropped), shrunk to fit `max_side`."""
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out_fmt = _SEND_AS[fmt]
    out = io.BytesIO()
    if out_fmt == "JPEG":
        img.convert("RGB" if img.mode not in ("L", "RGB") else img.mode).save(out, format="JPEG", quality=95)
    elif out_fmt == "WEBP":
        img.convert("RGBA" if "A" in img.getbands() else "RGB").save(out, format="WEBP", quality=95)
    else:   # level 1: re-encoding costs worker CPU on every row; a few % more bytes cost less
        img.save(out, format="PNG", compress_level=1)
    return out.getvalue(), out_fmt
