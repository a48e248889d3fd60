"""The `Endpoint` record: one base URL with one API key and its limits; masking of keys and URLs."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

# Query parameters whose values are credentials (`?api_key=…`, `?access_token=…`, `&sig=…`).
_SECRET_PARAM = re.compile(r"key|token|secret|passw|pwd|sig|auth|credential|session", re.IGNORECASE)


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI-compatible endpoint with one key. `repr` never shows the key."""

    name: str
    base_url: str
    api_key: str = field(default="", repr=False)
    models: tuple[str, ...] = ()          # empty: serves every model
    rpm: float | None = None              # requests per minute, None: unlimited
    tpm: float | None = None              # tokens per minute, None: unlimited
    max_concurrency: int | None = None    # requests in flight, None: unlimited
    weight: float = 1.0
    batch_max_in_flight: int | None = None   # --via batch: batches open at once (None: the run's default)
    batch_max_tokens: int | None = None      # --via batch: enqueued tokens (None: the run's default)

    def serves(self, model: str) -> bool:
        """True when this endpoint may be asked for `model`."""
        return not self.models or model in self.models

    @property
    def masked_key(self) -> str:
        """The key as it may be shown: `sk-…abcd`."""
        return mask_key(self.api_key)

    @property
    def display_url(self) -> str:
        """The base URL as it may be logged or written: credentials in it masked."""
        return mask_url(self.base_url)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Everything of this endpoint that must never be shown: the key and any URL credentials."""
        return (self.api_key, *url_secrets(self.base_url))


def mask_key(key: str) -> str:
    """Hide all of an API key but a short prefix and its last four characters."""
    if not key:
        return "(none)"
    if len(key) <= 8:
        return "…" + key[-2:]
    prefix = key[:3] if key[:3] in ("sk-", "sk_") else ""
    return f"{prefix}…{key[-4:]}"


def mask_url(url: str) -> str:
    """`url` with its userinfo and key-like query values masked like keys; other URLs unchanged."""
    parts = _split(url)
    if parts is None or ("@" not in parts.netloc and not parts.query):
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, sep, password = userinfo.partition(":")
        netloc = f"{user}:{mask_key(unquote(password))}@{host}" if sep else f"{mask_key(unquote(user))}@{host}"
    query = "&".join(_mask_pair(pair) for pair in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The credentials inside `url` (password or lone user name, key-like query values), raw and decoded."""
    parts = _split(url)
    if parts is None:
        return []
    found = []
    if "@" in parts.netloc:
        user, sep, password = parts.netloc.rsplit("@", 1)[0].partition(":")
        found.append(password if sep else user)
    for pair in parts.query.split("&") if parts.query else ():
        name, sep, value = pair.partition("=")
        if sep and value and _SECRET_PARAM.search(name):
            found.append(value)
    return [v for secret in found for v in dict.fromkeys((secret, unquote(secret))) if v]


def _split(url: str):
    if not isinstance(url, str) or "://" not in url:
        return None
    try:
        return urlsplit(url)
    except ValueError:
        return None


def _mask_pair(pair: str) -> str:
    name, sep, value = pair.partition("=")
    if sep and value and _SECRET_PARAM.search(name):
        return f"{name}={mask_key(unquote(value))}"
    return pair
