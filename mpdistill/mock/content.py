"""What the mock reads from a chat request: message text and images, prompt size, `max_tokens`
truncation, and the 400 replies a real API gives for a request it cannot take.
"""
from __future__ import annotations

import base64
import binascii
import json

from .replies import Reply, error_reply

def _text_of(content: object) -> str:
    """The text of a message: its string content or its `text` parts joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(part["text"] for part in content if isinstance(part, dict)
                   and part.get("type") == "text" and isinstance(part.get("text"), str))


def _image_urls(content: object) -> list:
    """The urls of a message's `image_url` parts (whatever they hold)."""
    if not isinstance(content, list):
        return []
    urls = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            ref = part.get("image_url")
            urls.append(ref.get("url") if isinstance(ref, dict) else ref)
    return urls


def valid_image_url(url: object) -> bool:
    """True for http(s) urls and `data:image/...;base64,<valid base64>` urls."""
    if not isinstance(url, str):
        return False
    if url.startswith(("http://", "https://")):
        return True
    _, sep, payload = url.partition(";base64,")
    if not url.startswith("data:image/") or not sep or not payload:
        return False
    try:
        base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _first_invalid_image(messages: list) -> str | None:
    """The first image url of any message that a real API would reject, or None."""
    for message in messages:
        if isinstance(message, dict):
            for url in _image_urls(message.get("content")):
                if not valid_image_url(url):
                    return str(url)
    return None


def last_user_text(messages: list) -> tuple[str, int]:
    """The text and image count of the last user message."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return _text_of(content), len(_image_urls(content))
    return "", 0


def prompt_tokens(messages: list) -> int:
    """A rough prompt size: all message text / 4, plus 85 per image, at least 1."""
    chars = images = 0
    for message in messages:
        if isinstance(message, dict):
            chars += len(_text_of(message.get("content")))
            images += len(_image_urls(message.get("content")))
    return max(1, chars // 4 + 85 * images)


def _truncate(content: str, tokens: int, request: dict) -> tuple[str, int, str]:
    """Cut the answer to `max_tokens` (4 characters a token) the way a real API stops early."""
    limit = request.get("max_completion_tokens", request.get("max_tokens"))
    if not isinstance(limit, int) or isinstance(limit, bool) or limit >= tokens:
        return content, tokens, "stop"
    limit = max(0, limit)
    return content[:limit * 4], limit, "length"


def _load_request(body: bytes) -> dict | Reply:
    """The request JSON, or the 400 reply a real API would give for it."""
    try:
        request = json.loads(body)
    except ValueError:
        return error_reply(400, "request body is not valid JSON", "invalid_json")
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list) \
            or not request["messages"]:
        return error_reply(400, "'messages' must be a non-empty list", "invalid_messages")
    if request.get("stream"):
        return error_reply(400, "the mock server does not stream; send stream=false", "unsupported")
    return request
