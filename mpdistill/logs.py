"""Logging set-up for the CLI: a file under logs/, warnings on stderr, API keys redacted everywhere."""
from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path

from .provider.endpoint import mask_key, mask_url, url_secrets

# Anything shaped like a bearer key, even one we were never told about.
_KEY_SHAPE = re.compile(r"\b(sk|pk|key)-[A-Za-z0-9_\-]{12,}")
# A URL that may carry credentials (userinfo, or a query string), anywhere in a message.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*[@?][^\s'\"<>]*")


_SECRETS: set[str] = set()   # every key this process has been told about (see register_secrets)


def register_secrets(secrets) -> None:
    """Tell the log filters about keys found after logging was set up (endpoint files, task configs).

    A URL among them registers the credentials inside it (userinfo, key-like query values).
    """
    for secret in secrets:
        if isinstance(secret, str) and "://" in secret:
            _SECRETS.update(s for s in url_secrets(secret) if len(s) >= 6)
        elif secret and len(secret) >= 6:
            _SECRETS.add(secret)


def redact_text(text: str) -> str:
    """`text` with every registered secret, key-shaped string and URL credential masked."""
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, mask_key(secret))
    return _KEY_SHAPE.sub(lambda m: mask_key(m.group(0)), text)


class RedactFilter(logging.Filter):
    """Replace every known secret (and anything shaped like an API key) by its masked form."""

    def __init__(self, secrets=()) -> None:
        super().__init__()
        register_secrets(secrets)

    @property
    def secrets(self) -> list[str]:
        return sorted(_SECRETS, key=len, reverse=True)

    def redact(self, text: str) -> str:
        return redact_text(text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        return True


def setup_logging(log_dir: str | Path | None, run_name: str, secrets=(), verbose: bool = False) -> Path | None:
    """Configure the root logger once; returns the log file's path (None without a log dir)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    redact = RedactFilter(secrets)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    console.addFilter(redact)
    root.addHandler(console)
    for noisy in ("httpx", "httpx2", "httpcore", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if log_dir is None:
        return None
    path = Path(log_dir) / f"{run_name}_{time.strftime('%Y%m%d-%H%M%S')}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as err:
        logging.getLogger(__name__).warning("cannot write the log file %s: %s", path, err)
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(redact)
    root.addHandler(handler)
    return path
